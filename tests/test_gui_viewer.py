"""The plugin as napari users expect it: one registry of open results whatever opened them,
docks that fit a small screen, bounded colormaps, MNI coordinates, views the right way up,
surface projections and self-explaining exports (make_napari_viewer under Xvfb; a tiny
result from tests/test_figures.py, no model)."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import coord_transform

from napari_lesion_align import _layers as L
from test_figures import make_tiny_result

PLUGIN = "napari-lesion-align"
WIDGETS = {"Data": "DataWidget", "Model & lesion": "ModelLesionWidget", "Run": "RunWidget",
           "Results": "ResultsWidget", "Inspector": "InspectorWidget"}
pytestmark = pytest.mark.filterwarnings("error:Private attribute access:FutureWarning")


def _dock(viewer, name, **kwargs):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_lesion_align import _widgets

    widget = getattr(_widgets, WIDGETS[name])(napari_viewer=PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget, name=name, **kwargs)
    return widget


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Two saved tiny results (different seeds)."""
    root = tmp_path_factory.mktemp("results")
    folders = []
    for seed in (0, 1):
        folder = root / f"res{seed}"
        make_tiny_result(seed=seed).save(folder)
        folders.append(folder)
    return folders


def _show_tiny(viewer, widget, qtbot):
    """The tiny test result shown in ``viewer`` through ``widget``'s session (layers
    added); returns the result."""
    from napari_lesion_align._widgets._show import run_layers, show_result

    result = make_tiny_result()
    feeder = show_result(viewer, widget.session, result, run_layers(result))
    qtbot.waitUntil(lambda: feeder.done, timeout=30_000)
    return result


def _mask_voxel(result):
    """A voxel inside the tiny result's mask (and its feature index)."""
    mask = np.asarray(result.space.mask_img.dataobj, dtype=bool)
    ijk = tuple(int(v) for v in np.argwhere(mask)[len(np.argwhere(mask)) // 3])
    index = np.full(mask.shape, -1)
    index[mask] = np.arange(mask.sum())
    return ijk, int(index[ijk])


# --------------------------------------------------------------------------- registry
def test_reader_and_sample_results_reach_results_and_inspector(make_napari_viewer, qtbot,
                                                               tiny_folders, tmp_path,
                                                               monkeypatch):
    """File > Open on a result folder, then File > Open Sample > demo (cached): both are
    open results the Results and Inspector widgets see; opening the second keeps the
    first's layers."""
    from napari_lesion_align import _sample_data
    from napari_lesion_align._widgets._state import result_key

    viewer = make_napari_viewer()
    results = _dock(viewer, "Results")
    inspector = _dock(viewer, "Inspector")
    session = results.session
    first = viewer.open(str(tiny_folders[0]), plugin=PLUGIN)
    key0 = result_key(tiny_folders[0])
    qtbot.waitUntil(lambda: key0 in session.results, timeout=30_000)
    assert session.current == key0 and results.result is session.results[key0].result
    assert results.subject.isEnabled() and "3 subject(s)" in results.status.text()
    first_names = [layer.name for layer in first]
    # the sample: a cached demo folder (the tiny result) in a private cache
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path))
    make_tiny_result(seed=1).save(_sample_data.demo_cache_folder())
    viewer.open_sample(PLUGIN, "demo")
    key1 = result_key(_sample_data.demo_cache_folder())
    qtbot.waitUntil(lambda: key1 in session.results, timeout=30_000)
    assert list(session.results) == [key0, key1] and session.current == key1
    assert results.result_choice.count() == 2 and results.result_choice.isEnabled()
    names = [layer.name for layer in viewer.layers]
    assert all(n in names for n in first_names), "the first result's layers were removed"
    assert names.count("MNI152 template (2 mm)") == 1 and names[0] == "MNI152 template (2 mm)"
    # the Inspector reads the current result; choosing the other one in Results switches
    r1 = session.results[key1].result
    ijk, v = _mask_voxel(r1)
    world = L.mni_to_world(L.voxel_to_mni(r1.space.affine, ijk))
    got1 = inspector.inspect(world)
    expected1 = np.mean([r1.maps[(s, "EN", "intact", "r")][v] for s in r1.subjects])
    assert got1["intact"]["EN"][0] == pytest.approx(expected1, rel=1e-5)
    results.choose_result(key0)
    assert session.current == key0 and results.result_choice.currentData() == key0
    r0 = session.results[key0].result
    got0 = inspector.inspect(world)
    expected0 = np.mean([r0.maps[(s, "EN", "intact", "r")][v] for s in r0.subjects])
    assert got0["intact"]["EN"][0] == pytest.approx(expected0, rel=1e-5)
    assert expected0 != pytest.approx(expected1)
    # the bars list what the result holds (its controls included), not a fixed list
    assert list(got0) == ["intact", "shared", "shared random (1)", "specificEN", "specificFR"]
    # a map shown for the first result does not replace the second's
    layer0 = results.set_view(subject="group", language="FR", condition="shared", stat="t")
    results.choose_result(key1)
    layer1 = results.set_view(subject="group", language="FR", condition="shared", stat="t")
    assert layer0 in viewer.layers and layer1 in viewer.layers and layer0.name != layer1.name


def test_sample_without_cache_computes_in_a_worker(make_napari_viewer, qtbot, tmp_path,
                                                   monkeypatch):
    """Computing the whole demo (offered when File > Open Sample opens the shipped one)
    returns at once, the run goes on in a worker with a progress bar in the activity dock,
    then its layers arrive and the Results widget sees the result."""
    import threading

    from napari.utils import progress as napari_progress
    from napari.utils.notifications import notification_manager

    from napari_lesion_align import _sample_data
    from napari_lesion_align._widgets._state import result_key

    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path))
    release = threading.Event()
    threads = []

    def fake_run(config, out_dir, progress=None, cancel=None):
        threads.append(threading.current_thread())
        progress(0.1, "features: EN")
        release.wait(20)
        make_tiny_result().save(out_dir)

    monkeypatch.setattr("napari_lesion_align.core.run.pipeline.run_analysis", fake_run)
    notes = []
    notification_manager.notification_ready.connect(notes.append)
    viewer = make_napari_viewer()
    results = _dock(viewer, "Results")
    t0 = time.perf_counter()
    _sample_data.compute_demo_in_background(viewer)
    returned = time.perf_counter() - t0
    try:
        assert [layer.name for layer in viewer.layers] == []
        assert returned < 10  # the run is blocked in its worker: only the template here
        qtbot.waitUntil(lambda: len(threads) == 1, timeout=10_000)
        assert threads[0] is not threading.main_thread()
        bars = [b for b in napari_progress._all_instances if "demo result" in
                str(getattr(b, "desc", ""))]
        assert bars, "no progress bar in the activity dock"
        assert any("Computing the demo result" in n.message for n in notes)
    finally:
        release.set()
        notification_manager.notification_ready.disconnect(notes.append)
    key = result_key(_sample_data.demo_cache_folder())
    qtbot.waitUntil(lambda: key in results.session.results, timeout=30_000)
    label = results.session.results[key].label
    qtbot.waitUntil(lambda: f"categories lesion [{label}]" in viewer.layers, timeout=30_000)
    assert [layer.name for layer in viewer.layers].count("MNI152 template (2 mm)") == 1


# --------------------------------------------------------------------------- docks
def test_five_docks_fit_a_small_screen(make_napari_viewer, qtbot):
    """All five docks open in a 1,366 x 768 window: the window keeps its size, every dock
    lies inside it (content scrolls), and the tabified "Model & lesion" reads so."""
    from qtpy.QtWidgets import QTabBar

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1366, 768)
    docks = [_dock(viewer, name) for name in WIDGETS]
    qtbot.wait(300)
    win.resize(1366, 768)
    qtbot.wait(300)
    assert win.height() <= 768 and win.width() <= 1366, (win.width(), win.height())
    bottom = win.centralWidget().geometry().bottom()
    for w in docks:
        dock = w.parent()
        while dock is not None and not hasattr(dock, "setFloating"):
            dock = dock.parent()
        g = dock.geometry()
        assert g.top() >= 0 and g.bottom() <= bottom + 30, (type(w).__name__, g)
        assert w.scroll_area.widget() is not None
    # tabified: the tab shows "Model & lesion" (a single & would be a mnemonic)
    viewer.window.remove_dock_widget("all")
    for name in ("Data", "Model & lesion"):
        _dock(viewer, name, tabify=True)
    qtbot.wait(300)
    texts = [bar.tabText(i) for bar in win.findChildren(QTabBar) for i in range(bar.count())]
    assert "Model && lesion" in texts and "Model & lesion" not in texts, texts


# --------------------------------------------------------------------------- colormaps
def test_threshold_changes_register_no_new_colormaps_and_keep_opacity(make_napari_viewer,
                                                                     qtbot):
    from napari.utils.colormaps.colormap_utils import AVAILABLE_COLORMAPS

    viewer = make_napari_viewer()
    results = _dock(viewer, "Results")
    _show_tiny(viewer, results, qtbot)
    layer = results.set_view(subject="group", language="EN", condition="shared", stat="t")
    before = len(AVAILABLE_COLORMAPS)
    for i in range(50):
        results.set_threshold(0.05 + 0.1 * i)
    results.set_threshold(0.0)
    assert len(AVAILABLE_COLORMAPS) - before <= 3
    assert layer.contrast_limits[1] > 0
    layer.opacity = 0.4
    layer.blending = "additive"
    new = results.set_view(language="FR")
    label = results.session.results[results.key].label  # every name carries its result's
    assert new is not layer and new.name == f"t FR shared (group) [{label}]"
    assert new.opacity == pytest.approx(0.4) and str(new.blending) == "additive"


# --------------------------------------------------------------------------- orientation
def test_status_bar_and_inspector_report_nilearn_mni(make_napari_viewer, qtbot):
    """The cursor on voxel ijk of a map: the status bar and the Inspector read MNI
    (x, y, z) = nilearn.image.coord_transform(ijk, affine), in that order."""
    viewer = make_napari_viewer()
    inspector = _dock(viewer, "Inspector")
    result = _show_tiny(viewer, inspector, qtbot)
    ijk, _ = _mask_voxel(result)
    x, y, z = coord_transform(*ijk, result.space.affine)
    assert x != y != z
    world = L.mni_to_world((x, y, z))
    viewer.layers.selection.active = viewer.layers[-1]
    viewer.mouse_over_canvas = True
    viewer.cursor.position = world
    viewer.update_status_from_cursor()
    status = viewer.status
    coords = status["coords"] if isinstance(status, dict) else status
    assert coords.startswith(f"MNI x={x:.1f} y={y:.1f} z={z:.1f}"), status
    inspector.inspect(world)
    assert inspector.voxel == ijk
    assert np.allclose(inspector.mni, (x, y, z))
    assert f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm" in inspector.where.text()


def test_coronal_view_is_the_right_way_up(make_napari_viewer, qtbot):
    """An asymmetric image (a blob superior-left-anterior, another inferior-right): axial,
    then coronal after rolling the dims: superior at the top, left on the left, and the
    letters at the canvas edges say so."""
    affine = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
    vol = np.zeros((45, 54, 45), dtype=np.float32)

    def put(xyz, value):
        i, j, k = (int(round(v)) for v in np.linalg.solve(affine, [*xyz, 1.0])[:3])
        vol[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = value

    put((-40, 20, 40), 3.0)  # superior, left
    put((40, 20, -20), -3.0)  # inferior, right
    viewer = make_napari_viewer(show=True)
    _dock(viewer, "Inspector")  # attaches the plugin's view behaviour
    layer = viewer.add_layer(__import__("napari").layers.Layer.create(
        *L.nifti_layer(nib.Nifti1Image(vol, affine), stat="t", threshold=1.0)))
    viewer.dims.order = (1, 0, 2)  # slider over y: coronal
    qtbot.wait(50)
    viewer.dims.set_point(1, L.mni_to_world((0, 20, 0))[1])
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(int)
    warm = np.argwhere((rgb[..., 0] > 150) & (rgb[..., 2] < 100))
    cold = np.argwhere((rgb[..., 2] > 150) & (rgb[..., 0] < 100))
    assert len(warm) > 20 and len(cold) > 20
    h, w = shot.shape[:2]
    assert warm[:, 0].mean() < cold[:, 0].mean()  # superior blob above the inferior one
    assert warm[:, 1].mean() < w / 2 < cold[:, 1].mean()  # left on the left
    letters = {edge: viewer.canvas.overlays[f"lesion_align_{edge}"].text
               for edge in ("top", "bottom", "left", "right")}
    assert letters == {"top": "S", "bottom": "I", "left": "L", "right": "R"}
    viewer.dims.order = (0, 1, 2)  # back to axial: anterior up
    qtbot.wait(50)
    assert viewer.canvas.overlays["lesion_align_top"].text == "A"
    assert layer.visible


def test_three_d_click_picks_the_first_mask_voxel_on_the_line_of_sight(make_napari_viewer,
                                                                      qtbot):
    viewer = make_napari_viewer()
    inspector = _dock(viewer, "Inspector")
    result = _show_tiny(viewer, inspector, qtbot)
    mask = np.asarray(result.space.mask_img.dataobj, dtype=bool)
    # looking down from above (world axis 0 is z; the camera looks towards -z) through
    # a column of the mask: the first voxel hit is the column's top one
    ijk, _ = _mask_voxel(result)
    column = np.nonzero(mask[ijk[0], ijk[1], :])[0]
    top = (ijk[0], ijk[1], int(column.max()))
    x, y, _ = L.voxel_to_mni(result.space.affine, top)
    inspector.inspect_ray(L.mni_to_world((x, y, 0.0)), (-1.0, 0.0, 0.0))
    assert inspector.voxel == top
    assert "first mask voxel" in inspector.where.text()
    # a ray beside the brain: said, not guessed
    inspector.inspect_ray(L.mni_to_world((300.0, 300.0, 0.0)), (-1.0, 0.0, 0.0))
    assert inspector.voxel is None and "no voxel" in inspector.where.text()


# --------------------------------------------------------------------------- surface
def test_surface_layers_hold_vol_to_surf_values(make_napari_viewer, qtbot):
    from nilearn.datasets import load_fsaverage
    from nilearn.surface import vol_to_surf

    viewer = make_napari_viewer()
    results = _dock(viewer, "Results")
    result = _show_tiny(viewer, results, qtbot)
    results.set_view(subject="group", language="EN", condition="shared", stat="t")
    task = results.show_surface()
    qtbot.waitUntil(lambda: task.done, timeout=120_000)
    qtbot.waitUntil(lambda: results.surface_feeder.done, timeout=30_000)
    surfaces = [layer for layer in viewer.layers if type(layer).__name__ == "Surface"]
    kinds = {(s.metadata["surface"], s.metadata["hemisphere"], s.metadata["stat"])
             for s in surfaces}
    assert {(k, h, "t") for k in ("inflated", "pial") for h in ("left", "right")} <= kinds
    assert {(k, h, "categories") for k in ("inflated", "pial")
            for h in ("left", "right")} <= kinds
    assert viewer.dims.ndisplay == 3
    fs = load_fsaverage("fsaverage5")
    img = result.space.to_image(result.group_maps[("EN", "shared", "t")], fill=np.nan)
    for hemi in ("left", "right"):
        expected = np.nan_to_num(vol_to_surf(img, fs["pial"].parts[hemi],
                                             inner_mesh=fs["white_matter"].parts[hemi]))
        layer = next(s for s in surfaces if s.metadata["surface"] == "pial" and
                     s.metadata["hemisphere"] == hemi and s.metadata["stat"] == "t")
        np.testing.assert_allclose(layer.vertex_values, expected, rtol=1e-5, atol=1e-6)
        xyz = np.asarray(fs["pial"].parts[hemi].coordinates)
        np.testing.assert_allclose(layer.vertices, np.column_stack(
            [xyz[:, 2], -xyz[:, 1], xyz[:, 0]]), atol=1e-4)
        assert (expected != 0).any()
    # the shared category (left frontal) lands on the left hemisphere only
    cats = {s.metadata["hemisphere"]: s.vertex_values for s in surfaces
            if s.metadata["stat"] == "categories" and s.metadata["surface"] == "pial"}
    shared = next(k for k, e in result.categories["lesion"][1].items() if e["name"] == "shared")
    assert (cats["left"] == shared).any() and not (cats["right"] == shared).any()
    # its own scene: the volumes hidden meanwhile; the categories are outlines, so the
    # map shows inside the shared patch, in grey |t| (categories shown: colour = category)
    assert not any(layer.visible for layer in viewer.layers
                   if type(layer).__name__ in ("Image", "Labels"))
    t_left = next(s for s in surfaces if s.metadata["surface"] == "pial" and
                  s.metadata["hemisphere"] == "left" and s.metadata["stat"] == "t")
    assert ((t_left.vertex_values >= 5.0) & (cats["left"] == 0)).any()
    assert t_left.metadata["magnitude"] and "|value|" in t_left.colormap.name
    from napari_lesion_align._widgets._viewer import canvas_legend

    shown = canvas_legend(viewer)  # the colour bar, threshold and legend on the canvas
    assert shown["text"].endswith("t ≥ 5 · q < 0.05 FDR · 2 df")
    assert shown["colorbar"] is not None and "shared" in [t for _, t in shown["entries"]]


# --------------------------------------------------------------------------- export
def test_export_view_has_name_colour_bar_legend_and_orientation(make_napari_viewer, qtbot,
                                                                 tmp_path):
    from matplotlib.image import imread

    from napari_lesion_align.core.analysis.statistics import CATEGORY_COLOURS

    viewer = make_napari_viewer(show=True)
    results = _dock(viewer, "Results")
    _show_tiny(viewer, results, qtbot)
    results.set_view(subject="group", language="EN", condition="shared", stat="t")
    results.set_overlay(False)  # the map in its colours: a red-yellow colour bar
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    path = results.export_view(tmp_path / "view")
    assert path.suffix == ".png" and path.is_file()
    img = (imread(str(path))[..., :3] * 255).round().astype(int)
    assert img.shape[1] > canvas.shape[1]  # the colour bar beside the canvas
    from napari_lesion_align._widgets._export import DPI, SIDE_INCHES

    side = img[:, img.shape[1] - int(SIDE_INCHES * DPI):]  # right of the canvas
    red = (side[..., 0] > 200) & (side[..., 1] < 80) & (side[..., 2] < 60)
    assert red.sum() > 20, "no colour bar"
    # with the category overlay: its legend beside the canvas, the map in grey |t| (no
    # map colour can be taken for a category), its threshold in words on the canvas
    results.set_overlay(True, "lesion")
    path = results.export_view(tmp_path / "view2")
    img = (imread(str(path))[..., :3] * 255).round().astype(int)
    side = img[:, img.shape[1] - int(SIDE_INCHES * DPI):]
    rgb = np.array([int(CATEGORY_COLOURS["shared"][i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(side - rgb).max(axis=-1) <= 12).sum() > 20, "no category legend"
    red = (side[..., 0] > 200) & (side[..., 1] < 80) & (side[..., 2] < 60)
    assert red.sum() == 0, "a red-yellow colour bar beside category colours"
    assert "q < 0.05 FDR · 2 df" in results.canvas_text()


# --------------------------------------------------------------------------- progress
def test_first_message_of_each_phase_reaches_the_gui(qtbot):
    """Progress is throttled, but a new phase's first message (its text before ':'
    changes) always reaches the GUI thread."""
    from napari_lesion_align._widgets._tasks import start_task

    got = []

    def fn(progress, cancel):
        for phase in ("features", "fits", "group"):
            for i in range(5):
                progress(i / 5, f"{phase}: step {i}")
        return "done"

    outcomes = []
    task = start_task(fn, on_done=outcomes.append, on_progress=lambda f, m: got.append(m),
                      min_interval=10.0)
    qtbot.waitUntil(lambda: task.done, timeout=30_000)
    qtbot.wait(50)
    assert outcomes[0].ok and outcomes[0].value == "done"
    for phase in ("features", "fits", "group"):
        assert f"{phase}: step 0" in got, got
    assert len(got) < 15  # the others are throttled


def test_inspector_go_to_an_mni_coordinate(make_napari_viewer, qtbot):
    """The Inspector's magicgui form: MNI x, y, z -> the slices move there and the voxel
    nilearn's coord_transform maps to that point is inspected."""
    viewer = make_napari_viewer()
    inspector = _dock(viewer, "Inspector")
    result = _show_tiny(viewer, inspector, qtbot)
    ijk, v = _mask_voxel(result)
    xyz = coord_transform(*ijk, result.space.affine)
    for spin, value in zip(inspector._goto_spins, xyz):
        spin.value = float(value)
    inspector.goto_form[-1].changed.emit(True)  # click "Go to"
    assert inspector.voxel == ijk
    assert viewer.dims.point[0] == pytest.approx(xyz[2])  # the axial slice at MNI z
    expected = np.mean([result.maps[(s, "FR", "shared", "r")][v] for s in result.subjects])
    assert inspector.values["shared"]["FR"][0] == pytest.approx(expected, rel=1e-5)
