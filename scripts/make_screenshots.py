"""Make the user guide's napari screenshots (docs/images/napari-*.png) with a real viewer.

    xvfb-run -a python scripts/make_screenshots.py [--result demo-lesions/] [--out docs/images]

``--result``: an output folder of ``napari-lesion-align demo`` (with its lesions), opened in the
Results widget (default ``$NLA_DEMO_RESULT``, else the plugin's cached demo result, which
is computed the first time: several minutes). The Model & lesion and Run screenshots use
the built-in model (a real run of the demo, about 10 minutes, is photographed while it
works and when it ends with its closing summary; ``--no-run`` skips it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the panel's tabs by the names used below (the single docks' titles)
TABS = {"Data": "Data", "Model & lesion": "Model", "Run": "Run", "Results": "Results",
        "Inspector": "Inspect"}


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
    """The Lesion Align panel, as Plugins → Lesion Align docks it (on the right); returns
    ``(panel, {name: widget})``."""
    _, panel = viewer.window.add_plugin_dock_widget("napari-lesion-align", "Lesion Align")
    return panel, {name: panel.widgets[tab] for name, tab in TABS.items()}


def grab(widget, path: Path) -> None:
    """The whole form of a tab (its scroll area's content, not only what shows), at the
    dock's width."""
    from qtpy.QtWidgets import QApplication

    panel = widget.parentWidget()
    while panel is not None and not hasattr(panel, "show_tab"):
        panel = panel.parentWidget()
    if panel is not None:  # the tab in front, laid out at the dock's width
        panel.tabs.setCurrentWidget(widget)
        QApplication.processEvents()
    area = getattr(widget, "scroll_area", None)
    inner = area.widget() if area is not None else widget
    if area is not None:  # the dock's width; as tall as the form
        width = area.viewport().width()
        inner.resize(width, max(inner.heightForWidth(width), inner.sizeHint().height(),
                                inner.minimumSizeHint().height()))
    inner.grab().save(str(path))
    print(f"wrote {path}")


def close_toasts(app, viewer) -> None:
    from qtpy.QtWidgets import QWidget

    for toast in viewer.window._qt_window.findChildren(QWidget):  # close the notifications
        if type(toast).__name__ == "NapariQtNotification":
            toast.close()
    settle(app, 0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--result", default=os.environ.get("NLA_DEMO_RESULT"),
                    help="a lesion demo output folder (default $NLA_DEMO_RESULT)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    ap.add_argument("--no-run", action="store_true", help="skip the Run screenshot")
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
    from qtpy.QtWidgets import QApplication

    from napari_lesion_align import _layers
    from napari_lesion_align.core.data import demo

    viewer = napari.Viewer(show=True, title="napari-lesion-align")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1366, 768)  # a small laptop screen: the panel fits
    panel, w = dock_panel(viewer)
    settle(app, 1.0)

    # Data: the built-in demo, checked
    w["Data"].load_demo()
    wait(app, lambda: w["Data"].task.done, 120, "the data check")
    settle(app)
    grab(w["Data"], out / "napari-data.png")

    # Model & lesion: the built-in model's anatomy and the default lesion's size
    w["Model & lesion"].update_size()
    wait(app, lambda: w["Model & lesion"].size_task.done, 600, "the lesion size")
    settle(app)
    grab(w["Model & lesion"], out / "napari-model.png")

    # Results: the lesion demo's result, the category overlay over the template
    res = w["Results"]
    task = res.open_result(args.result)
    wait(app, lambda: task.done, 300, "the result")
    wait(app, lambda: res.feeder.done, 120, "the layers")
    res.set_overlay(True, "lesion")
    viewer.dims.set_point(0, _layers.mni_to_world((0.0, 0.0, 4.0))[0])  # axial z = 4 mm
    viewer.reset_view()
    settle(app, 1.0)
    # Inspector: a voxel of the planted shared region (left superior temporal gyrus)
    centre = next(c for cat, c, _ in demo.REGIONS if cat == "shared")
    w["Inspector"].inspect(_layers.mni_to_world(centre))
    settle(app, 1.0)
    grab(res, out / "napari-results.png")
    grab(w["Inspector"], out / "napari-inspector.png")
    settle(app, 1.0)
    close_toasts(app, viewer)
    panel.show_tab("Results")  # the overview: the panel on its Results tab (the legend)
    settle(app, 1.0)
    viewer.screenshot(str(out / "napari-overview.png"), canvas_only=False)
    print(f"wrote {out / 'napari-overview.png'}")
    # the category overlay as seen with normal vision and with deuteranopia, side by side
    import numpy as np
    from matplotlib.pyplot import imsave

    from napari_lesion_align.core.results.figures import simulate_cvd

    # two axial slices: z = 4 mm (shared, FR) and z = 28 mm (EN, ZH); normal vision
    # above, simulated deuteranopia below
    z_now = viewer.dims.point[0]
    canvases = [np.asarray(viewer.screenshot(canvas_only=True))]
    viewer.dims.set_point(0, _layers.mni_to_world((0.0, 0.0, 28.0))[0])
    settle(app, 1.0)
    canvases.append(np.asarray(viewer.screenshot(canvas_only=True)))
    viewer.dims.set_point(0, z_now)
    settle(app, 0.5)
    h = min(c.shape[0] for c in canvases)
    gap = np.full((h, 8, canvases[0].shape[2]), 255, dtype=canvases[0].dtype)
    normal = np.concatenate([canvases[0][:h], gap, canvases[1][:h]], axis=1)
    row_gap = np.full((8,) + normal.shape[1:], 255, dtype=normal.dtype)
    both = np.concatenate([normal, row_gap, simulate_cvd(normal, "deuteranopia")], axis=0)
    imsave(str(out / "napari-overlay-cvd.png"), both)
    print(f"wrote {out / 'napari-overlay-cvd.png'}")
    # Export view: the map's name, colour bar, legend, slice and directions
    res.set_view(subject="group", language="EN", condition="shared", stat="t")
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
    # the cortical surface (fsaverage5): the map and the categories, inflated
    task = res.show_surface()
    wait(app, lambda: task.done, 600, "the surface projection")
    wait(app, lambda: res.surface_feeder.done, 120, "the surface layers")
    for layer in viewer.layers:
        if type(layer).__name__ != "Surface":
            layer.visible = False
        elif layer.metadata.get("surface") == "inflated":
            layer.visible = layer.metadata.get("stat") == "categories"
    res.lateral_view("left")
    settle(app, 1.5)
    viewer.screenshot(str(out / "napari-surface.png"), canvas_only=True)
    print(f"wrote {out / 'napari-surface.png'}")
    for layer in list(viewer.layers):
        if type(layer).__name__ == "Surface":
            viewer.layers.remove(layer)
        else:
            layer.visible = True
    viewer.dims.ndisplay = 2

    # Run: a real run of the demo (its 5 subjects, the form's lesions with one random
    # draw each), photographed while it works and when it ends with its closing summary
    if not args.no_run:
        w["Model & lesion"].set_lesion(random_controls=1)
        run = w["Run"]
        task = run.run()
        t0 = time.perf_counter()
        wait(app, lambda: (run.fraction > 0.3 and time.perf_counter() - t0 > 20)
             or task.done, 1800, "the run to progress")
        settle(app, 1.0)
        grab(run, out / "napari-run-progress.png")
        wait(app, lambda: task.done, 3600, "the run")
        wait(app, lambda: run.feeder is None or run.feeder.done, 300, "the result's layers")
        if run.outcome.kind != "ok":
            print(f"the run ended: {run.outcome.kind}: {run.outcome.message}", file=sys.stderr)
            return 1
        settle(app, 1.0)
        grab(run, out / "napari-run.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
