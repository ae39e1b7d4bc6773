"""The analysis' stages, as functions over units whose inputs and outputs are on disk.

::

    conditions  the lesion plan built on the model (or read back from units/conditions.json)
    features    one unit per language x condition x run: word features, content-addressed in
                the feature store (needs the model)
    fits        one unit per subject x language: load and clean that subject's runs, fit
                every condition, write its maps, then its record (units/fit/...json); subjects
                with the same run lengths are fitted together up to [encoding] stack_mb,
                in units cut for the executor's parallelism (:func:`cut_units`;
                :mod:`.executor` runs them here or on a Dask cluster)
    ceiling     one unit per language ([statistics] ceiling): every subject's cleaned BOLD
                on the runs they all heard, one subject at a time, into the noise ceiling's
                maps (units/ceiling/...json); skipped with a warning for one subject or
                differing runs
    group       per language: group statistics (parametric or sign-flip permutations,
                :class:`GroupTests`), r / ceiling, categories, the layer-sweep table,
                summary.tsv and result.json (last)

A unit whose record (fits) or file (features) exists is skipped: a rerun resumes. Memory
follows the unit (one subject, or one budget-sized group of subjects), never the study.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..analysis.controls import WORD_RATE
from ..analysis import ceiling as _ceiling, inference as _inference
from ..analysis.display import (CEILING_STATS, GROUP_TEST, NORMALISED, PERMUTATION_TEST,
                                SUBJECT_STATS)
from ..base.errors import (Cancelled, LesionAlignError, UnitFailed, describe_chars, input_error,
                           unit_failed)
from ..lesions.plan import Condition, ConditionSpec
from ..results.names import CEILING_CONDITION, ceiling_file, group_file, map_file
from .engine import ConditionSet, Engine, ModelInfo, Progress, ProgressFn, word_features
from ..analysis import controls as ctl, statistics as an
from ..analysis.controls import control_specs as specs, project_out, word_rate_regressors
from ..analysis.plausibility import alignment_warnings
from ..features import extraction as _extraction
from ..features.extraction import NoTokenError, words_to_trs
from ..lesions import masks as _masks
from ..lesions.plan import LesionBuilder, LesionPlan
from ..model.anatomy import describe_model
from ..results.result import (_read_values, assemble_result, fill_drops, subject_rows,
                              summary_group_rows, write_values)
from .fits import (Fitter, StackedBold, cleaned_series, cleaning_record, spill_folder,
                   spilled_series, subject_maps, write_maps)
from .sources import open_source
from .store import FeatureStore, OutputFolder, as_recorded


def make_engine(config, out_root, progress: Progress | None = None, model=None,
                source=None) -> Engine:
    """The engine of an analysis whose output folder is ``out_root`` (already claimed by
    :meth:`.store.OutputFolder.open`): its data source (opened here unless given), the
    feature store, the condition sets (the analysis', then the source's own)."""

    progress = progress or Progress(None, None)
    if source is None:
        source = open_source(config, cancel=progress.cancel_fn)
    eng = Engine(config, source, FeatureStore(config.compute.feature_store),
                 OutputFolder(out_root), progress, model=model)
    eng.sets = [ConditionSet("analysis", LesionPlan.of(config), config.model.layer)]
    eng.sets += source.condition_sets(config)
    return eng


@contextmanager
def _timed(eng: Engine, key: str):
    """Add the seconds the block takes (however it ends) to ``eng.timings[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        eng.timings[key] = eng.timings.get(key, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------- conditions
def stage_conditions(eng: Engine) -> None:
    """Every condition set's conditions, with the lesions' keys.

    The first run builds the lesions on the model and records them (labels, keys, sizes,
    specs) in ``units/conditions.json``; a rerun reads that record and builds nothing
    (:func:`ensure_lesions` builds them again, the same way, only when a feature unit is
    missing).
    """
    with _timed(eng, "lesions_s"):
        _conditions(eng)


def _conditions(eng: Engine) -> None:
    record = eng.out.read_record("", "conditions")
    if record is not None:
        info = ModelInfo(**record["model"])
        sets = {s["name"]: s for s in record["sets"]}
        loaded = []
        for cs in eng.sets:
            rec = (sets.get(cs.name) or {}).get("conditions")
            specs = cs.plan.specs(info.n_layers)
            if rec is None or [s.describe() for s in specs] != [_spec_part(r) for r in rec]:
                break
            loaded.append([Condition(s, None, r["key"], recorded=r) for s, r in zip(specs, rec)])
        else:
            eng.info = info
            for cs, conds in zip(eng.sets, loaded):
                cs.conditions = conds
            return
    _build(eng)


def _build(eng: Engine) -> None:
    """Make the lesions of every condition set on the model; record them."""
    lm = eng.lm()
    eng.info = ModelInfo.of(lm)
    builder = LesionBuilder(lm, eng.source.stimuli)
    for cs in eng.sets:
        eng.progress.check()
        built = cs.plan.build(lm, eng.source.stimuli, progress=eng.progress,
                              cancel=eng.cancel, builder=builder)
        if cs.conditions and [c.key for c in cs.conditions] != [c.key for c in built]:
            raise LesionAlignError(
                f"{eng.out.root}: the lesions made now differ from those its units were "
                "computed with (the model or the importance text changed); rerun with --force")
        cs.conditions = built
    eng.out.write_record("", "conditions", {
        "model": vars(eng.info),
        "sets": [{"name": cs.name, "layer": cs.layer,
                  "conditions": [c.describe() for c in cs.conditions]} for cs in eng.sets]})


def ensure_lesions(eng: Engine) -> None:
    """The lesions themselves (not only their keys), for units that must run the model."""
    if any(c.lesion is None and c.key != "intact" for cs in eng.sets for c in cs.conditions):
        _build(eng)


def _spec_part(recorded: dict) -> dict:
    keys = ConditionSpec("x", "intact").describe().keys()
    return {k: recorded.get(k) for k in keys}


# --------------------------------------------------------------------------- features
def _feature_keys(eng: Engine) -> dict:
    """{(set name, code, run index, label): store key} of every feature unit."""
    out = {}
    opts = eng.config.features.content()  # the token budget changes memory, not features
    for cs in eng.sets:
        for code, stim in eng.source.stimuli.items():
            for i, words in enumerate(stim.runs):
                for c in cs.conditions:
                    out[(cs.name, code, i, c.label)] = eng.store.key(
                        eng.info.identity, c.key, cs.layer, opts, stim.spaceless, words)
    return out


def stage_features(eng: Engine) -> None:
    """Compute every missing feature unit (language x condition x run) into the store.

    Per run, the intact pass stores the inputs of the blocks where lesions start, so a
    lesion confined to blocks >= l only recomputes blocks l.. (exact); a lesion entirely
    above the chosen layer has the intact features.
    """
    with _timed(eng, "features_s"):
        _features(eng)


def _features(eng: Engine) -> None:

    keys = _feature_keys(eng)
    missing = {k: v for k, v in keys.items() if not eng.store.has(v)}
    eng.counts["features"] = {"computed": len(set(missing.values())),
                              "reused": len(set(keys.values()) - set(missing.values()))}
    if not missing:
        return
    ensure_lesions(eng)
    lm = eng.lm()

    anatomy = describe_model(lm.model)
    opts = eng.config.features
    n_hidden = lm.n_layers + 1
    todo = sorted({(cs_name, code, i) for (cs_name, code, i, _) in missing},
                  key=lambda t: ([c.name for c in eng.sets].index(t[0]), t[1], t[2]))
    done_keys: set = set()
    for step, (cs_name, code, i) in enumerate(todo):
        cs = next(c for c in eng.sets if c.name == cs_name)
        stim = eng.source.stimuli[code]
        words = stim.runs[i]
        target = cs.layer if cs.layer >= 0 else n_hidden + cs.layer
        need = [c for c in cs.conditions
                if (cs_name, code, i, c.label) in missing
                and keys[(cs_name, code, i, c.label)] not in done_keys]
        lesioned = [c for c in need if c.lesion is not None]
        reusable = [c for c in lesioned if 1 <= c.lesion.first_layer < target]
        intact_key = keys[(cs_name, code, i, "intact")]
        intact_missing = any(c.lesion is None for c in need)
        starts = sorted({c.lesion.first_layer for c in reusable})
        record = starts if (intact_missing or len(reusable) >= 2) else []
        cache: dict = {}
        frac = step / len(todo)

        def prog(f, m, c_label):
            eng.progress(frac + f / len(todo), f"features {code} run {i + 1}, {c_label}: {m}")

        def extract(label, **reuse):
            try:
                return next(iter(_extraction.extract_word_features(
                    lm.model, lm.tokenizer, list(words.words), [cs.layer], opts,
                    spaceless=stim.spaceless, sentence_ids=words.sentence_ids,
                    progress=lambda f, m: prog(f, m, label), cancel=eng.cancel,
                    **reuse).values()))
            except NoTokenError as err:  # the annotation's file and time, one format
                j = err.index
                raise input_error(
                    words.source or f"{code} run {i + 1}",
                    f"word {j + 1} ({words.onsets[j]:.3f}-{words.offsets[j]:.3f} s)",
                    f"the word {err.word!r} ({describe_chars(err.word)}) gives the "
                    "model's tokenizer no token",
                    "remove the word or fix its characters in the annotation") from None

        intact = None
        if intact_missing or record or any(c.lesion.first_layer >= target for c in lesioned):
            if record or intact_missing or not eng.store.has(intact_key):
                intact = extract("intact", **({"record": record, "cache": cache}
                                              if record else {}))
                eng.store.save(intact_key, intact)
            else:
                intact = eng.store.load(intact_key)
            done_keys.add(intact_key)
        for c in lesioned:
            eng.progress.check()
            k = keys[(cs_name, code, i, c.label)]
            if k in done_keys or eng.store.has(k):
                continue
            first = c.lesion.first_layer
            if first >= target:
                wf = intact  # the lesion acts above the chosen layer
            else:
                reuse = {"cache": cache, "start_layer": first} if first in record else {}
                with _masks.apply_lesion(lm.model, c.lesion, anatomy):
                    wf = extract(c.label, **reuse)
            eng.store.save(k, wf)
            done_keys.add(k)
        del cache



# --------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class FitJob:
    """Subjects of one language fitted together (their units are still one per subject)."""

    language: str
    subjects: tuple
    todo: tuple  # the subjects whose maps are missing
    #: also leave the subjects' cleaned BOLD for the language's noise ceiling
    #: (:func:`ceiling_spills`)
    spill: bool = False


def unit_name(subject: str, language: str) -> str:
    return f"sub-{subject}_lang-{language}"


#: with parallel slots (Dask workers, or a cluster's worker threads), the fits are cut into
#: at least this many units per slot when the study has enough subject x language pairs:
#: a slot that finishes early takes another unit instead of idling (docs/benchmarks.md)
UNITS_PER_SLOT = 2


def cut_units(classes: list, budget: float, parallelism: int = 1) -> list[list[tuple]]:
    """The fit units (the one rule): per class ``(subjects, bytes)`` -- the subjects of one
    language with the same run lengths, in order, and one subject's cleaned BOLD in bytes --
    its groups of subjects, fitted together.

    A group holds at most ``budget // bytes`` subjects (at least one): its stacked BOLD fits
    ``[encoding] stack_mb``. In one process (``parallelism`` 1) each class is filled in
    order up to that cap: the fewest units, each sharing the work that does not depend on
    the voxels (the features' decompositions) among its subjects. With P > 1 slots the cap
    is also the study's subject x language pairs // (:data:`UNITS_PER_SLOT` x P) (at least
    one), so that the study makes at least 2P units when it has 2P pairs, and each class is
    split into groups of sizes differing by at most one (no short last unit to idle on).
    Deterministic: the same classes, budget and parallelism give the same units.
    """
    n_pairs = sum(len(subjects) for subjects, _ in classes)
    spread = max(1, n_pairs // (UNITS_PER_SLOT * parallelism)) if parallelism > 1 else None
    out = []
    for subjects, size in classes:
        subjects = tuple(subjects)
        cap = max(1, int(budget // size)) if size > 0 else max(1, len(subjects))
        if spread is None:
            out.append([subjects[i:i + cap] for i in range(0, len(subjects), cap)])
            continue
        k = min(cap, spread)
        n = -(-len(subjects) // k)  # groups
        q, extra = divmod(len(subjects), n) if n else (0, 0)
        groups, a = [], 0
        for i in range(n):
            b = a + q + (i < extra)
            groups.append(subjects[a:b])
            a = b
        out.append(groups)
    return out


def fit_jobs(eng: Engine, parallelism: int = 1) -> tuple[list[FitJob], list[str]]:
    """The fit jobs for an executor running ``parallelism`` units at once (:func:`cut_units`),
    and the units already done.

    Deterministic: a run resumed with the same cut (the same budget and parallelism) fits
    the same groups as an uninterrupted one (a group's done subjects are fitted again with
    it, their maps not written: bit-identical maps). Records are per subject x language,
    so a unit done under another cut (another number of workers) counts as done: when a
    done subject was fitted in a group the current cut does not have, the subjects left
    are cut anew by the same rule (maps within float32 rounding of an uninterrupted run).
    """
    src = eng.source
    budget = eng.config.encoding.stack_mb * 2**20
    V = src.space.n_features if src.space is not None else 1
    classes = []  # (language, subjects, bytes of one subject's cleaned BOLD)
    for code in src.stimuli:
        by_lengths: dict = {}
        for s in src.subjects_of(code):
            by_lengths.setdefault(tuple((i, r.n_vols) for i, r in zip(
                run_indices(src, s, code), src.runs(s, code))), []).append(s)
        for lengths, subjects in by_lengths.items():
            # float32 cleaned BOLD, every voxel (an upper bound)
            classes.append((code, subjects, sum(n for _, n in lengths) * V * 4))
    done = {}
    for code, subjects, _ in classes:
        for s in subjects:
            rec = _fit_record(eng, s, code)
            if rec is not None:
                done[(code, s)] = tuple(rec.get("fitted_with") or ())
    cut = cut_units([(subjects, size) for _, subjects, size in classes], budget, parallelism)
    if any(done.get((code, s), g) != g
           for (code, _, _), groups in zip(classes, cut) for g in groups for s in g):
        cut = cut_units([([s for s in subjects if (code, s) not in done], size)
                         for code, subjects, size in classes], budget, parallelism)
    jobs, reused = [], []
    for (code, subjects, _), groups in zip(classes, cut):
        reused += [unit_name(s, code) for s in subjects if (code, s) in done]
        for g in groups:
            todo = tuple(s for s in g if (code, s) not in done)
            if todo:
                jobs.append(FitJob(code, tuple(g), todo))
    return jobs, reused


def run_indices(src, subject: str, code: str) -> list[int]:
    """The positions among the language's runs of the runs a subject has (a subject may
    lack some: :meth:`.config.LanguageData.runs_of`)."""
    return [i if getattr(r, "index", None) is None else r.index
            for i, r in enumerate(src.runs(subject, code))]


def _fit_inputs(eng: Engine, subject: str, code: str) -> dict:
    return {"data": eng.source.inputs(subject, code),
            "conditions": [[c.label, c.key] for c in eng.analysis.conditions],
            "controls": [c.describe() for c in control_specs(eng)]}


def control_specs(eng: Engine) -> list:
    """The analysis' controls (:func:`.controls.control_specs` of ``[controls]``)."""
    return specs(getattr(eng.config, "controls", None))


def _fit_record(eng: Engine, subject: str, code: str) -> dict | None:
    """The record of a done fit unit (made from the same inputs, its files present)."""
    rec = eng.out.fit_done_with(unit_name(subject, code), eng.source.inputs(subject, code))
    if rec is None or rec.get("inputs") != as_recorded(_fit_inputs(eng, subject, code)):
        return None
    return rec if all((eng.out.root / f).is_file() for f in rec.get("files", [])) else None


class _TRFeatures:
    """TR-grid features of one language, per condition and control (kept for the
    language's jobs)."""

    def __init__(self, eng: Engine):
        self.eng = eng
        self.code = None
        self.cache: dict = {}
        self.pad = max(int(d) for d in eng.config.encoding.delays)

    def _cached(self, code: str, key, make) -> list:
        """``make()`` once per language and key (the cache holds one language)."""
        if code != self.code:
            self.code, self.cache = code, {}
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _to_trs(self, code: str, word_vectors: list) -> list:
        """Per run, word vectors on the TR grid (with the delays' history rows)."""
        eng = self.eng
        stim = eng.source.stimuli[code]
        enc = eng.config.encoding
        return [words_to_trs(wf, w.onsets, n, eng.source.tr, enc.downsample, stim.bold_start_s,
                             self.pad)
                for wf, w, n in zip(word_vectors, stim.runs, eng.source.n_vols(code))]

    def get(self, code: str, label: str) -> list:
        return self._cached(code, label, lambda: self._to_trs(
            code, word_features(self.eng, self.eng.analysis, code, label)))

    def control(self, code: str, spec, shift: int = 0) -> list:
        """Per run, the TR features of a control (:mod:`.controls`); ``shift``: which of a
        shift null's shifts."""
        import zlib

        eng = self.eng
        n_vols = eng.source.n_vols(code)
        if spec.kind == "above":
            return self.get(code, "intact")
        if spec.kind == "shift":
            return [ctl.circular_shift(X, ctl.shift_amounts(n, spec.n_shifts)[shift], self.pad)
                    for X, n in zip(self.get(code, "intact"), n_vols)]
        stim = eng.source.stimuli[code]
        if spec.kind == "wordrate":
            return self._cached(code, (spec.label,), lambda: [
                ctl.word_rate(w.onsets, n, eng.source.tr, stim.bold_start_s, self.pad)
                for w, n in zip(stim.runs, n_vols)])
        # shuffled: seeded by the analysis' seed, the language and the run
        return self._cached(code, (spec.label,), lambda: self._to_trs(code, [
            ctl.shuffled_words(wf, seed=[eng.config.seed, zlib.crc32(code.encode()), i])
            for i, wf in enumerate(word_features(eng, eng.analysis, code, "intact"))]))


def run_fit_job(eng: Engine, job: FitJob, trf: _TRFeatures, progress: ProgressFn) -> list[str]:
    """Fit every condition for the job's subjects; write the maps and records of ``todo``.

    The subjects' cleaned BOLD is put side by side into one preallocated array (one
    decomposition per fold for all of them), so the memory is the job's stacked BOLD plus
    one subject's raw runs. A failure raises :class:`~.errors.UnitFailed` naming the
    units and the condition (cancelling raises :class:`~.errors.Cancelled`).
    """
    state = {"condition": None, "written": []}
    try:
        return _fit_job(eng, job, trf, progress, state)
    except (Cancelled, KeyboardInterrupt, UnitFailed):
        raise
    except Exception as err:
        names = [unit_name(s, job.language) for s in job.todo]
        raise unit_failed([n for n in names if n not in state["written"]],
                          state["condition"], err) from err


def _fit_job(eng: Engine, job: FitJob, trf: _TRFeatures, progress: ProgressFn,
             state: dict) -> list[str]:
    code = job.language
    idx = run_indices(eng.source, job.subjects[0], code)  # the job's subjects have the same runs
    ctrls = control_specs(eng)
    t0 = time.perf_counter()
    bold = StackedBold.load(eng, job, progress, any(c.kind == "above" for c in ctrls),
                            spill=job.spill)
    conds = eng.analysis.conditions
    fit = Fitter(eng, job, bold, idx, len(conds) + sum(max(1, c.n_shifts) for c in ctrls),
                 progress)
    r_maps: dict = {s: {} for s in job.subjects}

    def store(label: str, res_of: dict) -> None:
        for s in job.subjects:
            r_maps[s][label] = bold.r_map(s, res_of[s] if bold.width[s] else None)

    for c in conds:
        eng.progress.check()
        state["condition"] = c.label
        store(c.label, fit(c.label, trf.get(code, c.label), c.kind))
    for spec in ctrls:  # the controls (aboveWordRate last: it changes Y in place)
        eng.progress.check()
        state["condition"] = spec.label
        if spec.kind == "shift":
            fits = [fit(spec.label, trf.control(code, spec, k), spec.kind)
                    for k in range(spec.n_shifts)]
            res_of = {s: np.mean([f[s] for f in fits], axis=0) for s in fits[0]}
        else:
            if spec.kind == "above":
                rates = trf.control(code, WORD_RATE)
                _regress_word_rate(eng, job, bold, rates=[rates[i] for i in idx])
            res_of = fit(spec.label, trf.control(code, spec), spec.kind)
        store(spec.label, res_of)
    bold.Y = None
    state["condition"] = None
    return _write_fits(eng, job, bold, fit, r_maps, time.perf_counter() - t0, state)


def _write_fits(eng: Engine, job: FitJob, bold, fit, r_maps: dict, seconds: float,
                state: dict) -> list[str]:
    """The maps and the record of every subject of the job still to do."""
    code, src = job.language, eng.source
    conds, ctrls = eng.analysis.conditions, control_specs(eng)
    labels = [c.label for c in conds] + [c.label for c in ctrls]
    lesions = {c.label for c in conds if c.kind != "intact"}
    written = []
    for s in job.todo:
        files = write_maps(eng, s, code, subject_maps(r_maps[s], labels, lesions))
        width, valid, kept = bold.width[s], bold.valid[s], bold.kept[s]
        rec = {"subject": s, "language": code, "seconds": seconds / len(job.subjects),
               "fitted_with": list(job.subjects), "n_valid": width,
               "n_excluded": int(valid.size - width), "cv": fit.cv, "files": files,
               "condition_seconds": {k: round(v / len(job.subjects), 3)
                                     for k, v in fit.spent.items()},
               "inputs": _fit_inputs(eng, s, code)}
        censored = {str(i + 1): int((~k).sum()) for i, k in enumerate(kept) if not k.all()}
        if censored:  # run number (1-based) -> volumes censored
            rec["censored_volumes"] = censored
        if hasattr(src, "cleaning"):  # what the cleaning removed, per run
            rec["cleaning"] = cleaning_record(src.cleaning(s, code), kept)
        if not width:
            rec["note"] = "every voxel/region is constant or NaN"
        eng.out.write_record("fit", unit_name(s, code), rec)
        written.append(unit_name(s, code))
        state["written"] = written
    return written




def _regress_word_rate(eng: Engine, job: FitJob, bold, rates: list) -> None:
    """aboveWordRate: project every subject's cleaned runs in the stacked BOLD (in place) off
    the word rate at the FIR delays (:func:`.controls.word_rate_regressors`); with one run,
    the word rate joins the nuisance regressors of the outer folds."""
    delays = [int(d) for d in eng.config.encoding.delays]
    pad = max(delays)
    Y, starts = bold.Y, bold.starts
    for s in job.subjects:
        first, width = bold.first[s], bold.width[s]
        if not width:
            continue
        cols = np.arange(first, first + width)
        for i, k in enumerate(bold.kept[s]):
            Q = word_rate_regressors(rates[i][: pad + len(k)], delays, pad,
                                     bold.cleaning[(s, i)], keep=k)
            if k.all():
                block = Y[starts[i]:starts[i + 1], first:first + width]
                block[:] = project_out(block, Q)
            else:
                rows = np.flatnonzero(k) + starts[i]
                Y[np.ix_(rows, cols)] = project_out(Y[np.ix_(rows, cols)], Q)
            if len(bold.kept[s]) == 1:
                bold.nuisance[s] = np.column_stack([bold.nuisance[s], Q])


# --------------------------------------------------------------------------- noise ceiling
@dataclass(frozen=True)
class CeilingJob:
    """The noise ceiling of one language: every subject's cleaned BOLD on the same runs."""

    language: str
    subjects: tuple


def ceiling_unit(code: str) -> str:
    return f"lang-{code}"


#: float64 arrays of (time x voxels) a ceiling unit holds per voxel chunk: the running sum,
#: one subject's standardised series and its cleaned series
CEILING_ARRAYS = 3


def _runs_text(runs: tuple) -> str:
    return (f"runs {', '.join(str(i + 1) for i, _ in runs)} "
            f"({', '.join(str(n) for _, n in runs)} volumes)") if runs else "no runs"


def ceiling_plan(eng: Engine) -> tuple[list[CeilingJob], list[str], dict]:
    """The ceiling units (``[statistics] ceiling``): ``(jobs to run, units done, {language:
    why it is skipped})``. A language is skipped, with one warning, when it has one subject
    or when its subjects' runs differ (other runs, or other lengths): the inter-subject
    correlation needs the same time points for everyone."""
    if not eng.config.statistics.ceiling:
        return [], [], {}
    src = eng.source
    jobs, done, skipped = [], [], {}
    for code in src.stimuli:
        subjects = tuple(src.subjects_of(code))
        if len(subjects) < 2:
            skipped[code] = (f"noise ceiling skipped: {len(subjects)} subject (the "
                             "inter-subject correlation needs at least 2 who heard the same "
                             "runs)")
            continue
        runs = {s: tuple((i, r.n_vols) for i, r in zip(run_indices(src, s, code),
                                                         src.runs(s, code)))
                for s in subjects}
        first = runs[subjects[0]]
        odd = [s for s in subjects if runs[s] != first]
        if odd:
            shown = "; ".join(f"sub-{s}: {_runs_text(runs[s])}" for s in odd[:3])
            more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
            skipped[code] = (f"noise ceiling skipped: the subjects' runs differ (sub-"
                             f"{subjects[0]}: {_runs_text(first)}; {shown}{more}); the "
                             "inter-subject correlation needs the same runs, of the same "
                             "length, for every subject")
            continue
        if _ceiling_record(eng, code, subjects) is not None:
            done.append(ceiling_unit(code))
        else:
            jobs.append(CeilingJob(code, subjects))
    return jobs, done, skipped


def ceiling_spills(eng: Engine, ceilings: list, fits: list) -> set[str]:
    """The languages whose fit units leave their subjects' cleaned BOLD for the noise
    ceiling (:meth:`.fits.StackedBold.spill`; the ceiling then reads it instead of loading
    and cleaning every subject again, twice per voxel chunk): those with a ceiling and fits
    to do, while the spills (float32, volumes x mask columns per subject, kept until the
    ceiling is written) take at most half the free disk of the output folder. The others'
    ceilings read the BOLD themselves (on Dask beside the fits)."""
    import shutil

    todo = {j.language for j in fits}
    langs = [j for j in ceilings if j.language in todo]
    if not langs:
        return set()
    src = eng.source
    V = src.space.n_features if src.space is not None else 1
    need = sum(len(j.subjects) * sum(r.n_vols for r in src.runs(j.subjects[0], j.language))
               * V * 4 for j in langs)
    try:
        free = shutil.disk_usage(eng.out.units).free
    except OSError:
        return set()
    return {j.language for j in langs} if need <= free / 2 else set()


def _ceiling_inputs(eng: Engine, code: str, subjects) -> dict:
    return {"subjects": list(subjects),
            "data": [eng.source.inputs(s, code) for s in subjects]}


def _ceiling_record(eng: Engine, code: str, subjects) -> dict | None:
    """The record of a done ceiling unit (the same subjects and inputs, its files present)."""
    try:
        rec = eng.out.read_record("ceiling", ceiling_unit(code))
    except OSError:
        return None
    if not isinstance(rec, dict) or rec.get("inputs") != as_recorded(
            _ceiling_inputs(eng, code, subjects)):
        return None
    return rec if all((eng.out.root / f).is_file() for f in rec.get("files", [])) else None


def ceiling_chunk(n_times: int, n_voxels: int, budget_bytes: float, held: int = 0) -> int:
    """Voxels per chunk of a ceiling unit: :data:`CEILING_ARRAYS` float64 (time x voxels)
    arrays, plus ``held`` subjects' cleaned series kept for the second pass, within the
    memory budget (``[encoding] stack_mb``), at least one voxel."""
    per_voxel = max(1, n_times) * 8 * (CEILING_ARRAYS + held)
    return int(max(1, min(n_voxels, budget_bytes // per_voxel)))


def ceiling_layout(n_times: int, n_voxels: int, n_subjects: int,
                   budget_bytes: float) -> tuple[int, bool]:
    """How a ceiling unit walks the voxels: ``(voxels per chunk, hold)``. Streaming, each
    subject's BOLD is loaded and cleaned twice per chunk (the sum pass and the
    leave-one-out pass); holding, the chunk's cleaned series of every subject are kept
    from the first pass to the second (smaller chunks, once per chunk). Whichever loads and
    cleans each subject fewer times; streaming when equal (less memory)."""
    stream = ceiling_chunk(n_times, n_voxels, budget_bytes)
    hold = ceiling_chunk(n_times, n_voxels, budget_bytes, held=n_subjects)
    if -(-n_voxels // hold) < 2 * -(-n_voxels // stream):
        return hold, True
    return stream, False


def run_ceiling_job(eng: Engine, job: CeilingJob, progress: ProgressFn) -> list[str]:
    """The noise ceiling of one language (:mod:`.analysis.ceiling`): per voxel chunk (sized
    by the memory budget, :func:`ceiling_layout`), every subject's cleaned BOLD added to a
    running sum one subject at a time, then the leave-one-out pass (on the series kept from
    the first pass when the layout holds them, else cleaned again). When the fits left
    every subject's cleaned series (:func:`ceiling_spills`) both passes read those instead
    of the runs (the same values) and the spills are deleted at the end. Writes the ceiling,
    ISC and reliability maps, then the unit's record. A failure raises
    :class:`~.errors.UnitFailed`."""
    name = ceiling_unit(job.language)
    try:
        return _ceiling_job(eng, job, progress)
    except (Cancelled, KeyboardInterrupt, UnitFailed):
        raise
    except Exception as err:
        raise unit_failed([name], None, err) from err


def _ceiling_job(eng: Engine, job: CeilingJob, progress: ProgressFn) -> list[str]:
    code, src = job.language, eng.source
    t0 = time.perf_counter()
    T = sum(r.n_vols for r in src.runs(job.subjects[0], code))
    V = src.space.n_features
    chunk, hold = ceiling_layout(T, V, len(job.subjects),
                                 eng.config.encoding.stack_mb * 2**20)
    # the fits' spills (ceiling_spills), where every subject has one: read twice per chunk
    spilled = all(spilled_series(eng, s, code, np.arange(0), T) is not None
                  for s in job.subjects)
    if spilled:
        chunk, hold = ceiling_chunk(T, V, eng.config.encoding.stack_mb * 2**20), False

    def series(s, cols):
        y = spilled_series(eng, s, code, cols, T) if spilled else None
        return cleaned_series(eng, s, code, cols) if y is None else y

    starts = list(range(0, V, chunk))
    rho = np.zeros(V)
    loo = np.zeros((len(job.subjects), V))
    steps = (1 if hold else 2) * len(starts) * len(job.subjects)
    step = 0
    kept = {}  # holding: a chunk's cleaned series, from the sum pass to the second
    for a in starts:
        cols = np.arange(a, min(V, a + chunk))
        acc = _ceiling.IscAccumulator(T, cols.size)
        for s in job.subjects:
            eng.progress.check()
            progress(step / steps, f"noise ceiling {code}: subject {s} (sum)")
            step += 1
            y = series(s, cols)
            acc.add(y, who=f"subject {s}")
            if hold:
                kept[s] = y
            del y
        for i, s in enumerate(job.subjects):
            eng.progress.check()
            if hold:
                y = kept.pop(s)
            else:
                progress(step / steps, f"noise ceiling {code}: subject {s} (leave one out)")
                step += 1
                y = series(s, cols)
            loo[i, cols] = acc.leave_one_out(y, who=f"subject {s}")
            del y
        rho[cols] = acc.pairwise()
        del acc
    nc = _ceiling.ceiling_from(rho, loo, T)
    files = []
    for stat, v in zip(CEILING_STATS, (nc.ceiling, nc.isc, nc.q)):
        fname = ceiling_file(src.space, code, stat)
        write_values(src.space, eng.out.root / fname, v)
        files.append(fname)
    eng.out.write_record("ceiling", ceiling_unit(code), {
        "language": code, "n_subjects": len(job.subjects), "n_times": T,
        "voxel_chunks": len(starts), "held": hold, "from_fits": spilled,
        "seconds": time.perf_counter() - t0, "files": files,
        "inputs": _ceiling_inputs(eng, code, job.subjects)})
    shutil.rmtree(spill_folder(eng.out, code), ignore_errors=True)
    return [ceiling_unit(code)]


# --------------------------------------------------------------------------- group
@dataclass
class _Group:
    """What the group stage gathers over the languages (:func:`stage_group`)."""

    eng: Engine
    files: dict = field(default_factory=dict)  # (subject, language, label, stat) -> name
    group_files: dict = field(default_factory=dict)  # (language, label, stat) -> name
    n_valid: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    group_rows: list = field(default_factory=list)
    tests: dict = field(default_factory=dict)  # (label, language) -> test, for categories
    means: dict = field(default_factory=dict)  # label -> group mean r (one language)
    ceiling_rows: dict = field(default_factory=dict)  # (language, label) -> summary columns

    def __post_init__(self):
        conds = self.eng.analysis.conditions
        self.cat_sets = self.eng.analysis.plan.selection_specs([c.spec for c in conds])
        self.needed = {lbl for shared, spec in self.cat_sets.values()
                       for lbl in [shared, *spec.values()] if lbl}
        self.draws: dict = {}  # lesion -> its random draws' labels
        for c in conds:
            if c.control_of:
                self.draws.setdefault(c.control_of, []).append(c.label)
        self.last_draw = {v[-1]: k for k, v in self.draws.items()}
        # runs left out of the data, and why
        self.warnings += list(getattr(self.eng.source, "notes", []))
        self.test = GroupTests(self.eng)
        _, _, skipped = ceiling_plan(self.eng)
        self.warnings += [f"{code}: {why}" for code, why in skipped.items()]

    def write(self, code, label, stat, v) -> None:
        src = self.eng.source
        name = group_file(src.space, code, label, stat)
        write_values(src.space, self.eng.out.root / name, v)
        self.group_files[(code, label, stat)] = name

    def stack(self, code: str, subjects: list, label: str) -> np.ndarray:
        """Subjects x voxels: the r maps of one condition, read back from their files."""
        src, out = self.eng.source, self.eng.out.root
        return np.stack([_read_values(src.space, out / self.files[(s, code, label, "r")])
                         for s in subjects])


def _group_mean(B: np.ndarray) -> np.ndarray:
    """The subjects' mean r per voxel, over the subjects with a value there (NaN where
    none has one)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a voxel no subject has
        return np.nanmean(B, axis=0)


class GroupTests:
    """The group tests ``[statistics]`` asks for, one interface for the stage: parametric
    (:mod:`.statistics`: t, p, FDR q) or sign-flip permutations (:mod:`.inference`: t and
    the family-wise p, held as the test's p and q so that every later rule -- significance,
    categories, LPI -- reads it unchanged)."""

    def __init__(self, eng: Engine):
        self.config = eng.config.statistics
        self.permutation = self.config.inference == "permutation"
        self.stats = PERMUTATION_TEST if self.permutation else GROUP_TEST
        self.mask_img = getattr(eng.source.space, "mask_img", None)
        les = eng.config.lesions
        self.label = test_label(eng.config)
        self.alpha, self.correction = les.alpha, les.correction

    def _flip(self, diff: np.ndarray, within=None, rel=None) -> an.PairedTest:
        c = self.config
        res = _inference.sign_flip_test(diff, method=c.method, n_perm=c.n_perm, seed=c.seed,
                                        within=within, mask_img=self.mask_img,
                                        cluster_forming_p=c.cluster_forming_p)
        return an.PairedTest(res.t, res.p_fwe, res.p_fwe, res.n_subjects, rel)

    def alignment(self, r: np.ndarray) -> an.PairedTest:
        """r > 0 across subjects."""
        if not self.permutation:
            return an.alignment_test(r)
        return self._flip(np.asarray(r, dtype=np.float64))

    def paired(self, A: np.ndarray, B: np.ndarray, within=None) -> an.PairedTest:
        """A > B across subjects (a drop of B below A)."""
        if not self.permutation:
            return an.paired_t(A, B, within=within)
        A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
        return self._flip(A - B, within, an.relative_drop(A, B))

    def beyond_random(self, lesion_r, draws_sum, draws_means: list, within):
        """Where a lesion's drop is beyond its random draws' (:func:`.statistics.
        beyond_random`; with permutations, the paired difference draws' mean - lesion
        sign-flipped)."""
        if not self.permutation:
            return an.beyond_random(lesion_r, draws_sum, draws_means, within, self.alpha,
                                    self.correction)
        res = self._flip(draws_sum / len(draws_means) - lesion_r, within)
        beyond = an.significant(res, self.alpha, self.correction)
        beyond &= np.all(np.stack(draws_means) > lesion_r.mean(0), axis=0)
        return res, beyond

    def write(self, write, code: str, label: str, res, suffix: str = "") -> None:
        """The test's maps (``t``, ``p``, ``q`` or ``t``, ``pfwe``) with ``suffix``."""
        for stat in self.stats:
            write(code, label, stat + suffix, res.p if stat == "pfwe" else getattr(res, stat))


def test_label(config) -> str:
    """The group inference in words, for summary.tsv, result.json and the closing summary:
    ``"parametric t, FDR q < 0.05"`` or ``"permutation max-t, FWE p < 0.05, 5000 sign
    flips"``."""
    les, st = config.lesions, config.statistics
    if st.inference == "permutation":
        return (f"permutation {st.method}, FWE p < {les.alpha:g}, {st.n_perm} sign flips"
                + (f" (clusters at p < {st.cluster_forming_p:g})"
                   if st.method == "cluster" else ""))
    return (f"parametric t, {'FDR q' if les.correction == 'fdr' else 'uncorrected p'} "
            f"< {les.alpha:g}")


def stage_group(eng: Engine):
    """Group statistics per language, categories, LPI and the sweep and summary rows.
    
    Reads the subjects' r maps back from their files, one language at a time, and writes
    the group maps. Returns the :class:`~.result.AlignmentResult` (its maps read lazily);
    the caller writes its tables and ``result.json``."""

    les = eng.config.lesions
    g = _Group(eng)
    langs = list(eng.source.stimuli)
    for code in langs:
        _group_language(g, code)
    categories, lpis = an.category_maps(g.cat_sets, g.tests, langs, les.alpha, les.correction,
                                        les.min_relative_drop)
    for L, label, v in lpis:
        g.write(L, label, "lpi", v)
    return assemble_result(eng.source, eng.out.root, eng.analysis.conditions,
                           control_specs(eng), files=g.files, group_files=g.group_files,
                           n_valid=g.n_valid, categories=categories,
                           summary=g.rows + g.group_rows, fits=g.fits, warnings=g.warnings)


def _read_fits(g: _Group, code: str, subjects: list) -> None:
    """The fit records of a language's subjects: their maps, sizes, times and notes."""
    eng, src = g.eng, g.eng.source
    for s in subjects:
        rec = eng.out.read_record("fit", unit_name(s, code))
        g.n_valid[(s, code)] = rec["n_valid"]
        g.fits[f"{s}/{code}"] = {k: rec[k] for k in ("seconds", "condition_seconds",
                                                     "fitted_with", "n_excluded", "cv",
                                                     "note", "censored_volumes",
                                                     "cleaning") if k in rec}
        if "note" in rec:
            g.warnings.append(f"subject {s}, {code}: {rec['note']}; excluded")
        for c in eng.analysis.conditions:
            for stat in SUBJECT_STATS[:1] if c.kind == "intact" else SUBJECT_STATS:
                g.files[(s, code, c.label, stat)] = map_file(src.space, s, code, c.label, stat)
        for c in control_specs(eng):
            g.files[(s, code, c.label, "r")] = map_file(src.space, s, code, c.label, "r")


def _group_language(g: _Group, code: str) -> None:
    """One language: the intact model's group test, each lesion's and control's, the
    random draws' comparison, the summary rows."""

    eng = g.eng
    les, src = eng.config.lesions, eng.source
    conds, ctrls = eng.analysis.conditions, control_specs(eng)
    subjects = src.subjects_of(code)
    _read_fits(g, code, subjects)
    intact = g.stack(code, subjects, "intact")
    ok = np.array([np.isfinite(row).any() for row in intact])
    tested = len(conds) > 1 or bool(ctrls)  # lesions or controls: group tests
    grouped = tested and ok.sum() >= 2
    if tested and not grouped:
        g.warnings.append(f"{code}: group statistics need at least 2 subjects with data; "
                          "skipped")
    aligned = None
    n_sig, n_beyond = {}, {}
    if grouped:
        aligned = _intact_test(g, code, intact[ok])
        n_sig["intact"] = int(aligned.sum())
    means = _lesion_tests(g, code, subjects, intact, ok, grouped, aligned, n_sig, n_beyond)
    for c in ctrls:  # the nulls and baselines: the model above each (or above 0)
        eng.progress.check()
        B = g.stack(code, subjects, c.label)
        means[c.label] = subject_rows(g.rows, subjects, code, c.label, B, g.n_valid, "control")
        if ok.any():
            g.means[c.label] = _group_mean(B[ok])
        if ok.sum() >= 2:
            res = (g.test.alignment(B[ok]) if c.test == "positive"
                   else g.test.paired(intact[ok], B[ok]))
            g.test.write(g.write, code, c.label, res)
            n_sig[c.label] = int(an.significant(res, les.alpha, les.correction).sum())
        del B
    fill_drops(g.rows, code, subjects, means, g.draws)
    _normalise(g, code, subjects)
    if len(subjects) > 1:
        rows = summary_group_rows(g.rows, code, [c.label for c in conds]
                                  + [c.label for c in ctrls], n_sig, n_beyond)
        for r in rows:
            if r["n_significant"] != "":
                r["inference"] = g.test.label
            r.update(g.ceiling_rows.get((code, r["condition"]), {}))
        g.group_rows += rows
    g.means = {}


def _normalise(g: _Group, code: str, subjects: list) -> None:
    """The language's noise ceiling (its unit's maps, when it ran) and each condition's
    group mean r normalised by it, where the ceiling is reliably above 0; their summary
    columns (median ceiling and median r / ceiling over the reliable voxels)."""
    eng = g.eng
    rec = _ceiling_record(eng, code, subjects) if eng.config.statistics.ceiling else None
    if rec is None:
        return
    src, out = eng.source, eng.out.root
    for stat in CEILING_STATS:
        g.group_files[(code, CEILING_CONDITION, stat)] = ceiling_file(src.space, code, stat)
    ceiling = _read_values(src.space, out / ceiling_file(src.space, code, "ceiling"))
    q = _read_values(src.space, out / ceiling_file(src.space, code, "qceiling"))
    reliable = _ceiling.reliable_of(ceiling, q, eng.config.lesions.alpha)
    n_rel = int(reliable.sum())
    c_med = float(np.median(ceiling[reliable])) if n_rel else float("nan")
    for label, mean in g.means.items():
        v = _ceiling.normalised(mean, ceiling, reliable)
        g.write(code, label, NORMALISED, v)
        vals = v[np.isfinite(v)]
        g.ceiling_rows[(code, label)] = {
            "n_reliable": n_rel, "ceiling_median": c_med,
            "norm_r_median": float(np.median(vals)) if len(vals) else float("nan")}


def _intact_test(g: _Group, code: str, intact: np.ndarray) -> np.ndarray:
    """The intact model's group test (its maps, the power and plausibility warnings); the
    voxels where it aligns."""

    les, src = g.eng.config.lesions, g.eng.source
    t0 = g.test.alignment(intact)
    g.test.write(g.write, code, "intact", t0)
    aligned = an.responsive(t0, les.alpha, les.correction)
    unit = "voxel" if src.space.kind == "volume" else "region"
    g.warnings += _power_warnings(code, len(intact), int(aligned.sum()), les, unit,
                                  g.test.label)
    g.warnings += alignment_warnings(code, src.space, aligned)
    return aligned


def _lesion_tests(g: _Group, code: str, subjects: list, intact: np.ndarray, ok: np.ndarray,
                  grouped: bool, aligned, n_sig: dict, n_beyond: dict) -> dict:
    """Every condition's summary rows and, with a group, its paired test against the intact
    model and its random draws' comparison; the conditions' group means."""

    eng = g.eng
    les = eng.config.lesions
    means = {}
    held: dict = {}  # lesion -> its r (until its last draw), draws' sum and group means
    for c in eng.analysis.conditions:
        eng.progress.check()
        B = intact if c.label == "intact" else g.stack(code, subjects, c.label)
        means[c.label] = subject_rows(g.rows, subjects, code, c.label, B, g.n_valid, c.kind)
        if c.kind != "random" and ok.any():
            g.means[c.label] = _group_mean(B[ok])
        if grouped and c.label != "intact":
            res = g.test.paired(intact[ok], B[ok], within=aligned)
            g.test.write(g.write, code, c.label, res)
            g.write(code, c.label, "reldrop", res.rel_drop)
            n_sig[c.label] = int(an.significant(res, les.alpha, les.correction).sum())
            if c.label in g.needed:
                g.tests[(c.label, code)] = res
            if c.label in g.draws:
                held[c.label] = {"r": B[ok], "sum": np.zeros_like(B[ok]), "means": []}
            elif c.control_of in held:
                h = held[c.control_of]
                h["sum"] += B[ok]
                h["means"].append(B[ok].mean(0))
                if c.label in g.last_draw:
                    h = held.pop(c.control_of)
                    beyond = _beyond_random(code, c.control_of, h, aligned, les, g.write,
                                            g.test)
                    n_beyond[c.control_of] = int(beyond.sum())
                    if (c.control_of, code) in g.tests:
                        g.tests[(c.control_of, code)].beyond = beyond
        del B
    return means


#: fewer subjects with data than this: the group tests are called underpowered
MIN_POWERED_SUBJECTS = 5


def _power_warnings(code: str, n_subjects: int, n_aligned: int, les, unit: str,
                    label: str | None = None) -> list[str]:
    """Why a language's lesion tests and category maps may be empty, and what would help."""
    out = []
    test = (f"{'FDR-corrected ' if les.correction == 'fdr' else ''}p < {les.alpha:g}, "
            f"{n_subjects} subjects")
    if label is not None and label.startswith("permutation"):
        test = f"{label}, {n_subjects} subjects"
    if n_aligned == 0:
        out.append(f"{code}: no {unit} passes the intact model's group test ({test}), so "
                   f"no lesion can be tested there: the lesion maps and category maps of "
                   f"{code} are empty. More subjects, a larger [lesions] alpha or "
                   "correction = \"none\" would help")
    elif n_subjects < MIN_POWERED_SUBJECTS:
        out.append(f"{code}: only {n_subjects} subjects with data: the group tests have little "
                   f"power ({n_aligned} {unit}s pass the intact test, {test}); empty or small "
                   f"category maps may mean too few subjects rather than no effect "
                   f"({MIN_POWERED_SUBJECTS} or more recommended)")
    return out


def _beyond_random(code: str, label: str, held: dict, aligned: np.ndarray, les, write,
                   test: GroupTests | None = None) -> np.ndarray:
    """Where a lesion's drop is beyond its random draws' (:func:`.statistics.beyond_random`:
    ``held`` holds the lesion's r, its draws' sum and group means); writes the maps
    ``tvsrandom``, ``pvsrandom``, ``qvsrandom`` and ``beyondrandom`` (1 where both hold, 0
    elsewhere)."""
    if test is None:  # the parametric test at the [lesions] level
        res, beyond = an.beyond_random(held["r"], held["sum"], held["means"], aligned,
                                       les.alpha, les.correction)
        for stat in GROUP_TEST:
            write(code, label, f"{stat}vsrandom", getattr(res, stat))
    else:
        res, beyond = test.beyond_random(held["r"], held["sum"], held["means"], aligned)
        test.write(write, code, label, res, "vsrandom")
    write(code, label, "beyondrandom", beyond.astype(np.float32))
    return beyond
