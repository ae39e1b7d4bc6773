"""NIfTI images and :class:`~.core.results.result.AlignmentResult` maps as napari layer data tuples.

Pure functions: every public function returns ``(data, kwargs, layer_type)`` tuples (or
plain values); nothing here imports Qt, and napari is only imported for its ``Colormap``
class (``napari.utils``, no GUI).

Orientation convention (see ``docs/viewing.md``)
-------------------------------------------------
napari's default camera draws world axis -2 downward (row index grows down the screen)
and world axis -1 to the right, and looks down world axis -3 (the slider). Every layer
made here therefore lives in the world frame::

    world = (z, -y, x)   in MNI millimetres   (``WORLD_FROM_MNI``)

so that the default 2D view shows an **axial slice** (the slider moves in MNI z), the
subject's **left hemisphere (x < 0) on the left** of the screen (neurological convention)
and **anterior at the top**; it is the view from above, not a mirror image, so the 3D
view is not mirrored either. The array is reoriented (axes permuted / flipped with
nibabel, no resampling) to the voxel orientation ``("S", "P", "R")`` so the layer's
``affine`` is diagonal for MNI images; layers overlay through their ``affine`` (never
``scale``), whatever their voxel size. ``viewer.cursor.position`` and napari's status bar
are in this world frame: read MNI coordinates with :func:`world_to_mni`; the layer
metadata keeps the original NIfTI affine and voxel order so the writer can restore them.

Thresholds
----------
Sub-threshold voxels are made transparent by the colormap, the data are never changed:
diverging maps (r, Δr, t, LPI) use symmetric contrast limits ``[-m, m]`` and a stepwise
colormap whose band ``|v| < threshold`` is transparent (without a threshold only a tiny
band around 0 is, so the 0 outside the mask stays invisible); p and q maps use limits
``[0, threshold]`` (default 0.05) with transparent values ``>= threshold``. The band is
defined relative to the contrast limits: after changing ``contrast_limits`` call
:func:`set_threshold` again. Voxels outside the analysis mask are NaN in result maps
(shown transparent).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from .core.analysis.display import (DIVERGING, MAP_RAMPS, SEQUENTIAL,  # one owner: the table
                                     TEMPLATE_HEADROOM, default_threshold, group_map_shown,
                                     statistic)
from .core.analysis.display import LABELS as STAT_LABELS
from .core.base.errors import LesionAlignError
from .core.results.figures import category_colours
from .core.results.names import parse_filename  # one owner of the file names
from .core.results.result import AlignmentResult

#: world (napari) coordinates from MNI mm, homogeneous: world = (z, -y, x)
WORLD_FROM_MNI = np.array([[0.0, 0.0, 1.0, 0.0],
                           [0.0, -1.0, 0.0, 0.0],
                           [1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
#: voxel orientation of the arrays handed to napari (axis 0 towards Superior, ...)
NAPARI_AXCODES = ("S", "P", "R")
AXIS_LABELS = ("z", "-y", "x")

DEFAULT_P_THRESHOLD = 0.05
_STEPS = 128  # colours per side of the stepwise colormaps
_POS = MAP_RAMPS["positive"]  # red -> yellow (threshold -> max)
_NEG = MAP_RAMPS["negative"]  # blue -> cyan (-threshold -> -max)
_MAG = MAP_RAMPS["magnitude"]  # grey -> white (|v|: threshold -> max), categories shown


# --------------------------------------------------------------------------- coordinates
def world_to_mni(world_position) -> tuple[float, float, float]:
    """MNI ``(x, y, z)`` in mm of a napari world position (e.g. ``viewer.cursor.position``).

    Only the last three coordinates are used (a leading volume / time axis is ignored).
    """
    p = np.asarray(world_position, dtype=float)
    if p.shape[-1] < 3:
        raise LesionAlignError(f"world position {tuple(p)} has fewer than 3 coordinates; "
                               "open a 3D layer first")
    z, my, x = p[..., -3], p[..., -2], p[..., -1]
    return float(x), float(-my), float(z)


def mni_to_world(xyz) -> tuple[float, float, float]:
    """napari world position ``(z, -y, x)`` of an MNI point ``(x, y, z)`` in mm."""
    x, y, z = (float(v) for v in np.asarray(xyz, dtype=float)[:3])
    return z, -y, x


def voxel_to_mni(affine, ijk) -> tuple[float, float, float]:
    """MNI mm of NIfTI voxel ``ijk`` (``nibabel.affines.apply_affine``)."""
    from nibabel.affines import apply_affine

    return tuple(float(v) for v in apply_affine(np.asarray(affine, dtype=float), ijk))


def napari_affine(nifti_affine) -> np.ndarray:
    """4x4 napari affine (data index -> world) of a NIfTI affine, for an unreoriented array.

    Most callers want :func:`to_napari_order`, which also reorients the array.
    """
    return WORLD_FROM_MNI @ np.asarray(nifti_affine, dtype=float)


def nifti_affine_from_world(world_affine) -> np.ndarray:
    """Inverse of :func:`napari_affine` (``WORLD_FROM_MNI`` is its own inverse)."""
    return WORLD_FROM_MNI @ np.asarray(world_affine, dtype=float)


def to_napari_order(img, source=None):
    """``(array, napari_affine, transform)`` of a 3D or 4D nibabel image.

    The array is reoriented (no resampling) to :data:`NAPARI_AXCODES`; a 4D image's last
    axis becomes the first (a volume slider). ``transform`` is the nibabel orientation
    transform applied (kept in the layer metadata to undo it).
    """
    from nibabel.orientations import (apply_orientation, axcodes2ornt, inv_ornt_aff,
                                      io_orientation, ornt_transform)

    if len(img.shape) not in (3, 4):
        raise LesionAlignError(
            f"{source or _source(img)}: napari-lesion-align shows 3D images (or 4D series), "
            f"got shape {img.shape}; select a volume with nilearn.image.index_img first")
    transform = ornt_transform(io_orientation(img.affine), axcodes2ornt(NAPARI_AXCODES))
    data = apply_orientation(np.asanyarray(img.dataobj), transform)
    aff = napari_affine(img.affine @ inv_ornt_aff(transform, img.shape[:3]))
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
        aff5 = np.eye(5)
        aff5[1:, 1:] = aff
        aff = aff5
    return data, aff, transform


# --------------------------------------------------------------------------- names
def layer_name(subject, language, condition, stat) -> str:
    """Layer name, the same everywhere: ``"r EN intact (sub-01)"``, ``"t FR shared (group)"``,
    ``"Δr ZH specificZH (sub-02)"``; the stat comes first (what the values are)."""
    who = "group" if str(subject) == "group" else f"sub-{subject}"
    parts = [STAT_LABELS.get(stat, stat), language, condition]
    return " ".join(str(p) for p in parts if p) + f" ({who})"


def category_layer_name(name: str) -> str:
    """``"categories lesion"`` / ``"categories random"``."""
    return f"categories {name}"




# --------------------------------------------------------------------------- styles
def robust_limit(values, percentile: float = 99.0) -> float:
    """``percentile`` of ``|values|`` over finite non-zero voxels (1.0 when there are none)."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return 1.0
    m = float(np.percentile(v, percentile))
    return m if m > 0 else float(v.max())


def _ramp(c0, c1, n):
    t = np.linspace(0.0, 1.0, n)[:, None]
    rgb = (1 - t) * np.asarray(c0) + t * np.asarray(c1)
    return np.column_stack([rgb, np.ones(n)])


#: diverging maps with a threshold: ``|v| < BAND * limit`` is transparent, so the contrast
#: limits are ``±threshold / BAND`` (colours run from the threshold to 3x the threshold)
BAND = 1.0 / 3.0
#: how far below the threshold the transparent band ends (relative): vispy draws a
#: colormap through a 1,024-entry table, so a band edge exactly at the threshold hides
#: the voxels at it (the group test's smallest significant |t|) on screen; 2 % below it
#: (about 3 entries on the ±3x threshold range) draws them, at the cost of also drawing
#: the rare voxels within 2 % below the threshold
EDGE_MARGIN = 0.02
#: the names of the plugin's colormaps: one per kind, whatever the threshold
COLORMAP_NAMES = {"diverging": "lesion-align diverging (thresholded)",
                  "diverging-all": "lesion-align diverging",
                  "sequential": "lesion-align p/q",
                  "magnitude": "lesion-align |value| (thresholded)",
                  "magnitude-all": "lesion-align |value|",
                  "magnitude-sequential": "lesion-align p/q (grey)"}


@lru_cache(maxsize=None)
def plugin_colormap(kind: str):
    """One of the plugin's fixed napari ``Colormap`` s (:data:`COLORMAP_NAMES`); their
    content never changes, thresholds move the contrast limits.

    * ``"diverging"``: blue-cyan below, red-yellow above, transparent where
      ``|v| < BAND * limit`` (the band of the threshold);
    * ``"diverging-all"``: the same ramps with only a tiny transparent band around 0 (maps
      without a threshold: the 0 outside the mask stays invisible);
    * ``"sequential"`` (p, q): yellow (0) to red (the limit), transparent at the limit
      and above;
    * ``"magnitude"``, ``"magnitude-all"``, ``"magnitude-sequential"``: the same shapes in
      grey -> white (``core.analysis.display.MAP_RAMPS["magnitude"]``), used while category
      overlays are shown so that colour only ever means a category.
    """
    from napari.utils.colormaps import Colormap  # napari: this module loads headless

    clear = np.zeros((1, 4))
    grey = kind.startswith("magnitude")
    pos, neg = (_MAG, _MAG) if grey else (_POS, _NEG)
    base = kind.replace("magnitude", "diverging") if kind != "magnitude-sequential" \
        else "sequential"
    if base == "sequential":
        colors = np.vstack([_ramp(pos[1], pos[0], _STEPS), clear])
        controls = np.concatenate([np.linspace(0.0, 1.0 - 1e-6, _STEPS + 1), [1.0]])
    elif base in ("diverging", "diverging-all"):
        half = BAND / 2 if base == "diverging" else 5e-4
        colors = np.vstack([_ramp(neg[1], neg[0], _STEPS), clear,
                            _ramp(pos[0], pos[1], _STEPS)])
        controls = np.concatenate([np.linspace(0.0, 0.5 - half, _STEPS + 1),
                                   np.linspace(0.5 + half, 1.0, _STEPS + 1)])
    else:
        raise LesionAlignError(f"unknown colormap kind {kind!r}; use one of "
                               f"{sorted(COLORMAP_NAMES)}")
    return Colormap(colors=colors, controls=controls, interpolation="zero",
                    name=COLORMAP_NAMES[kind])


def threshold_display(stat: str, threshold=None, limit: float = 1.0,
                      magnitude: bool = False) -> dict:
    """``colormap`` and ``contrast_limits`` that show ``stat`` thresholded at
    ``threshold`` (``limit``: the colour range when there is no threshold; ``magnitude``:
    the grey ramps used while category overlays are shown)."""
    grey = "magnitude" if magnitude else None
    if stat in SEQUENTIAL:
        top = float(threshold) if threshold else DEFAULT_P_THRESHOLD
        return {"colormap": plugin_colormap("magnitude-sequential" if grey else "sequential"),
                "contrast_limits": (0.0, top)}
    th = abs(float(threshold)) if threshold else 0.0
    if th > 0:
        # the band's edge a hair below the threshold: a voxel exactly at it (the group
        # test's smallest significant |t|) is drawn, whatever the GPU's rounding
        m = th * (1.0 - EDGE_MARGIN) / BAND
        return {"colormap": plugin_colormap(grey or "diverging"), "contrast_limits": (-m, m)}
    m = abs(float(limit)) or 1.0
    return {"colormap": plugin_colormap(f"{grey}-all" if grey else "diverging-all"),
            "contrast_limits": (-m, m)}


def threshold_colormap(stat: str, limits=None, threshold=None):
    """The plugin colormap of ``stat`` with / without a threshold (kept for callers of
    earlier versions; ``limits`` is ignored: thresholds live in the contrast limits)."""
    return threshold_display(stat, threshold)["colormap"]


def style(stat, values, threshold=None) -> dict:
    """Display kwargs of a map: ``colormap``, ``contrast_limits``, ``blending``, ``opacity``.

    * r, Δr, t, LPI (:data:`DIVERGING`): blue-cyan below 0, red-yellow above; with a
      threshold, limits ``±threshold / BAND`` and ``|v| < threshold`` transparent;
      without, limits ``±`` the 99th percentile of ``|values|`` (LPI: ``±1``);
    * p, q: limits ``[0, threshold or 0.05]``, yellow (smallest) to red, transparent
      ``>= threshold``;
    * template / unknown stats: grey, limits from the data's 0.5-99.5 percentiles;
    * categories: see :func:`category_colormap` (returns only blending / opacity here).
    """
    stat = stat or "image"
    if stat == "categories":
        return {"blending": "translucent", "opacity": 1.0}
    if stat in SEQUENTIAL:
        return {**threshold_display(stat, threshold), "blending": "translucent",
                "opacity": 1.0}
    if stat in DIVERGING:
        m = statistic(stat).limit or robust_limit(values)
        return {**threshold_display(stat, threshold, m), "blending": "translucent",
                "opacity": 1.0}
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (np.percentile(v, [0.5, 99.5]) if len(v) else (0.0, 1.0))
    if stat == "template":  # white matter a mid grey, not saturated (maps stay brighter)
        lo, hi = min(float(lo), 0.0), float(hi) * TEMPLATE_HEADROOM
    if hi <= lo:
        hi = lo + 1.0
    return {"colormap": "gray", "contrast_limits": (float(lo), float(hi)),
            "blending": "translucent", "opacity": 1.0}


def set_threshold(layer, threshold, magnitude: bool | None = None) -> None:
    """Apply (or change) a display threshold on a layer made here: its contrast limits
    move, its colormap stays one of the plugin's fixed ones (nothing new is registered).
    ``magnitude``: the grey ramps (category overlays shown) or the colour ones; None keeps
    the layer's current choice (``metadata["magnitude"]``)."""
    stat = layer.metadata.get("stat")
    if stat not in DIVERGING + SEQUENTIAL:
        raise LesionAlignError(f"layer {layer.name!r} (stat {stat!r}) has no threshold; "
                               f"thresholds apply to {', '.join(DIVERGING + SEQUENTIAL)}")
    if magnitude is None:
        magnitude = bool(layer.metadata.get("magnitude"))
    limit = statistic(stat).limit or layer.metadata.get("limit") or robust_limit(layer.data)
    layer.metadata["limit"] = limit
    shown = threshold_display(stat, threshold, limit, magnitude=magnitude)
    lo, hi = shown["contrast_limits"]
    rlo, rhi = layer.contrast_limits_range
    if lo < rlo or hi > rhi:
        layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
    if layer.colormap.name != shown["colormap"].name:
        layer.colormap = shown["colormap"]
    layer.contrast_limits = (lo, hi)
    layer.metadata["threshold"] = threshold
    layer.metadata["magnitude"] = magnitude


def set_magnitude(layer, on: bool) -> None:
    """Show a map in the grey ``|value|`` ramps (``on``: category overlays are shown) or
    in its colours; the threshold stays."""
    if layer.metadata.get("stat") in DIVERGING + SEQUENTIAL:
        set_threshold(layer, layer.metadata.get("threshold"), magnitude=on)


def significance_threshold(result, language, condition) -> float | None:
    """The group test's threshold of a t map (``core.analysis.display.default_threshold``: the
    smallest ``|t|`` of the voxels significant at the result's alpha / correction);
    ``None`` when the result has no such test. With no significant voxel, a value above
    every ``|t|`` (nothing shown)."""
    key = (language, condition, "t")
    if key not in result.group_maps:
        return None
    return default_threshold(result, "t", language, condition).value


def category_colormap(legend: dict, languages=None) -> dict:
    """``{label: colour}`` for a napari ``DirectLabelColormap``: 0 and unknown labels
    transparent, ``shared`` and each language's ``specific:<L>`` in Okabe-Ito colours no
    map colormap uses first (:func:`.core.figures.category_colours`).

    ``languages``: show only these languages' specific categories (others transparent).
    """
    cmap: dict = {None: "transparent", 0: "transparent"}
    for label, colour in category_colours(legend, languages).items():
        cmap[label] = "transparent" if label == 0 or colour == "#00000000" else colour
    return cmap


#: how category overlays are drawn: an outline (napari ``Labels.contour``, in voxels) so
#: the map beneath stays visible; 0 fills them (the Results widget's "filled" toggle)
CATEGORY_CONTOUR = 1


# --------------------------------------------------------------------------- layers
def _source(img) -> str:
    fn = getattr(img, "get_filename", lambda: None)()
    return str(fn) if fn else "<image>"


def _metadata(img, transform, source, stat, keys, threshold=None) -> dict:
    hdr = img.header
    return {"lesion_align": True, "source": source, "stat": stat,
            "subject": keys.get("subject"), "language": keys.get("language"),
            "condition": keys.get("condition"), "threshold": threshold,
            "nifti_affine": np.asarray(img.affine, dtype=float).copy(),
            "nifti_shape": tuple(int(s) for s in img.shape),
            "nifti_dtype": str(np.asanyarray(img.dataobj).dtype),
            "nifti_ornt_transform": np.asarray(transform).copy(),
            "nifti_codes": _xform_codes(hdr)}


def _xform_codes(header) -> tuple[int, int]:
    """``(sform_code, qform_code)`` of a NIfTI header ((0, 0) for other formats)."""
    try:
        return int(header["sform_code"]), int(header["qform_code"])
    except (KeyError, TypeError, ValueError):
        return 0, 0


def image_layer(img, *, stat=None, name=None, threshold=None, source=None, keys=None,
                visible=True, legend=None, languages=None) -> tuple:
    """Layer tuple of a nibabel image (the core of :func:`nifti_layer` / :func:`map_layer`)."""
    keys = dict(keys or {})
    source = source if source is not None else _source(img)
    data, aff, transform = to_napari_order(img, source)
    meta = _metadata(img, transform, source, stat, keys, threshold)
    labels = ("volume",) + AXIS_LABELS if data.ndim == 4 else AXIS_LABELS
    kwargs = {"name": name or Path(source).name, "affine": aff, "metadata": meta,
              "axis_labels": labels, "units": "mm", "visible": visible}
    if stat in ("categories", "mask"):
        if legend is None:
            legend = ({0: {"name": "none"}, 1: {"name": "mask", "colour": "#ffffff"}}
                      if stat == "mask" else {})
        meta["legend"] = legend
        ints = (np.asarray(data) if np.issubdtype(np.asarray(data).dtype, np.integer) else
                np.rint(np.nan_to_num(np.asarray(data, dtype=float))).astype(np.int32))
        cmap = category_colormap(legend, languages)
        for label in np.unique(ints):
            cmap.setdefault(int(label), "#ffffff" if label else "transparent")
        kwargs.update(style("categories", None), colormap=cmap)
        if stat == "categories":
            meta["contour"] = CATEGORY_CONTOUR  # applied by the widgets (no Labels kwarg)
        return ints, kwargs, "labels"
    kwargs.update(style(stat, data, threshold))
    return data, kwargs, "image"


def nifti_layer(img_or_path, name=None, stat=None, threshold=None) -> tuple:
    """Layer tuple of any 3D NIfTI (a path or a nibabel image).

    The stat (styling) is guessed from our file names when not given
    (``..._stat-<stat>_statmap.nii.gz``, ``..._categories.nii.gz``, ``mask.nii.gz``);
    other images are shown grey. A map inside a result folder is thresholded by the
    statistic's default rule (a group t map at the group test's significance). A
    ``categories.json`` next to a categories file gives its legend. A 4D image becomes a
    layer with a leading volume axis (a slider).
    """
    img, source = load_nifti(img_or_path)
    keys = parse_filename(source)
    stat = stat or keys.get("stat")
    legend = _sibling_legend(source) if stat == "categories" else None
    if name is None and {"subject", "language", "condition"} <= keys.keys() and stat:
        name = layer_name(keys["subject"], keys["language"], keys["condition"], stat)
    if stat in SEQUENTIAL + DIVERGING:
        img = _outside_mask_nan(img, source)
        if threshold is None:
            threshold = _sibling_threshold(source, keys, stat)
    return image_layer(img, stat=stat, name=name, threshold=threshold, source=source,
                       keys=keys, legend=legend)


def _sibling_threshold(source, keys: dict, stat: str):
    """The default threshold (``core.analysis.display.default_threshold``) of a map file inside a
    result folder (a ``result.json`` next to it): a group t map alone gets the group
    test's corrected significance, as when the folder is opened; None elsewhere."""
    folder = Path(str(source)).parent
    if not (folder / "result.json").is_file():
        return None

    try:
        result = AlignmentResult.load(folder, lazy=True)
        if str(keys.get("subject")) == "group":
            return default_threshold(result, stat, keys.get("language"),
                                     keys.get("condition")).value
        return default_threshold(result, stat).value
    except (LesionAlignError, OSError, ValueError, KeyError):
        return None


def load_nifti(img_or_path):
    """``(nibabel image, source string)``; a clear error for files nibabel cannot read."""
    import nibabel as nib

    if isinstance(img_or_path, nib.spatialimages.SpatialImage):
        return img_or_path, _source(img_or_path)
    path = Path(img_or_path)
    if not path.exists():
        raise LesionAlignError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # read now: truncated files fail here, not later
        img = img.__class__(data, img.affine, img.header)
    except Exception as err:  # nibabel raises many types for bad files
        raise LesionAlignError(
            f"{path}: cannot read as NIfTI ({type(err).__name__}: {err}); check that the file "
            "is a complete .nii/.nii.gz (re-export or re-download it)") from err
    return img, str(path)


def _sibling_legend(source) -> dict | None:
    import json

    path = Path(str(source))
    cat_json = path.parent / "categories.json"
    if not cat_json.is_file():
        return None
    try:
        doc = json.loads(cat_json.read_text())
    except ValueError:
        return None
    for info in doc.values():
        if isinstance(info, dict) and info.get("file") == path.name:
            return {int(k): v for k, v in info.get("labels", {}).items()}
    return None


def _outside_mask_nan(img, source):
    """Values outside a ``mask.nii.gz`` in the same folder (same grid) become NaN."""
    import nibabel as nib

    mask_path = Path(str(source)).parent / "mask.nii.gz"
    if not mask_path.is_file() or len(img.shape) != 3:
        return img
    try:
        mask = nib.load(str(mask_path))
        m = np.asanyarray(mask.dataobj) > 0
    except Exception:
        return img
    if m.shape != img.shape or not np.allclose(mask.affine, img.affine, atol=1e-4):
        return img
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data[~m] = np.nan
    return nib.Nifti1Image(data, img.affine, img.header)


@lru_cache(maxsize=4)
def _template(resolution):
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=resolution)


def template_layer(resolution=2) -> tuple:
    """nilearn's shipped MNI152 template (no download) as a grey image layer, meant to be
    the bottom layer: ``"MNI152 template (2 mm)"``."""
    img = _template(int(resolution))
    return image_layer(img, stat="template", name=f"MNI152 template ({resolution} mm)",
                       source=f"nilearn MNI152 template, {resolution} mm")


# --------------------------------------------------------------------------- results
def _volume_space(result):
    if getattr(result.space, "kind", None) != "volume":
        raise LesionAlignError(
            "this result is on regions (a table per region), not a volume: there is nothing "
            "to show in napari; open its .tsv maps or summary.tsv instead")
    return result.space


def map_layer(result, subject, language, condition, stat, threshold=None, *, source=None,
              visible=True) -> tuple:
    """Layer tuple of one map of a result; ``subject="group"`` for group maps.

    Voxels outside the analysis mask are NaN (transparent).
    """
    space = _volume_space(result)
    if str(subject) == "group":
        try:
            values = group_map_shown(result, language, condition, stat)
        except KeyError:
            raise LesionAlignError(
                f"no group map for language={language!r}, condition={condition!r}, "
                f"stat={stat!r}; available: {sorted(result.group_maps)}") from None
    else:
        values = result.get(subject, language, condition, stat)
    img = space.to_image(values, fill=np.nan)
    keys = {"subject": subject, "language": language, "condition": condition}
    name = layer_name(subject, language, condition, stat)
    return image_layer(img, stat=stat, name=name, threshold=threshold, keys=keys,
                       source=source or "<result>", visible=visible)


def category_layer(result, name="lesion", languages=None, *, source=None,
                   visible=True) -> tuple:
    """Labels layer tuple of a category map: 0 transparent, shared blue, each language's
    specific voxels in its colour (``core.analysis.statistics``); ``metadata["legend"]`` is the
    legend (label -> name, meaning, colour). ``languages`` restricts the specific
    categories shown."""

    space = _volume_space(result)
    if name not in result.categories:
        raise LesionAlignError(f"no category map {name!r} in this result; available: "
                               f"{sorted(result.categories) or 'none (no lesion pair)'}")
    labels, legend = result.categories[name]
    img = space.labels_image(labels)
    data, kwargs, kind = image_layer(img, stat="categories", name=category_layer_name(name),
                                     source=source or "<result>", keys={"condition": name},
                                     legend=dict(legend), languages=languages, visible=visible)
    kwargs["metadata"]["category_set"] = name
    return data, kwargs, kind


def apply_neurological_view(viewer) -> None:
    """Reset a viewer's camera to napari's default orientation, which this module's world
    frame relies on (towards / down / right); harmless when it already is."""
    cam = getattr(viewer, "camera", None)
    if cam is not None and hasattr(cam, "orientation"):
        cam.orientation = ("towards", "down", "right")


# --------------------------------------------------------------------------- surfaces
#: the cortical mesh maps are projected onto (shipped with nilearn: no download)
SURFACE_MESH = "fsaverage5"
SURFACE_KINDS = ("inflated", "pial")
HEMISPHERES = ("left", "right")
_INFLATED_GAP_MM = 10.0  # inflated hemispheres overlap at x = 0: set them apart


@lru_cache(maxsize=1)
def _fsaverage():
    from nilearn.datasets import load_fsaverage

    return load_fsaverage(SURFACE_MESH)


def surface_values(img, hemisphere: str, labels: bool = False) -> np.ndarray:
    """``nilearn.surface.vol_to_surf`` of ``img`` on the fsaverage5 pial mesh of one
    hemisphere (the white matter mesh as inner surface: values sampled through the
    cortical ribbon; ``labels``: the label covering at least half of a vertex's samples,
    0 elsewhere)."""
    from nilearn.surface import vol_to_surf

    fs = _fsaverage()
    pial = fs["pial"].parts[hemisphere]
    white = fs["white_matter"].parts[hemisphere]
    if labels:  # per label, the fraction of the samples in it (linear): the largest wins
        import nibabel as nib

        data = np.rint(np.nan_to_num(np.asarray(img.get_fdata()))).astype(int)
        best = np.zeros(len(pial.coordinates))
        out = np.zeros(len(pial.coordinates))
        for label in np.unique(data[data > 0]):
            frac = surface_values(nib.Nifti1Image((data == label).astype(np.float32),
                                                  img.affine), hemisphere)
            frac = np.nan_to_num(frac)
            win = (frac >= 0.5) & (frac > best)
            out[win], best[win] = label, frac[win]
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # vertices with only NaN samples
        return vol_to_surf(img, pial, inner_mesh=white)


#: how far a category overlay's mesh sits above the map's surface (mm, along the normals)
SURFACE_LIFT_MM = 0.4


def lifted(vertices: np.ndarray, faces: np.ndarray, mm: float) -> np.ndarray:
    """``vertices`` moved ``mm`` along their outward normals (area-weighted face normals,
    oriented away from the mesh's centre)."""
    v = np.asarray(vertices, dtype=float)
    f = np.asarray(faces)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, f[:, k], fn)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, norm, out=np.zeros_like(normals), where=norm > 0)
    if np.sum(normals * (v - v.mean(0))) < 0:  # faces wound inwards
        normals = -normals
    return v + mm * normals


def surface_vertices(kind: str, hemisphere: str) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices in the world frame (z, -y, x), faces)`` of a fsaverage5 mesh; inflated
    hemispheres are moved apart along x so they do not overlap."""
    if kind not in SURFACE_KINDS:
        raise LesionAlignError(f"unknown surface {kind!r}; use one of {SURFACE_KINDS}")
    part = _fsaverage()[kind].parts[hemisphere]
    xyz = np.asarray(part.coordinates, dtype=float).copy()
    if kind == "inflated":
        if hemisphere == "left":
            xyz[:, 0] += -_INFLATED_GAP_MM / 2 - xyz[:, 0].max()
        else:
            xyz[:, 0] += _INFLATED_GAP_MM / 2 - xyz[:, 0].min()
    world = np.column_stack([xyz[:, 2], -xyz[:, 1], xyz[:, 0]])
    return world, np.asarray(part.faces, dtype=np.int64)


def _label_colormap(colours: dict, n: int, background=(0.75, 0.75, 0.75, 1.0)):
    """A stepwise colormap showing integer values ``0..n-1`` with contrast limits
    ``(-0.5, n - 0.5)``: 0 ``background`` (transparent for an overlay on a map's
    surface), others their colour."""
    # napari: this module loads headless
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.standardize_color import transform_color  # (see above)

    rows = []
    for label in range(n):
        c = colours.get(label)
        rows.append(list(background) if label == 0 or c in (None, "transparent")
                    else list(transform_color(c)[0]))
    import hashlib

    colors = np.array(rows)
    digest = hashlib.sha1(colors.tobytes()).hexdigest()[:8]  # one name per content
    return Colormap(colors=colors, controls=np.linspace(0.0, 1.0, n + 1),
                    interpolation="zero", name=f"lesion-align categories (surface {digest})")


def surface_layers(img, *, name: str, stat=None, threshold=None, kinds=SURFACE_KINDS,
                   legend=None, visible_kind: str = "inflated",
                   magnitude: bool = False) -> list[tuple]:
    """Surface layer tuples of a volume (a map or a category image) on fsaverage5: one per
    hemisphere and mesh kind (``kinds``), values from :func:`surface_values` (NaN, e.g.
    outside the analysis mask, shown as 0). Maps use the plugin's diverging colours
    (sub-threshold: the grey cortex), or with ``magnitude`` (categories shown too) the
    grey ``|value|`` ramp on a darker cortex; categories (``legend`` given) are outlines
    in their overlay colours (:func:`outline_labels`), on a mesh lifted off the map's.
    Only the ``visible_kind`` meshes start visible."""
    is_labels = legend is not None
    out = []
    per_hemi = {h: surface_values(img, h, labels=is_labels) for h in HEMISPHERES}
    for kind in kinds:
        for hemi in HEMISPHERES:
            verts, faces = surface_vertices(kind, hemi)
            raw = np.asarray(per_hemi[hemi], dtype=np.float32)
            values = np.nan_to_num(raw, nan=0.0)
            meta = {"lesion_align": True, "stat": stat, "surface": kind, "hemisphere": hemi,
                    "mesh": SURFACE_MESH, "source_map": name, "threshold": threshold}
            kwargs = {"name": f"{name} · {kind} {hemi[0].upper()}H", "metadata": meta,
                      "visible": kind == visible_kind, "shading": "smooth",
                      "axis_labels": AXIS_LABELS, "units": "mm"}
            if is_labels:
                values = np.rint(values).astype(np.float32)
                n = int(max(max(legend), values.max() if values.size else 0)) + 1
                values = outline_labels(values, faces)
                # an overlay: uncategorised vertices transparent, the mesh lifted off the
                # map's surface (not hiding it, no depth fighting)
                kwargs.update(colormap=_label_colormap(category_colormap(legend), n,
                                                       background=(0, 0, 0, 0)),
                              contrast_limits=(-0.5, n - 0.5), blending="translucent")
                verts = lifted(verts, faces, SURFACE_LIFT_MM)
                meta["legend"] = legend
            elif stat in SEQUENTIAL + DIVERGING:
                shown = threshold_display(stat, threshold,
                                          statistic(stat).limit or robust_limit(values))
                kwargs.update(colormap=surface_colormap(stat, magnitude),
                              contrast_limits=shown["contrast_limits"])
                meta["magnitude"] = magnitude
            else:
                kwargs.update(colormap="gray")
            out.append(((verts, faces, values), kwargs, "surface"))
    return out


#: the cortex's grey on a surface (sub-threshold vertices); darker under grey maps
CORTEX_GREY = (0.75, 0.75, 0.75, 1.0)
CORTEX_GREY_DARK = (0.4, 0.4, 0.4, 1.0)


def outline_labels(values: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex labels reduced to their outlines on a mesh: a labelled vertex keeps its
    label only when one of its faces touches another label (0 elsewhere), so a category
    drawn over a map's surface leaves the map visible inside it."""
    v = np.asarray(values)
    f = np.asarray(faces)
    lab = v[f]
    mixed = ~((lab == lab[:, :1]).all(axis=1))
    edge = np.zeros(len(v), dtype=bool)
    edge[np.unique(f[mixed])] = True
    return np.where(edge, v, 0).astype(v.dtype)


@lru_cache(maxsize=None)
def surface_colormap(stat: str, magnitude: bool = False):
    """The map colormap on a surface: the plugin's colours (``magnitude``: the grey
    ``|value|`` ramp) with the transparent band (sub-threshold) painted the cortex's grey
    (a surface has nothing beneath; darker under the grey ramp)."""
    from napari.utils.colormaps import Colormap  # napari: this module loads headless

    if magnitude:
        base = plugin_colormap("magnitude-sequential" if stat in SEQUENTIAL else "magnitude")
    else:
        base = plugin_colormap("sequential" if stat in SEQUENTIAL else "diverging")
    colors = np.asarray(base.colors, dtype=float).copy()
    clear = colors[:, 3] == 0
    colors[clear] = CORTEX_GREY_DARK if magnitude else CORTEX_GREY
    kind = "p/q" if stat in SEQUENTIAL else "diverging"
    grey = " |value|" if magnitude else ""
    return Colormap(colors=colors, controls=np.asarray(base.controls), interpolation="zero",
                    name=f"lesion-align {kind}{grey} (surface)")
