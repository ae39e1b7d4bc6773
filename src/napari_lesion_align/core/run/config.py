"""The analysis configuration: one object that the CLI, the GUI and the cluster runner build.

A config is a TOML (or JSON) file; relative paths are resolved against the file's folder.
See docs/configuration.md for every key. Every table is a typed, frozen pydantic model
(:mod:`.schema`): unknown keys, values of the wrong type (``random_control = "no"``,
``layer = "last"``, ``selections = "shared"``) and values outside their allowed set
(``backend = "cuda"``) are errors *when the file is read*, naming the key, the value and
what is allowed.

A config with ``[data] kind = "demo"`` takes its defaults from the demo's recipe
(:data:`napari_lesion_align.core.data.demo.RECIPE`): the ``demo`` command, the widgets' demo and
a file with ``kind = "demo"`` run the same analysis.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..base.errors import LesionAlignError
from ..base.io import read_bytes, resolve_path
from ..base.schema import (PATTERN_MESSAGES, Bool, Int, Label, NonNegInt, PositiveNumber,
                           Section, Table, Text)
from ..data import demo as demo_data
from ..data.bids import bids_languages
from ..data.bold import CleaningOptions
from ..data.options import DemoConfig  # noqa: F401 (a table of the config: run.config.DemoConfig)
from ..data.options import DataConfig, DataKind, LanguageData, _subject, events_options
from ..features.extraction import FeatureOptions
from ..lesions.vocabulary import (DEFAULT_RANDOM_CONTROLS, IMPORTANCE_ELEMENTS, METHODS, MODES,
                                  UNIT_ELEMENTS, default_selections)
from ..data.bold import confound_strategy
from ..analysis.inference import CLUSTER_FORMING_P, INFERENCES, PERMUTATION_METHODS

BUILTIN_MODEL = "builtin:multilingual-e5-small-q4"
#: the paper's ridge penalties: logspace(0, 19, 20)
PAPER_ALPHAS = tuple(np.logspace(0, 19, 20).tolist())
SELECTION_PATTERN = r"^(shared|specific:[A-Za-z0-9]+)$"
PATTERN_MESSAGES[SELECTION_PATTERN] = "use 'shared' or 'specific:<LANGUAGE>'"


def _logspace(v):
    """``{logspace = [start, stop, num]}`` -> the list of alphas."""
    if isinstance(v, dict):
        spec = v.get("logspace")
        if set(v) != {"logspace"} or not isinstance(spec, (list, tuple)) or len(spec) != 3:
            raise ValueError("write alphas as a list of numbers or as "
                             "{logspace = [start, stop, num]}")
        a, b, n = spec
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec) \
                or int(n) != n or n < 1:
            raise ValueError("logspace = [start, stop, num]: numbers, num a whole number >= 1")
        return tuple(np.logspace(a, b, int(n)).tolist())
    return v



Selection = Annotated[Text, Field(pattern=SELECTION_PATTERN)]


class ModelConfig(Table):
    """``[model]``: the language model and the hidden state used as features."""

    TABLE: ClassVar[str] = "[model]"
    name: Text = Field(BUILTIN_MODEL, description=(
        "the built-in offline model, a local model folder (Hugging Face format) or a "
        "Hugging Face id (read from the local cache when offline)"))
    layer: Int = Field(-1, description=(
        "the hidden state used as features: 0 = the embeddings, i = the output of block i, "
        "negative counts from the last (-1)"))
    offline: Bool = Field(True, description="never download: models come from a folder or "
                                            "the local cache")
    device: Text = Field("auto", description=(
        "where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, "
        "cuda, cuda:<N> or mps"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "the weights' dtype: auto = bfloat16 on a CUDA GPU that supports it, else float32"))
    #: "" = the whole model on ``device``; else passed to transformers / accelerate to
    #: spread a model larger than one GPU ("auto", "balanced", "sequential")
    device_map: Literal["", "auto", "balanced", "balanced_low_0", "sequential"] = ""
    #: load the weights one tensor at a time (no second copy in memory while loading)
    low_cpu_mem_usage: Bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v):
            raise ValueError("use 'auto', 'cpu', 'cuda', 'cuda:<N>' or 'mps'")
        return v

    def load_options(self) -> dict:
        """Keyword arguments of :func:`.model.load_model` for this table."""
        return {"offline": self.offline, "device": self.device, "dtype": self.dtype,
                "device_map": self.device_map or None,
                "low_cpu_mem_usage": self.low_cpu_mem_usage}


class EncodingConfig(Table):
    """``[encoding]``: the cross-validated ridge encoding model."""

    TABLE: ClassVar[str] = "[encoding]"
    delays: Annotated[tuple[NonNegInt, ...], Field(min_length=1)] = (1, 2, 3, 4)
    alphas: Annotated[tuple[PositiveNumber, ...], Field(min_length=1),
                      BeforeValidator(_logspace)] = PAPER_ALPHAS
    downsample: Literal["floor", "lanczos"] = "floor"
    #: outer / inner contiguous blocks when a language has a single run
    n_blocks: Annotated[int, Field(strict=True, ge=2)] = 5
    score: Literal["r2", "r"] = "r2"
    dtype: Literal["float32", "float64"] = "float32"
    backend: Literal["auto", "numpy", "torch"] = "auto"
    #: MiB of cleaned BOLD fitted together (subjects with the same runs); 0 = one at a time
    stack_mb: Annotated[float, Field(strict=True, ge=0)] = 1024.0
    condition_alphas: Literal["intact", "search"] = Field("intact", description=(
        "alphas of the lesions, their random draws and the null controls built from the "
        "model's features (shifted, shuffled): 'intact' refits them with each voxel's alpha "
        "chosen for the intact model in the same outer fold (no inner search; the demo "
        "runs in 0.51 of the time); 'search' chooses them by inner CV for every fit "
        "(docs/method.md)"))



class ManualLesion(Section):
    """One ``[[lesions.manual]]`` table: explicit units per block."""

    TABLE: ClassVar[str] = "[lesions].manual"
    name: Label = "manual"
    element: Literal[UNIT_ELEMENTS]
    #: block -> unit indices (``{0 = [1, 2], 3 = [5]}``); for layers the blocks, lists empty
    indices: dict[Annotated[int, Field(ge=0)], tuple[NonNegInt, ...]]

    @model_validator(mode="after")
    def _check(self):
        if not self.indices:
            raise ValueError("give at least one block in indices, e.g. {0 = [1, 2, 3]}")
        if self.element == "layers" and any(self.indices.values()):
            raise ValueError("a layers lesion names whole blocks: write indices = {0 = [], "
                             "3 = []} (the lists stay empty)")
        if self.element != "layers" and not all(self.indices.values()):
            raise ValueError(f"every block of a {self.element} lesion needs unit indices, "
                             "e.g. {0 = [1, 2, 3]}")
        return self


class LesionConfig(Table):
    """``[lesions]``: which lesions to run next to the intact model.

    Four kinds of request, any combination: importance-based ``selections`` (shared /
    specific per language, of ``element``), ``manual`` lesions (explicit units), a layer
    ``sweep``, and saved lesion ``files``. ``selections`` left out means the default
    (:func:`.plan.default_selections`); ``selections = []`` means none.
    """

    TABLE: ClassVar[str] = "[lesions]"
    #: keys that change the memory of a pass, not what comes out of it (left out of the
    #: analysis' identity: store.identity)
    MEMORY_KEYS: ClassVar[tuple] = ("importance_batch_tokens",)
    enabled: Bool = False
    element: Literal[IMPORTANCE_ELEMENTS] = Field("weights", description=(
        "what the shared / specific selections rank and lesion: weights, FFN neurons or "
        "attention heads (hidden units and whole layers: manual lesions and sweeps)"))
    method: Literal[METHODS] = Field("auto", description=(
        "importance: wanda (|W| x input norm, any model), gradxweight (needs a "
        "language-modelling head), lape (FFN neurons), auto"))
    k_percent: Annotated[float, Field(strict=True, gt=0, le=100)] = Field(
        1.0, description="the share of the elements lesioned, per block (%)")
    selections: tuple[Selection, ...] | None = None
    #: whether lesions get size-matched random controls (false: none, whatever
    #: random_controls says); kept for older configs
    random_control: Bool | None = None
    random_controls: NonNegInt = Field(DEFAULT_RANDOM_CONTROLS, description=(
        "size-matched random lesions drawn for every lesion (seeded): each lesion's drop is "
        "tested against them per voxel; each draw is one more feature pass and one more fit "
        "per subject"))
    mode: Literal[MODES] = Field("zero", description=(
        "ablation: zero sets the lesioned elements to 0, mean to their mean activation"))
    text: dict[Label, Text] | None = None  # {language: text file}; default: the stimulus
    max_tokens: Annotated[int, Field(strict=True, ge=1)] = 20000
    importance_batch_tokens: NonNegInt = Field(0, description=(
        "tokens per gradient pass of gradient x weight (0: automatic, from the device's "
        "memory); lower it when the importance runs out of memory: the scores stay the "
        "same to float rounding"))
    files: tuple[Text, ...] = ()
    manual: tuple[ManualLesion, ...] = ()
    sweep: Bool = False
    sweep_element: Literal[UNIT_ELEMENTS] = "hidden"
    sweep_indices: tuple[NonNegInt, ...] = ()  # default: every 10th unit
    alpha: Annotated[float, Field(strict=True, gt=0, lt=1)] = Field(
        0.05, description="the significance level of the group tests")
    correction: Literal["fdr", "none"] = Field("fdr", description=(
        "fdr: q-values (Benjamini-Hochberg) below the level; none: p below the level"))
    min_relative_drop: Annotated[float, Field(strict=True, ge=0, lt=1)] = Field(
        0.0, description=(
            "the smallest group relative drop for a voxel to count as dropping in the "
            "category maps (besides significance)"))

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, v):
        if isinstance(v, dict) and v.get("random_control") is False:
            if v.get("random_controls"):
                raise ValueError("random_control = false contradicts random_controls = "
                                 f"{v['random_controls']!r}: keep one of them")
            v = dict(v, random_controls=0)
        return v

    @property
    def n_random(self) -> int:
        """Random draws per lesion (0: no random controls)."""
        return 0 if self.random_control is False else self.random_controls

    @field_validator("element", mode="before")
    @classmethod
    def _element(cls, v):
        if v in ("hidden", "layers"):
            raise ValueError(
                f"shared / specific selections rank {', '.join(IMPORTANCE_ELEMENTS)}; lesion "
                f"{v} with a [[lesions.manual]] table or a sweep (sweep_element = '{v}')")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.method == "lape" and self.element != "neurons":
            raise ValueError("method = 'lape' selects FFN neurons: set element = 'neurons'")
        names = [m.name for m in self.manual]
        if len(set(names)) != len(names):
            raise ValueError(f"manual lesions need distinct names, got {names}")
        return self


class ControlsConfig(Table):
    """``[controls]``: nulls and baselines fitted next to the intact model, per subject and
    language, with group maps "model > control" (:mod:`.controls`)."""

    TABLE: ClassVar[str] = "[controls]"
    enabled: Bool = True
    #: circular-shift null: the model's own features rotated in time, this many shifts (their
    #: mean r is the null); 0 = none
    shifts: NonNegInt = 2
    #: the word vectors given to other words' onsets (same timing, no content)
    shuffled_words: Bool = True
    #: the number of words per volume alone (what a model must beat)
    word_rate: Bool = True
    #: the model fitted to the BOLD with the word rate regressed out (a nuisance regressor)
    above_word_rate: Bool = True


class ComputeConfig(Table):
    """``[compute]``: where and how the units run (not part of the analysis' identity)."""

    TABLE: ClassVar[str] = "[compute]"
    #: folder of the content-addressed feature store (default: the user cache)
    feature_store: Text | None = None
    workers: NonNegInt = Field(0, description=(
        "0: every unit in this process; N: a local Dask cluster of N worker processes "
        "(needs the 'dask' extra)"))
    scheduler: Text | None = Field(None, description=(
        "the address of a running Dask scheduler (tcp://host:8786) whose workers run the "
        "units (the output folder must be on a shared file system)"))
    threads: NonNegInt = Field(0, description=(
        "BLAS and torch threads per process (0: in this process every usable core; with "
        "local workers the cores divided among them; with a scheduler the workers' own "
        "setting); never more than the cores"))


class StatisticsConfig(Table):
    """``[statistics]``: the group inference and the noise ceiling (group-level only: a
    change recomputes the group statistics, never a fit)."""

    TABLE: ClassVar[str] = "[statistics]"
    inference: Literal[INFERENCES] = Field("parametric", description=(
        "parametric: paired t-tests per voxel, [lesions] correction (FDR); permutation: "
        "sign-flipping permutations with family-wise error control (nilearn)"))
    method: Literal[PERMUTATION_METHODS] = Field("max-t", description=(
        "the permutation test's statistic: max-t (voxels or regions), tfce or cluster "
        "(volumes only: they need the voxels' neighbours)"))
    n_perm: Annotated[int, Field(strict=True, ge=100, le=1_000_000)] = Field(
        5000, description="sign flips of the permutation test (5000 or more for a paper)")
    seed: Int = Field(0, description="the seed of the sign flips")
    cluster_forming_p: Annotated[float, Field(strict=True, gt=0, le=0.05)] = Field(
        CLUSTER_FORMING_P, description=(
            "method = 'cluster': the uncorrected one-sided p that forms the clusters"))
    ceiling: Bool = Field(True, description=(
        "the noise ceiling per language (inter-subject correlation of the cleaned BOLD) "
        "and alignment normalised by it; skipped, with a warning, where it cannot be "
        "computed (one subject, or subjects with different runs)"))

    @model_validator(mode="after")
    def _check(self):
        if self.inference == "parametric" and "method" in self.model_fields_set \
                and self.method != "max-t":
            raise ValueError(f"method = {self.method!r} is a permutation statistic: set "
                             "inference = 'permutation' or leave method out")
        return self


#: the keys whose change does not change any unit's result (only the group statistics);
#: a folder computed with other values of these is resumed, not refused
GROUP_KEYS = ("alpha", "correction", "min_relative_drop")
#: the tables whose change does not change any fit (only the group stage and the ceiling
#: units, which keep their own records): a folder computed with other values is resumed
GROUP_TABLES = ("statistics",)


class AnalysisConfig(Section):
    """Everything an analysis needs; built by :func:`config_from_dict` / :func:`load_config`."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    features: FeatureOptions = FeatureOptions()
    encoding: EncodingConfig = EncodingConfig()
    cleaning: CleaningOptions = CleaningOptions()
    lesions: LesionConfig = LesionConfig()
    controls: ControlsConfig = ControlsConfig()
    compute: ComputeConfig = ComputeConfig()
    statistics: StatisticsConfig = StatisticsConfig()
    seed: Int = 0
    name: Text = "analysis"
    source: Text | None = None  # the config file, for provenance

    def to_dict(self) -> dict:
        """A JSON-serialisable description (for result.json)."""
        return self.model_dump(mode="json")

    @property
    def languages(self) -> list[str]:
        return [lang.code for lang in self.data.languages]


# --------------------------------------------------------------------------- parsing
SECTIONS = ("name", "seed", "data", "model", "features", "encoding", "cleaning", "languages",
            "lesions", "controls", "compute", "statistics")



def _expand(template: str, base: Path, where: str, **fields) -> str:
    try:
        pattern = resolve_path(str(template).format(**fields), base)
    except (KeyError, IndexError, ValueError) as err:
        raise LesionAlignError(
            f"{where}: cannot fill in {template!r} ({err}); use the placeholders {{subject}} "
            "and {run}"
        ) from err
    if any(ch in pattern for ch in "*?["):
        hits = sorted(glob.glob(pattern))
        if len(hits) != 1:
            raise LesionAlignError(
                f"{where}: the pattern {pattern!r} matches {len(hits)} files; it must match one"
            )
        return hits[0]
    return pattern


def _per_subject_runs(value, subjects, runs, base, where) -> dict:
    """BOLD / confounds given as a template string or a {subject: [paths]} table."""
    if isinstance(value, str):
        return {s: tuple(_expand(value, base, where, subject=s, run=r) for r in runs)
                for s in subjects}
    if isinstance(value, dict):
        out = {}
        for s, paths in value.items():
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise LesionAlignError(f"{where}.{s} = {paths!r}: give a list of file paths")
            if len(paths) != len(runs):
                raise LesionAlignError(
                    f"{where}.{s}: {len(paths)} files for {len(runs)} runs; give one per run"
                )
            out[str(s)] = tuple(resolve_path(p, base) for p in paths)
        return out
    raise LesionAlignError(f"{where} = {value!r}: give a path template with {{subject}} and "
                           "{run}, or a table {\"01\" = [\"run1.nii.gz\", ...]}")


_LANGUAGE_KEYS = ("annotations", "runs", "bold", "text_language", "tier", "confounds",
                  "bold_start_s", "events_filter", "word_column")



def _language(code, ld, kind: str, subjects: tuple, base: Path) -> LanguageData:
    where = f"[languages.{code}]"
    if not isinstance(ld, dict):
        raise LesionAlignError(f"{where}: must be a table")
    bad = set(ld) - set(_LANGUAGE_KEYS)
    if bad:
        raise LesionAlignError(f"{where}: unknown key(s) {sorted(bad)}; allowed: "
                               f"{sorted(_LANGUAGE_KEYS)}")
    if "annotations" not in ld:
        raise LesionAlignError(f"{where}: 'annotations' is required (one file per run)")
    ann = ld["annotations"]
    runs = ld.get("runs", [])
    if not isinstance(runs, list):
        raise LesionAlignError(f"{where}.runs = {runs!r}: write a list of run labels, "
                               "e.g. [1, 2, 3]")
    if isinstance(ann, str):
        if not runs:
            raise LesionAlignError(f"{where}: one annotation table for several runs needs "
                                   "'runs = [...]'")
        ann = [ann] * len(runs)
    if not isinstance(ann, list) or not all(isinstance(a, str) and a for a in ann) \
            or not ann:
        raise LesionAlignError(f"{where}.annotations = {ann!r}: give a list of file paths, "
                               "one per run")
    if not runs:
        runs = list(range(1, len(ann) + 1))
    if len(runs) != len(ann):
        raise LesionAlignError(f"{where}: {len(ann)} annotation files for {len(runs)} runs")
    table = {"code": str(code), "annotations": tuple(resolve_path(a, base) for a in ann),
             "runs": tuple(runs)}
    if "bold" not in ld:
        raise LesionAlignError(f"{where}: 'bold' is required (template or table)")
    if isinstance(ld["bold"], str) and not subjects:
        raise LesionAlignError(f"{where}: a bold template needs [data].subjects")
    table["bold"] = _per_subject_runs(ld["bold"], subjects, runs, base, f"{where}.bold")
    if ld.get("confounds"):
        table["confounds"] = _per_subject_runs(ld["confounds"],
                                               tuple(table.get("bold", ())) or subjects,
                                               runs, base, f"{where}.confounds")
    for key in ("text_language", "tier", "bold_start_s"):
        if key in ld:
            table[key] = ld[key]
    table.update(events_options(ld, where))
    lang = LanguageData.parse(table, where)
    lang.spaceless  # an unknown language code is an error now, not in the middle of a run
    return lang


def _merge(defaults: dict, table: dict) -> dict:
    """``table`` over ``defaults``, key by key (one level)."""
    return {**defaults, **table}


def _table(d: dict, key: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise LesionAlignError(f"[{key}] = {v!r}: must be a table")
    return dict(v)


def _read_files(kind: str, data_d: dict, d: dict, base: Path) -> tuple:
    """``[data]`` and ``[languages.<CODE>]`` of files: NIfTI volumes or region tables, given
    in the config (``volume``, ``regions``) or found in a BIDS dataset (``bids``: read as a
    ``volume`` config)."""
    if "demo" in data_d:
        raise LesionAlignError("[data.demo]: only for kind = 'demo'")
    subjects_raw = data_d.get("subjects", [])
    if not isinstance(subjects_raw, list):
        raise LesionAlignError(f"[data].subjects = {subjects_raw!r}: write a list, e.g. "
                               "[\"01\", \"02\"]")
    subjects = tuple(_subject(s) for s in subjects_raw)
    langs_d = d.get("languages") or {}
    if not isinstance(langs_d, dict):
        raise LesionAlignError("[languages]: write one table per language, "
                               "[languages.EN], [languages.FR], ...")
    if kind == "bids":
        data_d, languages = bids_languages(data_d, langs_d, subjects, base)
        kind = "volume"
    elif "root" in data_d or "derivatives" in data_d:
        raise LesionAlignError("[data].root / derivatives: only for kind = 'bids'")
    else:
        languages = [_language(code, ld, kind, subjects, base)
                     for code, ld in langs_d.items()]
    if not languages:
        raise LesionAlignError("config: no [languages.<CODE>] section; add one per "
                               "language")
    if not subjects:
        data_d["subjects"] = list(dict.fromkeys(s for lang in languages for s in lang.bold))
    if isinstance(data_d.get("mask"), str) and data_d["mask"]:
        data_d["mask"] = resolve_path(data_d["mask"], base)
    if kind == "volume" and not data_d.get("mask"):
        raise LesionAlignError("[data].mask is required for NIfTI input (kind = 'volume')")
    return data_d, languages, None


#: the kinds of ``[data]``, in the order the messages list them: each one's data tables and
#: defaults (the demo's recipe is its kind's defaults, :data:`.data.demo.DATA_KIND`)
DATA_KINDS = {k.name: k for k in (DataKind("volume", _read_files),
                                  DataKind("regions", _read_files),
                                  DataKind("bids", _read_files),
                                  demo_data.DATA_KIND)}


def config_from_dict(d: dict, base: Path | str = ".", source: str | None = None) -> AnalysisConfig:
    """Build and validate an :class:`AnalysisConfig` from a parsed TOML/JSON mapping."""
    base = Path(base)
    if not isinstance(d, dict):
        raise LesionAlignError("config: the top level must be a table")
    d = dict(d)
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise LesionAlignError(f"config: unknown section(s) {sorted(unknown)}; allowed: "
                               f"{sorted(SECTIONS)}")
    data_d = _table(d, "data")
    kind = data_d.get("kind", "volume")
    if kind not in DATA_KINDS:
        *first, last = (repr(k) for k in DATA_KINDS)
        raise LesionAlignError(f"[data].kind = {kind!r}: use {', '.join(first)} or {last}")
    data_kind = DATA_KINDS[kind]
    recipe = data_kind.defaults
    les = _table(d, "lesions")
    features = _merge(recipe.get("features", {}), _table(d, "features"))
    encoding = _merge(recipe.get("encoding", {}), _table(d, "encoding"))
    if les:
        les = _merge(recipe.get("lesions", {}), les)
    if data_kind.check is not None:
        data_kind.check(d, data_d)
    if les:
        les.setdefault("enabled", True)
        if isinstance(les.get("text"), dict):
            les["text"] = {k: resolve_path(v, base) if isinstance(v, str) else v
                           for k, v in les["text"].items()}
        if isinstance(les.get("files"), list):
            les["files"] = [resolve_path(f, base) if isinstance(f, str) else f
                            for f in les["files"]]
    model = ModelConfig(**_table(d, "model"))
    feature_opts = FeatureOptions(**features)
    encoding_cfg = EncodingConfig(**encoding)
    cleaning = CleaningOptions(**_table(d, "cleaning"))
    lesions = LesionConfig(**les)
    controls = ControlsConfig(**_merge(recipe.get("controls", {}), _table(d, "controls")))
    compute_d = _table(d, "compute")
    if isinstance(compute_d.get("feature_store"), str):
        compute_d["feature_store"] = resolve_path(compute_d["feature_store"], base)
    compute = ComputeConfig(**compute_d)
    statistics = StatisticsConfig(**_merge(recipe.get("statistics", {}),
                                           _table(d, "statistics")))
    if statistics.inference == "permutation" and statistics.method != "max-t" \
            and kind == "regions":
        raise LesionAlignError(
            f"[statistics].method = {statistics.method!r} needs voxels and their neighbours; "
            "[data] kind = 'regions' has regions: use method = 'max-t'")

    data_d, languages, demo = data_kind.read(kind, data_d, d, base)
    if "languages" in data_d:
        raise LesionAlignError("[data].languages: write one [languages.<CODE>] table per "
                               "language instead")
    if data_d.get("confounds") is not None:
        data_d["confounds"] = confound_strategy(data_d["confounds"])
    data = DataConfig(**data_d, languages=tuple(languages), demo=demo)
    codes = [lang.code for lang in languages]
    _check_lesions(lesions, codes)
    top = {k: d[k] for k in ("seed", "name") if k in d}
    return AnalysisConfig.parse(dict(
        top, data=data, model=model, features=feature_opts, encoding=encoding_cfg,
        cleaning=cleaning, lesions=lesions, controls=controls, compute=compute,
        statistics=statistics, source=source), "")


def _check_lesions(les: LesionConfig, codes: list[str]) -> None:
    """What the [lesions] table asks that depends on the languages."""
    if not les.enabled:
        return
    for sel in les.selections or ():
        if sel.startswith("specific:"):
            code = sel.split(":", 1)[1]
            if code not in codes:
                raise LesionAlignError(f"[lesions].selections: {sel!r} names no configured "
                                       f"language; languages are {codes}")
            if len(codes) < 2:
                raise LesionAlignError(f"[lesions].selections: {sel!r} needs at least two "
                                       "languages (specific = more important for one "
                                       "language than for the others)")
    for code in les.text or {}:
        if code not in codes:
            raise LesionAlignError(f"[lesions.text].{code}: names no configured language; "
                                   f"languages are {codes}")
    selections = default_selections(codes) if les.selections is None else les.selections
    if not (selections or les.files or les.manual or les.sweep):
        raise LesionAlignError(
            "[lesions]: makes no lesion (selections = [] and no manual lesions, sweep or "
            "files); add one of them, or remove [lesions] to run the intact model only")


def load_config(path) -> AnalysisConfig:
    """Read a TOML or JSON config file (errors name the file)."""
    path = Path(path)
    text = read_bytes(path, "config file", "give the path of a TOML or JSON config file")
    if not text.strip():
        raise LesionAlignError(f"{path}: the config file is empty; see docs/configuration.md "
                               "for what it must hold")
    try:
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import tomllib

            d = tomllib.loads(text.decode("utf-8"))
    except Exception as err:
        raise LesionAlignError(f"{path}: cannot parse the config ({err})") from err
    try:
        return config_from_dict(d, base=path.parent.resolve(), source=str(path))
    except LesionAlignError as err:
        raise LesionAlignError(f"{path}: {err}") from None


def demo_config(n_subjects: int = 5, seed: int = 0, lesions: bool | dict = False,
                **overrides: Any) -> AnalysisConfig:
    """The built-in demo's configuration (its recipe: :data:`..data.demo.RECIPE`).

    ``lesions``: True for the recipe's lesions (the shared lesion, one specific lesion per
    language and their random controls), or a dict of ``[lesions]`` keys that replace the
    recipe's key by key. ``overrides``: other tables (``model={...}``), merged key by key.
    """
    d: dict = {"name": "demo", "seed": seed,
               "data": {"kind": "demo", "demo": {"n_subjects": n_subjects, "seed": seed}}}
    if lesions:
        d["lesions"] = dict(lesions) if isinstance(lesions, dict) else {}
        d["lesions"].setdefault("enabled", True)
    for key, val in overrides.items():
        d[key] = {**d.get(key, {}), **val} if isinstance(val, dict) else val
    return config_from_dict(d)
