"""Quality-control figure of a result (matplotlib, Agg; no Qt, no napari).

:func:`qc_figure` writes one PNG:

* title: the model, the category set and what a category voxel means: the group test's
  significance level, correction and degrees of freedom (``core.analysis.display``, the same
  rule as the napari layers and the exported view);
* top: a few axial slices of the category map (``shared`` blue, ``specific:<L>`` in L's
  colour, as in the napari layers) over nilearn's MNI152 template, in the neurological
  convention (left hemisphere on the left, anterior at the top), with a legend and voxel
  counts;
* bottom: per condition (intact, each lesion followed by its random control), the
  whole-brain mean r of each language (mean over subjects, error bar = SD across
  subjects), bars in the language colours, controls hatched.

The file is written atomically; nothing is written when an error is raised.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..analysis.display import degrees_of_freedom, test_settings
from ..base.errors import LesionAlignError
from ..analysis.statistics import CATEGORY_COLOURS, language_colour
from ..base import io as _io
from .names import CEILING_CONDITION
from .result import AlignmentResult

FIGSIZE = (12.0, 8.0)  # inches
DPI = 100
N_SLICES = 5


def category_colours(legend: dict, languages=None) -> dict:
    """``{label: "#rrggbb[aa]"}`` of a category legend: 0 transparent, ``shared`` and
    ``specific:<L>`` in their colours (:data:`.analysis.CATEGORY_COLOURS`,
    :func:`.analysis.language_colour` by the legend's language order: colour-blind safe,
    apart from the maps' colormaps); languages not in ``languages`` (when given)
    transparent. The napari category layers, their legend and the QC figure use it."""
    clear = CATEGORY_COLOURS["none"]
    order = [str(e.get("name", "")).split(":", 1)[1] for _, e in sorted(legend.items())
             if str(e.get("name", "")).startswith("specific:")]
    out = {}
    for label, entry in legend.items():
        name = str(entry.get("name", ""))
        if int(label) == 0 or name == "none":
            out[int(label)] = clear
        elif name == "shared":
            out[int(label)] = CATEGORY_COLOURS["shared"]
        elif name.startswith("specific:"):
            lang = name.split(":", 1)[1]
            shown = languages is None or lang in languages
            out[int(label)] = language_colour(lang, order) if shown else clear
        else:
            out[int(label)] = entry.get("colour") or clear
    return out


def qc_figure(result_or_folder, path, name: str = "lesion", slices=None) -> Path:
    """Write the QC figure of a result's category map ``name`` to ``path`` (PNG).

    Parameters
    ----------
    result_or_folder : an :class:`~.result.AlignmentResult` or its output folder.
    path : the PNG to write.
    name : the category set (``"lesion"``, or ``"random"`` for the random controls).
    slices : MNI z levels (mm) of the axial slices; default: 5 levels spread over the
        categorised voxels (over the mask when there are none).
    """
    # reason: matplotlib loads only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # reason: matplotlib loads only when a figure is drawn


    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LesionAlignError(f"{path}: the QC figure is a PNG; give a file name ending .png")
    result = (result_or_folder if hasattr(result_or_folder, "maps")
              else AlignmentResult.load(result_or_folder))
    if getattr(result.space, "kind", None) != "volume":
        raise LesionAlignError("the QC figure needs volume results (a brain mask); this "
                               "result is on regions")
    if name not in result.categories:
        raise LesionAlignError(
            f"no category map {name!r} in this result (available: "
            f"{sorted(result.categories) or 'none'}); categories need a lesion run with the "
            "shared and specific lesions and at least 2 subjects")
    cat_img, legend = _category_image(result, name)
    template, labels = _on_template(cat_img)
    zs = _slice_levels(template.affine, labels, slices)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(zs) + 1, height_ratios=(1.15, 1.0),
                            width_ratios=[1.0] * len(zs) + [0.9])
    colours = category_colours(legend)
    for i, z in enumerate(zs):
        _draw_slice(fig.add_subplot(grid[0, i]), template, labels, colours, z)
    counts = np.bincount(np.asarray(result.categories[name][0], dtype=np.int64).clip(0))
    _draw_legend(fig.add_subplot(grid[0, -1]), legend, colours, counts)
    _draw_bars(fig.add_subplot(grid[1, :]), result)
    fig.suptitle(_title(result, name), fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _io.atomic_write_bytes(path, buf.getvalue())
    return path


def _category_image(result, name):
    labels, legend = result.categories[name]
    return result.space.labels_image(labels), dict(legend)


def _on_template(cat_img):
    """The RAS MNI152 template (2 mm) and the labels resampled onto it (nearest)."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template
    from nilearn.image import resample_to_img

    template = nib.as_closest_canonical(load_mni152_template(resolution=2))
    lab = resample_to_img(cat_img, template, interpolation="nearest", force_resample=True,
                          copy_header=True)
    return template, np.rint(np.asarray(lab.dataobj)).astype(np.int16)


def _slice_levels(affine, labels, slices) -> list[float]:
    """MNI z (mm) of the slices: given, or spread over the labelled voxels."""
    if slices is not None:
        zs = [float(z) for z in slices]
        if not zs:
            raise LesionAlignError("slices is empty; give MNI z levels in mm, e.g. [-10, 10, 30]")
        return zs
    k = np.nonzero(labels > 0)[2]
    if not len(k):
        k = np.arange(labels.shape[2] // 5, 4 * labels.shape[2] // 5)
    ks = np.unique(np.quantile(k, np.linspace(0.1, 0.9, N_SLICES)).round().astype(int))
    return [float(affine[2, 2] * kk + affine[2, 3]) for kk in ks]


def _draw_slice(ax, template, labels, colours, z) -> None:
    """One axial slice: x to the right (left hemisphere left), y up (anterior top)."""
    from matplotlib.colors import to_rgba  # reason: matplotlib loads only when a figure is drawn

    aff = template.affine
    k = int(round((z - aff[2, 3]) / aff[2, 2]))
    if not 0 <= k < labels.shape[2]:
        top = aff[2, 3] + aff[2, 2] * (labels.shape[2] - 1)
        raise LesionAlignError(f"slice z = {z:g} mm is outside the template "
                               f"({aff[2, 3]:g} to {top:g} mm); give slices within it")
    x0, y0 = aff[0, 3], aff[1, 3]
    nx, ny = labels.shape[:2]
    ext = (x0 - aff[0, 0] / 2, x0 + aff[0, 0] * (nx - 0.5),
           y0 - aff[1, 1] / 2, y0 + aff[1, 1] * (ny - 0.5))
    anat = np.asarray(template.dataobj)[:, :, k].T
    ax.imshow(anat, cmap="gray", origin="lower", extent=ext, interpolation="nearest")
    rgba = np.zeros(labels.shape[:2][::-1] + (4,))
    for label, colour in colours.items():
        if label:
            rgba[labels[:, :, k].T == label] = to_rgba(colour)
    ax.imshow(rgba, origin="lower", extent=ext, interpolation="nearest")
    ax.set_title(f"z = {aff[2, 2] * k + aff[2, 3]:g} mm", fontsize=9)
    ax.text(0.02, 0.02, "L", transform=ax.transAxes, color="w", fontsize=9)
    ax.text(0.93, 0.02, "R", transform=ax.transAxes, color="w", fontsize=9)
    ax.set_axis_off()


def _draw_legend(ax, legend, colours, counts) -> None:
    """Legend patches with each category's number of voxels (analysis grid)."""
    from matplotlib.patches import Patch  # reason: matplotlib loads only when a figure is drawn

    def n(lab):
        return int(counts[lab]) if lab < len(counts) else 0

    handles = [Patch(facecolor=colours[int(lab)], edgecolor="k",
                     label=f"{e.get('name', lab)} ({n(int(lab))} voxels)")
               for lab, e in sorted(legend.items()) if int(lab) != 0]
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="center left", fontsize=8, frameon=False,
                  title="category", title_fontsize=8)
    else:
        ax.text(0, 0.5, "no categorised voxel", fontsize=8)


def bar_groups(result) -> list[tuple[str, tuple[str, ...]]]:
    """The bars of the bar charts (QC figure, Inspector): ``(label, conditions)`` in order:
    intact, the controls (nulls and baselines), then each lesion followed by its random
    draws as *one* bar (``"<lesion> random (K)"``: their mean, the spread across the draws
    as the error bar); layer-sweep conditions left out."""
    controls = dict(result.controls or {})
    sweep = set(result.sweep or [])
    sweep |= {c for c, of in controls.items() if of in sweep}
    baselines = [c for c in (result.baselines or {}) if c in result.conditions]
    out = [("intact", ("intact",))] if "intact" in result.conditions else []
    out += [(c, (c,)) for c in baselines]
    for cond in result.conditions:
        if cond == "intact" or cond in controls or cond in sweep or cond in baselines:
            continue
        out.append((cond, (cond,)))
        draws = tuple(c for c, of in controls.items() if of == cond and c in result.conditions)
        if draws:
            out.append((f"{cond} random ({len(draws)})", draws))
    return out


def bar_values(result, index: int | None = None) -> tuple[dict, set]:
    """``({bar label: {language: (mean, error)}}, labels drawn hatched)`` of
    :func:`bar_groups`: whole-brain mean r per subject (``index`` None) or the r of one
    voxel (region). A single condition: the mean over subjects and the SD across them;
    random draws: the mean over the draws of their means over subjects, and the SD
    across the draws (the random-lesion band; with one draw, across subjects)."""
    rows = {(r["subject"], r["language"], r["condition"]): r["mean_r"]
            for r in result.summary_rows() if r["subject"] != "group"} if index is None else {}

    def per_subject(lang, cond):
        if index is None:
            vals = [rows.get((s, lang, cond), np.nan) for s in result.subjects]
        else:
            vals = [result.maps[(s, lang, cond, "r")][index] for s in result.subjects
                    if (s, lang, cond, "r") in result.maps]
        v = np.asarray(vals, dtype=float)
        return v[np.isfinite(v)]

    values = {}
    for label, conds in bar_groups(result):
        values[label] = {}
        for lang in result.languages:
            subs = [per_subject(lang, c) for c in conds]
            means = [v.mean() for v in subs if len(v)]
            if not means:
                values[label][lang] = (np.nan, 0.0)
            elif len(conds) > 1:
                values[label][lang] = (float(np.mean(means)),
                                       float(np.std(means, ddof=1)) if len(means) > 1 else 0.0)
            else:
                v = subs[0]
                values[label][lang] = (float(v.mean()), float(v.std()) if len(v) > 1 else 0.0)
    return values, hatched_bars(result)


def ceiling_lines(result, index: int) -> list[str]:
    """The noise ceiling at one voxel (region), for the Inspector: per language with a
    ceiling, its value and the intact model's r / ceiling there (or that the ceiling is not
    reliable there); ``[]`` without a ceiling."""
    parts = []
    for lang in result.languages:
        key = (lang, CEILING_CONDITION, "ceiling")
        if key not in result.group_maps:
            continue
        c = float(np.asarray(result.group_maps[key])[index])
        norm = result.group_maps.get((lang, "intact", "normr"))
        n = float(np.asarray(norm)[index]) if norm is not None else float("nan")
        parts.append(f"{lang} {c:.2f} (intact r / ceiling {n:.2f})" if np.isfinite(n)
                     else f"{lang} {c:.2f} (not reliable here)")
    return ["noise ceiling: " + ", ".join(parts)] if parts else []


def hatched_bars(result) -> set:
    """The bars of :func:`bar_groups` drawn hatched: the controls and the random draws."""
    baselines = set(result.baselines or {})
    controls = set(result.controls or {})
    return {label for label, conds in bar_groups(result)
            if conds[0] in baselines or conds[0] in controls}


def condition_bars(ax, values: dict, languages: list, controls, fontsize: float = 8,
                   colours: dict | None = None) -> None:
    """Grouped bars: one group per condition, one bar per language (its colour, or
    ``colours[language]``), error bars; the bars in ``controls`` (random draws, nulls and
    baselines) hatched. ``values[condition][language] = (mean, error)``."""
    conds = list(values)
    width = 0.8 / max(len(languages), 1)
    for j, lang in enumerate(languages):
        xs = np.arange(len(conds)) + (j - (len(languages) - 1) / 2) * width
        bars = ax.bar(xs, [values[c][lang][0] for c in conds], width,
                      yerr=[values[c][lang][1] for c in conds], capsize=2, label=lang,
                      color=(colours or {}).get(lang) or language_colour(lang, languages),
                      edgecolor="k", linewidth=0.5)
        for bar, cond in zip(bars, conds):
            if cond in controls:
                bar.set_hatch("//")
                bar.set_alpha(0.55)
    ax.set_xticks(np.arange(len(conds)))
    ax.set_xticklabels(conds, rotation=20, fontsize=fontsize, ha="right")
    ax.axhline(0, color="k", linewidth=0.5)


def _draw_bars(ax, result) -> None:
    """Whole-brain mean r per condition (groups) and language (bars)."""
    values, hatched = bar_values(result)
    langs = result.languages
    condition_bars(ax, values, langs, hatched)
    ax.set_ylabel("whole-brain mean r")
    ax.legend(fontsize=8, ncols=len(langs), loc="upper right", frameon=False)
    ax.set_title("mean r over subjects (error bar: SD across subjects; hatched: controls, and "
                 "random draws with the SD across the draws)", fontsize=9)


def _title(result, name) -> str:
    """The figure's title: the model, the category set, and what a category voxel means
    (the group test's level, correction and degrees of freedom, ``core.analysis.display``)."""
    model = (result.provenance.get("model") or {}).get("name", "model")
    alpha, correction = test_settings(result)
    df = degrees_of_freedom(result)
    test = (f"{'q' if correction == 'fdr' else 'p'} < {alpha:g} "
            f"{'FDR' if correction == 'fdr' else 'uncorrected'}" + (f", {df} df" if df else ""))
    return (f"{model}: categories '{name}' (significant drops, {test}), "
            f"{len(result.subjects)} subjects, languages {', '.join(result.languages)}")


#: colour-vision deficiency simulation matrices (Machado, Oliveira & Fernandes 2009,
#: "A physiologically-based model for simulation of color vision deficiency", IEEE TVCG
#: 15(6); severity 1.0), applied to linear RGB
CVD_MATRICES = {
    "protanopia": ((0.152286, 1.052583, -0.204868),
                   (0.114503, 0.786281, 0.099216),
                   (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968),
                     (0.280085, 0.672501, 0.047413),
                     (-0.011820, 0.042940, 0.968881)),
    "tritanopia": ((1.255528, -0.076749, -0.178779),
                   (-0.078411, 0.930809, 0.147602),
                   (0.004733, 0.691367, 0.303900)),
}


def simulate_cvd(rgb: np.ndarray, kind: str = "deuteranopia") -> np.ndarray:
    """An sRGB image (or colours), ``(..., 3)`` in 0..1 or 0..255 uint8, as seen with a
    colour-vision deficiency (:data:`CVD_MATRICES`); same dtype and range back."""
    if kind not in CVD_MATRICES:
        raise LesionAlignError(f"unknown colour-vision deficiency {kind!r}; use "
                               f"{', '.join(CVD_MATRICES)}")
    a = np.asarray(rgb)
    x = a[..., :3].astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    sim = np.clip(lin @ np.asarray(CVD_MATRICES[kind]).T, 0.0, 1.0)
    out = np.where(sim <= 0.0031308, sim * 12.92, 1.055 * sim ** (1 / 2.4) - 0.055)
    if a.dtype == np.uint8:
        out = np.rint(out * 255.0).astype(np.uint8)
    if a.shape[-1] == 4:  # keep alpha
        out = np.concatenate([out, a[..., 3:]], axis=-1)
    return out
