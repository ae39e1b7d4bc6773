"""One function runs an analysis from a config: :func:`run_analysis`.

The GUI, the CLI and the cluster runner all call it. It reports progress through a
callback ``progress(fraction, message)`` and stops at the next check when ``cancel()``
returns True (raising :class:`~napari_lesion_align.core.errors.Cancelled`).
"""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from .bold import clean_run, valid_columns
from .conditions import build_conditions
from .config import AnalysisConfig
from .encoding import cross_validated_r
from .errors import Cancelled
from .features import FeatureOptions, extract_word_features, words_to_trs
from .result import AlignmentResult

ProgressFn = Callable[[float, str], None]


class Progress:
    """Maps the progress of consecutive phases onto one 0..1 scale."""

    def __init__(self, callback: ProgressFn | None, cancel: Callable[[], bool] | None):
        self.callback = callback
        self.cancel_fn = cancel
        self.lo, self.hi = 0.0, 1.0

    def phase(self, lo: float, hi: float) -> "Progress":
        self.lo, self.hi = lo, hi
        self(0.0, "")
        return self

    def __call__(self, frac: float, msg: str) -> None:
        if self.callback is not None:
            self.callback(self.lo + (self.hi - self.lo) * min(max(frac, 0.0), 1.0), msg)

    def sub(self, lo: float, hi: float) -> ProgressFn:
        """A callback for a part [lo, hi] of the current phase."""
        def f(frac, msg):
            self(lo + (hi - lo) * frac, msg)
        return f

    def check(self) -> None:
        if self.cancel_fn is not None and self.cancel_fn():
            raise Cancelled()


class FeatureStore:
    """Word features per (model weights, condition, layer, options, words), computed once."""

    def __init__(self):
        self._store: dict = {}

    @staticmethod
    def _key(lm, words, layer, opts: FeatureOptions, spaceless, condition):
        h = hashlib.blake2b(digest_size=16)
        h.update("\x1f".join(words.words).encode())
        h.update(np.asarray(words.onsets).tobytes())
        return (lm.weights_hash, condition, layer, opts, spaceless, h.hexdigest())

    def has(self, lm, words, layer, opts, spaceless, condition="intact") -> bool:
        return self._key(lm, words, layer, opts, spaceless, condition) in self._store

    def word_features(self, lm, words, layer: int, opts: FeatureOptions, spaceless: bool,
                      condition: str = "intact", progress=None, cancel=None,
                      **reuse) -> np.ndarray:
        """``reuse``: ``record``/``cache``/``start_layer`` of :func:`extract_word_features`."""
        key = self._key(lm, words, layer, opts, spaceless, condition)
        if key not in self._store or reuse.get("record"):
            feats = extract_word_features(
                lm.model, lm.tokenizer, list(words.words), [layer], opts, spaceless=spaceless,
                sentence_ids=words.sentence_ids, progress=progress, cancel=cancel, **reuse)
            self._store[key] = next(iter(feats.values()))
        return self._store[key]

    def clear(self) -> None:
        self._store.clear()


def tr_features(store: FeatureStore, lm, stim, n_vols: list, layer: int, opts: FeatureOptions,
                tr: float, downsample: str, pad_before: int, progress=None, cancel=None) -> list:
    """Per run: intact word features on the TR grid, ``(pad_before + n_vols, d)`` float32."""
    out = []
    for i, (words, n) in enumerate(zip(stim.runs, n_vols)):
        sub = None
        if progress is not None:
            sub = (lambda f, m, i=i: progress((i + f) / len(stim.runs),
                                              f"{stim.code} run {i + 1}: {m}"))
        wf = store.word_features(lm, words, layer, opts, stim.spaceless, progress=sub,
                                 cancel=cancel)
        out.append(words_to_trs(wf, words.onsets, n, tr, downsample, stim.bold_start_s,
                                pad_before))
    return out


def condition_features(store: FeatureStore, lm, stim, n_vols: list, layer: int,
                       opts: FeatureOptions, tr: float, downsample: str, pad_before: int,
                       conditions: list, progress=None, cancel=None) -> dict:
    """{condition label: per-run TR-grid features} for every condition of one language.

    The intact pass stores the inputs of the blocks where lesions start; a lesion confined
    to blocks >= l then only recomputes blocks l.. (exact), and a lesion entirely above the
    chosen layer leaves the features unchanged (no pass at all).
    """
    from .anatomy import describe_model
    from .lesions import apply_lesion

    n_hidden = lm.n_layers + 1
    target = layer if layer >= 0 else n_hidden + layer
    anatomy = describe_model(lm.model) if any(c.lesion is not None for c in conditions) else None
    starts = sorted({c.lesion.first_layer for c in conditions
                     if c.lesion is not None and 1 <= c.lesion.first_layer < target})
    out = {c.label: [] for c in conditions}
    n_steps = len(stim.runs) * len(conditions)
    step = 0
    for i, (words, n) in enumerate(zip(stim.runs, n_vols)):
        cache: dict = {}
        per_cond = {}
        for c in conditions:
            P = None
            if progress is not None:
                P = (lambda f, m, st=step, c=c: progress(
                    (st + f) / n_steps, f"{stim.code} run {i + 1}, {c.label}: {m}"))
            step += 1
            if c.lesion is None:
                need_record = bool(starts)  # store the block inputs lesions resume from
                wf = store.word_features(lm, words, layer, opts, stim.spaceless, "intact",
                                         progress=P, cancel=cancel,
                                         **({"record": starts, "cache": cache}
                                            if need_record else {}))
            elif c.lesion.first_layer >= target:
                wf = per_cond["intact"]  # the lesion acts above the chosen layer
            else:
                first = c.lesion.first_layer
                reuse = {"cache": cache, "start_layer": first} if first in starts else {}
                with apply_lesion(lm.model, c.lesion, anatomy):
                    wf = store.word_features(lm, words, layer, opts, stim.spaceless, c.key,
                                             progress=P, cancel=cancel, **reuse)
            per_cond[c.label] = wf
            out[c.label].append(words_to_trs(wf, words.onsets, n, tr, downsample,
                                             stim.bold_start_s, pad_before))
        del cache
    return out


_DEFAULT_STORE = FeatureStore()


def run_analysis(config: AnalysisConfig, out_dir=None, *, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None, model=None,
                 store: FeatureStore | None = None) -> AlignmentResult:
    """Run the analysis a config describes; save it into ``out_dir`` when given.

    Parameters
    ----------
    config : AnalysisConfig
    out_dir : folder for the output files (see :mod:`.result`); nothing is written if None.
    progress : callable(fraction, message)
    cancel : callable() -> bool, checked between steps.
    model : an already loaded :class:`~.model.LoadedModel` (skips loading ``config.model``).
    store : feature cache shared between calls (a process-wide one by default).
    """
    from .dataset import load_dataset
    from .model import load_model

    t_start = time.perf_counter()
    timings: dict = {}
    P = Progress(progress, cancel)
    store = store or _DEFAULT_STORE
    enc = config.encoding
    delays = [int(d) for d in enc.delays]
    pad = max(delays)

    # 1. data (files are checked before the model is loaded)
    t = time.perf_counter()
    if config.data.kind == "demo":
        from ..data import demo
        from .dataset import load_stimuli

        stimuli = {lang.code: load_stimuli(lang) for lang in demo.demo_language_data()}
    else:
        P.phase(0.0, 0.05)
        ds = load_dataset(config, progress=P, cancel=cancel)
        stimuli = ds.stimuli
    timings["data_s"] = time.perf_counter() - t

    # 2. model
    t = time.perf_counter()
    P.phase(0.05, 0.12)
    P(0.0, f"loading model {config.model.name}")
    lm = model or load_model(config.model.name, offline=config.model.offline,
                             device=config.model.device, progress=lambda m: P(0.5, m))
    P.check()
    timings["model_s"] = time.perf_counter() - t

    # 3. conditions (intact, lesions and their random controls) and their features
    t = time.perf_counter()
    P.phase(0.12, 0.16)
    P(0.0, "choosing lesions" if config.lesions.enabled else "intact model")
    conditions = build_conditions(config, lm, stimuli, progress=P, cancel=cancel)
    if config.data.kind == "demo":
        gen = demo.generator_conditions(config, lm, stimuli, conditions)

        def features_for(code):
            st = stimuli[code]
            args = (config.features, demo.TR, "floor", 0)
            return condition_features(store, lm, st, [demo.RUN_TRS] * demo.N_RUNS,
                                      demo.GENERATOR_LAYER, *args, gen, cancel=cancel)

        ds = demo.build_demo_dataset(config, stimuli, features_for)
    timings["lesions_s"] = time.perf_counter() - t
    t = time.perf_counter()
    P.phase(0.16, 0.45)
    codes = list(ds.stimuli)
    features = {}
    for li, code in enumerate(codes):
        P.check()
        features[code] = condition_features(
            store, lm, ds.stimuli[code], ds.n_vols(code), config.model.layer, config.features,
            ds.tr, enc.downsample, pad, conditions,
            progress=P.sub(li / len(codes), (li + 1) / len(codes)), cancel=cancel)
    timings["features_s"] = time.perf_counter() - t

    # 4. encoding models: per language, every condition; the subjects whose runs have the
    # same lengths share the features, so they are fitted together (their voxels side by
    # side: one decomposition per fold for all of them), within a memory budget.
    t = time.perf_counter()
    P.phase(0.45, 0.97)
    result = AlignmentResult(space=ds.space)
    keys = list(ds.bold)
    per_fit = {}
    warnings: list[str] = []
    n_keys = len(keys)
    done = 0
    for code in codes:
        subjects = [s for (s, c) in keys if c == code]
        cleaned = {}
        for s in subjects:
            P.check()
            P(done / n_keys, f"subject {s}, {code}: cleaning")
            runs = ds.bold[(s, code)]
            raw = [run.load() for run in runs]
            valid = valid_columns(raw)  # NaN or constant in any run: excluded and counted
            result.n_valid[(s, code)] = int(valid.sum())
            if not valid.any():
                for c in conditions:
                    result.maps[(s, code, c.label, "r")] = np.full(
                        ds.space.n_features, np.nan, dtype=np.float32)
                per_fit[f"{s}/{code}"] = {"n_excluded": int(valid.size),
                                          "note": "every voxel/region is constant or NaN"}
                warnings.append(f"subject {s}, {code}: every voxel/region is constant or "
                                "NaN; excluded")
                done += 1
                continue
            Y_runs = []
            for run, Y in zip(runs, raw):
                Y_runs.append(clean_run(Y[:, valid], ds.tr, config.cleaning, run.confounds))
                P.check()
            del raw
            cleaned[s] = (valid, Y_runs)
        for group in _fit_groups(cleaned, enc.stack_mb):
            P.check()
            lo, hi = done / n_keys, (done + len(group)) / n_keys
            sub = P.sub(lo, hi)
            who = (f"subject {group[0]}" if len(group) == 1
                   else f"subjects {group[0]}-{group[-1]}")
            Y_runs = [np.hstack([cleaned[s][1][i] for s in group])
                      for i in range(len(cleaned[group[0]][1]))]
            widths = np.cumsum([0] + [int(cleaned[s][0].sum()) for s in group])
            t_fit = time.perf_counter()
            for ci, c in enumerate(conditions):
                X_runs = [X[: pad + Y.shape[0]] for X, Y in zip(features[code][c.label], Y_runs)]
                clo, chi = ci / len(conditions), (ci + 1) / len(conditions)
                res = cross_validated_r(
                    X_runs, Y_runs, delays, enc.alphas, pad_before=pad,
                    n_blocks=enc.n_blocks, score=enc.score, dtype=np.dtype(enc.dtype),
                    backend=enc.backend,
                    progress=lambda f, m, c=c, clo=clo, chi=chi: sub(
                        clo + (chi - clo) * f, f"{who}, {code}, {c.label}: {m}"),
                    cancel=cancel)
                for j, s in enumerate(group):
                    r = np.full(ds.space.n_features, np.nan, dtype=np.float32)
                    r[cleaned[s][0]] = res.r[widths[j]:widths[j + 1]]
                    result.maps[(s, code, c.label, "r")] = r
                cv = res.folds
            seconds = time.perf_counter() - t_fit
            for s in group:
                per_fit[f"{s}/{code}"] = {"seconds": seconds / len(group),
                                          "fitted_with": list(group),
                                          "n_excluded": int((~cleaned[s][0]).sum()), "cv": cv}
            del Y_runs
            done += len(group)
        del cleaned
    timings["encoding_s"] = time.perf_counter() - t

    # 5. lesion effects: delta r per subject, group statistics, categories, sweep table
    t = time.perf_counter()
    if len(conditions) > 1:
        P.phase(0.97, 0.98)
        P(0.0, "comparing conditions")
        compare_conditions(result, conditions, config.lesions, warnings)
    timings["analysis_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    result.provenance = {
        "package": "napari-lesion-align",
        "version": __version__,
        "config": config.to_dict(),
        "model": {"name": config.model.name, "source": lm.source,
                  "weights_hash": lm.weights_hash, "layer": config.model.layer,
                  "n_layers": lm.n_layers},
        "seed": config.seed,
        "conditions": [{"label": c.label, "kind": c.kind, "control_of": c.control_of,
                        "n_elements": c.lesion.n_elements if c.lesion else 0,
                        "per_layer": c.lesion.per_layer() if c.lesion else {},
                        "spec": c.lesion.spec if c.lesion else {}} for c in conditions],
        "timings": timings,
        "fits": per_fit,
        "warnings": warnings,
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if ds.truth is not None:
        result.provenance["demo_truth"] = {"regions": [list(r) for r in _regions()],
                                           "categories": ds.truth["categories"]}
    result.truth = ds.truth
    if out_dir is not None:
        P.phase(0.98, 1.0)
        P(0.0, "writing results")
        result.save(Path(out_dir))
    if progress is not None:
        progress(1.0, "done")
    return result


def _fit_groups(cleaned: dict, budget_mb: float) -> list[list]:
    """Subjects fitted together: same run lengths, stacked BOLD within ``budget_mb``."""
    groups: dict = {}
    for s, (_, Y_runs) in cleaned.items():
        groups.setdefault(tuple(Y.shape[0] for Y in Y_runs), []).append(s)
    out = []
    for subjects in groups.values():
        cur, size = [], 0.0
        for s in subjects:
            mb = sum(Y.nbytes for Y in cleaned[s][1]) / 2**20
            if cur and size + mb > budget_mb:
                out.append(cur)
                cur, size = [], 0.0
            cur.append(s)
            size += mb
        out.append(cur)
    return out


def compare_conditions(result: AlignmentResult, conditions: list, les_cfg, warnings: list) -> None:
    """Delta r maps, group paired t-tests, category maps and the layer-sweep table."""
    from . import analysis as an

    subjects = [s for s in result.subjects
                if all(np.isfinite(result.maps[(s, L, "intact", "r")]).any()
                       for L in result.languages)]
    langs = result.languages
    for c in conditions:
        if c.lesion is None:
            continue
        for L in langs:
            for s in result.subjects:
                d, rel = an.delta(result.maps[(s, L, "intact", "r")], result.maps[(s, L, c.label, "r")])
                result.maps[(s, L, c.label, "deltar")] = d
    if len(subjects) < 2:
        warnings.append("group statistics need at least 2 subjects with data; skipped")
        return
    tests: dict = {}
    aligned = {}
    for L in langs:
        A = np.stack([result.maps[(s, L, "intact", "r")] for s in subjects])
        t0 = an.alignment_test(A)
        aligned[L] = an.responsive(t0, les_cfg.alpha, les_cfg.correction)
        for stat in ("t", "p", "q"):
            result.group_maps[(L, "intact", stat)] = getattr(t0, stat)
    for c in conditions:
        if c.lesion is None:
            continue
        for L in langs:
            A = np.stack([result.maps[(s, L, "intact", "r")] for s in subjects])
            B = np.stack([result.maps[(s, L, c.label, "r")] for s in subjects])
            res = an.paired_t(A, B, within=aligned[L])
            tests[(c.label, L)] = res
            result.group_maps[(L, c.label, "t")] = res.t
            result.group_maps[(L, c.label, "p")] = res.p
            result.group_maps[(L, c.label, "q")] = res.q
            result.group_maps[(L, c.label, "reldrop")] = res.rel_drop
    # categories: the shared lesion with the specific lesions, and their random controls
    by_label = {c.label: c for c in conditions}
    sets = {}
    if "shared" in by_label or any(lbl.startswith("specific") for lbl in by_label):
        sets["lesion"] = ("shared", {L: f"specific{L}" for L in langs})
        if les_cfg.random_control:
            sets["random"] = ("sharedRandom", {L: f"specific{L}Random" for L in langs})
    for name, (shared_lbl, spec_lbls) in sets.items():
        shared_tests = ({L: tests[(shared_lbl, L)] for L in langs}
                        if shared_lbl in by_label else {})
        spec_tests = {L: {L2: tests[(lbl, L2)] for L2 in langs}
                      for L, lbl in spec_lbls.items() if lbl in by_label}
        if not shared_tests and not spec_tests:
            continue
        labels, legend = an.categories(shared_tests, spec_tests, langs, les_cfg.alpha,
                                       les_cfg.correction, les_cfg.min_relative_drop)
        result.categories[name] = (labels, legend)
        for L, lbl in spec_lbls.items():
            if lbl in by_label and len(langs) > 1:
                result.group_maps[(L, lbl, "lpi")] = an.lpi(
                    {L2: tests[(lbl, L2)] for L2 in langs}, L, les_cfg.alpha, les_cfg.correction,
                    min_relative_drop=les_cfg.min_relative_drop)
    result.controls = {c.label: c.control_of for c in conditions if c.control_of}
    result.sweep = [c.label for c in conditions if c.kind == "sweep"]


def _regions():
    from ..data.demo import REGIONS

    return [(c, list(x), r) for c, x, r in REGIONS]
