"""BIDS datasets as input: ``[data] kind = "bids"`` and ``init-config``.

A BIDS dataset (raw, or fMRIPrep-style derivatives with ``space-`` / ``desc-`` entities) is
indexed with pybids (:class:`bids.BIDSLayout`, ``validate=False``); each
``[languages.<CODE>]`` table names its BIDS ``task`` and optional ``space``, ``desc``,
``session`` and other entity ``filters``. :func:`bids_languages` turns them into the same
:class:`~.config.LanguageData` objects a ``kind = "volume"`` config lists by hand (BOLD
paths and confound tables per subject and run), so that nothing downstream knows the data
came from BIDS; the config is then a ``volume`` config whose ``[data].bids`` records where
it came from.

* BOLD: from the derivatives when they hold the task's runs, else from the raw dataset;
  one file per subject and run, otherwise one error naming the subject, task and run, the
  files found and the key that tells them apart.
* Confounds (with ``[data].confounds``, a nilearn strategy): the fMRIPrep table of each run
  (``*_desc-confounds_timeseries.tsv``); the columns are chosen by nilearn
  (:func:`.bold.read_confounds`).
* Mask: ``[data].mask`` when given, else the intersection of the runs' ``desc-brain``
  masks in the chosen space (written once into the user cache, named by a hash of the
  masks' paths, sizes and times).
* TR: the runs' ``RepetitionTime``; ``[data].tr`` must agree with it when given.
* Annotations: a template with ``{run}`` (the BIDS run number, e.g.
  ``"annotation/EN/lppEN_section{run}.TextGrid"``, or ``{run:02d}``), a folder holding one
  file per run (matched by the run number in the file name), one table with a run column,
  or a list of files in run order.

:func:`init_config` writes a starting TOML config from what a dataset holds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..base.errors import LesionAlignError
from ..base.io import cache_dir, resolve_path
from .bold import NON_STEADY_ONLY
from .languages import normalize_language
from .options import BidsSource, LanguageData, events_options
from .bold import confound_strategy
from .stimuli import events_word_column

#: the keys of a ``[languages.<CODE>]`` table of a BIDS config
LANGUAGE_KEYS = ("task", "space", "desc", "session", "filters", "runs", "annotations",
                 "text_language", "tier", "bold_start_s", "events_filter", "word_column")
#: word-annotation files the readers take (:mod:`.stimuli`)
ANNOTATION_SUFFIXES = (".textgrid", ".tsv", ".csv")
#: folders next to a dataset where annotations are looked for (init-config)
ANNOTATION_FOLDERS = ("stimuli", "sourcedata", "annotation", "annotations", "stimulus")
NIFTI = [".nii", ".nii.gz"]
#: pybids entity names -> their BIDS file-name keys
SHORT = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec",
         "direction": "dir", "ceagent": "ce", "resolution": "res", "density": "den"}
#: entities that tell a BOLD file's run apart, shared by its confounds table
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "run", "direction",
                "reconstruction", "echo")
#: long and short names of the derivatives entities (pybids names them ``res`` / ``den``)
ALIASES = {"resolution": "res", "density": "den", "res": "resolution", "den": "density"}
#: entities a config key selects (the rest go into ``filters``)
KEY_OF = {"space": "space", "desc": "desc", "session": "session"}


# --------------------------------------------------------------------------- layout
def _description(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def open_layout(root, derivatives=None):
    """A pybids layout of ``root`` (raw or derivatives) and its derivatives.

    ``derivatives``: ``None`` (``root/derivatives`` when it exists), ``False`` (none),
    ``True`` (every pipeline under ``root/derivatives``), or folders (absolute, or
    relative to ``root``). Returns ``(layout, derivative folders)``.
    """
    import warnings

    root = Path(os.path.normpath(Path(root).expanduser().absolute()))
    if not root.is_dir():
        raise LesionAlignError(f"[data].root = {str(root)!r}: not a folder; give the root of a "
                               "BIDS dataset (the folder with dataset_description.json and "
                               "sub-* folders) or of its derivatives (e.g. derivatives/fmriprep)")
    is_derivative = _description(root).get("DatasetType") == "derivative"
    if derivatives is None:
        derivatives = (root / "derivatives").is_dir() and not is_derivative
    if derivatives is True:
        derivatives = [root / "derivatives"]
    elif derivatives is False:
        derivatives = []
    elif isinstance(derivatives, (str, Path)):
        derivatives = [derivatives]
    folders = []
    for d in derivatives:
        p = Path(d).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise LesionAlignError(f"[data].derivatives: {str(p)!r} is not a folder (relative "
                                   f"paths are relative to [data].root = {str(root)!r})")
        folders.append(p)
    if not any(root.glob("sub-*")):
        raise LesionAlignError(f"[data].root = {str(root)!r}: no sub-* folder; give the root "
                               "of a BIDS dataset or of its derivatives")
    from bids import BIDSLayout

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layout = BIDSLayout(str(root), validate=False, config=["bids", "derivatives"],
                                is_derivative=is_derivative,
                                derivatives=[str(f) for f in folders] or False)
    except Exception as err:  # pybids raises many types for a malformed dataset
        raise LesionAlignError(f"[data].root = {str(root)!r}: pybids cannot index the dataset "
                               f"({' '.join(str(err).split())})") from err
    indexed = {Path(d.root).resolve() for d in layout.derivatives.values()}
    for f in folders:
        if not any(p == f.resolve() or f.resolve() in p.parents for p in indexed):
            raise LesionAlignError(
                f"[data].derivatives: {str(f)!r} holds no derivatives dataset pybids can read "
                "(a derivatives folder needs a dataset_description.json with \"DatasetType\": "
                "\"derivative\" and \"GeneratedBy\"); add it, or set derivatives = false")
    return layout, sorted(Path(os.path.normpath(d.root)) for d in layout.derivatives.values())


def _scope(layout, task: str) -> str:
    """Where a task's BOLD runs come from: the derivatives when they hold any."""
    if layout.derivatives and layout.get(scope="derivatives", task=task, suffix="bold",
                                         extension=NIFTI, return_type="id", target="subject"):
        return "derivatives"
    return "all"


def _entities(f) -> dict:
    return {k: v for k, v in f.get_entities().items() if k not in ("extension",)}


def _tag(key: str, value) -> str:
    return f"{SHORT.get(key, key)}-{value}"


def _short(path) -> str:
    return Path(str(path)).name


def _what(code: str, subject: str, task: str, run) -> str:
    return f"sub-{subject} task-{task}" + (f" run {run}" if run is not None else "")


def _differences(files) -> list[str]:
    """The entities whose values differ between ``files``."""
    ents = [_entities(f) for f in files]
    keys = sorted({k for e in ents for k in e})
    return [k for k in keys if len({str(e.get(k)) for e in ents}) > 1]


def _one(files, what: str, code: str, noun: str, fix_missing: str):
    """The single file of ``files``, or an error naming what was found."""
    if len(files) == 1:
        return files[0]
    if not files:
        raise LesionAlignError(f"{what}: no {noun} found; {fix_missing}")
    diff = _differences(files)
    shown = ", ".join("_".join(_tag(k, _entities(f).get(k, "(none)")) for k in diff)
                      or _short(f.path) for f in files)
    keys = [KEY_OF[k] for k in diff if k in KEY_OF]
    others = [k for k in diff if k not in KEY_OF]
    fix = " or ".join(f"set [languages.{code}].{k}" for k in keys)
    if others:
        fix = (fix + " or " if fix else "") + (
            f"set [languages.{code}].filters = {{{others[0]} = \"...\"}}")
    raise LesionAlignError(f"{what}: {len(files)} {noun} files match ({shown}): "
                           f"{fix or 'remove the extra files'} "
                           f"(files: {', '.join(_short(f.path) for f in files)})")


# --------------------------------------------------------------------------- config
def _run_label(run) -> int:
    return 1 if run is None else int(run)


def bids_languages(data_d: dict, langs_d: dict, subjects: tuple, base: Path):
    """The ``[data]`` table and the languages of a ``kind = "bids"`` config.

    Returns ``(data table for a kind = "volume" DataConfig, [LanguageData...])``.
    """
    data_d = dict(data_d)
    if "root" not in data_d or not isinstance(data_d["root"], str) or not data_d["root"]:
        raise LesionAlignError("[data].root is required for kind = 'bids': the folder of the "
                               "BIDS dataset (raw or derivatives)")
    root = Path(os.path.normpath(resolve_path(data_d.pop("root"), base)))
    deriv = data_d.pop("derivatives", None)
    if deriv is not None and not isinstance(deriv, (bool, str, list)):
        raise LesionAlignError(f"[data].derivatives = {deriv!r}: write true, false, a folder "
                               "or a list of folders (relative to [data].root)")
    layout, folders = open_layout(root, deriv)
    strategy = confound_strategy(data_d.get("confounds"))
    if strategy is None:  # left out or false: the non-steady-state volumes still go
        data_d["confounds"] = dict(NON_STEADY_ONLY)
    if not langs_d:
        tasks = layout.get_tasks()
        raise LesionAlignError(f"config: no [languages.<CODE>] section; add one per language "
                               f"with task = one of {tasks} (napari-lesion-align init-config "
                               "writes them)")
    languages, masks, trs = [], [], {}  # trs: task -> RepetitionTime values
    notes: list = []
    for code, ld in langs_d.items():
        lang, lang_masks, lang_trs = _bids_language(
            str(code), ld, layout, subjects, base, "required" if strategy else "found",
            need_masks=not data_d.get("mask"), notes=notes)
        languages.append(lang)
        masks += lang_masks
        trs.update(lang_trs)
    if not any(lang.confounds for lang in languages):
        data_d["confounds"] = strategy  # no fMRIPrep table: nothing to read
        if not data_d.get("dummy_scans"):
            notes.append("BIDS: no fMRIPrep confounds table, so no non-steady-state volume "
                         "is detected; if the runs start with dummy scans, set "
                         "[data].dummy_scans to their number")
    if subjects:
        covered = {s for lang in languages for s in lang.bold}
        lost = [s for s in subjects if s not in covered]
        if lost:
            raise LesionAlignError(
                f"[data].subjects: {lost} have no BOLD run of the configured tasks "
                f"({', '.join(str(ld.get('task')) for ld in langs_d.values())}); subjects "
                f"found: {layout.get_subjects()}")
    _check_tr(data_d, trs)
    if data_d.get("mask"):
        mask_from = "[data].mask"
    else:
        data_d["mask"] = intersect_masks(masks)
        mask_from = f"the intersection of {len(set(masks))} desc-brain masks"
    data_d["kind"] = "volume"
    data_d["bids"] = BidsSource(root=str(root), derivatives=tuple(str(f) for f in folders),
                                mask=mask_from, notes=tuple(notes))
    return data_d, languages


def _check_tr(data_d: dict, trs: dict) -> None:
    """``[data].tr`` from the runs' RepetitionTime (``trs``: task -> the values of its
    runs; every run the same), or checked against it."""
    values = sorted({v for vs in trs.values() for v in vs})
    if len(values) > 1:
        raise LesionAlignError(
            "BIDS: the runs have different RepetitionTime values ("
            + ", ".join(f"task {t}: {sorted(vs)} s" for t, vs in trs.items())
            + "); analyse them in separate configs")
    tr = data_d.get("tr")
    if tr is not None:
        if values and isinstance(tr, (int, float)) and not isinstance(tr, bool) \
                and abs(float(tr) - values[0]) > 1e-6:
            raise LesionAlignError(
                f"[data].tr = {data_d['tr']!r} but the runs' RepetitionTime is {values[0]} s "
                "(their JSON sidecars); remove [data].tr or fix it")
    elif values:
        data_d["tr"] = values[0]
    else:
        raise LesionAlignError("BIDS: no RepetitionTime in the runs' JSON sidecars; set "
                               "[data].tr (seconds)")


def repetition_times(layout, task: str, subjects=None) -> list[float]:
    """The RepetitionTime values of a task's BOLD runs (raw and derivatives sidecars)."""
    kw = {"subject": list(subjects)} if subjects else {}
    from bids.exceptions import TargetError

    try:
        vals = layout.get(task=task, suffix="bold", extension=NIFTI, target="RepetitionTime",
                          return_type="id", **kw)
    except TargetError:  # no sidecar in the dataset has it
        return []
    return sorted({float(v) for v in vals if isinstance(v, (int, float)) and v > 0})


class _Index:
    """Files of one kind (confound tables, brain masks) fetched once, matched to each BOLD
    run by its entities in Python (one pybids query per kind, not per run)."""

    def __init__(self, files):
        self.by_subject: dict = {}
        for f in files:
            e = f.get_entities()
            self.by_subject.setdefault(str(e.get("subject")), []).append((f, e))

    def match(self, ents: dict, keys) -> list:
        out = []
        for f, e in self.by_subject.get(str(ents.get("subject")), []):
            if all(str(e.get(k)) == str(ents[k]) for k in keys if k in ents):
                out.append(f)
        return out


def _bids_language(code, ld, layout, subjects: tuple, base: Path, confounds: str,
                   need_masks: bool, notes: list):
    """One language's files. ``confounds``: ``"required"`` (a strategy is set: every run
    needs its confounds table) or ``"found"`` (the tables that exist, read for their
    non-steady-state volumes only). A subject's missing runs are left out with a note in
    ``notes``; so are the runs of the sessions a ``session`` key leaves out."""
    confounds_mode, with_confounds = confounds, True

    where = f"[languages.{code}]"
    if not isinstance(ld, dict):
        raise LesionAlignError(f"{where}: must be a table")
    bad = set(ld) - set(LANGUAGE_KEYS)
    if bad:
        hint = ("; bold and confounds are found in the BIDS dataset (choose them with task, "
                "space, desc, session, filters and [data].confounds)"
                if bad & {"bold", "confounds"} else "")
        raise LesionAlignError(f"{where}: unknown key(s) {sorted(bad)} for kind = 'bids'; "
                               f"allowed: {sorted(LANGUAGE_KEYS)}{hint}")
    task = ld.get("task")
    tasks = layout.get_tasks()
    if not isinstance(task, str) or not task:
        raise LesionAlignError(f"{where}.task is required: the BIDS task label of this "
                               f"language, one of {tasks}")
    if task not in tasks:
        raise LesionAlignError(f"{where}.task = {task!r}: no such task in the dataset; "
                               f"tasks found: {tasks}")
    query = {"task": task, "suffix": "bold", "extension": NIFTI}
    for key in ("space", "desc", "session"):
        if key in ld:
            if not isinstance(ld[key], str) or not ld[key]:
                raise LesionAlignError(f"{where}.{key} = {ld[key]!r}: write the entity's value "
                                       "as text, e.g. space = \"MNI152NLin2009cAsym\"")
            query[key] = ld[key]
    filters = ld.get("filters", {})
    if not isinstance(filters, dict) or not all(isinstance(v, (str, int)) for v in
                                                filters.values()):
        raise LesionAlignError(f"{where}.filters = {filters!r}: write a table of BIDS "
                               "entities, e.g. {acquisition = \"mb4\"}")
    known = set(layout.get_entities(metadata=False))
    filters = {(ALIASES[k] if k not in known and ALIASES.get(k) in known else k): v
               for k, v in filters.items()}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise LesionAlignError(f"{where}.filters: unknown entities {unknown}; the dataset's "
                               f"entities are {sorted(known)}")
    query.update(filters)
    scope = _scope(layout, task)
    found = layout.get(scope=scope, **query)
    if not found:
        every = layout.get(scope=scope, task=task, suffix="bold", extension=NIFTI)
        seen = {k: sorted({str(_entities(f).get(k)) for f in every} - {"None"})
                for k in ("space", "desc", "session")}
        seen = {k: v for k, v in seen.items() if v}
        raise LesionAlignError(
            f"{where}: no BOLD run of task {task!r} matches "
            f"{ {k: v for k, v in query.items() if k not in ('suffix', 'extension')} }; "
            f"the task's runs have {seen or 'no space, desc or session entities'}")
    by_subject: dict = {}
    for f in found:
        e = f.get_entities()
        by_subject.setdefault(str(e["subject"]), {}).setdefault(_run_label(e.get("run")),
                                                                []).append(f)
    if subjects:  # a listed subject may have another language's task only
        chosen = [s for s in subjects if s in by_subject]
        if not chosen:
            raise LesionAlignError(
                f"{where}: none of [data].subjects {list(subjects)} has BOLD runs of task "
                f"{task!r}; subjects with this task: {sorted(by_subject)}")
    else:
        chosen = sorted(by_subject)
    all_runs = sorted({r for s in chosen for r in by_subject[s]})
    runs = ld.get("runs")
    if runs is not None:
        if not isinstance(runs, list) or not runs or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in runs):
            raise LesionAlignError(f"{where}.runs = {runs!r}: write a list of BIDS run "
                                   f"numbers, e.g. {all_runs}")
        absent = [r for r in runs if r not in all_runs]
        if absent:
            raise LesionAlignError(f"{where}.runs: run(s) {absent} of task {task!r} not found; "
                                   f"runs found: {all_runs}")
    else:
        runs = all_runs
    if "session" in query:  # the runs of the task the chosen session leaves out
        other = layout.get(scope=scope, **{k: v for k, v in query.items() if k != "session"})
        left = sorted({(str(f.get_entities().get("session")), _run_label(f.get_entities()
                                                                          .get("run")))
                       for f in other if str(f.get_entities().get("session")) !=
                       str(query["session"]) and (not subjects or str(
                           f.get_entities().get("subject")) in subjects)})
        if left:
            by_ses: dict = {}
            for ses, r in left:
                by_ses.setdefault(ses, set()).add(r)
            notes.append(
                f"{code}: session = {query['session']!r} uses runs {runs} of task {task!r}; "
                + "; ".join(f"session {k} holds runs {sorted(v)}" for k, v in by_ses.items())
                + " (not used: leave session out when the sessions hold different runs)")
    dscope = "derivatives" if layout.derivatives else "all"
    tables = _Index(layout.get(scope=dscope, task=task, desc="confounds",
                               suffix=["timeseries", "regressors"], extension=".tsv")
                    if with_confounds else [])
    run_masks = _Index(layout.get(scope=dscope, task=task, desc="brain", suffix="mask",
                                  extension=NIFTI) if need_masks else [])
    anat_masks = _Index(layout.get(scope=dscope, datatype="anat", desc="brain",
                                   suffix="mask", extension=NIFTI) if need_masks else [])
    bold, confounds, masks, subject_runs = {}, {}, [], {}
    fix = (f"set [languages.{code}].runs to the runs to use, or list the subjects to use in "
           "[data].subjects")
    for s in chosen:
        paths, conf, have = [], [], []
        missing = [r for r in runs if r not in by_subject[s]]
        if missing:  # the subject keeps its other runs
            present = [r for r in runs if r in by_subject[s]]
            notes.append(f"{code}: sub-{s} has no run {missing} of task {task!r}"
                         + (f"; its runs {present} are used" if present else
                            f"; sub-{s} is left out of {code}"))
            if not present:
                continue
            subject_runs[s] = tuple(present)
        for r in runs:
            if r in missing:
                continue
            what = _what(code, s, task, r)
            f = _one(by_subject[s][r], what, code, "BOLD", fix)
            paths.append(f.path)
            ents = f.get_entities()
            if with_confounds:
                hits = tables.match(ents, RUN_ENTITIES)
                if confounds_mode == "found" and not hits:
                    have.append(False)
                else:
                    c = _one(hits, what, code, "confounds table",
                             "fMRIPrep writes <entities>_desc-confounds_timeseries.tsv next "
                             "to the preprocessed runs; add the derivatives "
                             "([data].derivatives) or remove [data].confounds")
                    conf.append(c.path)
                    have.append(True)
            if need_masks:
                masks.append(_brain_mask(run_masks, anat_masks, f, ents, what, code))
        bold[s] = tuple(paths)
        if with_confounds and all(have):
            confounds[s] = tuple(conf)
        elif with_confounds and any(have):
            notes.append(f"{code}: sub-{s}: {have.count(False)} of {len(have)} runs have no "
                         "fMRIPrep confounds table; no non-steady-state volume is removed "
                         f"from sub-{s}'s {code} runs")
    if not bold:
        raise LesionAlignError(f"{where}: no subject has any of runs {list(runs)} of task "
                               f"{task!r}; runs found: {all_runs}")
    table = {"code": code, "runs": tuple(runs), "bold": bold,
             "annotations": tuple(_annotations(ld.get("annotations"), runs, base, where,
                                               task)),
             "bids": {k: str(v) for k, v in query.items() if k not in ("suffix", "extension")}}
    if confounds:
        table["confounds"] = confounds
    if subject_runs:
        table["subject_runs"] = subject_runs
    for key in ("text_language", "tier", "bold_start_s"):
        if key in ld:
            table[key] = ld[key]

    table.update(events_options(ld, where))
    lang = LanguageData.parse(table, where)
    lang.spaceless  # an unknown language code is an error now, not in the middle of a run
    return lang, masks, {task: repetition_times(layout, task, chosen)}


def _brain_mask(run_masks: _Index, anat_masks: _Index, f, ents: dict, what: str,
                code: str) -> str:
    """The ``desc-brain`` mask of a BOLD run: the run's own (same entities but ``desc``),
    else the subject's anatomical mask in the same space."""
    keys = [k for k in ents if k not in ("desc", "suffix", "extension", "datatype")]
    masks = run_masks.match(ents, keys)
    if not masks:
        masks = anat_masks.match(ents, ("subject", "session", "space"))
    if not masks:
        raise LesionAlignError(
            f"{what}: no brain mask (desc-brain_mask) next to {_short(f.path)} in its space; "
            "set [data].mask to a brain mask (NIfTI) on the runs' grid")
    return _one(masks, what, code, "brain mask", "set [data].mask").path


def intersect_masks(paths) -> str:
    """The intersection of brain masks on one grid, written once into the user cache."""
    import hashlib

    import nibabel as nib
    import numpy as np

    paths = sorted(dict.fromkeys(str(p) for p in paths))
    if not paths:
        raise LesionAlignError("BIDS: no brain mask found; set [data].mask")
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    out = cache_dir() / "bids-masks" / f"mask-{h.hexdigest()}.nii.gz"
    if out.is_file():
        return str(out)
    first = None
    inter = None
    for p in paths:
        try:
            img = nib.load(p)
            data = np.asarray(img.dataobj)
        except Exception as err:
            raise LesionAlignError(f"{p}: cannot read the brain mask ({err}); set "
                                   "[data].mask") from err
        data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
        if data.ndim != 3:
            raise LesionAlignError(f"{p}: a brain mask must be 3D, got shape {data.shape}")
        if first is None:
            first = (p, img)
            inter = np.nan_to_num(data) > 0
        elif data.shape != inter.shape or not np.allclose(img.affine, first[1].affine,
                                                          atol=1e-3):
            raise LesionAlignError(
                f"BIDS: the brain masks are on different grids ({_short(first[0])}: "
                f"{first[1].shape}, {_short(p)}: {data.shape}), e.g. a subject's own space "
                "(space-T1w); choose a template space ([languages.<CODE>].space) or set "
                "[data].mask")
        else:
            inter &= np.nan_to_num(data) > 0
    if not inter.any():
        raise LesionAlignError(f"BIDS: the {len(paths)} brain masks have no voxel in common; "
                               "set [data].mask")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(inter.astype(np.uint8), first[1].affine), str(tmp))
    os.replace(tmp, out)
    return str(out)


# --------------------------------------------------------------------------- annotations
def _run_number(name: str) -> tuple[int, str, str] | None:
    """``(number, digits, template)`` of an annotation file name: the number after
    ``run-`` / ``section`` / ``run``, else the last number; the template has ``{run}``
    (``{run:02d}`` for zero-padded digits) in its place."""
    stem_end = len(name)
    for pat in (r"run-?(\d+)", r"section[-_]?(\d+)", r"(\d+)(?!.*\d)"):
        m = re.search(pat, name[:stem_end], flags=re.IGNORECASE)
        if m:
            digits = m.group(1)
            field = "{run:0%dd}" % len(digits) if len(digits) > 1 and digits[0] == "0" \
                else "{run}"
            tmpl = name[:m.start(1)] + field + name[m.end(1):]
            return int(digits), digits, tmpl
    return None


def _annotation_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES
                  and not p.name.startswith("."))


def _annotations(value, runs, base: Path, where: str, task: str) -> list[str]:
    """One annotation path per run from a template, a folder, a table or a list."""
    fix = (f"give {where}.annotations: a template with {{run}} (e.g. "
           f"\"annotation/lppEN_section{{run}}.TextGrid\"), a folder of one file per run "
           "(matched by the run number in the file names), one table with a run column, or "
           "a list of files in run order")
    if value is None or value == "" or value == []:
        raise LesionAlignError(f"{where}.annotations: the word annotations of task {task!r} "
                               f"(runs {list(runs)}) are not set; {fix}")
    if isinstance(value, list):
        if not all(isinstance(v, str) and v for v in value) or len(value) != len(runs):
            raise LesionAlignError(f"{where}.annotations: {len(value)} entries for runs "
                                   f"{list(runs)}; {fix}")
        return [resolve_path(v, base) for v in value]
    if not isinstance(value, str):
        raise LesionAlignError(f"{where}.annotations = {value!r}: {fix}")
    if "{" in value:
        out = []
        for r in runs:
            try:
                p = Path(resolve_path(value.format(run=r), base))
            except (KeyError, IndexError, ValueError) as err:
                raise LesionAlignError(f"{where}.annotations = {value!r}: cannot fill in "
                                       f"{{run}} ({err}); the only placeholder is {{run}} "
                                       "(e.g. {run} or {run:02d})") from err
            if not p.is_file():
                near = ([q.name for q in _annotation_files(p.parent)]
                        if p.parent.is_dir() else [])
                raise LesionAlignError(
                    f"{where}.annotations: run {r}: {str(p)!r} not found; "
                    + (f"the folder holds {near[:12]}" if near else
                       f"the folder {str(p.parent)!r} holds no annotation file"))
            out.append(str(p))
        return out
    p = Path(resolve_path(value, base))
    if p.is_file():
        return [str(p)] * len(runs)  # one table for every run (a run column)
    if not p.is_dir():
        raise LesionAlignError(f"{where}.annotations = {value!r}: {str(p)!r} is neither a "
                               f"file nor a folder; {fix}")
    by_run: dict = {}
    for q in _annotation_files(p):
        n = _run_number(q.name)
        if n is not None:
            by_run.setdefault(n[0], []).append(q)
    out = []
    for r in runs:
        hits = by_run.get(r, [])
        if len(hits) != 1:
            found = {k: [q.name for q in v] for k, v in sorted(by_run.items())}
            raise LesionAlignError(
                f"{where}.annotations: folder {str(p)!r}: "
                + (f"no file for run {r}" if not hits else
                   f"{len(hits)} files for run {r} ({', '.join(q.name for q in hits)})")
                + f"; files by run number: {found or 'none'}; give a template with {{run}} "
                  "instead")
        out.append(str(hits[0]))
    return out


# --------------------------------------------------------------------------- init-config
def describe(root, derivatives=None) -> dict:
    """What a BIDS dataset holds, per task: subjects, runs, sessions, spaces, descs, TR,
    whether confound tables and brain masks exist."""
    layout, folders = open_layout(root, derivatives)
    out = {"root": str(Path(root)), "derivatives": [str(f) for f in folders],
           "name": _description(Path(root)).get("Name", ""), "tasks": {}}
    for task in layout.get_tasks():
        scope = _scope(layout, task)
        files = layout.get(scope=scope, task=task, suffix="bold", extension=NIFTI)
        if not files:
            continue
        ents = [f.get_entities() for f in files]

        def values(key):
            return sorted({str(e[key]) for e in ents if e.get(key) is not None})

        runs = sorted({_run_label(e.get("run")) for e in ents})
        per_subject: dict = {}  # subject -> {session or "": [runs]}
        for e in ents:
            ses = str(e.get("session") or "")
            per_subject.setdefault(str(e["subject"]), {}).setdefault(ses, set()).add(
                _run_label(e.get("run")))
        per_subject = {s: {k: sorted(v) for k, v in sorted(d.items())}
                       for s, d in sorted(per_subject.items())}
        # the same run number in two sessions of a subject: a session must be chosen
        repeated = any(len(sum(d.values(), [])) != len(set(sum(d.values(), [])))
                       for d in per_subject.values())
        where = "derivatives" if layout.derivatives else "all"
        conf = bool(layout.get(scope=where, task=task, desc="confounds",
                               suffix=["timeseries", "regressors"], extension=".tsv"))
        masks = bool(layout.get(scope=where, task=task, desc="brain", suffix="mask",
                                extension=NIFTI))
        trs = repetition_times(layout, task)
        out["tasks"][task] = {
            "subjects": values("subject"), "runs": runs, "sessions": values("session"),
            "spaces": values("space"), "descs": values("desc"), "scope": scope,
            "resolutions": values("res") or values("resolution"), "confounds": conf, "masks": masks,
            "tr": trs, "per_subject": per_subject, "sessions_repeat_runs": repeated}
    if not out["tasks"]:
        raise LesionAlignError(f"{root}: no BOLD run (*_bold.nii[.gz]) found; is this the root "
                               "of a BIDS dataset?")
    return out


def _language_code(task: str, taken: set) -> str:
    """A language code for a task label: its trailing capitals (lppEN -> EN), else the
    label's letters and digits."""
    m = re.search(r"([A-Z]{2,3})$", task)
    code = m.group(1) if m else re.sub(r"[^A-Za-z0-9]", "", task) or "L"
    base, i = code, 2
    while code in taken:
        code, i = f"{base}{i}", i + 1
    return code


def _text_language(code: str) -> tuple[str, str]:
    """A guess of the language tag for a code, and a comment."""
    from langcodes.data_dicts import LIKELY_SUBTAGS

    try:
        return normalize_language(code), "from the task label; CHECK"
    except LesionAlignError:
        pass
    likely = LIKELY_SUBTAGS.get("und-" + code.upper()) if len(code) == 2 else None
    if likely:
        return likely.split("-")[0], (f"'{code}' is a country code, its main language is "
                                      "assumed; CHECK")
    return "", "FILL IN the language of the text (BCP-47, e.g. \"en\", \"fr\", \"zh\")"


def _annotation_roots(root: Path) -> list[Path]:
    """Folders where a dataset's word annotations may be, in the order looked at."""
    tops = [root]
    if _description(root).get("DatasetType") == "derivative":
        tops += [p for p in (root.parent, root.parent.parent) if p != root]
    out = []
    for top in tops:
        for name in ANNOTATION_FOLDERS:
            for cand in (top / name, top / name.capitalize()):
                if cand.is_dir() and cand not in out:
                    out.append(cand)
    return out


def find_annotations(root, task: str, code: str, runs) -> tuple[str | None, list[str]]:
    """A template with ``{run}`` for a task's annotations found next to the dataset
    (``stimuli/``, ``sourcedata/``, ``annotation/``...): files whose path names the task
    or whose folder is named by the language code, one per run. Returns ``(template or
    None, other candidate templates)``."""
    groups: dict = {}
    for top in _annotation_roots(Path(root)):
        for dirpath, dirnames, filenames in os.walk(top):
            depth = len(Path(dirpath).relative_to(top).parts)
            if depth >= 4:
                dirnames[:] = []
            d = Path(dirpath)
            names_task = task.lower() in str(d).lower() or code.lower() in \
                [p.lower() for p in d.relative_to(top).parts]
            for name in filenames:
                if Path(name).suffix.lower() not in ANNOTATION_SUFFIXES or \
                        name.endswith("_events.tsv"):
                    continue
                if not (names_task or task.lower() in name.lower()):
                    continue
                n = _run_number(name)
                if n is not None:
                    groups.setdefault(str(d / n[2]), set()).add(n[0])
    order = {".textgrid": 0, ".tsv": 1, ".csv": 2}
    complete = sorted((t for t, got in groups.items() if set(runs) <= got),
                      key=lambda t: (order.get(Path(t).suffix.lower(), 9), len(t), t))
    if not complete:
        return None, sorted(groups)
    return complete[0], complete[1:]


def _toml(v) -> str:
    return json.dumps(v, ensure_ascii=False)


def _rel(path, start: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive
        return Path(path).resolve().as_posix()


def init_config(root, out, derivatives=None) -> str:
    """The text of a starting TOML config for a BIDS dataset (paths relative to the folder
    of ``out``); lines the user must check or fill in are marked ``CHECK`` / ``FILL IN``."""
    root = Path(root).expanduser().resolve()
    here = Path(out).expanduser().resolve().parent
    info = describe(root, derivatives)
    lines = [
        f"# napari-lesion-align config for the BIDS dataset {root.name}",
        "# written by `napari-lesion-align init-config`; see docs/configuration.md",
        "# (\"BIDS datasets\"). Lines marked CHECK are guesses, FILL IN must be filled in.",
        f"name = {_toml(_name(info['name'] or root.name))}",
        "",
        "[data]",
        'kind = "bids"',
        f"root = {_toml(_rel(root, here))}",
    ]
    if info["derivatives"]:
        rels = [Path(os.path.relpath(d, root)).as_posix() for d in info["derivatives"]]
        lines.append("# BOLD runs, brain masks and confound tables are read from the "
                     "derivatives (relative to root)")
        lines.append(f"derivatives = {_toml(rels)}")
    elif _description(root).get("DatasetType") == "derivative":
        lines.append("derivatives = false  # the root is a derivatives dataset: its runs, "
                     "masks and confound tables are used")
    else:
        lines.append("derivatives = false  # no derivatives found: the raw runs are used")
    trs = sorted({t for t in (t for v in info["tasks"].values() for t in v["tr"])})
    if len(trs) == 1:
        lines.append(f"# tr = {trs[0]}  (read from the runs' RepetitionTime)")
    else:
        lines.append(f"tr = 2.0  # FILL IN: the repetition time in seconds (found {trs})")
    if any(v["confounds"] for v in info["tasks"].values()):
        lines.append("# fMRIPrep confound tables found: nilearn's \"simple\" strategy (motion "
                     "24, WM/CSF, cosine drifts);")
        lines.append("# or \"scrubbing\", \"compcor\", \"ica_aroma\", a table of "
                     "load_confounds arguments, or false")
        lines.append('confounds = "simple"')
        lines.append("# (fMRIPrep's non-steady-state volumes are regressed out whatever "
                     "confounds says)")
    else:
        lines.append("# no fMRIPrep confound tables found: no confounds are regressed out and "
                     "no non-steady-state volume is detected;")
        lines.append("# if the runs start with dummy scans, give their number:")
        lines.append("# dummy_scans = 0")
    if not all(v["masks"] for v in info["tasks"].values()):
        lines.append('mask = ""  # FILL IN: a brain mask (NIfTI) on the runs\' grid '
                     "(no desc-brain_mask found)")
    else:
        lines.append("# mask: the intersection of the runs' desc-brain masks in the chosen "
                     "space; or set mask = \"...\"")
    subs = sorted({s for v in info["tasks"].values() for s in v["subjects"]})
    lines.append(f"# subjects: every subject with runs of a language's task ({len(subs)} "
                 f"found); to use some only:")
    lines.append(f"# subjects = {_toml(subs[:6])}")
    taken: set = set()
    for task, t in info["tasks"].items():
        code = _language_code(task, taken)
        taken.add(code)
        lines += ["", f"# task {task}: {len(t['subjects'])} subject(s), runs {t['runs']}"
                  + (f", sessions {t['sessions']}" if t["sessions"] else "")
                  + (f", spaces {t['spaces']}" if t["spaces"] else "")]
        lines += _subject_lines(t)
        lines += [f"[languages.{code}]  # CHECK the language code (used in file names)",
                  f"task = {_toml(task)}"]
        if len(t["spaces"]) > 1:
            pick = next((s for s in t["spaces"] if s.startswith("MNI")), t["spaces"][0])
            lines.append(f"space = {_toml(pick)}  # CHECK: also found "
                         f"{[s for s in t['spaces'] if s != pick]}")
        elif t["spaces"]:
            lines.append(f"# space = {_toml(t['spaces'][0])}  (the only space)")
        if len(t["descs"]) > 1:
            pick = "preproc" if "preproc" in t["descs"] else t["descs"][0]
            lines.append(f"desc = {_toml(pick)}  # CHECK: found {t['descs']}")
        if len(t["resolutions"]) > 1:
            lines.append(f"filters = {{res = {_toml(t['resolutions'][0])}}}  # CHECK: "
                         f"found resolutions {t['resolutions']} (res-<label>)")
        if len(t["sessions"]) > 1 and t["sessions_repeat_runs"]:
            lines.append(f"session = {_toml(t['sessions'][0])}  # CHECK: the sessions "
                         f"{t['sessions']} repeat run numbers; one session per config")
        tag, note = _text_language(code)
        lines.append(f"text_language = {_toml(tag)}  # {note}")
        tmpl, others = find_annotations(root, task, code, t["runs"])
        session = t["sessions"][0] if t["sessions_repeat_runs"] else None
        runs = (sorted({r for d in t["per_subject"].values() for r in d.get(session, [])})
                if session else t["runs"])
        events = find_events(root, task, runs, t["subjects"], session)
        if tmpl is None and events is not None:
            value = (_rel(events["template"], here) if "template" in events
                     else [_rel(f, here) for f in events["files"]])
            lines.append(f"annotations = {_toml(value)}  # BIDS events.tsv "
                         f"({events['where']}); CHECK")
            if events.get("filter"):
                col, val, found = events["filter"]
                lines.append(f"events_filter = {{{col} = {_toml(val)}}}  # CHECK: the rows "
                             f"of the words; {col} holds {found}")
        elif tmpl is not None:
            lines.append(f"annotations = {_toml(_rel(tmpl, here).replace('%7B', '{'))}"
                         "  # found next to the data; CHECK" +
                         (f" (also found {[_rel(o, here) for o in others[:3]]})"
                          if others else ""))
        else:
            lines.append('annotations = ""  # FILL IN: word annotations, one per run: a '
                         "template with {run} (e.g. \"stimuli/" + task
                         + "_run-{run}.TextGrid\"), a folder, or a table with a run column"
                         + (f"; partial matches: {[_rel(o, here) for o in others[:3]]}"
                            if others else ""))
    lines += ["", "# [model], [encoding], [lesions]...: see docs/configuration.md", ""]
    return "\n".join(lines)


def _name(text: str) -> str:
    """An analysis name from a dataset name: letters, digits, ``_ . -``, no dash at
    either end."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "analysis"


def _subject_lines(t: dict) -> list[str]:
    """Comment lines of what each subject holds, when the subjects differ or have
    sessions."""
    per = t["per_subject"]
    shapes = {json.dumps(d) for d in per.values()}
    lines = []
    if per and (len(shapes) > 1 or len(next(iter(per.values()))) > 1):
        for s, d in per.items():
            have = sorted({r for rs in d.values() for r in rs})
            missing = [r for r in t["runs"] if r not in have]
            ses = ("; ".join(f"ses-{k}: runs {v}" for k, v in d.items()) if any(d)
                   else f"runs {have}")
            lines.append(f"#   sub-{s}: {ses}"
                         + (f" (no run {missing}: its other runs are used)" if missing
                            else ""))
    return lines


def find_events(root, task: str, runs, subjects, session: str | None = None) -> dict | None:
    """A template with ``{run}`` of a task's BIDS events files that hold words: the
    top-level ``task-<task>_run-<N>_events.tsv`` (shared by every subject), else the first
    subject's. Returns ``{"template", "where", "filter"}`` (``filter``: ``(column, value,
    values)`` when the rows are of several ``trial_type`` values), or ``None``."""
    root = Path(root)
    tops = [root]
    if _description(root).get("DatasetType") == "derivative":
        tops += [p for p in (root.parent, root.parent.parent) if p != root]
    cands = []
    for top in tops:
        cands.append((sorted(top.glob(f"task-{task}_*events.tsv")), "shared by the subjects"))
        for s in list(subjects)[:1]:
            ses = f"_ses-{session}" if session else ""
            cands.append((sorted(top.glob(f"sub-{s}/**/sub-{s}{ses}_*task-{task}_*events.tsv")),
                          f"sub-{s}'s, assumed the same for every subject"))
    for files, where in cands:
        by_run: dict = {}
        for f in files:
            m = re.search(r"_run-(\d+)_", f.name)
            if m:
                by_run.setdefault(int(m.group(1)), []).append(f)
        if not files or not all(len(by_run.get(r, [])) == 1 for r in runs):
            continue
        first = by_run[runs[0]][0]
        try:
            wcol = events_word_column(first)
        except LesionAlignError:
            continue
        if wcol is None:
            continue
        digits = re.search(r"_run-(\d+)_", first.name).group(1)
        field = "{run:0%dd}" % len(digits) if digits.startswith("0") and len(digits) > 1 \
            else "{run}"
        name = re.sub(r"_run-\d+_", f"_run-{field}_", first.name, count=1)
        paths = [by_run[r][0] for r in runs]
        out = {"template": str(first.parent / name), "where": where}
        if any(str(first.parent / name).format(run=r) != str(p) for r, p in zip(runs, paths)):
            out = {"files": [str(p) for p in paths], "where": where}  # e.g. per session
        import pandas as pd

        df = pd.read_csv(first, sep="\t", dtype=str, keep_default_na=False)
        if "trial_type" in df.columns and df["trial_type"].nunique() > 1:
            counts = df[df[wcol].str.strip() != ""]["trial_type"].value_counts()
            out["filter"] = ("trial_type", str(counts.index[0]),
                             sorted(df["trial_type"].unique().tolist()))
        return out
    return None


def write_init_config(root, out, derivatives=None, force: bool = False) -> Path:
    """Write :func:`init_config`'s text to ``out`` (never over an existing file unless
    ``force``)."""
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise LesionAlignError(f"{out}: exists; choose another --out or add --force to "
                               "replace it")
    text = init_config(root, out, derivatives)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
