"""Make the user guide's napari screenshots (docs/images/napari-*.png) with a real viewer.

    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/make_screenshots.py \
        [--result demo-lesions/] [--out docs/images] [--no-run]

The window is 1,366 x 768 (a small laptop screen) with the **Lesion Align** panel docked
on the right, as a new user meets it. ``--result``: an output folder of
``napari-lesion-align demo`` (with its lesions; default ``$NLA_DEMO_RESULT``, else the
plugin's cached demo result, computed the first time: several minutes). It is opened with
the reader (File > Open) next to the shipped sample (File > Open Sample > Lesion Align >
Demo result), so two results are open side by side. The Run screenshots use the built-in
model: a real run of the demo is started and cancelled, then run to its end (about 10
minutes on 2 cores) and photographed while it works and when it ends; ``--no-run`` skips
them.

What each image shows (the user guide's captions):

* ``napari-data.png``: the Data tab after **Load demo** (the check's report);
  ``napari-mask.png``: the canvas after the check: the analysis mask's outline on the
  template;
* ``napari-model.png``: the Model tab (the built-in model, the default lesion, its size);
* ``napari-sample.png``: the window right after File > Open Sample > Demo result (the
  shipped result, opened at once; its notification offers to compute the whole demo);
* ``napari-overview.png``: the window with two results open, the panel on its Results tab
  (the threshold in words under the slider), the map with the category overlay and, on
  the canvas, the map's name, its threshold, the category legend and the colour bar;
  ``napari-layers.png``: the layer list of that window (each layer ends with its result's
  label);
* ``napari-results.png``: the Results tab (whole form); ``napari-threshold.png``: the
  canvas of a t map in its colours, with its threshold sentence and colour bar;
* ``napari-inspector.png``: the Inspect tab at a voxel; ``napari-crosshair.png``: the
  canvas and slider there (the crosshair, the slice position in mm);
* ``napari-overlay-cvd.png``, ``napari-export.png``, ``napari-coronal.png``,
  ``napari-surface.png``: the category colours with normal vision and deuteranopia, the
  exported view, a coronal view, the surface scene;
* ``napari-run-progress.png`` (the window during a run: the Run tab's bar and the
  activity dock's), ``napari-run-cancelled.png`` (the Run tab after Cancel),
  ``napari-run.png`` (the Run tab at the end: the closing summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-lesion-align"
SCREEN = (1366, 768)


def wait(app, condition, timeout=600.0, what="a task"):
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def settle(app, seconds=0.5):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def dock_panel(viewer):
    """The Lesion Align panel, as Plugins > Lesion Align > Lesion Align docks it (on the
    right)."""
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")
    return panel


def grab(panel, title: str, path: Path) -> None:
    """The whole form of a tab (its scroll area's content, not only what shows), at the
    dock's width."""
    from qtpy.QtWidgets import QApplication

    widget = panel.show_tab(title)
    QApplication.processEvents()
    area = widget.scroll_area
    inner = area.widget()
    width = area.viewport().width()
    height = max(inner.heightForWidth(width), inner.sizeHint().height(),
                 inner.minimumSizeHint().height())
    old = inner.size()
    inner.resize(width, height)
    inner.grab().save(str(path))
    inner.resize(old)
    print(f"wrote {path}")


def window_image(viewer):
    """The whole window as a QImage (docks, canvas, status bar, notifications and the
    activity dock: they are child widgets of the window)."""
    return viewer.window._qt_window.grab().toImage()


def save_window(viewer, path: Path) -> None:
    window_image(viewer).save(str(path))
    print(f"wrote {path}")


def save_region(viewer, widgets, path: Path, margin: int = 0) -> None:
    """The part of the window covered by ``widgets`` (their bounding box)."""
    from qtpy.QtCore import QPoint, QRect

    win = viewer.window._qt_window
    box = None
    for w in widgets:
        top_left = w.mapTo(win, QPoint(0, 0))
        rect = QRect(top_left, w.size())
        box = rect if box is None else box.united(rect)
    box = box.adjusted(-margin, -margin, margin, margin).intersected(win.rect())
    window_image(viewer).copy(box).save(str(path))
    print(f"wrote {path}")


def close_toasts(app, viewer) -> None:
    from qtpy.QtWidgets import QWidget

    for toast in viewer.window._qt_window.findChildren(QWidget):  # close the notifications
        if type(toast).__name__ == "NapariQtNotification":
            toast.close()
    settle(app, 0.8)


def activity_dock(viewer, visible: bool) -> None:
    """napari's activity dock (bottom right; the status bar's toggle)."""
    viewer.window._qt_window.statusBar()._toggle_activity_dock(visible)


def canvas_widgets(viewer):
    """The canvas and the slider under it."""
    qt_viewer = viewer.window._qt_viewer
    return [qt_viewer.canvas.native, qt_viewer.dims]


def show_only(viewer, key) -> None:
    """Hide the layers of every other open result (the template and the crosshair stay);
    the user's eye buttons in the layer list."""
    from napari_lesion_align._view_model import RESULT_KEY

    for layer in viewer.layers:
        owner = layer.metadata.get(RESULT_KEY)
        if owner is not None and owner != key:
            layer.visible = False


def shown_map(res) -> dict:
    """The map the screenshots show: the shared lesion's group t map (English); a result
    of one subject (a sample of the demo) has no group choice: its r map."""
    subjects = [res.subject.itemData(i) for i in range(res.subject.count())]
    if "group" in subjects:
        return dict(subject="group", language="EN", condition="shared", stat="t")
    return dict(subject=subjects[0], language="EN", condition="shared", stat="r")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--result", default=os.environ.get("NLA_DEMO_RESULT"),
                    help="a lesion demo output folder (default $NLA_DEMO_RESULT)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    ap.add_argument("--no-run", action="store_true", help="skip the Run screenshots")
    args = ap.parse_args(argv)
    if not args.result:
        from napari_lesion_align._sample_data import ensure_demo_result

        print("computing (or reusing) the cached lesion demo result…", file=sys.stderr)
        args.result = str(ensure_demo_result())
    if not (Path(args.result) / "result.json").is_file():
        ap.error(f"{args.result}: not a result folder (no result.json); give a folder "
                 "written by 'napari-lesion-align demo'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_lesion_align import _layers
    from napari_lesion_align._view_model import result_key
    from napari_lesion_align.core.data import demo

    viewer = napari.Viewer(show=True, title="napari-lesion-align")
    app = QApplication.instance()
    win = viewer.window._qt_window
    win.resize(*SCREEN)  # a small laptop screen: the panel fits
    panel = dock_panel(viewer)
    win.resize(*SCREEN)
    settle(app, 1.0)
    session = panel.session
    w = panel.widgets

    # Data: the built-in demo, checked; the canvas shows the analysis mask's outline
    panel.show_tab("Data")
    w["Data"].load_demo()
    wait(app, lambda: w["Data"].task is not None and w["Data"].task.done, 180,
         "the data check")
    settle(app, 1.5)
    grab(panel, "Data", out / "napari-data.png")
    close_toasts(app, viewer)
    viewer.reset_view()
    settle(app, 0.5)
    save_region(viewer, canvas_widgets(viewer), out / "napari-mask.png")
    for layer in [la for la in viewer.layers if la.name == "analysis mask"]:
        viewer.layers.remove(layer)  # the results' views from here on

    # Model & lesion: the built-in model's anatomy and the default lesion's size
    w["Model"].update_size()
    wait(app, lambda: w["Model"].size_task.done, 600, "the lesion size")
    settle(app)
    grab(panel, "Model", out / "napari-model.png")

    # two results side by side: the demo result opened with the reader (File > Open),
    # then the shipped sample (File > Open Sample > Lesion Align > Demo result)
    viewer.open(str(args.result), plugin=PLUGIN)
    wait(app, lambda: result_key(args.result) in session.results, 300, "the result")
    settle(app, 1.0)
    close_toasts(app, viewer)
    panel.show_tab("Results")
    viewer.open_sample(PLUGIN, "demo")
    wait(app, lambda: len(session.results) >= 2, 300, "the sample")
    settle(app, 1.5)
    save_window(viewer, out / "napari-sample.png")
    close_toasts(app, viewer)

    # Results: back to the demo result; the shared lesion's group t map with the category
    # overlay (the map then in grey |value|), axial z = 4 mm
    res = w["Results"]
    res.choose_result(result_key(args.result))
    settle(app, 1.0)
    wait(app, lambda: res.feeder is None or res.feeder.done, 120, "the layers")
    res.set_view(**shown_map(res))
    res.set_overlay(True, "lesion")
    show_only(viewer, res.key)  # the sample's layers stay in the list, hidden
    viewer.dims.set_point(0, _layers.mni_to_world((0.0, 0.0, 4.0))[0])
    viewer.reset_view()
    settle(app, 1.0)
    # Inspector: a voxel of the planted shared region (left superior temporal gyrus)
    centre = next(c for cat, c, _ in demo.REGIONS if cat == "shared")
    panel.show_tab("Inspect")
    w["Inspect"].go_to(centre)
    settle(app, 1.5)
    grab(panel, "Inspect", out / "napari-inspector.png")
    close_toasts(app, viewer)
    save_region(viewer, canvas_widgets(viewer), out / "napari-crosshair.png")
    grab(panel, "Results", out / "napari-results.png")
    close_toasts(app, viewer)
    settle(app, 1.0)
    save_window(viewer, out / "napari-overview.png")
    save_region(viewer, [viewer.window._qt_viewer.dockLayerList], out / "napari-layers.png")

    # the category overlay as seen with normal vision and with deuteranopia, side by side
    from matplotlib.pyplot import imsave

    from napari_lesion_align.core.results.figures import simulate_cvd

    # two axial slices: z = 4 mm (shared, FR) and z = 28 mm (EN, ZH); normal vision
    # above, simulated deuteranopia below; the canvas legend hidden (its lines are drawn
    # in the category colours)
    overlays = viewer.canvas.overlays
    legend_keys = [k for k in list(overlays) if overlays[k].visible and str(k).startswith(
        ("lesion_align_threshold", "lesion_align_legend_"))]
    for k in legend_keys:
        overlays[k].visible = False
    settle(app, 0.5)
    z_now = viewer.dims.point[0]
    canvases = [np.asarray(viewer.screenshot(canvas_only=True))]
    viewer.dims.set_point(0, _layers.mni_to_world((0.0, 0.0, 28.0))[0])
    settle(app, 1.0)
    canvases.append(np.asarray(viewer.screenshot(canvas_only=True)))
    viewer.dims.set_point(0, z_now)
    for k in legend_keys:
        overlays[k].visible = True
    settle(app, 0.5)
    h = min(c.shape[0] for c in canvases)
    gap = np.full((h, 8, canvases[0].shape[2]), 255, dtype=canvases[0].dtype)
    normal = np.concatenate([canvases[0][:h], gap, canvases[1][:h]], axis=1)
    row_gap = np.full((8,) + normal.shape[1:], 255, dtype=normal.dtype)
    both = np.concatenate([normal, row_gap, simulate_cvd(normal, "deuteranopia")], axis=0)
    imsave(str(out / "napari-overlay-cvd.png"), both)
    print(f"wrote {out / 'napari-overlay-cvd.png'}")

    # the map in its own colours (overlay off): the threshold sentence and the colour bar
    res.set_overlay(False)
    settle(app, 1.0)
    save_region(viewer, canvas_widgets(viewer), out / "napari-threshold.png")
    # Export view: the map's name, colour bar, legend, slice, threshold and directions
    res.set_overlay(True, "lesion")
    settle(app, 1.0)
    res.export_view(out / "napari-export.png")
    print(f"wrote {out / 'napari-export.png'}")
    # coronal: roll the dims (slider over y), superior up, letters at the edges
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, _layers.mni_to_world((0.0, centre[1], 0.0))[1])
    viewer.reset_view()
    settle(app, 1.0)
    viewer.screenshot(str(out / "napari-coronal.png"), canvas_only=True)
    print(f"wrote {out / 'napari-coronal.png'}")
    viewer.dims.order = (0, 1, 2)
    settle(app, 0.5)
    # the cortical surface (fsaverage5) in its own scene, as Surface… shows it
    task = res.show_surface()
    wait(app, lambda: task.done, 600, "the surface projection")
    wait(app, lambda: res.surface_feeder.done, 120, "the surface layers")
    settle(app, 2.0)
    close_toasts(app, viewer)
    viewer.screenshot(str(out / "napari-surface.png"), canvas_only=True)
    print(f"wrote {out / 'napari-surface.png'}")
    viewer.dims.ndisplay = 2  # back: the volumes return, the surfaces hide
    for layer in [la for la in viewer.layers if type(la).__name__ == "Surface"]:
        viewer.layers.remove(layer)
    viewer.dims.set_point(0, _layers.mni_to_world((0.0, 0.0, 4.0))[0])
    viewer.reset_view()
    if res.view_layer is not None:
        viewer.layers.selection.active = res.view_layer
    settle(app, 1.0)

    # Run: a real run of the demo (its 5 subjects, the form's lesions with one random
    # draw each): started and cancelled, then run to its end
    if not args.no_run:
        w["Model"].set_lesion(random_controls=1)
        run = panel.show_tab("Run")
        close_toasts(app, viewer)
        task = run.run()
        activity_dock(viewer, True)
        t0 = time.perf_counter()
        wait(app, lambda: (run.fraction > 0.02 and time.perf_counter() - t0 > 30)
             or task.done, 1800, "the run to start")
        run.cancel_button.click()
        wait(app, lambda: task.done, 120, "the run to stop")
        settle(app, 1.5)
        grab(panel, "Run", out / "napari-run-cancelled.png")
        close_toasts(app, viewer)

        task = run.run()
        activity_dock(viewer, True)
        t0 = time.perf_counter()
        # well into the fits (features stored by an earlier run take seconds): the time
        # left has settled on the fits' pace
        wait(app, lambda: (run.fraction > 0.6 and time.perf_counter() - t0 > 60)
             or task.done, 3600, "the run to progress")
        close_toasts(app, viewer)
        settle(app, 2.0)
        save_window(viewer, out / "napari-run-progress.png")
        wait(app, lambda: task.done, 3600, "the run")
        wait(app, lambda: run.feeder is None or run.feeder.done, 300, "the result's layers")
        if run.outcome.kind != "ok":
            print(f"the run ended: {run.outcome.kind}: {run.outcome.message}", file=sys.stderr)
            return 1
        settle(app, 1.0)
        grab(panel, "Run", out / "napari-run.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
