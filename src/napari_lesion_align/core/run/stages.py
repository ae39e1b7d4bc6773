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
    group       per language: group statistics, categories, the layer-sweep table, summary.tsv
                and result.json (last)

A unit whose record (fits) or file (features) exists is skipped: a rerun resumes. Memory
follows the unit (one subject, or one budget-sized group of subjects), never the study.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..analysis.controls import WORD_RATE
from ..analysis.display import GROUP_TEST, SUBJECT_STATS
from ..base.errors import Cancelled, LesionAlignError, UnitFailed, unit_failed
from ..lesions.plan import Condition, ConditionSpec
from .engine import ConditionSet, Engine, ModelInfo, Progress, ProgressFn, word_features


def make_engine(config, out_root, progress: Progress | None = None, model=None,
                source=None) -> Engine:
    """The engine of an analysis whose output folder is ``out_root`` (already claimed by
    :meth:`.store.OutputFolder.open`): its data source (opened here unless given), the
    feature store, the condition sets (the analysis', then the source's own)."""
    from .sources import open_source
    from ..lesions.plan import LesionPlan
    from .store import FeatureStore, OutputFolder

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
    from ..lesions.plan import LesionBuilder

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
    from ..base.errors import describe_chars, input_error
    from ..features.extraction import NoTokenError, extract_word_features
    from ..lesions.masks import apply_lesion

    keys = _feature_keys(eng)
    missing = {k: v for k, v in keys.items() if not eng.store.has(v)}
    eng.counts["features"] = {"computed": len(set(missing.values())),
                              "reused": len(set(keys.values()) - set(missing.values()))}
    if not missing:
        return
    ensure_lesions(eng)
    lm = eng.lm()
    from ..model.anatomy import describe_model

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
                return next(iter(extract_word_features(
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
                with apply_lesion(lm.model, c.lesion, anatomy):
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
    from ..analysis.controls import control_specs as specs

    return specs(getattr(eng.config, "controls", None))


def _fit_record(eng: Engine, subject: str, code: str) -> dict | None:
    """The record of a done fit unit (made from the same inputs, its files present)."""
    from .store import as_recorded

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
        from ..features.extraction import words_to_trs

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

        from ..analysis import controls as ctl

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
    from ..analysis import statistics as an
    from ..data.bold import check_subject_runs, clean_run, cleaning_regressors, valid_columns
    from ..encoding.ridge import cross_validated_r
    from ..results.names import map_file
    from ..results.result import write_values

    cfg, src = eng.config, eng.source
    enc = cfg.encoding
    delays = [int(d) for d in enc.delays]
    pad = max(delays)
    code = job.language
    lengths = [r.n_vols for r in src.runs(job.subjects[0], code)]
    idx = run_indices(src, job.subjects[0], code)  # the job's subjects have the same runs
    starts = np.r_[0, np.cumsum(lengths)]
    V = src.space.n_features if src.space is not None else None
    Y = None
    valid, width, first, kept = {}, {}, {}, {}
    nuisance = {}  # one run: its cleaning regressors, for the outer folds (cross_validated_r)
    cleaning = {}  # (subject, run index) -> cleaning regressors (aboveWordRate needs them)
    ctrls = control_specs(eng)
    need_cleaning = any(c.kind == "above" for c in ctrls)
    col = 0
    t0 = time.perf_counter()
    for s in job.subjects:
        eng.progress.check()
        progress(0.0, f"subject {s}, {code}: loading and cleaning")
        runs = src.runs(s, code)
        raw = [run.load() for run in runs]
        # the NaN-volume rule (bold.censored_volumes): mostly-NaN volumes are censored, a
        # mostly-NaN run, or a run without signal next to runs with data, is an error
        kept[s] = check_subject_runs(raw, [run.source for run in runs])
        ok = valid_columns([R[k] for R, k in zip(raw, kept[s])])  # NaN / constant: excluded
        valid[s] = ok
        width[s] = int(ok.sum())
        first[s] = col
        if Y is None:
            V = V or ok.size
            Y = np.empty((int(starts[-1]), V * len(job.subjects)), dtype=np.float32)
        for i, (run, R) in enumerate(zip(runs, raw)):
            if width[s]:
                cleaned = clean_run(R[:, ok], src.tr, cfg.cleaning, run.confounds,
                                    keep=kept[s][i])
                block = Y[starts[i]:starts[i + 1], col:col + width[s]]
                if kept[s][i].all():
                    block[:] = cleaned
                else:  # censored rows: 0, left out of this subject's fit
                    block[:] = 0.0
                    block[kept[s][i]] = cleaned
                if len(runs) == 1 or need_cleaning:
                    cleaning[(s, i)] = cleaning_regressors(len(R), src.tr, cfg.cleaning,
                                                           run.confounds, keep=kept[s][i])
                if len(runs) == 1:
                    nuisance[s] = cleaning[(s, i)]
            raw[i] = None
            eng.progress.check()
        del raw
        col += width[s]
    # subjects fitted together share their kept volumes (usually all of them: one group)
    groups: dict = {}
    for s in job.subjects:
        if width[s]:
            key = b"".join(np.packbits(k).tobytes() for k in kept[s])
            groups.setdefault(key, []).append(s)
    r_maps: dict = {s: {} for s in job.subjects}
    cv = None
    conds = eng.analysis.conditions
    n_fits = len(conds) + sum(max(1, c.n_shifts) for c in ctrls)
    done = [0]
    spent: dict = {}  # label -> seconds of its fits (all the job's subjects)

    def fit(label: str, X_all: list) -> dict:
        """Fit one feature set for every subject of the job: {subject: r over valid}."""
        nonlocal cv
        res_of: dict = {}
        t_fit = time.perf_counter()
        for gi, members in enumerate(groups.values()):
            keep = kept[members[0]]
            censored = not all(k.all() for k in keep)
            if len(groups) == 1 and not censored:
                Yv = Y[:, :col]  # a view: no copy
            else:
                rows = np.concatenate([np.flatnonzero(k) + starts[i]
                                       for i, k in enumerate(keep)])
                cols = np.concatenate([np.arange(first[s], first[s] + width[s])
                                       for s in members])
                Yv = Y[np.ix_(rows, cols)]
            X_runs = [X_all[i][: pad + n] for i, n in zip(idx, lengths)]
            nuis = None
            if len(lengths) == 1:  # per subject's columns (the confounds are the subject's)
                nuis, a = [], 0
                for s in members:
                    if nuis and np.array_equal(nuis[-1][2], nuisance[s]):  # no confounds
                        nuis[-1] = (nuis[-1][0], a + width[s], nuis[-1][2])
                    else:
                        nuis.append((a, a + width[s], nuisance[s]))
                    a += width[s]
            who = (f"subject {members[0]}" if len(members) == 1
                   else f"subjects {members[0]}-{members[-1]}")
            frac0 = (done[0] + gi / len(groups)) / n_fits
            step = 1 / (n_fits * len(groups))
            res = cross_validated_r(
                X_runs, Yv, delays, enc.alphas, pad_before=pad, n_blocks=enc.n_blocks,
                score=enc.score, dtype=np.dtype(enc.dtype), backend=enc.backend,
                run_lengths=[int(k.sum()) for k in keep],
                keep=keep if censored else None, nuisance=nuis,
                progress=lambda f, m, who=who, frac0=frac0, step=step: progress(
                    frac0 + step * f, f"{who}, {code}, {label}: {m}"),
                cancel=eng.cancel)
            cv = res.folds
            a = 0
            for s in members:
                res_of[s] = res.r[a:a + width[s]]
                a += width[s]
            del Yv
        done[0] += 1
        spent[label] = spent.get(label, 0.0) + time.perf_counter() - t_fit
        return res_of

    def store(label: str, res_of: dict) -> None:
        for s in job.subjects:
            r = np.full(valid[s].size, np.nan, dtype=np.float32)
            if width[s]:
                r[valid[s]] = res_of[s]
            r_maps[s][label] = r

    for c in conds:
        eng.progress.check()
        state["condition"] = c.label
        store(c.label, fit(c.label, trf.get(code, c.label)))
    for spec in ctrls:  # the controls (aboveWordRate last: it changes Y in place)
        eng.progress.check()
        state["condition"] = spec.label
        if spec.kind == "shift":
            fits = [fit(spec.label, trf.control(code, spec, k)) for k in range(spec.n_shifts)]
            res_of = {s: np.mean([f[s] for f in fits], axis=0) for s in fits[0]}
        else:
            if spec.kind == "above":
                rates = trf.control(code, WORD_RATE)
                _regress_word_rate(eng, job, Y, starts, first, width, cleaning, kept, nuisance,
                                   rates=[rates[i] for i in idx])
            res_of = fit(spec.label, trf.control(code, spec))
        store(spec.label, res_of)
    del Y
    state["condition"] = None
    seconds = time.perf_counter() - t0
    lesions = {c.label for c in conds if c.kind != "intact"}
    written = []
    for s in job.todo:
        files = []
        for label in [c.label for c in conds] + [c.label for c in ctrls]:
            maps = {"r": r_maps[s][label]}
            if label in lesions:
                maps["deltar"] = an.delta(r_maps[s]["intact"], r_maps[s][label])[0]
            for stat, v in maps.items():
                name = map_file(src.space, s, code, label, stat)
                write_values(src.space, eng.out.root / name, v)
                files.append(name)
        rec = {"subject": s, "language": code, "seconds": seconds / len(job.subjects),
               "fitted_with": list(job.subjects), "n_valid": width[s],
               "n_excluded": int(valid[s].size - width[s]), "cv": cv, "files": files,
               "condition_seconds": {k: round(v / len(job.subjects), 3)
                                     for k, v in spent.items()},
               "inputs": _fit_inputs(eng, s, code)}
        censored = {str(i + 1): int((~k).sum()) for i, k in enumerate(kept[s]) if not k.all()}
        if censored:  # run number (1-based) -> volumes censored
            rec["censored_volumes"] = censored
        if hasattr(src, "cleaning"):  # what the cleaning removed, per run
            rec["cleaning"] = _cleaning_record(src.cleaning(s, code), kept[s])
        if not width[s]:
            rec["note"] = "every voxel/region is constant or NaN"
        eng.out.write_record("fit", unit_name(s, code), rec)
        written.append(unit_name(s, code))
        state["written"] = written
    return written


def _cleaning_record(runs: list, kept: list) -> list:
    """The data's cleaning record of a subject's runs with the volumes censored at the fit
    (the NaN-volume rule, 0-based)."""
    return [{**r, "censored_volumes": [int(i) for i in np.flatnonzero(~k)]}
            for r, k in zip(runs, kept)]


def _regress_word_rate(eng: Engine, job: FitJob, Y: np.ndarray, starts, first: dict,
                       width: dict, cleaning: dict, kept: dict, nuisance: dict,
                       rates: list) -> None:
    """aboveWordRate: project every subject's cleaned runs in ``Y`` (in place) off the word
    rate at the FIR delays (:func:`.controls.word_rate_regressors`); with one run, the word
    rate joins the nuisance regressors of the outer folds."""
    from ..analysis.controls import project_out, word_rate_regressors

    delays = [int(d) for d in eng.config.encoding.delays]
    pad = max(delays)
    for s in job.subjects:
        if not width[s]:
            continue
        cols = np.arange(first[s], first[s] + width[s])
        for i, k in enumerate(kept[s]):
            Q = word_rate_regressors(rates[i][: pad + len(k)], delays, pad, cleaning[(s, i)],
                                     keep=k)
            if k.all():
                block = Y[starts[i]:starts[i + 1], first[s]:first[s] + width[s]]
                block[:] = project_out(block, Q)
            else:
                rows = np.flatnonzero(k) + starts[i]
                Y[np.ix_(rows, cols)] = project_out(Y[np.ix_(rows, cols)], Q)
            if len(kept[s]) == 1:
                nuisance[s] = np.column_stack([nuisance[s], Q])


# --------------------------------------------------------------------------- group
def stage_group(eng: Engine):
    """Group statistics per language, categories, LPI and the sweep and summary rows.

    Reads the subjects' r maps back from their files, one language at a time, and writes
    the group maps. Returns the :class:`~.result.AlignmentResult` (its maps read lazily);
    the caller writes its tables and ``result.json``.
    """
    from ..analysis import statistics as an
    from ..results.names import group_file, map_file
    from ..results.result import (AlignmentResult, LazyMaps, _read_values, fill_drops,
                                  subject_rows, summary_group_rows)

    src, out = eng.source, eng.out.root
    les = eng.config.lesions
    conds = eng.analysis.conditions
    cat_sets = eng.analysis.plan.selection_specs([c.spec for c in conds])
    needed = {lbl for shared, spec in cat_sets.values() for lbl in [shared, *spec.values()]
              if lbl}
    draws: dict = {}  # lesion -> its random draws' labels
    for c in conds:
        if c.control_of:
            draws.setdefault(c.control_of, []).append(c.label)
    last_draw = {v[-1]: k for k, v in draws.items()}
    ctrls = control_specs(eng)
    files, group_files, n_valid, fits, warnings = {}, {}, {}, {}, []
    warnings += list(getattr(src, "notes", []))  # runs left out of the data, and why
    rows, group_rows, tests = [], [], {}
    langs = list(src.stimuli)
    unit = "voxel" if src.space.kind == "volume" else "region"

    def write(code, label, stat, v):
        name = group_file(src.space, code, label, stat)
        from ..results.result import write_values

        write_values(src.space, out / name, v)
        group_files[(code, label, stat)] = name

    for code in langs:
        subjects = src.subjects_of(code)
        for s in subjects:
            rec = eng.out.read_record("fit", unit_name(s, code))
            n_valid[(s, code)] = rec["n_valid"]
            fits[f"{s}/{code}"] = {k: rec[k] for k in ("seconds", "condition_seconds",
                                                       "fitted_with", "n_excluded", "cv",
                                                       "note", "censored_volumes",
                                                       "cleaning") if k in rec}
            if "note" in rec:
                warnings.append(f"subject {s}, {code}: {rec['note']}; excluded")
            for c in conds:
                for stat in SUBJECT_STATS[:1] if c.kind == "intact" else SUBJECT_STATS:
                    files[(s, code, c.label, stat)] = map_file(src.space, s, code, c.label, stat)
            for c in ctrls:
                files[(s, code, c.label, "r")] = map_file(src.space, s, code, c.label, "r")

        def stack(label):
            return np.stack([_read_values(src.space, out / files[(s, code, label, "r")])
                             for s in subjects])

        intact = stack("intact")
        ok = np.array([np.isfinite(row).any() for row in intact])
        tested = len(conds) > 1 or bool(ctrls)  # lesions or controls: group tests
        grouped = tested and ok.sum() >= 2
        if tested and not grouped:
            warnings.append(f"{code}: group statistics need at least 2 subjects with data; "
                            "skipped")
        aligned = None
        if grouped:
            t0 = an.alignment_test(intact[ok])
            for stat in GROUP_TEST:
                write(code, "intact", stat, getattr(t0, stat))
            aligned = an.responsive(t0, les.alpha, les.correction)
            warnings += _power_warnings(code, int(ok.sum()), int(aligned.sum()), les, unit)
            from ..analysis.plausibility import alignment_warnings

            warnings += alignment_warnings(code, src.space, aligned)
        means, n_sig, n_beyond = {}, {}, {}
        if grouped:
            n_sig["intact"] = int(aligned.sum())
        held: dict = {}  # lesion -> its r (until its last draw), draws' sum and group means
        for c in conds:
            eng.progress.check()
            B = intact if c.label == "intact" else stack(c.label)
            means[c.label] = subject_rows(rows, subjects, code, c.label, B, n_valid,
                                          c.kind)
            if grouped and c.label != "intact":
                res = an.paired_t(intact[ok], B[ok], within=aligned)
                for stat in GROUP_TEST + ("reldrop",):
                    write(code, c.label, stat, res.rel_drop if stat == "reldrop"
                          else getattr(res, stat))
                n_sig[c.label] = int(an.significant(res, les.alpha, les.correction).sum())
                if c.label in needed:
                    tests[(c.label, code)] = res
                if c.label in draws:
                    held[c.label] = {"r": B[ok], "sum": np.zeros_like(B[ok]), "means": []}
                elif c.control_of in held:
                    h = held[c.control_of]
                    h["sum"] += B[ok]
                    h["means"].append(B[ok].mean(0))
                    if c.label in last_draw:
                        h = held.pop(c.control_of)
                        beyond = _beyond_random(code, c.control_of, h, aligned, les, write)
                        n_beyond[c.control_of] = int(beyond.sum())
                        if (c.control_of, code) in tests:
                            tests[(c.control_of, code)].beyond = beyond
            del B
        for c in ctrls:  # the nulls and baselines: the model above each (or above 0)
            eng.progress.check()
            B = stack(c.label)
            means[c.label] = subject_rows(rows, subjects, code, c.label, B, n_valid,
                                          "control")
            if ok.sum() >= 2:
                res = (an.alignment_test(B[ok]) if c.test == "positive"
                       else an.paired_t(intact[ok], B[ok]))
                for stat in GROUP_TEST:
                    write(code, c.label, stat, getattr(res, stat))
                n_sig[c.label] = int(an.significant(res, les.alpha, les.correction).sum())
            del B
        fill_drops(rows, code, subjects, means, draws)
        if len(subjects) > 1:
            group_rows += summary_group_rows(rows, code, [c.label for c in conds]
                                             + [c.label for c in ctrls], n_sig, n_beyond)
        del intact
    categories = {}
    for name, (shared, spec) in cat_sets.items():
        shared_tests = {}
        if shared and all((shared, L) in tests for L in langs):
            shared_tests = {L: tests[(shared, L)] for L in langs}
        spec_tests = {L: {L2: tests[(lbl, L2)] for L2 in langs}
                      for L, lbl in spec.items() if all((lbl, L2) in tests for L2 in langs)}
        if not shared_tests and not spec_tests:
            continue
        categories[name] = an.categories(shared_tests, spec_tests, langs, les.alpha,
                                         les.correction, les.min_relative_drop)
        if len(langs) > 1:
            for L, t in spec_tests.items():
                write(L, spec[L], "lpi", an.lpi(t, L, les.alpha, les.correction,
                                                min_relative_drop=les.min_relative_drop))
    result = AlignmentResult(
        space=src.space, maps=LazyMaps(src.space, out, files), n_valid=n_valid,
        group_maps=LazyMaps(src.space, out, group_files), categories=categories,
        controls={c.label: c.control_of for c in conds if c.control_of},
        baselines={c.label: c.describe() for c in ctrls},
        sweep=[c.label for c in conds if c.kind == "sweep"],
        sweep_layers={c.label: c.spec.layer for c in conds if c.kind == "sweep"},
        summary=rows + group_rows, truth=getattr(src, "truth", None))
    from ..results.result import cleaning_summary

    result.provenance = {"fits": fits, "warnings": warnings,
                         "conditions": [c.describe() for c in conds],
                         "cleaning": cleaning_summary(fits)}
    return result


#: fewer subjects with data than this: the group tests are called underpowered
MIN_POWERED_SUBJECTS = 5


def _power_warnings(code: str, n_subjects: int, n_aligned: int, les, unit: str) -> list[str]:
    """Why a language's lesion tests and category maps may be empty, and what would help."""
    out = []
    test = (f"{'FDR-corrected ' if les.correction == 'fdr' else ''}p < {les.alpha:g}, "
            f"{n_subjects} subjects")
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


def _beyond_random(code: str, label: str, held: dict, aligned: np.ndarray, les,
                   write) -> np.ndarray:
    """Where a lesion's drop is beyond its random draws' (per voxel, one language).

    Two conditions, both required: across subjects, the lesion's r is below the mean r of
    its K draws (paired one-sided t-test over the voxels where the intact model aligns,
    corrected as ``[lesions] correction``, at ``alpha``), and the lesion's group mean r is
    below every draw's group mean r (its group drop is larger than each of the K draws':
    the empirical rank test's best, p = 1 / (K + 1)). Writes the maps ``tvsrandom``,
    ``pvsrandom``, ``qvsrandom`` and ``beyondrandom`` (1 where both hold, 0 elsewhere).
    """
    from ..analysis import statistics as an

    K = len(held["means"])
    mean_draws = held["sum"] / K
    res = an.paired_t(mean_draws, held["r"], within=aligned)
    beyond = an.significant(res, les.alpha, les.correction)
    lesion_mean = held["r"].mean(0)
    beyond &= np.all(np.stack(held["means"]) > lesion_mean, axis=0)
    for stat in GROUP_TEST:
        write(code, label, f"{stat}vsrandom", getattr(res, stat))
    write(code, label, "beyondrandom", beyond.astype(np.float32))
    return beyond
