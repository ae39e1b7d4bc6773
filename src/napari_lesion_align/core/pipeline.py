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
    """Word features per (model weights, layer, options, words), computed once per process."""

    def __init__(self):
        self._store: dict = {}

    @staticmethod
    def _key(lm, words, layer, opts: FeatureOptions, spaceless, condition):
        h = hashlib.blake2b(digest_size=16)
        h.update("\x1f".join(words.words).encode())
        h.update(np.asarray(words.onsets).tobytes())
        return (lm.weights_hash, condition, layer, opts, spaceless, h.hexdigest())

    def word_features(self, lm, words, layer: int, opts: FeatureOptions, spaceless: bool,
                      condition: str = "intact", progress=None, cancel=None) -> np.ndarray:
        key = self._key(lm, words, layer, opts, spaceless, condition)
        if key not in self._store:
            feats = extract_word_features(
                lm.model, lm.tokenizer, list(words.words), [layer], opts, spaceless=spaceless,
                sentence_ids=words.sentence_ids, progress=progress, cancel=cancel)
            self._store[key] = next(iter(feats.values()))
        return self._store[key]


def tr_features(store: FeatureStore, lm, stim, n_vols: list, layer: int, opts: FeatureOptions,
                tr: float, downsample: str, pad_before: int, progress=None, cancel=None) -> list:
    """Per run: word features on the TR grid, ``(pad_before + n_vols, d)`` float32."""
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
    if config.data.kind != "demo":
        P.phase(0.0, 0.05)
        ds = load_dataset(config, progress=P, cancel=cancel)
    timings["data_s"] = time.perf_counter() - t

    # 2. model
    t = time.perf_counter()
    P.phase(0.05, 0.12)
    P(0.0, f"loading model {config.model.name}")
    lm = model or load_model(config.model.name, offline=config.model.offline,
                             device=config.model.device, progress=lambda m: P(0.5, m))
    P.check()
    timings["model_s"] = time.perf_counter() - t

    if config.data.kind == "demo":
        from ..data import demo

        def features_for(code, stim, n_vols):
            feats = tr_features(store, lm, stim, n_vols, demo.GENERATOR_LAYER, config.features,
                                config.data.tr, "floor", 0, cancel=cancel)
            return feats

        ds = demo.build_demo_dataset(config, features_for)

    # 3. features per language
    t = time.perf_counter()
    P.phase(0.12, 0.40)
    codes = list(ds.stimuli)
    features = {}
    for li, code in enumerate(codes):
        P.check()
        features[code] = tr_features(
            store, lm, ds.stimuli[code], ds.n_vols(code), config.model.layer, config.features,
            ds.tr, enc.downsample, pad, progress=P.sub(li / len(codes), (li + 1) / len(codes)),
            cancel=cancel)
    timings["features_s"] = time.perf_counter() - t

    # 4. encoding models, one subject and language at a time
    t = time.perf_counter()
    P.phase(0.40, 0.98)
    result = AlignmentResult(space=ds.space)
    keys = list(ds.bold)
    per_fit = {}
    warnings: list[str] = []
    for ki, (s, code) in enumerate(keys):
        P.check()
        sub = P.sub(ki / len(keys), (ki + 1) / len(keys))
        sub(0.0, f"subject {s}, {code}: cleaning")
        runs = ds.bold[(s, code)]
        raw = [run.load() for run in runs]
        valid = valid_columns(raw)  # NaN or constant in any run: excluded and counted
        r = np.full(ds.space.n_features, np.nan, dtype=np.float32)
        if not valid.any():
            result.maps[(s, code, "intact", "r")] = r
            result.n_valid[(s, code)] = 0
            per_fit[f"{s}/{code}"] = {"n_excluded": int(valid.size),
                                      "note": "every voxel/region is constant or NaN"}
            warnings.append(f"subject {s}, {code}: every voxel/region is constant or NaN; "
                            "excluded")
            continue
        Y_runs = []
        for run, Y in zip(runs, raw):
            Y_runs.append(clean_run(Y[:, valid], ds.tr, config.cleaning, run.confounds))
            P.check()
        del raw
        X_runs = [X[: pad + Y.shape[0]] for X, Y in zip(features[code], Y_runs)]
        t_fit = time.perf_counter()
        res = cross_validated_r(
            X_runs, Y_runs, delays, enc.alphas, pad_before=pad,
            n_blocks=enc.n_blocks, score=enc.score, dtype=np.dtype(enc.dtype),
            backend=enc.backend,
            progress=lambda f, m, s=s, code=code, sub=sub: sub(f, f"subject {s}, {code}: {m}"),
            cancel=cancel)
        r[valid] = res.r
        result.maps[(s, code, "intact", "r")] = r
        result.n_valid[(s, code)] = int(valid.sum())
        per_fit[f"{s}/{code}"] = {"seconds": time.perf_counter() - t_fit,
                                  "n_excluded": int((~valid).sum()), "cv": res.folds}
    timings["encoding_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    result.provenance = {
        "package": "napari-lesion-align",
        "version": __version__,
        "config": config.to_dict(),
        "model": {"name": config.model.name, "source": lm.source,
                  "weights_hash": lm.weights_hash, "layer": config.model.layer,
                  "n_layers": lm.n_layers},
        "seed": config.seed,
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


def _regions():
    from ..data.demo import REGIONS

    return [(c, list(x), r) for c, x, r in REGIONS]
