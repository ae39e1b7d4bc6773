"""What the plugin adds to a viewer once, whichever way a result reached it.

:func:`attach` (idempotent; called by every dock widget, by the reader and by the sample
data) makes a viewer:

* **register results** opened by the reader or File > Open Sample: their layers carry
  ``metadata["result_folder"]``; the folder is loaded once (lazily, in a worker) and added
  to the viewer's :class:`~._state.Session` (:attr:`~._state.Session.results`), so the
  Results and Inspector widgets see it;
* **keep the MNI152 template at the bottom** whenever one is added (File > Open Sample >
  MNI152 after maps no longer hides them);
* **show MNI coordinates** ``x, y, z`` (nilearn's order) in the status bar for our layers,
  instead of napari's world order ``(z, -y, x)``;
* **orient 2D views**: superior up whenever z is the vertical axis (coronal and sagittal
  views after rolling the dims), anterior up in axial views, and the anatomical direction
  at each canvas edge (L / R, A / P, S / I) as canvas text overlays.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import napari
from napari.components.overlays import TextOverlay
from napari.layers import Image, Labels, Surface
from napari.utils.notifications import show_error
from napari.utils.theme import get_theme

from .. import _layers
from .._view_model import RESULT_KEY, RESULT_LABEL, RESULT_TAG, owned_name
from . import _state
from ..core.results.result import AlignmentResult
from ._state import result_key, session_for, unwrap

_ATTACHED: "weakref.WeakSet" = weakref.WeakSet()
#: the letters of the negative / positive direction of each world axis (z, -y, x)
AXIS_LETTERS = (("I", "S"), ("A", "P"), ("L", "R"))
#: canvas overlay keys of the orientation letters, by canvas position
MARKER_POSITIONS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left",
                    "right": "middle_right"}
MARKER_KEY = "lesion_align_{}"
_IN_STATUS: set = set()


def attach(viewer) -> None:
    """Install the behaviour of the module docstring on ``viewer`` (once)."""
    v = unwrap(viewer)
    if v is None or v in _ATTACHED:
        return
    _ATTACHED.add(v)
    ref = weakref.ref(v)
    v.layers.events.inserted.connect(lambda event: _inserted(ref, event.value))
    v.layers.events.removed.connect(lambda event: _later(lambda: orient(ref())))
    v.events.status.connect(lambda event: _status(ref))
    v.dims.events.order.connect(lambda event: orient(ref()))
    v.dims.events.ndisplay.connect(lambda event: orient(ref()))
    for layer in list(v.layers):
        _inserted(ref, layer)
    orient(v)


def current_viewer():
    """napari's current viewer when a Qt application runs, else None."""
    try:
        # reason: no Qt at import: the reader and the sample data load this
        # module headless (no Qt binding: None)
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is None:
            return None
        return napari.current_viewer()
    except Exception:  # no Qt binding / no viewer
        return None


def without_duplicate_template(tuples: list) -> list:
    """``tuples`` less the template when napari's current viewer shows one already."""
    viewer = current_viewer()
    if viewer is None or not any(layer.metadata.get("stat") == "template"
                                 for layer in viewer.layers):
        return tuples
    return [t for t in tuples if t[1].get("metadata", {}).get("stat") != "template"]


def attach_current() -> None:
    """:func:`attach` to napari's current viewer, if there is one (reader / sample data)."""
    viewer = current_viewer()
    if viewer is not None:
        attach(viewer)


# --------------------------------------------------------------------------- layers
def _inserted(ref, layer) -> None:
    viewer = ref()
    if viewer is None:
        return
    meta = layer.metadata
    # reason: Qt loads in napari only (see current_viewer)
    from ._layer_feed import apply_contour

    apply_contour(layer)
    if meta.get("lesion_align"):
        _later(lambda: orient(ref()))
    if meta.get("stat") == "template":
        _later(lambda: _template_to_bottom(ref, layer))
    folder = meta.get("result_folder")
    if folder and meta.get("stat") != "template":
        # a result's layer from the reader or the sample: it joins the registry, with its
        # result's label as its name's suffix (two results never share a layer name)
        key = result_key(folder)
        label = session_for(viewer).label_for(key, folder)
        meta[RESULT_KEY] = key
        meta[RESULT_LABEL] = label
        meta[RESULT_TAG] = True
        layer.name = owned_name(layer.name, label)
        load_result_folder(viewer, key)


def _later(fn) -> None:
    # reason: Qt loads in napari only (see current_viewer)
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, fn)


def _template_to_bottom(ref, layer) -> None:
    viewer = ref()
    if viewer is None or layer not in viewer.layers:
        return
    same = [other for other in viewer.layers if other is not layer and
            other.metadata.get("stat") == "template" and
            other.metadata.get("source") == layer.metadata.get("source")]
    if same:  # shown already (e.g. File > Open Sample > MNI152 twice)
        viewer.layers.remove(layer)
        return
    i = viewer.layers.index(layer)
    below = [j for j in range(i) if viewer.layers[j].metadata.get("stat") != "template"]
    if below:
        viewer.layers.move(i, 0)


def load_result_folder(viewer, key: str):
    """Load the result folder ``key`` (a resolved path) into the viewer's session, once:
    lazily (maps read when first used) in a worker; returns the task (None when it is
    open or loading already)."""
    # reason: Qt loads in napari only (see current_viewer)
    from ._tasks import start_task

    session = session_for(viewer)
    pending = session.__dict__.setdefault("_loading", {})
    if key in session.results or key in pending:
        return None

    def fn(progress, cancel):
        progress(0.0, f"reading {key}")
        return AlignmentResult.load(key, lazy=True)

    def done(outcome):
        pending.pop(key, None)
        if outcome.kind == "ok":
            session.add_result(outcome.value, key, key=key)
        elif key not in session.results:
            session.__dict__.get("_labels", {}).pop(key, None)
        elif outcome.kind == "error":
            show_error(outcome.message)

    pending[key] = start_task(fn, on_done=done, name="open result", activity=True)
    return pending[key]


# --------------------------------------------------------------------------- status bar
def mni_status_text(position) -> str:
    """``"MNI x=-44.0 y=-66.0 z=32.0 mm"`` of a napari world position."""
    # reason: _tasks loads Qt (see current_viewer); number is its one owner
    from ._tasks import number

    x, y, z = (number(v) for v in _layers.world_to_mni(position))
    return f"MNI x={x} y={y} z={z} mm"


def _status(ref) -> None:
    viewer = ref()
    if viewer is None or id(viewer) in _IN_STATUS:
        return
    status = viewer.status
    active = viewer.layers.selection.active
    ours = active is not None and active.metadata.get("lesion_align")
    if not ours or len(viewer.cursor.position) < 3:
        return
    text = mni_status_text(viewer.cursor.position)
    if isinstance(status, dict) and "coords" in status:
        if status.get("coords", "").startswith("MNI"):
            return
        status = dict(status, coords=text,
                      coordinates=f"{text}: {status.get('value', '')}".rstrip(": "))
    elif isinstance(status, str) and " » " in status and not status.startswith("MNI"):
        status = text + " » " + status.split(" » ", 1)[1]
    else:
        return
    _IN_STATUS.add(id(viewer))
    try:
        viewer.status = status
    finally:
        _IN_STATUS.discard(id(viewer))


# --------------------------------------------------------------------------- orientation
def orient(viewer) -> None:
    """2D views the right way up (superior up when z is vertical, else anterior / right
    up) and the direction letters at the canvas edges (hidden in 3D)."""
    if viewer is None:
        return
    dims = viewer.dims
    if len(dims.order) < 3:
        return
    ndim = dims.ndim
    if dims.ndisplay != 2:
        _markers(viewer, None)
        return
    v_axis, h_axis = (a - ndim + 3 for a in dims.order[-2:])  # world axes (z, -y, x)
    vertical = "up" if v_axis == 0 else "down"
    cam = camera(viewer)
    try:
        if tuple(str(o) for o in cam.orientation2d) != (vertical, "right"):
            cam.orientation2d = (vertical, "right")
    except Exception:  # an older camera model: leave it
        pass
    _markers(viewer, (v_axis, h_axis, vertical))


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def edge_letters(v_axis: int, h_axis: int, vertical: str = "down") -> dict:
    """``{"top", "bottom", "left", "right": letter}`` of a 2D view showing world axes
    ``v_axis`` (vertical) and ``h_axis`` (horizontal, increasing to the right)."""
    if not (0 <= v_axis < 3 and 0 <= h_axis < 3):
        return {}
    neg_v, pos_v = AXIS_LETTERS[v_axis]
    neg_h, pos_h = AXIS_LETTERS[h_axis]
    top, bottom = (neg_v, pos_v) if vertical == "down" else (pos_v, neg_v)
    return {"top": top, "bottom": bottom, "left": neg_h, "right": pos_h}


def _markers(viewer, view) -> None:
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is None:
        return
    letters = edge_letters(*view) if view is not None else {}
    show = bool(letters) and any(layer.metadata.get("lesion_align") for layer in viewer.layers)
    for edge, position in MARKER_POSITIONS.items():
        key = MARKER_KEY.format(edge)
        try:
            ov = overlays[key]
        except KeyError:
            ov = TextOverlay(position=position, font_size=14, color=(0.85, 0.85, 0.85, 1.0))
            try:
                overlays[key] = ov
            except Exception:
                return
        ov.text = letters.get(edge, "")
        ov.visible = show


def update_markers(viewer) -> None:
    """Show / hide the orientation letters after layers were added or removed."""
    orient(unwrap(viewer))


@contextmanager
def markers_hidden(viewer):
    """The plugin's canvas overlays (orientation letters, the legend, the threshold text,
    the colour bars) hidden meanwhile, e.g. for a screenshot whose margins show them."""
    v = unwrap(viewer)
    overlays = getattr(getattr(v, "canvas", None), "overlays", None)
    shown = []
    if overlays is not None:
        for key in list(overlays):
            ov = overlays[key]
            if str(key).startswith("lesion_align_") and ov.visible:
                ov.visible = False
                shown.append(ov)
    for layer in list(getattr(v, "layers", [])):
        bar = getattr(layer, "colorbar", None)
        if bar is not None and bar.visible:
            bar.visible = False
            shown.append(bar)
    try:
        yield
    finally:
        for ov in shown:
            ov.visible = True


# --------------------------------------------------------------------------- legend
#: canvas overlay keys of the legend: the threshold text, then one line per category
LEGEND_TEXT_KEY = "lesion_align_threshold"
LEGEND_ENTRY_KEY = "lesion_align_legend_{}"


def show_canvas_legend(viewer, text: str = "", entries=(), colorbar_layer=None) -> None:
    """On the canvas (napari overlays, top left, stacked): ``text`` (what a coloured
    voxel means: the map, its threshold, correction and df; one overlay per line) and
    one line per category
    ``(colour, title)`` in its colour; the colour bar of ``colorbar_layer`` (napari's
    layer colour bar overlay, top right), every other layer's colour bar hidden."""
    v = unwrap(viewer)
    overlays = getattr(getattr(v, "canvas", None), "overlays", None)
    if overlays is None:
        return
    wanted = {}
    for i, line in enumerate(t for t in str(text or "").split("\n") if t):
        wanted[LEGEND_TEXT_KEY + ("" if i == 0 else f"_{i}")] = (line, (1.0, 1.0, 1.0, 1.0))
    for i, (colour, title) in enumerate(entries):
        wanted[LEGEND_ENTRY_KEY.format(i)] = (f"■ {title}", colour)
    for key in list(overlays):
        if (str(key).startswith(LEGEND_TEXT_KEY) or
                str(key).startswith("lesion_align_legend_")) and key not in wanted:
            overlays[key].visible = False
    for key, (line, colour) in wanted.items():
        ov = overlays.get(key) if hasattr(overlays, "get") else None
        if ov is None:
            ov = TextOverlay(position="top_left", font_size=10, box=True)
            try:
                overlays[key] = ov
            except Exception:
                return
        ov.text = line
        ov.color = colour
        ov.visible = True
    for layer in v.layers:
        bar = getattr(layer, "colorbar", None)
        if bar is not None:
            on = layer is colorbar_layer and layer.visible
            if bar.visible != on:
                bar.visible = on


# --------------------------------------------------------------------------- dock legend
#: WCAG 2 contrast a swatch's border (a non-text element) and the legend's text keep
#: against the dock's background
BORDER_CONTRAST = 3.0
TEXT_CONTRAST = 4.5
#: the swatch's size and its border's width in pixels
SWATCH_PX, SWATCH_BORDER_PX = 14, 2


def relative_luminance(colour) -> float:
    """WCAG 2 relative luminance of a colour (``"#rrggbb"`` or RGB(A) in 0..1)."""
    import numpy as np

    if isinstance(colour, str):
        h = colour.lstrip("#")[:6]
        rgb = np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], dtype=float) / 255.0
    else:
        rgb = np.asarray(colour, dtype=float)[:3]
    lin = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2])


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours (1 .. 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def readable_on(background, candidates=("#ffffff", "#000000")) -> str:
    """Of ``candidates``, the colour with the highest contrast against ``background``."""
    return max(candidates, key=lambda c: contrast_ratio(c, background))


def theme_colours(theme: str = "dark") -> dict:
    """``{"background", "foreground", "text"}`` of a napari theme (hex)."""
    try:
        t = get_theme(str(theme))
    except Exception:  # an unknown theme: napari's dark one
        t = get_theme("dark")
    return {"background": t.background.as_hex(), "foreground": t.foreground.as_hex(),
            "text": t.text.as_hex()}


def swatch_border(theme: str = "dark") -> str:
    """The border of the legend's swatches on ``theme``: white or black, whichever stands
    out more from both of the theme's panel colours (the category colours themselves are
    part of the results and never change)."""
    c = theme_colours(theme)
    return max(("#ffffff", "#000000"),
               key=lambda k: min(contrast_ratio(k, c["background"]),
                                 contrast_ratio(k, c["foreground"])))


def swatch_png(colour: str, border: str) -> bytes:
    """A :data:`SWATCH_PX` square PNG in ``colour`` with a :data:`SWATCH_BORDER_PX`
    border in ``border``."""
    # reason: Qt loads in napari only (see current_viewer)
    from qtpy.QtCore import QBuffer, QByteArray, QIODevice
    from qtpy.QtGui import QColor, QImage, QPainter  # (see above)

    n, b = SWATCH_PX, SWATCH_BORDER_PX
    img = QImage(n, n, QImage.Format.Format_ARGB32)
    img.fill(QColor(border))
    painter = QPainter(img)
    painter.fillRect(b, b, n - 2 * b, n - 2 * b, QColor(colour[:7]))
    painter.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    buf.close()
    return bytes(data)


def on_theme(viewer, widget, callback) -> None:
    """Call ``callback()`` when the viewer's theme changes, while ``widget`` lives."""
    events = getattr(getattr(viewer, "events", None), "theme", None)
    if events is None:
        return

    def changed(*_):
        try:
            callback()
        except RuntimeError:  # the widget's Qt object is gone
            pass

    events.connect(changed)

    def gone(*_):
        try:
            events.disconnect(changed)
        except Exception:  # the viewer is gone already
            pass

    widget.destroyed.connect(gone)


def legend_html(entries, theme: str = "dark") -> str:
    """The dock's category legend: per ``(colour, title, meaning)`` a bordered swatch
    (:func:`swatch_png`, border :func:`swatch_border`) and the title (its meaning as a
    tooltip) in the theme's text colour, readable on napari's dark and light themes."""
    import base64
    from html import escape

    border = swatch_border(theme)
    text = theme_colours(theme)["text"]
    parts = []
    for colour, title, meaning in entries:
        uri = "data:image/png;base64," + base64.b64encode(swatch_png(colour, border)).decode()
        parts.append(f"<img src='{uri}' width={SWATCH_PX} height={SWATCH_PX}> "
                     f"<span style='color:{text}' title='{escape(str(meaning))}'>"
                     f"{escape(str(title))}</span>")
    return " &nbsp; ".join(parts)


def canvas_legend(viewer) -> dict:
    """What the canvas legend shows now: ``{"text", "entries": [(colour, title)],
    "colorbar": layer name or None}`` (the tests read this)."""
    v = unwrap(viewer)
    overlays = getattr(getattr(v, "canvas", None), "overlays", {})
    text = ""
    entries = []
    for key in list(overlays):
        ov = overlays[key]
        if not ov.visible:
            continue
        if str(key).startswith(LEGEND_TEXT_KEY):
            text = f"{text}\n{ov.text}" if text else ov.text
        elif str(key).startswith("lesion_align_legend_"):
            entries.append((ov.color, ov.text.removeprefix("■ ")))
    bars = [layer.name for layer in v.layers
            if getattr(layer, "colorbar", None) is not None and layer.colorbar.visible]
    return {"text": text, "entries": entries, "colorbar": bars[0] if bars else None}


# --------------------------------------------------------------------------- surface scene
def enter_surface_scene(viewer) -> None:
    """The surface view in its own clean scene: every visible volume (image / labels)
    layer is hidden, the slice position is kept and the view switches to 3D; back in 2D
    (:func:`leave_surface_scene`) the volumes are shown again at the same slice, the
    surfaces hidden."""
    v = unwrap(viewer)
    session = session_for(v)
    hidden = session.__dict__.setdefault("_hidden_for_surface", [])
    if not hidden:  # the slice the 2D view showed (not one of a scene entered twice)
        session._slice_before_surface = (tuple(v.dims.point), int(v.dims.ndisplay))
    for layer in v.layers:
        if layer.visible and isinstance(layer, (Image, Labels)):
            layer.visible = False
            hidden.append(layer)
    if not session.__dict__.get("_surface_hooked"):
        ref = weakref.ref(v)
        v.dims.events.ndisplay.connect(
            lambda event: leave_surface_scene(ref()) if event.value == 2 else None)
        session._surface_hooked = True
    v.dims.ndisplay = 3


def leave_surface_scene(viewer) -> None:
    """Back from the surface scene: the volumes hidden for it visible again at the slice
    they showed before (the surfaces' extent moved the sliders' range and step), the
    surfaces hidden, the slider labels in mm and a fresh status bar (it named the last
    surface under the cursor)."""
    if viewer is None:
        return
    session = session_for(viewer)
    hidden = session.__dict__.get("_hidden_for_surface") or []
    if not hidden:
        return
    for layer in viewer.layers:
        if isinstance(layer, Surface) and layer.metadata.get("lesion_align"):
            layer.visible = False
    for layer in hidden:
        if layer in viewer.layers:
            layer.visible = True
    hidden.clear()
    before = session.__dict__.pop("_slice_before_surface", None)
    if before is not None:
        point = before[0]
        dims = viewer.dims
        if len(point) == dims.ndim:
            not_shown = [a for a in range(dims.ndim) if a not in dims.displayed]
            dims.set_point(not_shown, [point[a] for a in not_shown])
    viewer.status = "Ready"
    refresh_slider_labels(viewer)


def refresh_slider_labels(viewer) -> None:
    """Give the dims sliders' labels the width of their text (napari sizes them when the
    sliders change, not when a label's text does: ``"z +21 mm"`` read ``"z …"``)."""
    # reason: Qt loads in napari only (see current_viewer)
    from qtpy.QtCore import QTimer

    v = unwrap(viewer)
    ref = weakref.ref(v.dims)

    def resize() -> None:
        dims = ref()
        if dims is None:
            return
        for widget in _dims_widgets(dims):
            try:
                widget._resize_axis_labels()
            except (AttributeError, RuntimeError):  # another napari / deleted
                pass

    QTimer.singleShot(0, resize)


#: the brightness the sulcal shading leaves in the deepest sulci (1 on the crowns)
SULC_DARKEST = 0.7
#: the share of the canvas the surfaces' bounding box may fill
SURFACE_FILL = 0.9


def sulcal_depth(hemisphere: str, mesh_type: str = "inflated"):
    """fsaverage5's sulcal depth of a hemisphere (nilearn ships it: nothing is
    downloaded), or None where this nilearn has none."""
    try:
        # reason: nilearn.datasets loads only when a surface is shown
        from nilearn.datasets import load_fsaverage_data

        img = load_fsaverage_data(mesh="fsaverage5", mesh_type=mesh_type,
                                  data_type="sulcal")
        import numpy as np

        return np.asarray(img.data.parts[hemisphere], dtype=float)
    except Exception:  # an older nilearn, no shipped data: flat grey
        return None


def shade_texture(n: int = 64):
    """The shading texture: brightness 1 (left) .. :data:`SULC_DARKEST` (right), the same
    in every row (napari flips textures vertically; a row is all that is read)."""
    import numpy as np

    ramp = np.linspace(1.0, SULC_DARKEST, n, dtype=np.float32)
    tex = np.ones((4, n, 4), dtype=np.float32)
    tex[..., :3] = ramp[None, :, None]
    return tex


def shade_sulci(layers) -> int:
    """Sulcal shading on the map surfaces among ``layers``, as nilearn's surface plots
    have it: darker in the sulci, lighter on the gyri (fsaverage5's sulcal depth,
    :func:`sulcal_depth`). napari's texture is multiplied with the colour the layer's
    colormap gives its values, so the map keeps its own colormap, threshold, values and
    colour bar; the texture coordinate of a vertex is its depth (crowns left, the deepest
    sulci right of :func:`shade_texture`). Returns how many layers were shaded."""
    import numpy as np

    n = 0
    for layer in layers:
        meta = layer.metadata
        if type(layer).__name__ != "Surface" or meta.get("stat") in (None, "categories") \
                or meta.get("hemisphere") not in ("left", "right"):
            continue
        sulc = sulcal_depth(meta["hemisphere"], meta.get("surface") or "inflated")
        if sulc is None or sulc.shape != np.shape(layer.vertex_values):
            continue
        depth = np.clip(sulc / (np.abs(sulc).max() or 1.0), -1.0, 1.0)  # + = sulcus
        u = (depth + 1.0) / 2.0
        layer.texcoords = np.column_stack([u, np.full_like(u, 0.5)]).astype(np.float32)
        layer.texture = shade_texture()
        meta["sulcal_shading"] = True
        n += 1
    return n


def frame_surfaces(viewer, view_direction=(-1.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> None:
    """The 3D camera looking along ``view_direction`` (world ``(z, -y, x)``; default from
    above, anterior up) at the visible surfaces' bounding box: centred on it and zoomed
    so that its projection fills :data:`SURFACE_FILL` of the canvas (both hemispheres in
    frame; napari's reset_view frames every layer, the hidden volumes included)."""
    import numpy as np

    v = unwrap(viewer)
    surfaces = [layer for layer in v.layers if type(layer).__name__ == "Surface"
                and layer.visible]
    cam = camera(v)
    cam.set_view_direction(tuple(view_direction), up_direction=tuple(up))
    if not surfaces or v.dims.ndisplay != 3:
        return
    boxes = np.array([np.asarray(layer.extent.world, dtype=float)[:, -3:]
                      for layer in surfaces])
    lo, hi = boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)
    centre = (lo + hi) / 2
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi)
                        for c in (lo, hi)])
    view = np.asarray(cam.view_direction, dtype=float)
    upv = np.asarray(cam.up_direction, dtype=float)
    right = np.cross(view, upv)
    rel = corners - centre
    half_w = np.abs(rel @ right).max()
    half_h = np.abs(rel @ upv).max()
    width, height = canvas_size(v)
    cam.center = tuple(centre)
    cam.zoom = SURFACE_FILL * min(width / (2 * max(half_w, 1e-6)),
                                  height / (2 * max(half_h, 1e-6)))


def canvas_size(viewer) -> tuple[int, int]:
    """The canvas's (width, height) in pixels."""
    v = unwrap(viewer)
    size = getattr(getattr(v, "canvas", None), "size", None)  # (height, width)
    if size is not None and len(size) == 2 and min(size) > 1:
        return int(size[1]), int(size[0])
    return 800, 600


def _dims_widgets(dims) -> list:
    """napari's slider panels (``QtDims``) that show ``dims``."""
    # reason: Qt loads in napari only (see current_viewer)
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        return []
    return [w for w in QApplication.allWidgets()
            if type(w).__name__ == "QtDims" and getattr(w, "dims", None) is dims]


# --------------------------------------------------------------------------- registration
# last, once everything attach() calls is defined
if attach not in _state.NEW_SESSION_HOOKS:  # every new session's viewer is attached
    _state.NEW_SESSION_HOOKS.append(attach)
for _made_before in _state.viewers_with_sessions():  # sessions made before this import
    attach(_made_before)
