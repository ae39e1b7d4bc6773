from test_gui_session import _small_screen_viewer, _open_panel
from test_gui_viewer import _show_tiny

def test_probe(make_napari_viewer, qtbot):
    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    results = panel.results
    _show_tiny(viewer, results, qtbot)
    results.set_view(subject="group", language="EN", condition="shared", stat="t")
    panel.show_tab("Inspect")
    qtbot.wait(100)
    print("range", viewer.dims.range, "point", viewer.dims.point, viewer.dims.current_step, viewer.dims.axis_labels, viewer.dims.order)
    viewer.dims.set_point(0, 8.0)
    qtbot.wait(50)
    print("after set", viewer.dims.point, viewer.dims.axis_labels, repr(viewer.status))
    task = results.show_surface()
    qtbot.waitUntil(lambda: task.done, timeout=120_000)
    qtbot.waitUntil(lambda: results.surface_feeder.done, timeout=30_000)
    qtbot.wait(200)
    print("3d", viewer.dims.range, viewer.dims.point, viewer.dims.axis_labels, repr(viewer.status))
    for l in viewer.layers:
        if type(l).__name__ == "Surface": print(l.name, l.visible, l.shading, l.metadata.get("surface"), l.metadata.get("hemisphere"), l.vertices.min(0), l.vertices.max(0))
    cam = viewer.camera
    print("cam", cam.center, cam.zoom, cam.angles)
    qt = viewer.window._qt_viewer
    sl = qt.dims.slider_widgets
    print([ (w.axis_label.text(), w.axis_label.width()) for w in sl])
    viewer.dims.ndisplay = 2
    qtbot.wait(200)
    print("back", viewer.dims.point, viewer.dims.current_step, viewer.dims.axis_labels, repr(viewer.status))
    print([ (w.axis_label.text(), w.axis_label.width(), w.isVisible()) for w in sl])
