"""The current view as a self-explaining PNG: the canvas with the map's name, the slice
position, the threshold in words (correction, degrees of freedom), the anatomical
directions at its edges, the colour bar of the map (its threshold band shows as a gap)
and the category legend. matplotlib (Agg); its texts use :func:`._tasks.number` and
:func:`._tasks.plain_text`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.analysis.display import DIVERGING, statistic
from ..core.base.io import atomic_write_bytes
from ._tasks import number, plain_text  # noqa: F401 (the exports' texts; defined there)

PLANES = {0: ("axial", "z"), 1: ("coronal", "y"), 2: ("sagittal", "x")}
#: the margin right of the canvas (colour bar, legend), in inches; the figure's dpi
SIDE_INCHES = 2.2
DPI = 100


def slice_text(world_axis: int, world_value: float) -> str:
    """``"axial slice z = 32 mm (MNI)"`` of the slider's world axis (``(z, -y, x)``) and
    position."""
    plane, letter = PLANES.get(world_axis, ("slice", "?"))
    value = -world_value if world_axis == 1 else world_value
    return f"{plane} slice {letter} = {number(value, 0)} mm (MNI)"


def colorbar_of(layer):
    """``(rgba (n, 4), low, high, label)`` of an image layer's colormap as it is drawn, or
    None. The label and the range agree: a signed map (r, Δr, t) runs over its contrast
    limits and is labelled ``t``; a map shown as ``|t|`` (the grey ramps while category
    overlays are shown: both signs drawn alike) runs from 0 to its upper limit, in the
    upper half of its colormap, and is labelled ``|t|``."""
    cmap = getattr(layer, "colormap", None)
    if cmap is None or not hasattr(cmap, "map") or getattr(layer, "rgb", False):
        return None
    lo, hi = (float(v) for v in layer.contrast_limits)

    stat = layer.metadata.get("stat")
    label = statistic(stat).label if stat else layer.name
    one_sided = bool(layer.metadata.get("magnitude")) and stat in DIVERGING and lo < 0 < hi
    if one_sided:  # |v|: the colormap's upper half (0 at its middle), 0 .. the upper limit
        mid = -lo / (hi - lo)
        rgba = np.asarray(cmap.map(np.linspace(mid, 1.0, 128)), dtype=float)
        lo = 0.0
        label = f"|{label}| (grey: categories shown)"
    else:
        rgba = np.asarray(cmap.map(np.linspace(0.0, 1.0, 256)), dtype=float)
        if layer.metadata.get("magnitude"):
            label = f"{label} (grey: categories shown)"
    return rgba, lo, hi, label


def compose(shot, path, *, title: str, where: str = "", letters: dict | None = None,
            colorbar=None, legend=(), note: str = "", dpi: int = DPI) -> Path:
    """Write the PNG: ``shot`` (H x W x 3/4 uint8 canvas) with ``title``, ``where`` (the
    slice), ``letters`` (``{"top", "bottom", "left", "right": "A"}``), ``colorbar``
    (:func:`colorbar_of`), ``legend`` (``[(colour, text)]``) and ``note`` (the threshold
    in words: ``"t ≥ 4.2 · q < 0.05 FDR · 4 df"``), written atomically."""
    import io

    fig = figure(shot, title=title, where=where, letters=letters, colorbar=colorbar,
                 legend=legend, note=note, dpi=dpi)
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return path


def figure(shot, *, title: str, where: str = "", letters: dict | None = None,
           colorbar=None, legend=(), note: str = "", dpi: int = DPI):
    """The matplotlib ``Figure`` :func:`compose` writes (the tests read its colour bar)."""
    # reason: matplotlib loads only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable  # (see above)
    from matplotlib.colors import ListedColormap, Normalize  # (see above)
    from matplotlib.figure import Figure  # (see above)
    from matplotlib.patches import Patch  # (see above)

    title, where, note = plain_text(title), plain_text(where), plain_text(note)
    legend = [(c, plain_text(t)) for c, t in legend]
    shot = np.asarray(shot)
    h, w = shot.shape[:2]
    side = SIDE_INCHES if (colorbar is not None or legend) else 0.3
    fig = Figure(figsize=(w / dpi + side, h / dpi + 0.9), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.02, 0.04, (w / dpi) / (w / dpi + side) - 0.02,
                       (h / dpi) / (h / dpi + 0.9)])
    ax.imshow(shot[..., :3])
    ax.set_xticks([])
    ax.set_yticks([])
    for edge, (x, y, ha, va) in {"top": (0.5, 0.99, "center", "top"),
                                 "bottom": (0.5, 0.01, "center", "bottom"),
                                 "left": (0.01, 0.5, "left", "center"),
                                 "right": (0.99, 0.5, "right", "center")}.items():
        text = (letters or {}).get(edge)
        if text:
            ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="#ffff99",
                    fontsize=12, fontweight="bold")
    fig.suptitle(title, fontsize=11, y=0.985)
    line = " · ".join(t for t in (where, note) if t)
    if line:
        fig.text(0.02, 0.935 if h > 300 else 0.9, line, fontsize=9, wrap=True)
    x0 = ax.get_position().x1 + 0.02
    if colorbar is not None:
        rgba, lo, hi, label = colorbar
        cax = fig.add_axes([x0, 0.55, 0.03, 0.35])
        sm = ScalarMappable(norm=Normalize(lo, hi), cmap=ListedColormap(rgba))
        cb = fig.colorbar(sm, cax=cax)
        cax.set_label("colour bar")
        cb.set_label(plain_text(label), fontsize=9)
        cb.ax.tick_params(labelsize=8)
    if legend:
        lax = fig.add_axes([x0, 0.05, 0.95 - x0, 0.42])
        lax.set_axis_off()
        handles = [Patch(facecolor=c, edgecolor="k", label=t) for c, t in legend]
        lax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False,
                   title="categories", title_fontsize=9)
    return fig
