"""Compare alignment maps between the intact model and its lesions.

* :func:`delta` -- per subject and voxel, ``Δr = r_intact - r_lesioned`` and the relative
  drop ``Δr / r_intact``;
* :func:`paired_t` -- across subjects, per voxel: paired t-test of intact vs lesioned
  (``scipy.stats.ttest_rel``), one-sided for a drop by default, with FDR q-values
  (``scipy.stats.false_discovery_control``, Benjamini-Hochberg) over the voxels where the
  intact model aligns (:func:`alignment_test`: r > 0 across subjects, FDR): a lesion can
  only lower alignment where there is some, and testing elsewhere only costs power;
* :func:`categories` -- the per-voxel category map of a lesion pair: ``shared`` (a
  significant drop in every language under the shared lesion), ``specific:<L>`` (a
  significant drop for L under L's specific lesion and not for the other languages),
  ``none``;
* :func:`lpi` -- the Language Processing Index of METHOD.md:
  ``LPI_L = (t_L - mean t_other) / (|t_L| + |mean t_other| + eps)``, kept where L's test is
  significant.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..base.errors import LesionAlignError

#: Okabe & Ito's colour-blind-safe qualitative palette ("Color Universal Design", 2008)
OKABE_ITO = {"black": "#000000", "orange": "#e69f00", "sky blue": "#56b4e9",
             "bluish green": "#009e73", "yellow": "#f0e442", "blue": "#0072b2",
             "vermillion": "#d55e00", "reddish purple": "#cc79a7"}
#: one colour per category, the same in every napari layer, legend, Inspector bar and QC
#: figure: Okabe-Ito hues, away from the maps' red-yellow / blue-cyan ramps. Shared is
#: blue: reddish purple (the first choice) turns grey under deuteranopia and vanishes on
#: the grey template (docs/images/napari-overlay-cvd.png)
CATEGORY_COLOURS = {
    "none": "#00000000",
    "shared": OKABE_ITO["blue"],
}
#: the first language's light green: not an Okabe-Ito colour. Okabe-Ito's bluish green
#: turns grey under deuteranopia (an outline in it vanishes on the grey template); this
#: green keeps its colour and stays apart from shared, sky blue and orange under
#: protanopia, deuteranopia and tritanopia (a search over RGB with core.figures.simulate_cvd;
#: tests/test_figures.py checks it) and away from the maps' red-yellow / blue-cyan ramps
LIGHT_GREEN = "#7fdc6e"
#: the languages' colours, by the language's position in the analysis
LANGUAGE_COLOURS = (LIGHT_GREEN,) + tuple(OKABE_ITO[c] for c in (
    "sky blue", "orange", "reddish purple", "vermillion", "yellow", "bluish green", "black"))


def language_colour(code: str, order: list[str] | None = None) -> str:
    """A language's colour: by its position in ``order`` (the analysis' languages), else
    by a stable hash of its code (str hash() changes from one process to the next)."""
    idx = list(order).index(code) if order and code in order else zlib.crc32(code.encode())
    return LANGUAGE_COLOURS[idx % len(LANGUAGE_COLOURS)]


def delta(r_intact: np.ndarray, r_lesioned: np.ndarray, eps: float = 1e-6):
    """``(Δr, relative drop)``; the relative drop is NaN where ``r_intact <= eps``."""
    d = np.asarray(r_intact, dtype=np.float64) - np.asarray(r_lesioned, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(np.asarray(r_intact) > eps, d / np.asarray(r_intact), np.nan)
    return d.astype(np.float32), rel.astype(np.float32)


@dataclass
class PairedTest:
    t: np.ndarray
    p: np.ndarray
    q: np.ndarray
    n_subjects: int
    #: group relative drop per voxel: mean(intact - lesioned) / mean(intact) over subjects
    #: (NaN where the mean intact r is not positive); None when not computed
    rel_drop: np.ndarray | None = None
    #: where the drop is beyond the lesion's random draws' (a boolean map; None: not
    #: compared): :func:`significant` then also requires it
    beyond: np.ndarray | None = None


def alignment_test(r: np.ndarray) -> PairedTest:
    """Where the intact model aligns: one-sample t-test of r > 0 across subjects (rows);
    threshold it with :func:`responsive`."""
    return paired_t(r, np.zeros_like(r))


def responsive(test: PairedTest, alpha: float = 0.05, correction: str = "fdr") -> np.ndarray:
    """Voxels with significant intact alignment (a lesion can only lower alignment there)."""
    return significant(test, alpha, correction)


def relative_drop(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The group relative drop per voxel of paired (subjects, voxels) arrays,
    mean(A - B) / mean(A) (NaN where mean A <= 0), float32."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mA = A.mean(0)
        return np.where(mA > 0, (mA - B.mean(0)) / mA, np.nan).astype(np.float32)


def paired_t(r_intact: np.ndarray, r_lesioned: np.ndarray, alternative: str = "greater",
             fdr_method: str = "bh", within: np.ndarray | None = None) -> PairedTest:
    """Paired t-test per voxel across subjects (rows), intact vs lesioned.

    ``alternative="greater"`` tests for a drop (intact > lesioned). Voxels with NaN in any
    subject or with no variance of the differences get t = 0, p = 1. q-values: FDR
    (``scipy.stats.false_discovery_control``) over the tested voxels, restricted to
    ``within`` when given (e.g. the voxels where the intact model aligns; q = 1 elsewhere).
    """
    from scipy.stats import false_discovery_control, ttest_rel

    A = np.asarray(r_intact, dtype=np.float64)
    B = np.asarray(r_lesioned, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise LesionAlignError(f"paired test needs two (subjects, voxels) arrays, got {A.shape}, "
                               f"{B.shape}")
    n = A.shape[0]
    if n < 2:
        raise LesionAlignError("a paired test across subjects needs at least 2 subjects")
    ok = np.isfinite(A).all(0) & np.isfinite(B).all(0)
    d = A[:, ok] - B[:, ok]
    ok[ok] = d.std(0) > 1e-9 * (1.0 + np.abs(d.mean(0)))
    t = np.zeros(A.shape[1])
    p = np.ones(A.shape[1])
    rel = relative_drop(A, B)
    if ok.any():
        res = ttest_rel(A[:, ok], B[:, ok], axis=0, alternative=alternative)
        t[ok] = res.statistic
        p[ok] = res.pvalue
    q = np.ones_like(p)
    fam = ok if within is None else ok & np.asarray(within, dtype=bool)
    if fam.any():
        q[fam] = false_discovery_control(p[fam], method=fdr_method)
    if within is not None:
        p = np.where(np.asarray(within, dtype=bool), p, 1.0)
    return PairedTest(t.astype(np.float32), p.astype(np.float32), q.astype(np.float32), n,
                      rel)


def significant(test: PairedTest, alpha: float = 0.05, correction: str = "fdr",
                min_relative_drop: float = 0.0) -> np.ndarray:
    """Voxels with a significant drop: q < alpha (``fdr``) or p < alpha (``none``), beyond
    the lesion's random draws where they were compared (``test.beyond``) and, when
    ``min_relative_drop`` > 0, a group relative drop of at least that much (a drop that is
    consistent across subjects but tiny is not counted)."""
    if correction == "fdr":
        sig = test.q < alpha
    elif correction == "none":
        sig = test.p < alpha
    else:
        raise LesionAlignError(f"unknown correction {correction!r}; use 'fdr' or 'none'")
    if test.beyond is not None:
        sig &= test.beyond
    if min_relative_drop > 0:
        if test.rel_drop is None:
            raise LesionAlignError("min_relative_drop needs the tests' relative drops "
                                   "(paired_t computes them)")
        with np.errstate(invalid="ignore"):
            sig &= test.rel_drop >= min_relative_drop
    return sig


def categories(shared_tests: dict, specific_tests: dict, languages: list[str],
               alpha: float = 0.05, correction: str = "fdr",
               min_relative_drop: float = 0.0) -> tuple[np.ndarray, dict]:
    """Per-voxel category labels and their legend.

    Parameters
    ----------
    shared_tests : {language: PairedTest} under the shared lesion.
    specific_tests : {L: {language: PairedTest}} under L's specific lesion, every language.
    min_relative_drop : a "drop" is significant *and* at least this relative drop
        (:func:`significant`); 0 = significance alone.

    Returns
    -------
    labels : (V,) int16 -- 0 none, 1 shared, 2 + i specific to ``languages[i]``.
    legend : {label: {"name", "meaning", "colour"}}
    """
    V = len(next(iter(shared_tests.values())).t) if shared_tests else \
        len(next(iter(next(iter(specific_tests.values())).values())).t)
    stat = "q" if correction == "fdr" else "p"
    size = f" and a group relative drop >= {min_relative_drop:g}" if min_relative_drop > 0 else ""
    every = list(shared_tests.values()) + [t for d in specific_tests.values()
                                           for t in d.values()]
    if any(t.beyond is not None for t in every):
        size += " and beyond the lesion's random draws"
    rule = f" (a drop: {stat} < {alpha:g}{size})"
    labels = np.zeros(V, dtype=np.int16)
    legend = {0: {"name": "none", "meaning": "no category", "colour": CATEGORY_COLOURS["none"]}}
    for i, L in enumerate(languages):
        tests = specific_tests.get(L)
        if not tests:
            continue
        own = significant(tests[L], alpha, correction, min_relative_drop)
        others = np.zeros(V, dtype=bool)
        for L2 in languages:
            if L2 != L and L2 in tests:
                others |= significant(tests[L2], alpha, correction, min_relative_drop)
        labels[own & ~others] = 2 + i
        legend[2 + i] = {"name": f"specific:{L}",
                         "meaning": f"significant drop for {L} under the {L}-specific lesion and "
                                    "not for the other languages" + rule,
                         "colour": language_colour(L, languages)}
    if shared_tests:
        shared = np.ones(V, dtype=bool)
        for L in languages:
            shared &= significant(shared_tests[L], alpha, correction, min_relative_drop)
        labels[shared] = 1  # shared wins where a voxel is also language-specific
        legend[1] = {"name": "shared",
                     "meaning": "significant drop in every language under the shared lesion" + rule,
                     "colour": CATEGORY_COLOURS["shared"]}
    return labels, dict(sorted(legend.items()))


def lpi(tests: dict, language: str, alpha: float = 0.05, correction: str = "fdr",
        eps: float = 1e-6, min_relative_drop: float = 0.0) -> np.ndarray:
    """Language Processing Index of ``language`` under its specific lesion (NaN where its own
    test is not significant); positive = specific to ``language``."""
    tL = tests[language].t.astype(np.float64)
    others = [tests[L].t.astype(np.float64) for L in tests if L != language]
    if not others:
        raise LesionAlignError("the LPI needs at least two languages")
    to = np.mean(others, axis=0)
    val = (tL - to) / (np.abs(tL) + np.abs(to) + eps)
    val[~significant(tests[language], alpha, correction, min_relative_drop)] = np.nan
    return val.astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean maps (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def beyond_random(lesion_r: np.ndarray, draws_sum: np.ndarray, draws_means: list,
                  within: np.ndarray, alpha: float = 0.05, correction: str = "fdr"):
    """Where a lesion's drop is beyond its K random draws' (per voxel, one language).

    Two conditions, both required: across subjects, the lesion's r (``lesion_r``, subjects
    x voxels) is below the mean r of its draws (``draws_sum`` / K; a paired one-sided t-test
    over the voxels ``within``, corrected as ``correction``, at ``alpha``), and the
    lesion's group mean r is below every draw's group mean r (``draws_means``: its group
    drop is larger than each of the K draws': the empirical rank test's best, p = 1 /
    (K + 1)). Returns the test (t, p, q) and the boolean map."""
    mean_draws = draws_sum / len(draws_means)
    res = paired_t(mean_draws, lesion_r, within=within)
    beyond = significant(res, alpha, correction)
    beyond &= np.all(np.stack(draws_means) > lesion_r.mean(0), axis=0)
    return res, beyond


def category_maps(cat_sets: dict, tests: dict, languages: list, alpha: float = 0.05,
                  correction: str = "fdr", min_relative_drop: float = 0.0):
    """The category maps of every set of selections (``cat_sets``: name -> (shared label,
    {language: specific label})) from the group tests (``tests``: (label, language) ->
    test), and the LPI maps of the specific lesions (with more than one language).

    Returns ``(categories, lpi)``: name -> :func:`categories`' result, and a list of
    ``(language, label, map)`` in the order they are made. A set whose tests are missing
    in some language is left out."""
    out, lpis = {}, []
    for name, (shared, spec) in cat_sets.items():
        shared_tests = {}
        if shared and all((shared, L) in tests for L in languages):
            shared_tests = {L: tests[(shared, L)] for L in languages}
        spec_tests = {L: {L2: tests[(lbl, L2)] for L2 in languages}
                      for L, lbl in spec.items() if all((lbl, L2) in tests for L2 in languages)}
        if not shared_tests and not spec_tests:
            continue
        out[name] = categories(shared_tests, spec_tests, languages, alpha, correction,
                               min_relative_drop)
        if len(languages) > 1:
            for L, t in spec_tests.items():
                lpis.append((L, spec[L], lpi(t, L, alpha, correction,
                                            min_relative_drop=min_relative_drop)))
    return out, lpis
