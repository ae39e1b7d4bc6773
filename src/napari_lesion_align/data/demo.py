"""The built-in demo: real LPP word annotations, synthetic BOLD with a planted ground truth.

Stimuli (shipped, CC0, OpenNeuro ds003643): the first 300 s of Le Petit Prince sections 1-3
in English (TextGrid), French (TextGrid, UTF-16 big-endian like the originals) and Chinese
(one multi-run TSV). Mask: nilearn's MNI152 brain mask resampled to the 4 mm LPP grid.

BOLD is synthesised per subject, language and run (:func:`synthesize_run`) from the demo
model's own features (``GENERATOR_LAYER`` of the intact model):

* the features are z-scored and projected on their ``N_DRIVERS`` top principal axes
  (computed on all languages pooled, the same for every language), convolved with the
  SPM HRF;
* every voxel of a planted region mixes these drivers with its own fixed weights; a
  *shared* region is driven in every language, a *specific* region only in its language;
* the amplitude falls off from the region's centre (Gaussian, sigma = radius / 2), and
  varies a little across subjects;
* everything else is noise: AR(1) (rho 0.3), a slow drift and a scanner baseline.

The regions sit where the real LPP inter-subject reliability is high for the shared
(bilateral superior temporal) part and at distinct association-cortex sites for the
language-specific parts. Everything is seeded (``seed``); the generator is deterministic
given the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent / "demo"
N_RUNS = 3
RUN_SECONDS = 300.0
TR = 2.0
RUN_TRS = int(RUN_SECONDS / TR)
LAST_WORD_S = 290.0
GRID_SHAPE = (37, 46, 38)
GRID_AFFINE = np.array([[4.0, 0, 0, -72], [0, 4.0, 0, -106], [0, 0, 4.0, -64], [0, 0, 0, 1]])
MASK_FILE = DEMO_DIR / "mask_mni152_4mm.nii.gz"
GENERATOR_LAYER = -1
N_DRIVERS = 6
AMPLITUDE = 2.0  # peak signal standard deviation relative to unit noise
LANGUAGES = ("EN", "FR", "ZH")
TEXT_LANGUAGE = {"EN": "en", "FR": "fr", "ZH": "zh"}

#: (category, centre in MNI mm, radius in mm). Category "shared" or a language code.
REGIONS = (
    ("shared", (-56.0, -14.0, 4.0), 16.0),
    ("shared", (56.0, -14.0, 4.0), 16.0),
    ("EN", (-44.0, -66.0, 32.0), 14.0),  # left angular gyrus
    ("FR", (-46.0, 26.0, 10.0), 14.0),  # left inferior frontal gyrus
    ("ZH", (48.0, -60.0, 20.0), 14.0),  # right temporo-parietal
)
CATEGORIES = ("shared",) + LANGUAGES


def annotation_files(code: str) -> tuple[list[str], list]:
    """(paths, run labels) of the shipped annotations of one demo language."""
    if code == "ZH":
        return [str(DEMO_DIR / "ZH_runs.tsv")] * N_RUNS, list(range(1, N_RUNS + 1))
    return ([str(DEMO_DIR / f"{code}_run-{r}.TextGrid") for r in range(1, N_RUNS + 1)],
            list(range(1, N_RUNS + 1)))


def demo_language_data():
    """LanguageData entries of the demo (no BOLD files: the BOLD is synthesised)."""
    from ..core.config import LanguageData

    out = []
    for code in LANGUAGES:
        paths, runs = annotation_files(code)
        out.append(LanguageData(code=code, annotations=tuple(paths), runs=tuple(runs), bold={},
                                text_language=TEXT_LANGUAGE[code]))
    return out


def demo_space():
    from ..core.bold import VolumeSpace

    return VolumeSpace(MASK_FILE)


def planted_truth(space) -> dict:
    """Amplitude of each category per voxel and the label map (0 none, 1 shared, 2.. languages).

    Returns ``{"amplitude": {category: (V,)}, "labels": (V,) int, "categories": [...]}``.
    """
    xyz = space.coordinates()
    amp = {c: np.zeros(len(xyz)) for c in CATEGORIES}
    for cat, centre, radius in REGIONS:
        d = np.linalg.norm(xyz - np.asarray(centre), axis=1)
        a = AMPLITUDE * np.exp(-0.5 * (d / (radius / 2.0)) ** 2)
        a[d > radius] = 0.0
        amp[cat] = np.maximum(amp[cat], a)
    labels = np.zeros(len(xyz), dtype=np.int16)
    for i, cat in enumerate(CATEGORIES):
        labels[amp[cat] > 0] = i + 1
    return {"amplitude": amp, "labels": labels, "categories": list(CATEGORIES)}


def signal_mask(truth: dict, language: str, min_fraction: float = 0.25) -> np.ndarray:
    """Voxels that carry signal in ``language`` (amplitude >= min_fraction of the peak)."""
    a = np.maximum(truth["amplitude"]["shared"], truth["amplitude"][language])
    return a >= min_fraction * AMPLITUDE


def noise_mask(truth: dict, language: str) -> np.ndarray:
    """Voxels with no signal at all in ``language``."""
    a = np.maximum(truth["amplitude"]["shared"], truth["amplitude"][language])
    return a == 0


def _hrf(tr: float) -> np.ndarray:
    from nilearn.glm.first_level import spm_hrf

    return spm_hrf(tr, oversampling=1, time_length=32.0)


def feature_directions(features_by_language: dict, seed: int) -> tuple:
    """(mean, std, directions): the top principal axes of the pooled, z-scored features.

    The same ``N_DRIVERS`` directions serve every language, so a shared region responds to
    the same feature combination in every language. Signs are fixed by ``seed``.
    """
    allx = np.concatenate([x for runs in features_by_language.values() for x in runs],
                          axis=0).astype(np.float64)
    mu, sd = allx.mean(0), allx.std(0)
    sd[sd == 0] = 1.0
    Z = (allx - mu) / sd
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    Q = vt[:N_DRIVERS].T
    signs = np.random.default_rng([seed, 1]).choice([-1.0, 1.0], size=N_DRIVERS)
    return mu, sd, Q * signs


def language_drivers(features: list, directions: tuple, tr: float = TR) -> list:
    """Drivers of one language: z-scored features -> shared directions -> HRF, per run.

    ``features`` are per-run ``(T, d)`` arrays on the TR grid; each driver is scaled to
    unit variance over the language's runs.
    """
    mu, sd, Q = directions
    h = _hrf(tr)
    out = []
    for X in features:
        Z = ((X - mu) / sd) @ Q
        Z = np.stack([np.convolve(Z[:, k], h)[: len(Z)] for k in range(Q.shape[1])], axis=1)
        out.append(Z)
    allz = np.concatenate(out, axis=0)
    zs = allz.std(0)
    zs[zs == 0] = 1.0
    return [Z / zs for Z in out]


def synthesize_run(drivers: np.ndarray, truth: dict, language: str, subject_index: int,
                   run_index: int, seed: int) -> np.ndarray:
    """BOLD of one subject, language and run: (T, V) float32 in scanner-like units."""
    T = drivers.shape[0]
    V = len(truth["labels"])
    rng_w = np.random.default_rng([seed, 2])  # voxel weights: fixed across subjects
    W = rng_w.standard_normal((N_DRIVERS, V))
    W /= np.linalg.norm(W, axis=0, keepdims=True)
    # per-voxel unit-variance signal (drivers are unit variance and nearly uncorrelated)
    S = (drivers @ W).astype(np.float32)
    S /= S.std(0, keepdims=True) + 1e-8
    rng_s = np.random.default_rng([seed, 3, subject_index])  # subject amplitude factors
    factors = rng_s.uniform(0.8, 1.2, size=len(CATEGORIES))
    amp = np.zeros(V)
    for i, cat in enumerate(CATEGORIES):
        if cat == "shared" or cat == language:
            amp = np.maximum(amp, truth["amplitude"][cat] * factors[i])
    rng = np.random.default_rng([seed, 4, subject_index, LANGUAGES.index(language)
                                 if language in LANGUAGES else 99, run_index])
    e = rng.standard_normal((T, V)).astype(np.float32)
    rho = 0.3
    noise = np.empty_like(e)
    noise[0] = e[0]
    c = np.float32(np.sqrt(1 - rho**2))
    for t in range(1, T):
        noise[t] = rho * noise[t - 1] + c * e[t]
    t = np.linspace(-1, 1, T, dtype=np.float32)[:, None]
    drift = rng.normal(0, 0.5, size=(1, V)).astype(np.float32) * t + \
        rng.normal(0, 0.3, size=(1, V)).astype(np.float32) * np.cos(np.pi * t)
    baseline = rng.uniform(500, 1500, size=(1, V)).astype(np.float32)
    Y = (S * amp.astype(np.float32) + noise + drift) * 10.0 + baseline
    return np.ascontiguousarray(Y, dtype=np.float32)


def build_demo_dataset(config, features_for, progress=None):
    """The demo Dataset: shipped stimuli, the demo mask and lazily synthesised BOLD.

    ``features_for(code, stimuli, n_vols)`` must return the per-run TR-grid features of the
    intact model at ``GENERATOR_LAYER`` (``(T, d)`` each); the pipeline passes a function
    that shares its feature cache, so nothing is extracted twice.
    """
    from ..core.dataset import BoldRun, Dataset, load_stimuli

    demo = config.data.demo
    n_sub = demo.n_subjects if demo else 5
    seed = demo.seed if demo else 0
    space = demo_space()
    truth = planted_truth(space)
    stimuli = {lang.code: load_stimuli(lang) for lang in demo_language_data()}
    ds = Dataset(space=space, tr=TR, stimuli=stimuli, truth=truth)
    drivers_cache: dict = {}

    def drivers(code):
        if not drivers_cache:
            feats = {c: features_for(c, stimuli[c], [RUN_TRS] * N_RUNS) for c in LANGUAGES}
            directions = feature_directions(feats, seed)
            drivers_cache.update({c: language_drivers(feats[c], directions) for c in LANGUAGES})
        return drivers_cache[code]

    for si in range(n_sub):
        s = f"{si + 1:02d}"
        for code in LANGUAGES:
            ds.bold[(s, code)] = [
                BoldRun(f"demo:sub-{s}_lang-{code}_run-{r + 1}", RUN_TRS,
                        (lambda code=code, si=si, r=r:
                         synthesize_run(drivers(code)[r], truth, code, si, r, seed)))
                for r in range(N_RUNS)
            ]
    return ds
