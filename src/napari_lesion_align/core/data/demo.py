"""The built-in demo: real LPP word annotations, synthetic BOLD with a planted ground truth.

Stimuli (shipped, CC0, OpenNeuro ds003643): the first 300 s of Le Petit Prince sections 1-3
in English (TextGrid), French (TextGrid, UTF-16 big-endian like the originals) and Chinese
(one multi-run TSV). Mask: nilearn's MNI152 brain mask resampled to the 4 mm LPP grid.

BOLD is synthesised per subject, language and run (:func:`synthesize_run`) from the demo
model's own features (``GENERATOR_LAYER``), so that its ground truth is about the model's
shared and language-specific parts (:data:`GENERATOR_LESIONS`: the top 1 % of weights per
tensor by Wanda importance, shared and specific per language):

* *shared* regions respond to the intact features along the directions that the *shared*
  lesion destroys more than random lesions of the same size do (found on all languages
  pooled: the same directions in every language), in every language;
* the *specific* region of L responds, in L only, to the intact features along the
  directions that L's *specific* lesion destroys in L more than random lesions do, relative
  to the intact variance along them (``DIRECTION_SHRINK``);
* "destroys" is what a linear encoding model sees: the residual of the intact features
  regressed on the lesioned ones; the directions are the top (generalised) eigenvectors of
  the difference between the lesion's residual covariance and the mean one of the four
  random controls (:func:`lost_directions`), found on all runs; ``N_DRIVERS`` directions,
  z-scored, convolved with the SPM HRF;
* every voxel mixes its category's drivers with its own fixed weights;
* the amplitude is flat up to ``PLATEAU`` x the region's radius, then falls off (cosine
  taper, :func:`profile`), and varies across subjects (a factor of 0.9-1.1 per subject and
  category);
* everything else is noise: AR(1) (rho 0.3), a slow drift and a scanner baseline.

The regions sit where the real LPP inter-subject reliability is high for the shared
(bilateral superior temporal) part and at distinct association-cortex sites for the
language-specific parts. Everything is seeded (``seed``); the generator is deterministic
given the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError
from .options import DataKind, DemoConfig, LanguageData
from .bold import VolumeSpace

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"  # the package's data folder
N_RUNS = 3
RUN_SECONDS = 300.0
TR = 2.0
RUN_TRS = int(RUN_SECONDS / TR)
LAST_WORD_S = 290.0
GRID_SHAPE = (37, 46, 38)
GRID_AFFINE = np.array([[4.0, 0, 0, -72], [0, 4.0, 0, -106], [0, 0, 4.0, -64], [0, 0, 0, 1]])
MASK_FILE = DEMO_DIR / "mask_mni152_4mm.nii.gz"
GENERATOR_LAYER = -1
#: bumped whenever the generator's output changes (the napari sample's cache folder names it)
GENERATOR_REVISION = 2
N_DRIVERS = 3
AMPLITUDE = 5.0  # peak signal standard deviation relative to unit noise
PLATEAU = 0.6  # full amplitude up to 0.6 x the radius, then a cosine taper (profile)
DIRECTION_ALPHA = 1000.0  # ridge penalty of the intact-on-lesioned regression (lost_directions)
DIRECTION_SHRINK = 2.0  # specific drivers: relative loss (lost_directions' shrink)
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
    out = []
    for code in LANGUAGES:
        paths, runs = annotation_files(code)
        out.append(LanguageData(code=code, annotations=tuple(paths), runs=tuple(runs),
                                text_language=TEXT_LANGUAGE[code]))
    return out


def demo_space():
    return VolumeSpace(MASK_FILE)


def profile(x: np.ndarray) -> np.ndarray:
    """Amplitude profile of a region at ``x`` = distance / radius: 1 up to ``PLATEAU``, then
    a cosine taper to 0 at the radius (half amplitude at ``(1 + PLATEAU) / 2``)."""
    x = np.asarray(x, dtype=np.float64)
    u = np.clip((x - PLATEAU) / (1.0 - PLATEAU), 0.0, 1.0)
    return np.where(x <= 1.0, 0.5 * (1.0 + np.cos(np.pi * u)), 0.0)


def planted_truth(space) -> dict:
    """Amplitude of each category per voxel and the label map (0 none, 1 shared, 2.. languages).

    Returns ``{"amplitude": {category: (V,)}, "labels": (V,) int, "categories": [...]}``.
    """
    xyz = space.coordinates()
    amp = {c: np.zeros(len(xyz)) for c in CATEGORIES}
    for cat, centre, radius in REGIONS:
        d = np.linalg.norm(xyz - np.asarray(centre), axis=1)
        amp[cat] = np.maximum(amp[cat], AMPLITUDE * profile(d / radius))
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


#: the lesions whose effect the demo's brain carries (the generator's own recipe)
GENERATOR_LESIONS = {"element": "weights", "method": "wanda", "k_percent": 1.0, "mode": "zero"}

#: the demo's category rule: a drop must be significant and at least 15 % of the intact r
#: (its simulated subjects share stimuli and model: a random control's few-% drop is the
#: same in every subject, hence "significant"; docs/method.md)
DEMO_MIN_RELATIVE_DROP = 0.15

#: the demo's random draws per lesion (the default of a config is 5; each draw is one more
#: fit of every subject: the demo keeps its run time near 10 minutes on 2 cores)
DEMO_RANDOM_CONTROLS = 2

#: the demo's analysis: the defaults of every config with ``[data] kind = "demo"`` (the
#: ``demo`` command, the widgets' demo and a config file alike); a config's own keys win.
#: Features are read in windows of 500 context tokens + 256 new ones (half the passes of
#: the default); alphas run from 1 to 1e12 in steps of 10^1.5 (9 values; the paper: 1 to
#: 1e19 in steps of 10): on the demo's data every alpha above 1e12 (1e6 x the largest
#: kernel eigenvalue) predicts the same up to scale, i.e. the same r. ``lesions`` applies
#: when the config has a ``[lesions]`` table (the ``demo`` command adds one unless
#: ``--no-lesions``): the generator's lesions, shared + specific per language + controls.
RECIPE = {
    "features": {"stride_tokens": 256},
    "encoding": {"alphas": {"logspace": [0, 12, 9]}},
    "lesions": dict(GENERATOR_LESIONS, min_relative_drop=DEMO_MIN_RELATIVE_DROP,
                    random_controls=DEMO_RANDOM_CONTROLS),
    "controls": {"shifts": 1},
}


def _z(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(0)
    sd[sd == 0] = 1.0
    return (X - X.mean(0)) / sd


def _stack_z(runs: list) -> np.ndarray:
    """Runs z-scored one by one, stacked: (sum of rows, d) float64."""
    return np.concatenate([_z(h) for h in runs])


def _residual_cov(H0: np.ndarray, H1: np.ndarray, alpha: float = 100.0) -> np.ndarray:
    """Covariance of what a linear map of the lesioned features ``H1`` cannot express of
    the intact ones ``H0`` (both from :func:`_stack_z`): H0 regressed on H1 (ridge,
    ``alpha``), residual."""
    B = np.linalg.solve(H1.T @ H1 + alpha * np.eye(H1.shape[1]), H1.T @ H0)
    R = H0 - H1 @ B
    return R.T @ R / len(R)


def lost_directions(intact: list, lesioned: list, k: int | None = None, alpha: float = 100.0,
                    controls: list | None = None, shrink: float | None = None):
    """The ``k`` feature directions the lesion destroys, as a linear encoding model sees it.

    ``intact``, ``lesioned``: per-run features. Intact features (z-scored) are regressed on
    the lesioned ones (ridge, ``alpha``); the top principal axes of the residual -- what
    the lesioned model cannot express linearly -- are returned as a ``(d, k)`` matrix (unit
    columns; ``k`` defaults to ``N_DRIVERS``). With ``controls`` (a list: per control, its
    per-run features under a size-matched random lesion), the axes are those the lesion
    destroys *more than random lesions do*: the top eigenvectors of the lesion's residual
    covariance minus the controls' mean one. With ``shrink``, the axes maximise that loss
    *relative to* the intact variance along them (generalised eigenvectors of the loss and
    of the intact correlation matrix plus ``shrink`` times the identity): small ``shrink``
    favours directions the lesion removes almost entirely but the intact features carry
    weakly, large ``shrink`` tends to the absolute loss.
    """
    from scipy.linalg import eigh

    H0 = _stack_z(intact)
    C = _residual_cov(H0, _stack_z(lesioned), alpha)
    if controls:
        C = C - sum(_residual_cov(H0, _stack_z(c), alpha) for c in controls) / len(controls)
    if shrink is None:
        w, v = eigh(C)
    else:
        w, v = eigh(C, H0.T @ H0 / len(H0) + shrink * np.eye(H0.shape[1]))
    v = v[:, ::-1][:, : N_DRIVERS if k is None else k]
    return v / np.linalg.norm(v, axis=0)


def drivers_from(features: list, directions: np.ndarray, tr: float = TR) -> list:
    """Per run: z-scored intact features along ``directions``, convolved with the SPM HRF,
    each driver scaled to unit variance over the runs."""
    allx = np.concatenate(features).astype(np.float64)
    mu, sd = allx.mean(0), allx.std(0)
    sd[sd == 0] = 1.0
    h = _hrf(tr)
    out = []
    for X in features:
        Z = ((X - mu) / sd) @ directions
        out.append(np.stack([np.convolve(Z[:, j], h)[: len(Z)] for j in range(Z.shape[1])], 1))
    zs = np.concatenate(out).std(0)
    zs[zs == 0] = 1.0
    return [Z / zs for Z in out]


def planted_drivers(features: dict) -> dict:
    """{(category, language): per-run drivers}.

    ``features[code]``: per-run features of every run under the generator's conditions:
    ``{"intact": runs, "shared": runs, "specific": runs (the code's own specific lesion),
    "controls": [runs, ...] (the random controls)}``; the directions are found on these
    and the drivers are made from the intact ones.

    * shared regions: the directions the *shared* lesion destroys beyond the random controls,
      found on all languages pooled (the same directions in every language);
    * the specific region of L: the directions L's *specific* lesion destroys in L beyond the
      random controls, relative to the intact variance (``DIRECTION_SHRINK``).
    """
    langs = [c for c in LANGUAGES if c in features]

    def pooled(part):
        return [x for c in langs for x in features[c][part]]

    n_controls = len(features[langs[0]]["controls"])
    controls = [[x for c in langs for x in features[c]["controls"][j]]
                for j in range(n_controls)]
    shared_dirs = lost_directions(pooled("intact"), pooled("shared"), alpha=DIRECTION_ALPHA,
                                  controls=controls)
    out = {}
    for c in langs:
        f = features[c]
        out[("shared", c)] = drivers_from(f["intact"], shared_dirs)
        spec = lost_directions(f["intact"], f["specific"], alpha=DIRECTION_ALPHA,
                               shrink=DIRECTION_SHRINK, controls=f["controls"])
        out[(c, c)] = drivers_from(f["intact"], spec)
    return out


def synthesize_run(drivers: dict, truth: dict, language: str, subject_index: int,
                   run_index: int, seed: int) -> np.ndarray:
    """BOLD of one subject, language and run: (T, V) float32 in scanner-like units.

    ``drivers``: {category: (T, N_DRIVERS)} for the categories active in ``language``
    (``"shared"`` and the language's own code).
    """
    V = len(truth["labels"])
    T = next(iter(drivers.values())).shape[0]
    rng_s = np.random.default_rng([seed, 3, subject_index])  # subject amplitude factors
    factors = rng_s.uniform(0.9, 1.1, size=len(CATEGORIES))
    signal = np.zeros((T, V), dtype=np.float32)
    for i, cat in enumerate(CATEGORIES):
        if cat not in drivers:
            continue
        amp = (truth["amplitude"][cat] * factors[i]).astype(np.float32)
        cols = np.flatnonzero(amp > 0)
        # voxel weights: fixed across subjects and languages, one set per category
        W = np.random.default_rng([seed, 2, i]).standard_normal((N_DRIVERS, V))[:, cols]
        W /= np.linalg.norm(W, axis=0, keepdims=True)
        S = (drivers[cat] @ W).astype(np.float32)
        S /= S.std(0, keepdims=True) + 1e-8
        signal[:, cols] += S * amp[cols]
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
    Y = (signal + noise + drift) * 10.0 + baseline
    return np.ascontiguousarray(Y, dtype=np.float32)





def _check_config(d: dict, data_d: dict) -> None:
    """A demo config names no TR of its own and no languages (the demo brings both)."""
    if data_d.get("tr", TR) != TR:
        raise LesionAlignError(f"[data].tr = {data_d['tr']!r}: the demo's TR is "
                               f"{TR} s; leave it out")
    if d.get("languages"):
        raise LesionAlignError("[languages.*]: the demo brings its own languages "
                               f"({', '.join(LANGUAGES)}); remove these tables "
                               "or use kind = 'volume' / 'regions'")


def _read_config(kind: str, data_d: dict, d: dict, base) -> tuple:
    """The demo's ``[data]``: its ``[data.demo]`` table and its shipped languages."""
    v = data_d.pop("demo", {})
    if not isinstance(v, dict):
        raise LesionAlignError(f"[demo] = {v!r}: must be a table")
    return data_d, list(demo_language_data()), DemoConfig.parse(dict(v))


#: ``kind = "demo"`` for the config reader: the recipe as defaults, the demo's data
DATA_KIND = DataKind("demo", _read_config, RECIPE, _check_config)
