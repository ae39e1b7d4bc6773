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

from .. import _layers
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
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is None:
            return None
        import napari

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
    from ._tasks import apply_contour

    apply_contour(layer)
    if meta.get("lesion_align"):
        _later(lambda: orient(ref()))
    if meta.get("stat") == "template":
        _later(lambda: _template_to_bottom(ref, layer))
    folder = meta.get("result_folder")
    if folder:
        from ._show import RESULT_KEY, RESULT_TAG

        key = result_key(folder)
        meta.setdefault(RESULT_KEY, key)
        meta.setdefault(RESULT_TAG, True)
        load_result_folder(viewer, key)


def _later(fn) -> None:
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
    from napari.utils.notifications import show_error

    from ._tasks import start_task

    session = session_for(viewer)
    pending = session.__dict__.setdefault("_loading", {})
    if key in session.results or key in pending:
        return None

    def fn(progress, cancel):
        from ..core.result import AlignmentResult

        progress(0.0, f"reading {key}")
        return AlignmentResult.load(key, lazy=True)

    def done(outcome):
        pending.pop(key, None)
        if outcome.kind == "ok":
            session.add_result(outcome.value, key, key=key)
        elif outcome.kind == "error":
            show_error(outcome.message)

    pending[key] = start_task(fn, on_done=done, name="open result", activity=True)
    return pending[key]


# --------------------------------------------------------------------------- status bar
def mni_status_text(position) -> str:
    """``"MNI x=-44.0 y=-66.0 z=32.0 mm"`` of a napari world position."""
    x, y, z = _layers.world_to_mni(position)
    return f"MNI x={x:.1f} y={y:.1f} z={z:.1f} mm"


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
    from napari.components.overlays import TextOverlay

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
    """The orientation letters hidden meanwhile (e.g. for a screenshot)."""
    overlays = getattr(getattr(unwrap(viewer), "canvas", None), "overlays", None)
    shown = []
    if overlays is not None:
        for edge in MARKER_POSITIONS:
            ov = overlays.get(MARKER_KEY.format(edge)) if hasattr(overlays, "get") else None
            if ov is not None and ov.visible:
                ov.visible = False
                shown.append(ov)
    try:
        yield
    finally:
        for ov in shown:
            ov.visible = True
