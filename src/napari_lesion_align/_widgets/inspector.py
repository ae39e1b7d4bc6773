"""Inspector dock widget: click a voxel to see its MNI coordinate ``(x, y, z)`` (nilearn's
order, through the result's affine), its atlas / ROI label (when a label image is loaded),
and r per language for every condition of the current result at that voxel (mean over
subjects; the conditions are those the result holds, controls hatched).

In 3D views a click picks the first voxel of the analysis mask along the line of sight
(the ray through the cursor), or says that there is none.

The inspected voxel is marked on the canvas by a small cross (a Points layer the
Inspector owns, :data:`CROSSHAIR`; removed when the Inspector closes); the plot follows
the viewer's theme; the dims sliders' labels show the current slices in MNI mm
(:func:`follow_slices_in_mm`)."""

from __future__ import annotations

import warnings
import weakref

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton
from napari.layers import Labels, Points
from napari.utils.theme import get_theme
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QDockWidget, QSizePolicy, QWidget

from .. import _layers
from .._layers import AXIS_LABELS
from ..core.analysis.statistics import language_colour
from ..core.results.figures import bar_values, ceiling_lines, condition_bars, hatched_bars
from ._dock import scroll_layout, wrap_label
from ._tasks import number, plain_text
from ._state import connect, session_for, unwrap
from ._viewer import refresh_slider_labels

#: the name of the crosshair layer at the inspected voxel (``metadata["stat"]`` too)
CROSSHAIR = "inspected voxel"
#: MNI axis names of napari's world axes (world = (z, -y, x), ``_layers.mni_to_world``)
WORLD_AXES = (("z", 1.0), ("y", -1.0), ("x", 1.0))


def slice_labels(viewer) -> tuple | None:
    """The dims axis labels that state the current slice in MNI mm (``"z +4 mm"``) for
    the axes not displayed; ``None`` when the viewer does not show 3D MNI data."""
    dims = viewer.dims
    if dims.ndim < 3 or not any(layer.metadata.get("lesion_align")
                                or layer.metadata.get("stat") for layer in viewer.layers):
        return None
    labels = list(dims.axis_labels)
    lead = dims.ndim - 3
    displayed = set(dims.displayed)
    for k, (name, sign) in enumerate(WORLD_AXES):
        axis = lead + k
        if axis in displayed:
            labels[axis] = name if sign > 0 else f"-{name}"
        else:
            labels[axis] = f"{name} {number(sign * dims.point[axis], 0, plus=True)} mm"
    return tuple(labels)


def _xyz(mni, digits: int = 1) -> str:
    """``"-44.0, 0.0, 32.0"`` (no negative zero)."""
    return ", ".join(number(v, digits) for v in mni)


_FOLLOWED: "weakref.WeakSet" = weakref.WeakSet()


def _disconnect(emitter, callback) -> None:
    try:
        emitter.disconnect(callback)
    except Exception:  # the viewer is gone already
        pass


def follow_slices_in_mm(viewer) -> None:
    """Keep the sliders' labels on the current slices' MNI mm (the slider itself counts
    slices: "38/94"); once per viewer."""
    v = unwrap(viewer)
    if v in _FOLLOWED:
        return
    _FOLLOWED.add(v)

    def update(*_):
        labels = slice_labels(v)
        old = tuple(v.dims.axis_labels)
        if labels is not None and old != labels:
            v.dims.axis_labels = labels
            if [len(str(t)) for t in old] != [len(str(t)) for t in labels]:
                refresh_slider_labels(v)  # napari keeps the old width: "z …"

    v.dims.events.point.connect(update)
    v.dims.events.order.connect(update)
    v.dims.events.ndisplay.connect(update)
    # after napari's own handler (which puts the layers' labels back)
    v.layers.events.inserted.connect(update, position="last")
    v.layers.events.removed.connect(update, position="last")
    update()


def _voxel_index(space):
    """``(inverse affine, volume of feature indices (-1 outside the mask))``."""
    mask = np.asarray(space.mask_img.dataobj, dtype=bool)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    return np.linalg.inv(np.asarray(space.affine, dtype=float)), index


def _atlas_name(layer, value):
    """A label's name from a Labels layer's features or metadata, when it has one."""
    feats = getattr(layer, "features", None)
    if feats is not None and len(feats):
        cols = {c.lower(): c for c in feats.columns}
        name_col = next((cols[c] for c in ("name", "label_name", "region", "roi")
                         if c in cols), None)
        idx_col = next((cols[c] for c in ("index", "label", "value", "id") if c in cols), None)
        if name_col is not None:
            if idx_col is not None:
                hit = feats[feats[idx_col] == value]
                if len(hit):
                    return str(hit[name_col].iloc[0])
            elif 0 <= value < len(feats):
                return str(feats[name_col].iloc[value])
    names = layer.metadata.get("labels") or layer.metadata.get("label_names")
    if isinstance(names, dict):
        return names.get(value) or names.get(str(value))
    if isinstance(names, (list, tuple)) and 0 <= value < len(names):
        return str(names[value])
    return None


class InspectorWidget(QWidget):
    """Click a voxel: MNI coordinate, atlas label, r per language and condition."""

    def __init__(self, napari_viewer, parent=None):
        # reason: matplotlib loads only when an Inspector is made
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure  # (see above)

        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._index = None
        self.values: dict = {}
        self.mni = None
        self.voxel = None
        self.atlas = []

        lay = scroll_layout(self)
        self.active = QCheckBox("inspect on click")
        self.active.setChecked(True)
        lay.addWidget(self.active)
        self.goto_form = self._goto_form()
        lay.addWidget(self.goto_form.native)
        self.where = wrap_label("Click a voxel in the viewer.")
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.where)
        self.figure = Figure(figsize=(3.4, 3.6), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumSize(120, 300)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        lay.addWidget(self.canvas, 1)

        self._callback = self._on_mouse
        self.viewer.mouse_drag_callbacks.append(self._callback)
        self.destroyed.connect(self._drop_callback_factory())
        connect(self.session.result_changed, self._result_changed)
        self.viewer.events.theme.connect(self._theme_changed)
        self.destroyed.connect(
            lambda *_, v=self.viewer, cb=self._theme_changed: _disconnect(v.events.theme, cb))
        follow_slices_in_mm(self.viewer)
        self._draw_empty()

    def _goto_form(self):
        """A magicgui form: MNI x, y, z (mm) and **Go to**, which moves the slices there
        and inspects that voxel."""
        spins = [FloatSpinBox(value=0.0, min=-500.0, max=500.0, step=2.0,
                              tooltip=f"MNI {a} in mm") for a in ("x", "y", "z")]
        for a, sp in zip(("x", "y", "z"), spins):
            # the axis inside the box ("x -44.0"): three boxes fit a narrow dock unclipped
            sp.native.setPrefix(f"{a} ")
            sp.native.setDecimals(1)
            sp.native.setButtonSymbols(sp.native.ButtonSymbols.NoButtons)
            fm = sp.native.fontMetrics()
            sp.native.setMinimumWidth(fm.horizontalAdvance(f"{a} -500.0") + 14)
        row = Container(widgets=spins, layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        button = PushButton(text="Go to MNI (mm)")
        form = Container(widgets=[row, button], layout="vertical", labels=False)
        form.margins = (0, 0, 0, 0)
        button.changed.connect(lambda *_: self.go_to(tuple(sp.value for sp in spins)))
        self._goto_spins = spins
        return form

    def go_to(self, xyz) -> dict:
        """Move the viewer's slices to MNI ``xyz`` (mm) and inspect the voxel there."""
        world = _layers.mni_to_world(xyz)
        dims = self.viewer.dims
        if dims.ndim >= 3:
            for axis, value in zip(range(dims.ndim - 3, dims.ndim), world):
                dims.set_point(axis, value)
        for sp, v in zip(self._goto_spins, xyz):
            sp.value = float(v)
        return self.inspect(world)

    def _drop_callback_factory(self):
        viewer, cb = self.viewer, self._callback

        def drop(*_):
            try:
                viewer.mouse_drag_callbacks.remove(cb)
            except (ValueError, RuntimeError):
                pass
            try:  # the crosshair is the Inspector's: it goes with it
                layer = viewer.layers[CROSSHAIR] if CROSSHAIR in viewer.layers else None
                if layer is not None and layer.metadata.get("stat") == "crosshair":
                    viewer.layers.remove(layer)
            except (ValueError, RuntimeError, KeyError):
                pass
        return drop

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self._drop_callback_factory()()
        self.remove_crosshair()
        super().closeEvent(event)

    def hideEvent(self, event):  # noqa: N802 (Qt)
        """The Inspector's dock closed or removed (not another tab chosen): the crosshair
        goes with it."""
        super().hideEvent(event)
        ref = weakref.ref(self)
        QTimer.singleShot(0, lambda: ref() is not None and ref()._closed_check())

    def _closed_check(self) -> None:
        try:
            dock = self.parent()
            while dock is not None and not isinstance(dock, QDockWidget):
                dock = dock.parent()
            if dock is None or not dock.isVisible():
                self.remove_crosshair()
        except RuntimeError:  # deleted meanwhile
            pass

    # ------------------------------------------------------------------ crosshair
    def _crosshair_layer(self):
        layers = self.viewer.layers
        if CROSSHAIR in layers and layers[CROSSHAIR].metadata.get("stat") == "crosshair":
            return layers[CROSSHAIR]
        return None

    def show_crosshair(self, world) -> None:
        """A small cross at the inspected voxel (on top of the maps; the layer selection
        is left as it was)."""
        if self.viewer.dims.ndim < 3:
            return  # no volume shown
        point = np.asarray(world, dtype=float)[-3:][None, :]
        layer = self._crosshair_layer()
        if layer is not None:
            layer.data = point
            layer.visible = True
            return

        viewer = self.viewer
        selected, active = list(viewer.layers.selection), viewer.layers.selection.active
        layer = Points(point, name=CROSSHAIR, symbol="cross", size=6, face_color="white",
                       border_color="black", border_width=0.15, out_of_slice_display=False,
                       metadata={"stat": "crosshair", "owner": "inspector"},
                       # the maps' axes and units: napari warns (and drops the units) when
                       # the layers disagree
                       axis_labels=AXIS_LABELS, units="mm")
        viewer.layers.append(layer)
        viewer.layers.selection.clear()
        viewer.layers.selection.update(selected)
        viewer.layers.selection.active = active

    def remove_crosshair(self) -> None:
        layer = self._crosshair_layer()
        if layer is not None:
            try:
                self.viewer.layers.remove(layer)
            except (ValueError, RuntimeError):
                pass

    # ------------------------------------------------------------------ events
    def _result_changed(self, result) -> None:
        self._index = None
        self.values = {}
        if self.mni is not None and result is not None:
            self.inspect(_layers.mni_to_world(self.mni))
        else:
            self._draw_empty()

    def _on_mouse(self, viewer, event):
        """A click (press + release without moving) inspects the voxel under the mouse."""
        if not self.active.isChecked() or getattr(event, "button", 1) != 1:
            return
        start = tuple(event.position)
        direction = getattr(event, "view_direction", None)
        three_d = len(getattr(event, "dims_displayed", ()) or ()) == 3
        moved = False
        yield
        while event.type == "mouse_move":
            moved = True
            yield
        if not moved:
            if three_d and direction is not None:
                self.inspect_ray(start, direction)
            else:
                self.inspect(start)

    def inspect_ray(self, world_position, view_direction, step_mm: float = 1.0) -> dict:
        """3D click: inspect the first voxel of the analysis mask along the ray through
        ``world_position`` in ``view_direction`` (world frame), nearest to the camera."""
        result = self.session.result
        if result is None or getattr(result.space, "kind", None) != "volume":
            return self.inspect(world_position)
        if self._index is None:
            self._index = _voxel_index(result.space)
        inv, index = self._index
        p = np.asarray(world_position, dtype=float)[-3:]
        d = np.asarray(view_direction, dtype=float)[-3:]
        norm = np.linalg.norm(d)
        if not norm:
            return self.inspect(world_position)
        d = d / norm
        ts = np.arange(-400.0, 400.0 + step_mm, step_mm)
        world = p[None, :] + ts[:, None] * d[None, :]
        mni = np.stack([world[:, 2], -world[:, 1], world[:, 0], np.ones(len(ts))], axis=1)
        ijk = np.rint(mni @ inv.T)[:, :3].astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(index.shape)), axis=1)
        hit = np.zeros(len(ts), dtype=bool)
        hit[inside] = index[tuple(ijk[inside].T)] >= 0
        if not hit.any():
            self.values = {}
            self.voxel = None
            self.where.setText("3D: no voxel of the analysis mask under the cursor; "
                               "click on the brain, or use a 2D view")
            self._draw_empty()
            return self.values
        first = int(np.argmax(hit))
        out = self.inspect(tuple(world[first]))
        self.where.setText(self.where.text() + "\n(3D: the first mask voxel along the line "
                           "of sight)")
        return out

    # ------------------------------------------------------------------ inspect
    def inspect(self, world_position) -> dict:
        """Show what is at a napari world position; returns the values shown."""
        self.mni = _layers.world_to_mni(world_position)
        x, y, z = self.mni
        lines = [f"MNI ({_xyz(self.mni)}) mm"]
        self.atlas = self._atlas_labels(world_position)
        for name, value, label in self.atlas:
            label = plain_text(label)
            lines.append(f"{plain_text(name)}: {value}" + (f" ({label})" if label else ""))
        result = self.session.result
        self.values = {}
        self.voxel = None
        if result is None:
            lines.append("no result yet")
        elif getattr(result.space, "kind", None) != "volume":
            lines.append("this result is on regions: no voxels to inspect")
        else:
            if self._index is None:
                self._index = _voxel_index(result.space)
            inv, index = self._index
            ijk = np.rint(inv @ np.array([x, y, z, 1.0]))[:3].astype(int)
            inside = all(0 <= ijk[a] < index.shape[a] for a in range(3))
            if inside:  # the voxel's own MNI centre (nilearn's coord_transform)
                self.mni = _layers.voxel_to_mni(result.space.affine, ijk)
                lines[0] = f"MNI ({_xyz(self.mni)}) mm  [x, y, z]"
            inside = all(0 <= ijk[a] < index.shape[a] for a in range(3))
            v = int(index[tuple(ijk)]) if inside else -1
            self.voxel = tuple(int(i) for i in ijk)
            if v < 0:
                lines.append(f"voxel {self.voxel}: outside the analysis mask")
            else:
                lines.append(f"voxel {self.voxel} (#{v} in the mask)")
                self.values = self._values_at(result, v)
                cats = self._categories_at(result, v)
                if cats:
                    lines.append("category: " + cats)
                lines += ceiling_lines(result, v)
        self.where.setText("\n".join(lines))
        for spin, value in zip(self._goto_spins, self.mni):  # the Go to form follows
            spin.value = min(max(round(float(value), 1), spin.min), spin.max)
        if self.voxel is not None and result is not None:  # the voxel's centre
            self.show_crosshair(_layers.mni_to_world(self.mni))
        else:
            self.show_crosshair(world_position)
        self._draw()
        return self.values

    def _atlas_labels(self, world_position):
        """``[(layer name, label value, label name)]`` of the label layers under the point
        (our own category overlays and analysis masks excluded)."""
        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Labels) or layer.metadata.get("stat") in ("categories",
                                                                               "mask"):
                continue
            try:
                value = layer.get_value(tuple(world_position), world=True)
            except Exception:  # a layer of another dimensionality
                continue
            if value is None:
                continue
            value = int(value)
            out.append((layer.name, value, _atlas_name(layer, value)))
        return out

    @staticmethod
    def _categories_at(result, v) -> str:
        parts = []
        for name, (labels, legend) in result.categories.items():
            lab = int(labels[v])
            entry = legend.get(lab, {})
            parts.append(f"{plain_text(name)}: {plain_text(entry.get('name', lab))}")
        return "; ".join(parts)

    @staticmethod
    def _values_at(result, v) -> dict:
        """``{bar: {language: (mean r over subjects, error)}}`` at feature ``v``
        (:func:`~..core.results.figures.bar_values`: controls, lesions and their random draws'
        band)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return bar_values(result, v)[0]

    # ------------------------------------------------------------------ plot
    def theme_colours(self) -> dict:
        """The plot's colours from the viewer's theme: ``background``, ``text``, ``line``."""
        try:
            theme = get_theme(self.viewer.theme)
            return {"background": theme.background.as_hex(), "text": theme.text.as_hex(),
                    "line": theme.secondary.as_hex()}
        except Exception:  # an unknown theme: matplotlib's own
            return {"background": "#ffffff", "text": "#000000", "line": "#808080"}

    def _theme_changed(self, *_) -> None:
        try:
            self._draw()
        except RuntimeError:  # the widget was deleted under a pending theme event
            pass

    def _style(self, ax) -> None:
        """The figure in the viewer's theme (a dark plot in the dark theme)."""
        c = self.theme_colours()
        self.figure.set_facecolor(c["background"])
        ax.set_facecolor(c["background"])
        ax.tick_params(colors=c["text"], labelcolor=c["text"])
        for spine in ax.spines.values():
            spine.set_color(c["line"])
        ax.yaxis.label.set_color(c["text"])
        ax.title.set_color(c["text"])
        for line in ax.lines:  # the zero line
            if line.get_color() in ("k", "black", "#000000"):
                line.set_color(c["text"])
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                text.set_color(c["text"])

    def _draw_empty(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.text(0.5, 0.5, "r per language and condition\nat the clicked voxel",
                ha="center", va="center", fontsize=9, color="0.5", transform=ax.transAxes)
        ax.set_axis_off()
        self._style(ax)
        self.canvas.draw_idle()

    def _draw(self) -> None:
        if not self.values:
            self._draw_empty()
            return
        result = self.session.result
        self.figure.clear()
        ax = self.figure.add_subplot(111)

        colours = {lang: language_colour(lang, result.languages)
                   for lang in result.languages}  # as in the category legend
        condition_bars(ax, self.values, result.languages, hatched_bars(result), fontsize=7,
                       colours=colours)
        # the condition names upright, one per bar group: they never overlap
        for label in ax.get_xticklabels():
            label.set_rotation(90)
            label.set_horizontalalignment("center")
        ax.set_ylabel("r (mean over subjects)", fontsize=8)
        ax.tick_params(labelsize=7)
        # the legend in the title's row, outside the axes: it never covers the bars
        ax.legend(fontsize=7, ncols=max(len(result.languages), 1), frameon=False,
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)
        self.figure.suptitle(f"MNI ({_xyz(self.mni, 0)})", fontsize=8,
                             color=self.theme_colours()["text"])
        self._style(ax)
        self.canvas.draw_idle()
