"""Checks of the user's inputs that run before any work starts.

* :func:`regular_file` -- the one test every reader applies before it opens a file (config,
  word annotations, BOLD NIfTI runs, the mask, confound and region tables, lesion files,
  importance texts, model files): the path exists and is a regular, readable file. A
  folder, a named pipe (reading it would wait forever), a device (``/dev/zero`` would be
  read until memory runs out), a socket or a link to one of them is refused, by name,
  before anything is read.
* :func:`check_inputs` -- the cheap checks of the model and the lesion requests, called by
  :func:`~.pipeline.run_analysis` after the data files are indexed and *before* the output
  folder is claimed: the model folder is complete (config, weights whose header is intact,
  tokenizer, no code of its own), the chosen layer exists, and every saved lesion file and
  manual lesion fits the model's anatomy (read from its ``config.json`` on the meta device:
  no weights are loaded) and acts below the layer the features are read from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..base.errors import Cancelled, LesionAlignError
from ..base.io import read_text, regular_file
from ..data.bold import check_subject_runs
from ..data.dataset import Dataset
from ..lesions.masks import Lesion, check_fits
from ..lesions.plan import LesionPlan, unit_indices
from ..model.anatomy import describe_model
from ..model.loading import architecture_kwargs, model_source, refuse_remote_code
from .stages import unit_name
from .store import OutputFolder
from ..model.loading import check_pickled_weights

__all__ = ["check_inputs", "model_anatomy"]


# --------------------------------------------------------------------------- the model
#: files that hold a Hugging Face model's weights (one of them, or a sharded index)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
#: files of which a tokenizer needs at least one
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "vocab.txt", "vocab.json")


def check_model_folder(folder) -> None:
    """A local model folder is complete before anything is loaded from it: no code of its
    own, a readable ``config.json`` naming an architecture, weight files whose headers are
    intact, and tokenizer files."""
    folder = Path(folder)
    refuse_remote_code(folder)
    cfg_path = folder / "config.json"
    text = read_text(cfg_path, "the model's config.json",
                     "the folder is not a complete Hugging Face model")
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise LesionAlignError(f"{cfg_path}: the model's config.json is not valid JSON "
                               f"({err}); save the model again") from err
    if not isinstance(doc, dict) or not doc.get("model_type"):
        raise LesionAlignError(f"{cfg_path}: the model's config.json names no model_type; "
                               "save the model again with save_pretrained")
    present = [n for n in WEIGHT_FILES if (folder / n).exists()]
    if not present:
        raise LesionAlignError(f"{folder}: the model folder has no weights (none of "
                               f"{', '.join(WEIGHT_FILES)}); save the model again")
    for name in present:
        p = folder / name
        if name.endswith(".index.json"):
            try:
                index = json.loads(read_text(p, "weights index"))
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise LesionAlignError(f"{p}: the weights index is damaged ({err}); save the "
                                       "model again") from err
            for shard in shards:
                _check_weights(folder / shard)
        else:
            _check_weights(p)
    if not any((folder / n).exists() for n in TOKENIZER_FILES):
        raise LesionAlignError(f"{folder}: the model folder has no tokenizer (none of "
                               f"{', '.join(TOKENIZER_FILES)}); save the tokenizer there too")


def _check_weights(p: Path) -> None:
    regular_file(p, "weights file", "save the model again")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:  # reads the header only and checks that the data covers it
            with safe_open(str(p), "pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any failure: a damaged file
            raise LesionAlignError(f"{p}: the weights file is damaged ({err}); download or "
                                   "save the model again") from err
    elif p.stat().st_size == 0:
        raise LesionAlignError(f"{p}: the weights file is empty; save the model again")
    elif p.suffix == ".bin":  # pickled: plain tensors only, checked before the run starts

        check_pickled_weights(p)


def _model_source(config, check: bool = True) -> tuple[str, str]:
    """:func:`~.model.model_source` of ``[model] name`` without converting the built-in
    model; a local folder is checked (:func:`check_model_folder`)."""
    kind, source = model_source(config.model.name, convert=False)
    if kind == "folder" and check:
        check_model_folder(source)
    return kind, source


def _model_config(config):
    """The transformers config of ``[model]`` (no weights read; never remote code)."""
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import AutoConfig

    kind, source = model_source(config.model.name)
    local = kind == "folder" or config.model.offline
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local,
                                          trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise LesionAlignError(f"cannot read the configuration of model {source!r} "
                               f"({err})") from err


def model_anatomy(config, model=None):
    """The :class:`~.anatomy.Anatomy` of ``[model]``: of the loaded ``model`` when given,
    else of the architecture built on the meta device from its config (no weights)."""
    if model is not None:
        return describe_model(getattr(model, "model", model))
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import AutoModel

    cfg = _model_config(config)
    try:
        with torch.device("meta"):
            meta = AutoModel.from_config(cfg, trust_remote_code=False,
                                         **architecture_kwargs(cfg))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise LesionAlignError(f"model {config.model.name!r}: cannot build its architecture "
                               f"from its config ({err})") from err
    return describe_model(meta)


def check_inputs(config, model=None, source=None, out_dir=None, progress=None,
                 cancel=None) -> None:
    """The checks of what indexing the data (:func:`~.dataset.open_source`) does not cover,
    before the output folder is claimed: the model (:func:`check_model_folder` for a
    folder), the layer, the importance texts, the saved lesion files and the manual lesions
    (:func:`check_lesions`), and the contents of the NIfTI BOLD runs that will be fitted
    (:func:`check_bold`).

    ``model``: an already loaded model (a :class:`~.model.LoadedModel`) the run will use;
    ``source``: the opened data source; ``out_dir``: the output folder (read only: the
    runs of subjects whose fits it already holds, with the same files, are not read again).
    """
    if model is None:
        _model_source(config)
    les = config.lesions
    if les.enabled:
        for code, path in sorted((les.text or {}).items()):
            regular_file(path, f"importance text for {code}",
                         "set [lesions.text] to a UTF-8 text file")
    if source is not None:
        check_bold(source, out_dir, progress, cancel)
    needs_anatomy = les.enabled and (les.files or les.manual)
    if not needs_anatomy and config.model.layer in (-1, 0):
        return  # the last and the first hidden states always exist
    anatomy = model_anatomy(config, model)
    n_hidden = len(anatomy.blocks) + 1
    layer = config.model.layer
    if not -n_hidden <= layer < n_hidden:
        raise LesionAlignError(
            f"[model].layer = {layer}: the model {config.model.name!r} has hidden states "
            f"0..{n_hidden - 1} (0: the embeddings, {n_hidden - 1} or -1: the last block); "
            "choose one of them")
    if les.enabled:
        check_lesions(config, anatomy)


def check_lesions(config, anatomy) -> None:
    """Every saved lesion file is readable and fits the model (blocks, parts, shapes), every
    manual lesion's blocks and units exist, and each acts at or below the chosen layer."""

    n_hidden = len(anatomy.blocks) + 1
    layer = config.model.layer
    target = layer if layer >= 0 else n_hidden + layer

    def above(blocks, what, fix):
        if blocks and min(blocks) >= target:
            raise LesionAlignError(
                f"{what}: lesions block(s) {sorted(blocks)}, all at or above the block "
                f"whose output is the chosen layer ([model].layer = {layer}: hidden state "
                f"{target}, the output of block {target - 1}); the features would equal the "
                f"intact model's. {fix}")

    plan = LesionPlan.of(config)
    for spec in plan.specs(len(anatomy.blocks)):
        if spec.kind == "file":
            lesion = Lesion.load(spec.file)
            try:
                check_fits(lesion, anatomy)
            except LesionAlignError as err:
                raise LesionAlignError(f"{spec.file}: {err}") from None
            touched = [b for b, n in lesion.per_layer().items() if n > 0]
            if not touched:
                raise LesionAlignError(f"{spec.file}: the lesion ablates nothing (every mask "
                                       "is empty); make it again")
            above(touched, spec.file, "Lesion lower blocks or read a later layer.")
        elif spec.kind == "manual":
            idx = unit_indices(anatomy, spec)
            above([b for b, _ in idx], f"[lesions].manual {spec.label!r}",
                  "Lesion lower blocks or read a later layer.")


def _fits_done(out_dir, source) -> set:
    """``{(subject, language)}`` whose fit record in ``out_dir`` was made from the same data
    files (read only: :meth:`~.store.OutputFolder.fit_done_with`)."""

    if out_dir is None:
        return set()
    folder = OutputFolder(out_dir)
    return {(s, code) for (s, code) in source.bold
            if folder.fit_done_with(unit_name(s, code), source.inputs(s, code)) is not None}


def check_bold(source, out_dir=None, progress=None, cancel=None) -> None:
    """Read every NIfTI BOLD run that will be fitted once, before the output folder is
    claimed, and apply the NaN-volume rule (:func:`~.bold.check_subject_runs`): a damaged
    (truncated) file, a run that is mostly NaN, or a run in which every voxel is constant
    (or that lies outside the mask) next to runs with data is refused now, naming the
    file, instead of failing its unit later. Runs of fits the output folder already holds (same files) are skipped.
    Region tables are checked when they are read (:func:`~.dataset.load_dataset`).
    """

    if not isinstance(source, Dataset) or getattr(source.space, "kind", None) != "volume":
        return
    done = _fits_done(out_dir, source)
    todo = [runs for key, runs in source.bold.items() if key not in done]
    for i, runs in enumerate(todo):  # one subject's runs in memory at a time, as a fit
        if cancel is not None and cancel():
            raise Cancelled()
        if hasattr(progress, "check"):
            progress.check()  # a pipeline Progress: its cancel
        if progress is not None:
            progress((i + 1) / len(todo), f"checking BOLD {Path(runs[0].source).name}")
        check_subject_runs([run.load() for run in runs], [run.source for run in runs])
