"""How each statistic is shown, with one owner: its label, colour-ramp kind, default
threshold rule and slider scale (no Qt, no napari).

The napari layers (reader, Results dock, sample), the exported view and the QC figure all
read :data:`STATISTICS` and :func:`default_threshold`, so a coloured voxel means the same
thing everywhere:

* **t** (and **t vs random**): the group test's corrected significance, the smallest
  ``|t|`` of the voxels whose ``q`` (FDR) or ``p`` (``correction = "none"``) is below the
  result's ``[lesions] alpha``; without the p / q maps, the one-sided critical t of
  ``alpha`` at ``n - 1`` degrees of freedom (uncorrected);
* **p, q** (and their *vs random* maps): the result's ``alpha``;
* **r, Δr, relative drop, LPI**: stated display defaults (:attr:`Statistic.default`); no
  test stands behind them and the text says so.

:func:`describe` turns a threshold into the words shown next to the slider, in the
exported view and in the QC figure (``"t ≥ 4.2 · q < 0.05 FDR · 4 df"``).

Colours: the maps' ramps (:data:`MAP_RAMPS`) and the **magnitude** ramp the maps switch to
while category overlays are shown (grey to white: colour then always means a category,
brightness the map's ``|value|``; tests/test_figures.py checks that no category colour can
be confused with it, also under simulated colour-vision deficiencies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..base.errors import LesionAlignError

#: the significance level and correction of a result without them in its provenance
DEFAULT_ALPHA = 0.05
DEFAULT_CORRECTION = "fdr"


@dataclass(frozen=True)
class Statistic:
    """One statistic's display rule."""

    key: str
    label: str
    #: ``diverging`` (symmetric, ``|v| >= threshold`` shown), ``sequential`` (small =
    #: significant: ``v < threshold`` shown), ``binary`` (0 / 1), ``labels``, ``anatomy``
    kind: str
    #: ``significance`` (the group test's), ``alpha`` (the result's alpha), ``fixed``
    #: (:attr:`default`) or ``none`` (not thresholded)
    rule: str
    default: float | None = None
    #: slider step in the statistic's units (None: from the data, 1-2-5 rounded)
    step: float | None = None
    #: slider maximum (None: from the data)
    maximum: float | None = None
    #: what it is, for tooltips and the legend
    meaning: str = ""
    #: the colour limit when it is fixed (None: from the data, :func:`.._layers.robust_limit`)
    limit: float | None = None


STATISTICS: dict[str, Statistic] = {s.key: s for s in (
    Statistic("r", "r", "diverging", "fixed", 0.1, 0.01, 1.0,
              "held-out correlation of the encoding model"),
    Statistic("deltar", "Δr", "diverging", "fixed", 0.02, None, None,
              "r intact - r lesioned (positive: the lesion lowers the alignment)"),
    Statistic("reldrop", "rel. drop", "diverging", "fixed", 0.1, 0.01, 1.0,
              "group relative drop: mean Δr / mean intact r"),
    Statistic("t", "t", "diverging", "significance", None, 0.1, None,
              "paired t across subjects (positive: a drop)"),
    Statistic("p", "p", "sequential", "alpha", None, 0.001, 0.1, "p of the group test"),
    Statistic("q", "q", "sequential", "alpha", None, 0.001, 0.1,
              "FDR q (Benjamini-Hochberg) of the group test"),
    Statistic("lpi", "LPI", "diverging", "fixed", 0.2, 0.01, 1.0,
              "language preference index", limit=1.0),
    Statistic("tvsrandom", "t vs random", "diverging", "significance", None, 0.1, None,
              "paired t of the lesion against its random draws"),
    Statistic("pvsrandom", "p vs random", "sequential", "alpha", None, 0.001, 0.1,
              "p of the lesion against its random draws"),
    Statistic("qvsrandom", "q vs random", "sequential", "alpha", None, 0.001, 0.1,
              "q of the lesion against its random draws"),
    Statistic("beyondrandom", "beyond random", "diverging", "fixed", 0.5, None, 1.0,
              "1 where the drop is beyond every random draw's"),
    Statistic("pfwe", "p FWE", "sequential", "alpha", None, 0.001, 0.1,
              "family-wise corrected p of the group permutation test (sign flips)"),
    Statistic("pfwevsrandom", "p FWE vs random", "sequential", "alpha", None, 0.001, 0.1,
              "family-wise corrected p of the lesion against its random draws "
              "(sign-flip permutations)"),
    Statistic("ceiling", "noise ceiling", "diverging", "fixed", 0.1, 0.01, 1.0,
              "the best r a model of the story can reach: sqrt of the mean correlation "
              "between two subjects' cleaned BOLD", limit=1.0),
    Statistic("isc", "ISC (leave one out)", "diverging", "fixed", 0.1, 0.01, 1.0,
              "inter-subject correlation: each subject against the mean of the others, "
              "averaged", limit=1.0),
    Statistic("qceiling", "q ceiling", "sequential", "alpha", None, 0.001, 0.1,
              "FDR q of the subjects' leave-one-out ISC above 0 (where the ceiling is "
              "reliable)"),
    Statistic("normr", "r / ceiling", "diverging", "fixed", 0.2, 0.01, None,
              "group mean r divided by the noise ceiling, where the ceiling is reliably "
              "above 0 (NaN elsewhere)"),
    Statistic("z", "z", "diverging", "fixed", 3.1, 0.1, None, "z score"),
    Statistic("beta", "β", "diverging", "none", None, None, None, "weight"),
    Statistic("categories", "categories", "labels", "none"),
    Statistic("mask", "mask", "labels", "none"),
    Statistic("template", "template", "anatomy", "none"),
)}

#: the maps a subject's fit writes: r for every condition, Δr for a lesion's
SUBJECT_STATS = ("r", "deltar")
#: the maps of a group test, in the order they are written: the statistic, p, FDR q
GROUP_TEST = ("t", "p", "q")
#: the maps of a group permutation test ([statistics] inference = "permutation"): the
#: statistic and its family-wise corrected p
PERMUTATION_TEST = ("t", "pfwe")
#: the maps of a language's noise ceiling (written by its ceiling unit, beside the intact
#: model's group maps) and of alignment normalised by it (per condition)
CEILING_STATS = ("ceiling", "isc", "qceiling")
NORMALISED = "normr"
#: the order the Results dock lists statistics in (others after, by name)
SHOW_ORDER = ("r", "normr", "deltar", "reldrop", "t", "q", "p", "pfwe", "lpi", "beyondrandom",
              "tvsrandom", "qvsrandom", "pvsrandom", "pfwevsrandom", "ceiling", "isc",
              "qceiling")

DIVERGING = tuple(k for k, s in STATISTICS.items() if s.kind == "diverging")
SEQUENTIAL = tuple(k for k, s in STATISTICS.items() if s.kind == "sequential")
LABELS = {k: s.label for k, s in STATISTICS.items()}
#: the p / q map that decides significance for a t map
_TEST_OF = {"t": ("p", "q"), "tvsrandom": ("pvsrandom", "qvsrandom")}
#: the family-wise p map of a permutation test's t map
_FWE_OF = {"t": "pfwe", "tvsrandom": "pfwevsrandom"}


def group_map_shown(result, language, condition, stat):
    """A group map's values as they are shown (layers, surface, export): a test's ``t``
    (``t``, ``tvsrandom``) only where that test was made, NaN elsewhere. A lesion is tested
    only where the intact model aligns; elsewhere its t is a number no test stands behind
    (its p and q are written as 1 there), which a threshold in t alone would colour."""
    import numpy as np

    values = result.group_maps[(language, condition, stat)]
    if stat not in _TEST_OF:
        return values
    p_name = next((k for k in (_TEST_OF[stat][0], _FWE_OF[stat])
                   if (language, condition, k) in result.group_maps), None)
    if p_name is None:
        return values
    p = np.asarray(result.group_maps[(language, condition, p_name)])
    with np.errstate(invalid="ignore"):
        return np.where(p < 1.0, np.asarray(values, dtype=np.float32), np.float32(np.nan))


def statistic(stat: str) -> Statistic:
    """The display rule of ``stat`` (an unknown one: grey, no threshold)."""
    return STATISTICS.get(stat) or Statistic(str(stat), str(stat), "anatomy", "none")


# --------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Threshold:
    """A statistic's threshold and where it comes from."""

    stat: str
    value: float | None
    #: ``"fdr"``, ``"none"`` (uncorrected), ``"fwe"`` (a permutation test) or None (a
    #: display default, no test)
    correction: str | None = None
    alpha: float | None = None
    df: int | None = None
    #: no voxel passes the test (value is then above every |t|)
    empty: bool = False

    @property
    def text(self) -> str:
        return describe(self.stat, self.value, self)


def inference_of(result) -> str:
    """How a result's group maps were inferred, in words: ``"parametric"`` or
    ``"permutation max-t, FWE, 5000 sign flips"`` (its ``[statistics]`` config)."""
    st = ((getattr(result, "provenance", None) or {}).get("config") or {}).get(
        "statistics") or {}
    if st.get("inference") != "permutation":
        return "parametric"
    return f"permutation {st.get('method')}, FWE, {st.get('n_perm')} sign flips"


def test_settings(result) -> tuple[float, str]:
    """``(alpha, correction)`` of a result's group tests (its ``[lesions]`` config)."""
    lesions = ((getattr(result, "provenance", None) or {}).get("config") or {}
               ).get("lesions") or {}
    alpha = float(lesions.get("alpha") or DEFAULT_ALPHA)
    correction = lesions.get("correction") or DEFAULT_CORRECTION
    return alpha, correction


def degrees_of_freedom(result) -> int | None:
    """The group test's degrees of freedom: subjects - 1 (None with one subject)."""
    n = len(getattr(result, "subjects", []) or [])
    return n - 1 if n > 1 else None


def default_threshold(result, stat: str, language=None, condition=None) -> Threshold:
    """The one default threshold of ``stat`` (module docstring); ``result`` may be None
    (then alpha 0.05 FDR and no df)."""
    import numpy as np

    st = statistic(stat)
    alpha, correction = test_settings(result) if result is not None else (
        DEFAULT_ALPHA, DEFAULT_CORRECTION)
    df = degrees_of_freedom(result) if result is not None else None
    if st.rule == "fixed":
        return Threshold(stat, st.default)
    if st.rule == "alpha":
        corr = ("fdr" if stat.startswith("q") else "fwe" if stat.startswith("pfwe")
                else "none")
        return Threshold(stat, alpha, corr, alpha, df)
    if st.rule != "significance":
        return Threshold(stat, None)
    p_name, q_name = _TEST_OF.get(stat, ("p", "q"))
    which = q_name if correction == "fdr" else p_name
    maps = getattr(result, "group_maps", {}) or {}
    fwe = _FWE_OF.get(stat, "pfwe")
    if (language, condition, fwe) in maps:  # a permutation test: its FWE p decides
        which, correction = fwe, "fwe"
    key_t, key_p = (language, condition, stat), (language, condition, which)
    if key_t in maps and key_p in maps:
        t = np.abs(np.asarray(maps[key_t], dtype=float))
        p = np.asarray(maps[key_p], dtype=float)
        with np.errstate(invalid="ignore"):
            sig = np.isfinite(t) & (p < alpha)
        if sig.any():
            return Threshold(stat, float(t[sig].min()), correction, alpha, df)
        finite = t[np.isfinite(t)]
        top = float(finite.max()) if len(finite) else 0.0
        # above every |t| by 5 %: clear of the display's margin below a threshold
        return Threshold(stat, top * 1.05 if top > 0 else 1.0, correction, alpha, df,
                         empty=True)
    if df:
        from scipy.stats import t as student

        return Threshold(stat, float(student.ppf(1 - alpha, df)), "none", alpha, df)
    return Threshold(stat, 3.0)


def describe(stat: str, value, test: Threshold | None = None) -> str:
    """The threshold in words: ``"t ≥ 4.2 · q < 0.05 FDR · 4 df"`` at the test's
    threshold, ``"|Δr| ≥ 0.02 (display default, no test)"``, ``"q < 0.05 (FDR)"``; a value
    moved away from the default says so (``"t ≥ 6 (the test: t ≥ 4.2 · q < 0.05 FDR)"``)."""
    st = statistic(stat)
    if value is None:
        return f"{st.label}: no threshold"
    v = _fmt(value)
    if st.kind == "sequential":
        corr = ("FDR" if stat.startswith("q") else "FWE, permutation"
                if stat.startswith("pfwe") else "uncorrected")
        return f"{st.label} < {v} ({corr})"
    shown = f"{st.label} ≥ {v}" if stat in ("t", "tvsrandom", "z") else f"|{st.label}| ≥ {v}"
    if test is None or test.correction is None:
        if st.rule == "fixed" and test is not None:
            return f"{shown} (display default, no test)"
        return shown
    which = ("q" if test.correction == "fdr" else "p")
    corr = {"fdr": "FDR", "fwe": "FWE (permutation)"}.get(test.correction, "uncorrected")
    words = f"{which} < {_fmt(test.alpha)} {corr}" + (f" · {test.df} df" if test.df else "")
    if test.empty:
        words += " · no voxel passes"
    if test.value is not None and not math.isclose(float(value), float(test.value),
                                                   rel_tol=1e-6):
        return f"{shown} (the test: {st.label} ≥ {_fmt(test.value)} · {words})"
    return f"{shown} · {words}"


def _fmt(v) -> str:
    return f"{float(v):.3g}"


# --------------------------------------------------------------------------- slider
def nice_step(span: float, n: int = 100) -> float:
    """A 1-2-5 step of about ``span / n``."""
    if not span > 0 or not math.isfinite(span):
        return 0.01
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def round_to(value: float, step: float, how: str = "nearest") -> float:
    """``value`` on the grid of ``step`` (``down`` / ``up`` / ``nearest``), without
    binary noise (0.1 + 0.2 gives 0.3)."""
    f = {"down": math.floor, "up": math.ceil}.get(how, round)
    k = f(value / step + (1e-9 if how == "down" else -1e-9 if how == "up" else 0))
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    return round(k * step, decimals)


@dataclass(frozen=True)
class SliderScale:
    """The threshold slider in the statistic's own units: ``minimum + i * step``."""

    minimum: float
    maximum: float
    step: float

    @property
    def positions(self) -> int:
        return int(round((self.maximum - self.minimum) / self.step))

    def value(self, position: int) -> float:
        return round_to(self.minimum + int(position) * self.step, self.step)

    def position(self, value) -> int:
        v = min(max(float(value), self.minimum), self.maximum)
        return int(round((v - self.minimum) / self.step))


def slider_scale(stat: str, data_limit: float, default=None) -> SliderScale:
    """The slider of ``stat``: from 0 (p, q: one step) to the table's maximum, else the
    data's ``data_limit`` (e.g. its 99th percentile of ``|v|``) or twice the default,
    whichever is larger, in the table's step (else a 1-2-5 step of about 1/100)."""
    st = statistic(stat)
    if st.kind == "sequential":
        step = st.step or 0.001
        return SliderScale(step, st.maximum or 0.1, step)
    top = st.maximum
    if top is None:
        top = max(abs(float(data_limit or 0.0)), 2 * float(default or 0.0), 1e-6)
    step = st.step or nice_step(top)
    top = round_to(top, step, "up")
    return SliderScale(0.0, max(top, step), step)


# --------------------------------------------------------------------------- colours
#: the maps' colour ramps (RGB 0..1, from the threshold to the top of the range)
MAP_RAMPS = {"positive": ((1.0, 0.12, 0.0), (1.0, 1.0, 0.0)),   # red -> yellow
             "negative": ((0.0, 0.25, 1.0), (0.0, 1.0, 1.0)),   # blue -> cyan
             #: while category overlays are shown: |value| in light grey -> white
             "magnitude": ((0.85, 0.85, 0.85), (1.0, 1.0, 1.0))}
#: the template's display range: its upper contrast limit is this times its 99.5th
#: percentile, so white matter is a mid grey (not saturated) and maps stay brighter
TEMPLATE_HEADROOM = 2.0
#: the analysis mask's outline colour (magenta: apart from the grey template and from
#: the maps' ramps)
MASK_COLOUR = "#ff33cc"


def map_colours(kind: str, n: int = 64):
    """``(n, 3)`` RGB samples of the map colours of a colormap kind: ``diverging`` (both
    ramps), ``sequential`` (red -> yellow), ``magnitude`` (grey -> white)."""
    import numpy as np

    def ramp(c0, c1):
        t = np.linspace(0.0, 1.0, n)[:, None]
        return (1 - t) * np.asarray(c0) + t * np.asarray(c1)

    if kind == "diverging":
        return np.vstack([ramp(*MAP_RAMPS["positive"]), ramp(*MAP_RAMPS["negative"])])
    if kind == "sequential":
        return ramp(*MAP_RAMPS["positive"])
    if kind == "magnitude":
        return ramp(*MAP_RAMPS["magnitude"])
    raise LesionAlignError(f"unknown colour kind {kind!r}; use diverging, sequential or "
                           "magnitude")


def map_kind(stat: str, categories_shown: bool = False) -> str:
    """The colormap kind a map of ``stat`` uses: ``magnitude`` while category overlays
    are shown (colour then means only a category), else its table kind."""
    st = statistic(stat)
    if st.kind not in ("diverging", "sequential"):
        return st.kind
    return "magnitude" if categories_shown else st.kind
