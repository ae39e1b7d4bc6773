"""Inspector dock widget: click a voxel to see its MNI coordinate ``(x, y, z)`` (nilearn's
order, through the result's affine), its atlas / ROI label (when a label image is loaded),
and r per language for every condition of the current result at that voxel (mean over
subjects; the conditions are those the result holds, controls hatched).

In 3D views a click picks the first voxel of the analysis mask along the line of sight
(the ray through the cursor), or says that there is none."""

from __future__ import annotations

import warnings

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QLabel, QWidget

from ._dock import scroll_layout
from ._state import connect, session_for


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
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

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
        self.where = QLabel("Click a voxel in the viewer.")
        self.where.setWordWrap(True)
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.where)
        self.figure = Figure(figsize=(4.0, 2.8), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        lay.addWidget(self.canvas, 1)

        self._callback = self._on_mouse
        self.viewer.mouse_drag_callbacks.append(self._callback)
        self.destroyed.connect(self._drop_callback_factory())
        connect(self.session.result_changed, self._result_changed)
        self._draw_empty()

    def _goto_form(self):
        """A magicgui form: MNI x, y, z (mm) and **Go to**, which moves the slices there
        and inspects that voxel."""
        from magicgui.widgets import Container, FloatSpinBox, PushButton

        spins = [FloatSpinBox(label=a, value=0.0, min=-500.0, max=500.0, step=2.0,
                              tooltip=f"MNI {a} in mm") for a in ("x", "y", "z")]
        button = PushButton(text="Go to")
        form = Container(widgets=[*spins, button], layout="horizontal", labels=True)
        form.margins = (0, 0, 0, 0)
        button.changed.connect(lambda *_: self.go_to(tuple(sp.value for sp in spins)))
        self._goto_spins = spins
        return form

    def go_to(self, xyz) -> dict:
        """Move the viewer's slices to MNI ``xyz`` (mm) and inspect the voxel there."""
        from .. import _layers

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
        return drop

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self._drop_callback_factory()()
        super().closeEvent(event)

    # ------------------------------------------------------------------ events
    def _result_changed(self, result) -> None:
        self._index = None
        self.values = {}
        if self.mni is not None and result is not None:
            from .. import _layers

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
        from .. import _layers

        self.mni = _layers.world_to_mni(world_position)
        x, y, z = self.mni
        lines = [f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm"]
        self.atlas = self._atlas_labels(world_position)
        for name, value, label in self.atlas:
            lines.append(f"{name}: {value}" + (f" ({label})" if label else ""))
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
                x, y, z = self.mni
                lines[0] = f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm  [x, y, z]"
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
        self.where.setText("\n".join(lines))
        for spin, value in zip(self._goto_spins, self.mni):  # the Go to form follows
            spin.value = min(max(round(float(value), 1), spin.min), spin.max)
        self._draw()
        return self.values

    def _atlas_labels(self, world_position):
        """``[(layer name, label value, label name)]`` of the label layers under the point
        (our own category overlays and analysis masks excluded)."""
        from napari.layers import Labels

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
            parts.append(f"{name}: {entry.get('name', lab)}")
        return "; ".join(parts)

    @staticmethod
    def _values_at(result, v) -> dict:
        """``{bar: {language: (mean r over subjects, error)}}`` at feature ``v``
        (:func:`~..core.figures.bar_values`: controls, lesions and their random draws'
        band)."""
        from ..core.figures import bar_values

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return bar_values(result, v)[0]

    # ------------------------------------------------------------------ plot
    def _draw_empty(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.text(0.5, 0.5, "r per language and condition\nat the clicked voxel",
                ha="center", va="center", fontsize=9, color="0.4", transform=ax.transAxes)
        ax.set_axis_off()
        self.canvas.draw_idle()

    def _draw(self) -> None:
        from ..core.figures import condition_bars

        if not self.values:
            self._draw_empty()
            return
        result = self.session.result
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        from ..core.analysis import language_colour
        from ..core.figures import hatched_bars

        colours = {lang: language_colour(lang, result.languages)
                   for lang in result.languages}  # as in the category legend
        condition_bars(ax, self.values, result.languages, hatched_bars(result), fontsize=7,
                       colours=colours)
        ax.set_ylabel("r (mean over subjects)", fontsize=8)
        ax.tick_params(labelsize=7)
        x, y, z = self.mni
        ax.set_title(f"MNI ({x:.0f}, {y:.0f}, {z:.0f})", fontsize=8)
        # the legend above the bars, outside the axes: it never covers them
        ax.legend(fontsize=7, ncols=max(len(result.languages), 1), frameon=False,
                  loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)
        self.canvas.draw_idle()
