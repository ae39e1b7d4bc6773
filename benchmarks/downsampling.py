"""Which downsampling of word vectors to volumes? mean vs sum vs Lanczos, with the word rate.

Usage::

    python benchmarks/downsampling.py planted                 # planted word-rate signal
    python benchmarks/downsampling.py planted --features model  # ... with the built-in model
    python benchmarks/downsampling.py alice --data ../shared/data/alice_brennan2016
    python benchmarks/downsampling.py demo --subjects 3         # the built-in demo

Three ways to turn word vectors into one row per volume (:func:`..features.words_to_trs`):

* ``mean``: each word to volume floor(onset / TR), the mean of a volume's words (the
  default, ``[encoding] downsample = "floor"``; the paper's);
* ``sum``: the same bins, the sum (the mean times the number of words);
* ``lanczos``: a 3-lobe Lanczos kernel at the volume centres, summed over words
  (``downsample = "lanczos"``).

Next to each, the word-rate control: the number of words per volume alone, fitted the same
way (:func:`..controls.word_rate`). Every fit is the package's own
:func:`..encoding.cross_validated_r` (leave one run out, per-voxel alpha, FIR delays 1-4).

Data:

* ``planted``: the real word timings of the demo's English runs (3 runs of *Le Petit
  Prince*); synthetic subjects whose "signal" regions carry the word rate (words per 0.1 s,
  convolved with SPM's canonical HRF, sampled at the volumes) plus noise, the other regions
  noise only. Word vectors: ``anisotropic`` (random, with a common direction, as language
  model states have), or ``model`` (the built-in offline model, last layer).
* ``alice``: Brennan et al. 2016 (CC BY 4.0): 6 ROIs, one run (5 contiguous blocks), the
  built-in model; subjects as in ``examples/alice.toml``.
* ``demo``: the built-in demo (its planted truth is made from mean-downsampled features,
  so it favours ``mean`` by construction: read it as a check, not a verdict).

Prints one table per data set: mean r per method over the signal (planted) or each ROI
(Alice), the word rate's r in the same place, and the model minus the word rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

METHODS = ("mean", "sum", "lanczos")
DELAYS = (1, 2, 3, 4)
ALPHAS = tuple(np.logspace(0, 6, 7).tolist())


def to_trs(vectors, onsets, n_vols, tr, method, start_s=0.0, pad=4):
    from napari_lesion_align.core.analysis.controls import word_rate
    from napari_lesion_align.core.features.extraction import words_to_trs

    if method == "lanczos":
        return words_to_trs(vectors, onsets, n_vols, tr, "lanczos", start_s, pad)
    X = words_to_trs(vectors, onsets, n_vols, tr, "floor", start_s, pad)
    if method == "sum":
        X = X * word_rate(onsets, n_vols, tr, start_s, pad)
    return X


def fit(X_runs, Y_runs, pad=4):
    from napari_lesion_align.core.encoding import cross_validated_r

    return cross_validated_r(X_runs, Y_runs, DELAYS, ALPHAS, pad_before=pad,
                             backend="numpy").r


def hrf_rate(onsets, n_vols, tr, start_s=0.0, dt=0.1):
    """Words per ``dt`` seconds convolved with SPM's canonical HRF, at the volume times."""
    from nilearn.glm.first_level.hemodynamic_models import spm_hrf

    t_end = start_s + n_vols * tr
    grid = np.zeros(int(np.ceil(t_end / dt)) + 1)
    idx = np.floor(np.asarray(onsets) / dt).astype(int)
    np.add.at(grid, idx[(idx >= 0) & (idx < len(grid))], 1.0)
    h = spm_hrf(tr, oversampling=int(round(tr / dt)))
    conv = np.convolve(grid, h)[: len(grid)]
    times = start_s + (np.arange(n_vols) + 0.5) * tr
    return conv[np.minimum((times / dt).astype(int), len(grid) - 1)]


def zscore(Y):
    Y = Y - Y.mean(0)
    return (Y / np.where(Y.std(0) > 0, Y.std(0), 1)).astype(np.float32)


def model_vectors(words_runs, language="en"):
    from napari_lesion_align.core.run.config import BUILTIN_MODEL
    from napari_lesion_align.core.features.extraction import extract_word_features
    from napari_lesion_align.core.model.loading import load_model

    lm = load_model(BUILTIN_MODEL, device="cpu")
    return [extract_word_features(lm.model, lm.tokenizer, list(w.words), [-1])[-1]
            for w in words_runs]


def planted(args) -> list[str]:
    from napari_lesion_align.core.analysis.controls import word_rate
    from napari_lesion_align.core.data.stimuli import read_words
    from napari_lesion_align.core.data import demo

    tr = 2.0
    runs = [read_words(demo.DEMO_DIR / f"EN_run-{r}.TextGrid") for r in (1, 2, 3)]
    n_vols = [int(np.ceil(w.offsets.max() / tr)) + 5 for w in runs]
    rng = np.random.default_rng(args.seed)
    if args.features == "model":
        vecs = model_vectors(runs)
    else:  # random states around a common direction (language model states are anisotropic)
        d = 64
        mu = rng.normal(0, 1, d)
        vecs = [mu + rng.normal(0, 1, (len(w), d)) for w in runs]
    n_sig, n_noise = 10, 40
    X = {m: [to_trs(v, w.onsets, n, tr, m) for v, w, n in zip(vecs, runs, n_vols)]
         for m in METHODS}
    X["word rate"] = [word_rate(w.onsets, n, tr, 0.0, 4) for w, n in zip(runs, n_vols)]
    res = {k: [] for k in X}
    for s in range(args.subjects):
        Y = []
        for w, n in zip(runs, n_vols):
            rate = zscore(hrf_rate(w.onsets, n, tr)[:, None])[:, 0]
            sig = args.snr * rate[:, None] + rng.normal(0, 1, (n, n_sig))
            Y.append(zscore(np.column_stack([sig, rng.normal(0, 1, (n, n_noise))])))
        for k, Xr in X.items():
            r = fit(Xr, Y)
            res[k].append((r[:n_sig].mean(), r[n_sig:].mean()))
    lines = [f"planted word rate (SNR {args.snr}, {args.subjects} subjects, features "
             f"{args.features}, {len(runs)} runs, {sum(n_vols)} volumes)",
             f"{'features':<12} {'r signal':>9} {'r noise':>9}   signal - word rate"]
    wr = np.mean([a for a, _ in res["word rate"]])
    for k, v in res.items():
        a, b = np.mean(v, axis=0)
        lines.append(f"{k:<12} {a:>9.3f} {b:>9.3f}   {a - wr:+.3f}")
    return lines


def alice(args) -> list[str]:
    from napari_lesion_align.core.data.bold import CleaningOptions, clean_run
    from napari_lesion_align.core.run.config import load_config
    from napari_lesion_align.core.analysis.controls import word_rate
    from napari_lesion_align.core.data.dataset import load_dataset

    text = (REPO / "examples" / "alice.toml").read_text()
    text = text.replace("../../shared/data/alice_brennan2016", str(Path(args.data).resolve()))
    cfg_path = Path(args.tmp) / "alice.toml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    ds = load_dataset(cfg)
    stim = ds.stimuli["EN"]
    words = stim.runs[0]
    n = ds.n_vols("EN")[0]
    vec = model_vectors([words])[0]
    X = {m: [to_trs(vec, words.onsets, n, ds.tr, m, stim.bold_start_s)] for m in METHODS}
    X["word rate"] = [word_rate(words.onsets, n, ds.tr, stim.bold_start_s, 4)]
    names = list(ds.space.names)
    res = {k: [] for k in X}
    for s in ds.subjects_of("EN"):
        run = ds.runs(s, "EN")[0]
        Y = run.load()
        if not np.all(np.nanstd(Y, 0) > 0):
            continue  # a subject without data (s33)
        Y = clean_run(Y, ds.tr, CleaningOptions(), run.confounds)
        for k, Xr in X.items():
            res[k].append(fit(Xr, [Y]))
    lines = [f"Alice (Brennan et al. 2016): {len(res['mean'])} subjects, one run of {n} "
             "volumes, 5 contiguous blocks",
             f"{'features':<12} " + " ".join(f"{r:>7}" for r in names) + "   mean"]
    for k, v in res.items():
        m = np.mean(v, axis=0)
        lines.append(f"{k:<12} " + " ".join(f"{x:>7.3f}" for x in m) + f"   {m.mean():.3f}")
    return lines


def demo_part(args) -> list[str]:
    from napari_lesion_align.core.run.config import demo_config
    from napari_lesion_align.core.run.pipeline import run_analysis
    from napari_lesion_align.core.data import demo

    lines = [f"demo ({args.subjects} subjects; its truth is made from mean-downsampled "
             "features): mean r over each language's planted voxels",
             f"{'features':<12} " + " ".join(f"{c:>7}" for c in demo.LANGUAGES)]
    store = Path(args.tmp) / "demo-features"
    rows = {}
    for method in ("floor", "lanczos"):
        cfg = demo_config(args.subjects, encoding={"downsample": method},
                          controls={"shifts": 0, "shuffled_words": False,
                                    "above_word_rate": False},
                          compute={"feature_store": str(store)})
        res = run_analysis(cfg, Path(args.tmp) / f"demo-{method}")
        for label, name in (("intact", "mean" if method == "floor" else method),
                            ("wordRate", "word rate")):
            rows[name] = [np.nanmean([res.get(s, c, label)[demo.signal_mask(res.truth, c)]
                                      for s in res.subjects]) for c in demo.LANGUAGES]
    for name, v in rows.items():
        lines.append(f"{name:<12} " + " ".join(f"{x:>7.3f}" for x in v))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_set", choices=("planted", "alice", "demo"))
    p.add_argument("--features", choices=("anisotropic", "model"), default="anisotropic")
    p.add_argument("--subjects", type=int, default=5)
    p.add_argument("--snr", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/alice_brennan2016"))
    p.add_argument("--tmp", default="/tmp/nla-downsampling")
    args = p.parse_args(argv)
    t = time.perf_counter()
    lines = {"planted": planted, "alice": alice, "demo": demo_part}[args.data_set](args)
    print("\n".join(lines))
    print(f"({time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
