"""The surface scene and the way back, as a user on a 1,366 x 768 screen meets them: both
hemispheres inside the canvas with sulcal shading, and back in the volume view the same
slice, its slider label in mm (not "z …") and a status bar that no longer names a
surface."""

from __future__ import annotations

import numpy as np

from test_gui_session import _open_panel, _small_screen_viewer
from test_gui_viewer import _show_tiny


def _projected_box(viewer, layers):
    """(left, right, bottom, top) in canvas pixels of the layers' vertices as the 3D
    camera (orthographic) shows them, the canvas centre at (0, 0)."""
    from napari_lesion_align._widgets._viewer import camera

    cam = camera(viewer)
    assert cam.perspective == 0  # orthographic: a linear projection
    pts = np.vstack([np.asarray(layer.vertices, dtype=float) for layer in layers])
    view = np.asarray(cam.view_direction, dtype=float)
    up = np.asarray(cam.up_direction, dtype=float)
    right = np.cross(view, up)
    rel = pts - np.asarray(cam.center, dtype=float)
    x, y = rel @ right * cam.zoom, rel @ up * cam.zoom
    return x.min(), x.max(), y.min(), y.max()


def test_surface_scene_frames_both_hemispheres_and_the_way_back_restores_the_slice(
        make_napari_viewer, qtbot):
    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    results = panel.results
    _show_tiny(viewer, results, qtbot)
    results.set_view(subject="group", language="EN", condition="shared", stat="t")
    panel.show_tab("Inspect")  # the sliders' labels in mm follow the slices
    qtbot.wait(100)
    viewer.dims.set_point(0, 8.0)
    qtbot.wait(100)
    point = tuple(viewer.dims.point)
    label = viewer.dims.axis_labels[0]
    assert label == "z +8 mm", label

    panel.show_tab("Results")
    task = results.show_surface()
    qtbot.waitUntil(lambda: task.done, timeout=120_000)
    qtbot.waitUntil(lambda: results.surface_feeder.done, timeout=30_000)
    qtbot.wait(200)
    assert viewer.dims.ndisplay == 3
    shown = [layer for layer in viewer.layers
             if type(layer).__name__ == "Surface" and layer.visible]
    hemis = {layer.metadata["hemisphere"] for layer in shown}
    assert hemis == {"left", "right"}
    # both hemispheres inside the canvas (they were cut at its edge)
    height, width = viewer.canvas.size
    assert width >= 500 and height >= 400, (width, height)
    left, right, bottom, top = _projected_box(viewer, shown)
    assert -width / 2 <= left and right <= width / 2, (left, right, width)
    assert -height / 2 <= bottom and top <= height / 2, (bottom, top, height)
    # ... and filling it: not a small brain in the middle
    assert max((right - left) / width, (top - bottom) / height) >= 0.6
    # sulcal shading: a texture that darkens the sulci, multiplied with the map's own
    # colours (its values, colormap and colour bar unchanged)
    from napari_lesion_align._widgets._viewer import sulcal_depth

    maps = [layer for layer in shown if layer.metadata.get("stat") == "t"]
    assert maps and all(layer.metadata.get("sulcal_shading") for layer in maps)
    for layer in maps:
        assert layer.vertex_colors is None and "|value|" in layer.colormap.name
        tex, uv = np.asarray(layer.texture), np.asarray(layer.texcoords)
        assert uv.shape == (len(layer.vertex_values), 2)
        assert np.ptp(tex[..., :3], axis=0).max() == 0  # every row alike (napari flips)
        cols = np.clip(np.rint(uv[:, 0] * (tex.shape[1] - 1)).astype(int), 0,
                       tex.shape[1] - 1)
        brightness = tex[0, cols, 0]
        sulc = sulcal_depth(layer.metadata["hemisphere"], layer.metadata["surface"])
        deep, crown = sulc > 0.5, sulc < -0.5
        assert deep.sum() > 50 and crown.sum() > 50
        assert brightness[deep].mean() < brightness[crown].mean() - 0.05
        assert brightness.max() <= 1.0 and brightness.min() >= 0.5

    # back to the volumes: same slice, label in mm at its full width, a fresh status
    viewer.status = f"{shown[-1].name} » MNI x=0.0 y=0.0 z=8.0 mm"  # the cursor was there
    viewer.dims.ndisplay = 2
    qtbot.wait(200)
    assert abs(viewer.dims.point[0] - point[0]) <= 1.0, (viewer.dims.point, point)
    assert viewer.dims.axis_labels[0] == label, viewer.dims.axis_labels
    status = viewer.status
    assert "pial" not in str(status) and "inflated" not in str(status), status
    from qtpy.QtWidgets import QWidget

    dims_widget = next(w for w in win.findChildren(QWidget) if type(w).__name__ == "QtDims")
    slider = next(s for s in dims_widget.slider_widgets if s.isVisible())
    lab = slider.axis_label
    need = lab.fontMetrics().horizontalAdvance(lab.text())
    assert lab.text() == label and need <= lab.contentsRect().width(), (lab.text(), need,
                                                                      lab.width())
    assert all(layer.visible for layer in viewer.layers
               if type(layer).__name__ == "Image" and layer.metadata.get("stat") == "t"
               and layer is results.view_layer)
