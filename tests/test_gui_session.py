"""The plugin as a new user meets it on a 1,366 x 768 screen: the **Lesion Align** panel
(the five widgets as tabs of one dock), its geometry (nothing wider than the dock, no
clipped text), the progress of long work (both bars, one time estimate, reset on cancel),
and a scripted session (two results open, every tab visited, a run started and cancelled,
the sample opened).

Geometry is checked on the widgets (sizes, size hints, font metrics), not on pixels.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest


from test_widgets import FAST_ENCODING, PLUGIN, tiny_model  # noqa: F401 (a fixture)

SCREEN = (1366, 768)
pytestmark = pytest.mark.filterwarnings("error:Private attribute access:FutureWarning")


def _small_screen_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(*SCREEN)
    qtbot.wait(50)
    return viewer, win


def _open_panel(viewer, qtbot):
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")
    viewer.window._qt_window.resize(*SCREEN)
    qtbot.wait(200)
    return panel


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text or "").replace("&amp;", "&").replace("&nbsp;", " ")


def geometry_problems(panel) -> list[str]:
    """Every control of the panel's current tab that is wider than the dock, narrower than
    its minimum size, or whose one-line text does not fit (labels, buttons, spin boxes,
    line edits' placeholders are allowed to elide; their values are not)."""
    from qtpy.QtWidgets import (QAbstractButton, QAbstractSpinBox, QCheckBox, QComboBox,
                                QLabel, QWidget)

    problems = []
    widget = panel.tabs.currentWidget()
    title = panel.tabs.tabText(panel.tabs.currentIndex())
    area = widget.scroll_area
    inner = area.widget()
    width = area.viewport().width()
    if inner.minimumSizeHint().width() > width:
        problems.append(f"{title}: content needs {inner.minimumSizeHint().width()} px, "
                        f"the dock shows {width}")
    if area.horizontalScrollBar().isVisible():
        problems.append(f"{title}: scrolls sideways")
    for child in inner.findChildren(QWidget):
        if not child.isVisibleTo(inner) or child.width() <= 0:
            continue
        name = f"{title}: {type(child).__name__} {child.objectName() or ''}"
        left = child.mapTo(inner, child.rect().topLeft()).x()
        if left + child.width() > width + 1:
            problems.append(f"{name} reaches x={left + child.width()} > {width}")
        fm = child.fontMetrics()
        if isinstance(child, QLabel) and not child.wordWrap() and child.text():
            need = max(fm.horizontalAdvance(line) for line in
                       _plain(child.text()).splitlines() or [""])
            if need > child.contentsRect().width() + 1:
                problems.append(f"{name} text {_plain(child.text())!r} needs {need} px, "
                                f"has {child.contentsRect().width()}")
        elif isinstance(child, QAbstractButton) and not isinstance(child, QCheckBox) \
                and child.text():
            need = fm.horizontalAdvance(child.text().replace("&&", "&")) + 8
            if need > child.width():
                problems.append(f"{name} button {child.text()!r} needs {need} px, has "
                                f"{child.width()}")
        elif isinstance(child, QCheckBox) and child.text():
            need = fm.horizontalAdvance(child.text()) + 20
            if need > child.width():
                problems.append(f"{name} check box {child.text()!r} needs {need} px, has "
                                f"{child.width()}")
        elif isinstance(child, QAbstractSpinBox):
            edit = child.lineEdit()
            need = fm.horizontalAdvance(edit.text())
            if need > edit.width():
                problems.append(f"{name} value {edit.text()!r} needs {need} px, has "
                                f"{edit.width()}")
        elif isinstance(child, QComboBox) and child.width() < child.minimumSizeHint().width():
            problems.append(f"{name} combo box narrower than its minimum")
    return problems


# --------------------------------------------------------------------------- geometry
def test_the_panel_fits_a_small_screen(make_napari_viewer, qtbot):
    """Maximised on 1,366 x 768 with the panel docked: the window keeps its size, the
    canvas keeps most of the width, each tab gets the dock's whole height, and on every
    tab no control is wider than the dock or clipped (no "Cance", no "-44.(")."""
    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    assert type(panel).__name__ == "LesionAlignPanel"
    assert list(panel.widgets) == ["Data", "Model", "Run", "Results", "Inspect"]
    assert win.width() <= SCREEN[0] and win.height() <= SCREEN[1]
    # the five tab titles are all visible (no scroll arrows) within the dock
    bar = panel.tabs.tabBar()
    assert bar.sizeHint().width() <= panel.width(), (bar.sizeHint().width(), panel.width())
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= SCREEN[0] // 2, canvas.width()
    problems = []
    for title in panel.widgets:
        widget = panel.show_tab(title)
        qtbot.wait(100)
        # a tab has the dock's height: at least 400 px to show its controls
        assert widget.scroll_area.viewport().height() >= 400, title
        problems += geometry_problems(panel)
    assert not problems, "\n".join(problems)
    # the long texts a session produces wrap instead of widening the dock
    panel.run.step.setText("importance (wanda): " + "a very long message " * 20)
    panel.data.form_error.set_error("Data: language EN: " + "x" * 30 + " is wrong " * 20)
    for title in ("Run", "Data"):
        panel.show_tab(title)
        qtbot.wait(100)
        assert not geometry_problems(panel), title


def test_selecting_a_map_or_labels_layer_keeps_the_canvas(make_napari_viewer, qtbot):
    """A result's maps and category overlay shown, each layer selected in turn: napari's
    layer controls (left) keep napari's own width, so the canvas keeps 640 px (the plugin's
    long colormap name, listed in every colormap box, made the left panel 443 px wide and
    left a 567 px canvas)."""
    from test_gui_viewer import _show_tiny

    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    _show_tiny(viewer, panel.results, qtbot)
    canvas = viewer.window._qt_viewer.canvas.native
    kinds = set()
    for layer in list(viewer.layers):
        viewer.layers.selection.active = layer
        qtbot.wait(150)
        kinds.add(type(layer).__name__)
        assert canvas.width() >= 640, (layer.name, canvas.width())
    assert {"Image", "Labels"} <= kinds


# --------------------------------------------------------------------------- progress
def _simulated_reports(seed: int, durations: dict, dt: float = 0.5) -> list:
    """``[(elapsed s, fraction)]`` of a run whose phases (:data:`stages.PHASES`) take
    ``durations`` seconds, reported every ~``dt`` s at an irregular pace."""
    from napari_lesion_align.core.run.engine import PHASES

    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    for phase, (lo, hi) in PHASES.items():
        n = max(int(durations[phase] / dt), 1)
        steps = rng.lognormal(0.0, 0.4, n)
        steps *= durations[phase] / steps.sum()
        for k in range(n):
            t += steps[k]
            out.append((t, lo + (hi - lo) * (k + 1) / n))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_time_left_settles_on_a_simulated_run(seed):
    """A simulated run (phases at different paces, an irregular pace within each): read
    every second, the one estimate both bars show never jumps by more than 30 s between two
    readings (the current phase's raw rate jumps by minutes at each new phase: 0:09, 7:35,
    3:25...), and in the run's last 40 % it is within 15 % + 10 s of the truth."""
    from napari_lesion_align._widgets._tasks import TimeEstimate
    from napari_lesion_align.core.run.engine import time_left

    durations = {"data": 2.0, "lesions": 30.0, "features": 60.0, "fits": 240.0, "group": 5.0}
    reports = _simulated_reports(seed, durations)
    total = reports[-1][0]
    estimate, seen, i = TimeEstimate(), [], 0
    rows = []  # (elapsed, true left, shown, raw)
    for tick in np.arange(1.0, total, 1.0):
        while i < len(reports) and reports[i][0] <= tick:
            estimate.add(*reports[i])
            seen.append(reports[i])
            i += 1
        raw = time_left(seen)
        raw = None if raw is None else max(raw - (tick - seen[-1][0]), 0.0)
        rows.append((tick, total - tick, estimate.left(tick), raw))

    def largest_jump(col):
        shown = [(r[0], r[col]) for r in rows if r[col] is not None and r[0] > 0.1 * total]
        return max(abs(b[1] - a[1] + (b[0] - a[0])) for a, b in zip(shown, shown[1:]))

    assert largest_jump(3) > 60  # the raw estimate does jump (what the user saw)
    assert largest_jump(2) < 30, largest_jump(2)
    late = [(true, shown) for t, true, shown, _ in rows if t > 0.6 * total and true > 5]
    assert late and all(abs(shown - true) <= 0.15 * true + 10 for true, shown in late), late
    # text both bars show; nothing once done or reset
    assert re.fullmatch(r"elapsed \d+:\d\d · about \d+:\d\d left", estimate.text(rows[-1][0]))
    estimate.add(total, 1.0)
    assert estimate.left(total) is None and estimate.text(total) == f"elapsed {total // 60:.0f}:" \
        f"{int(round(total)) % 60:02d}"
    estimate.reset()
    assert estimate.left(5.0) is None and estimate.history == []


def test_short_step_keeps_the_activity_label_short():
    from napari_lesion_align._widgets._tasks import short_step

    assert short_step("importance (wanda): EN") == "importance (wanda)"
    assert short_step("features: EN intact run 2 of 9 (1,203 words)") == "features"
    long = short_step("x" * 100)
    assert len(long) == 28 and long.endswith("…")


@pytest.fixture
def simulated_run(monkeypatch):
    """The Run widget's work replaced by a simulated run: phases reported every 20 ms up
    to ``state["stop_at"]`` of the bar, then it waits for Cancel (raises ``Cancelled``)."""
    import threading

    from napari_lesion_align._widgets import _run_prep, _tasks
    from napari_lesion_align.core.base.errors import Cancelled

    state = {"stop_at": 0.5, "reached": threading.Event(), "cancel_seen": threading.Event()}

    def fake_run(config, with_template, progress, cancel, out_dir=None):
        frac = 0.0
        while True:
            if cancel():
                state["cancel_seen"].set()
                raise Cancelled()
            if frac < state["stop_at"]:
                frac = min(frac + 0.01, state["stop_at"])
                phase = "features" if frac < 0.45 else "fits"
                progress(frac, f"{phase}: EN intact run 2 of 9, a long detail that must "
                               "not reach the activity dock's label")
            else:
                state["reached"].set()
            time.sleep(0.02)

    monkeypatch.setattr(_run_prep, "run", fake_run)
    # no model in a simulated run: torch and transformers need not be imported for it
    monkeypatch.setattr(_tasks, "import_model_libraries", lambda: None)
    return state


def test_run_bars_move_together_and_reset_on_cancel(make_napari_viewer, qtbot,
                                                   simulated_run, notifications):
    """The Run tab's bar and the activity dock's bar show the same value and the same time
    left; the activity label stays short; Cancel (the activity dock's button) stops the run,
    resets both bars (no "61 %, about 4:09 left" left behind) and says so."""
    from napari.utils import progress as napari_progress

    viewer, _ = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    run = panel.show_tab("Run")
    task = run.run()
    assert task is not None and run.activity is not None
    bar = run.activity.bar
    assert bar in napari_progress._all_instances
    values = []
    bar.events.value.connect(lambda e: values.append(e.value))
    etas = []
    bar.events.eta.connect(lambda e: etas.append(e.value))
    qtbot.waitUntil(simulated_run["reached"].is_set, timeout=60_000)
    qtbot.wait(600)  # a few ticks of the clock
    assert run.progress.value() == 500 == run.activity.value
    # napari's bar follows (value events), in the order of the reports
    assert values and values[-1] == 500 and values == sorted(values), values
    assert run.activity.description == "Lesion Align: fits"
    left = re.search(r"about (\d+:\d\d) left", run.times.text())
    assert left and etas and etas[-1] == f"about {left.group(1)} left", (run.times.text(), etas)
    # Cancel from the activity dock's bar (napari's cancel button calls bar.cancel())
    bar.cancel()
    qtbot.waitUntil(lambda: task.done, timeout=30_000)
    assert simulated_run["cancel_seen"].is_set()
    assert run.outcome.kind == "cancelled" and run.step.text() == "cancelled"
    assert run.progress.value() == 0 and run.times.text() == ""
    assert run.activity is None and bar not in napari_progress._all_instances
    assert run.run_button.isEnabled() and not run.cancel_button.isEnabled()
    assert any("cancelled" in n.message for n in notifications)


def test_the_run_tab_says_why_each_step_runs(make_napari_viewer, qtbot):
    """Lesions unticked: the Run tab says no importance is scored; ticked: it says which
    importance method ranks what, for which lesions, and the random draws."""
    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")[1]
    panel.model.set_lesion(enabled=False)
    assert "no importance scores" in panel.run.plan.text()
    panel.model.set_lesion(enabled=True, element="weights", selection="shared",
                           method="wanda", k_percent=2.0, random_controls=3)
    text = panel.run.plan.text()
    assert "Wanda" in text and "top 2 %" in text and "shared" in text, text
    assert "3 random lesion(s)" in text


def test_errors_sit_next_to_their_field_and_go_when_fixed(make_napari_viewer, qtbot,
                                                          notifications):
    """A wrong data form: red text under the form; Run refuses with its reason under the
    Run button; once the form is right (the demo), both are gone."""
    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")[1]
    data, run = panel.data, panel.run
    data.set_files(languages=[])  # Files with no language
    assert data.form_error.message and "add at least one language" in data.form_error.message
    assert not data.form_error.isHidden()
    assert run.run() is None
    assert run.error.message and "language" in run.error.message and run.step.text() == \
        "not run"
    data.source.setCurrentIndex(0)  # the demo: a complete form
    assert data.form_error.message is None and data.form_error.isHidden()
    assert run.error.message is None and run.error.isHidden() and run.step.text() == "ready"


# --------------------------------------------------------------------------- the session
def _labels_overlap(figure) -> list:
    """Pairs of overlapping tick labels and texts outside the figure, after a draw."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    fig_box = figure.bbox
    problems = []
    for ax in figure.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i in range(len(boxes) - 1):
            if boxes[i].overlaps(boxes[i + 1]):
                problems.append((labels[i].get_text(), labels[i + 1].get_text()))
        texts = [*labels, ax.yaxis.label, *ax.get_yticklabels()]
        for t in texts:
            if not t.get_text():
                continue
            b = t.get_window_extent(renderer)
            if b.x0 < fig_box.x0 - 1 or b.x1 > fig_box.x1 + 1 or b.y0 < fig_box.y0 - 1 \
                    or b.y1 > fig_box.y1 + 1:
                problems.append(("clipped", t.get_text()))
    return problems


def test_a_scripted_session_on_a_small_screen(make_napari_viewer, qtbot, tmp_path,
                                              monkeypatch, simulated_run, notifications):
    """What a new user does on 1,366 x 768: the panel; a result folder opened with the
    reader and another one from the Results tab; the sample (the demo result, here a
    cached tiny one) and the template; every tab visited (geometry checked on each, with
    content); a voxel inspected (crosshair, themed plot with readable labels, slices in
    mm); a run started and cancelled (both bars, reset); the Inspector closed (its
    crosshair goes)."""
    from napari.utils.notifications import NotificationSeverity

    from napari_lesion_align import _layers as L
    from napari_lesion_align import _sample_data
    from napari_lesion_align._widgets._state import result_key
    from test_figures import make_tiny_result

    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"res{seed}")
        make_tiny_result(seed=seed).save(folders[-1])
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path / "cache"))
    make_tiny_result(seed=2).save(_sample_data.demo_cache_folder())

    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    session = panel.session
    # two results: the reader (File > Open) and the Results tab
    viewer.open(str(folders[0]), plugin=PLUGIN)
    qtbot.waitUntil(lambda: result_key(folders[0]) in session.results, timeout=60_000)
    results = panel.show_tab("Results")
    task = results.open_result(folders[1])
    qtbot.waitUntil(lambda: task.done and result_key(folders[1]) in session.results,
                    timeout=60_000)
    qtbot.waitUntil(lambda: results.feeder is None or results.feeder.done, timeout=60_000)
    # the samples: the template, and the demo result (cached: opens at once)
    viewer.open_sample(PLUGIN, "mni152")
    viewer.open_sample(PLUGIN, "demo")
    qtbot.waitUntil(lambda: len(session.results) == 3, timeout=60_000)
    qtbot.wait(300)
    assert win.width() <= SCREEN[0] and win.height() <= SCREEN[1]
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 640, canvas.width()

    # every tab, with content: nothing wider than the dock, nothing clipped
    problems = []
    for title in panel.widgets:
        panel.show_tab(title)
        qtbot.wait(150)
        problems += geometry_problems(panel)
    assert not problems, "\n".join(problems)

    # inspect a voxel of the current result
    inspector = panel.show_tab("Inspect")
    result = session.result
    mask = np.asarray(result.space.mask_img.dataobj, dtype=bool)
    ijk = tuple(int(v) for v in np.argwhere(mask)[len(np.argwhere(mask)) // 2])
    mni = L.voxel_to_mni(result.space.affine, ijk)
    inspector.go_to(mni)
    qtbot.wait(200)
    assert inspector.voxel == ijk and inspector.values
    cross = viewer.layers["inspected voxel"]
    np.testing.assert_allclose(cross.data[0], L.mni_to_world(mni))
    assert viewer.layers[-1] is cross  # on top of the maps
    # the slider's label says where the slice is, in MNI mm
    z_axis = viewer.dims.ndim - 3
    assert viewer.dims.axis_labels[z_axis] == f"z {mni[2]:+.0f} mm", viewer.dims.axis_labels
    # the plot in the viewer's theme (dark), its labels apart and inside the figure
    bg = inspector.figure.get_facecolor()
    assert viewer.theme == "dark" and sum(bg[:3]) / 3 < 0.3, bg
    assert not _labels_overlap(inspector.figure)
    assert not geometry_problems(panel)

    # a run started and cancelled (the pipeline simulated): both bars, then reset
    run = panel.show_tab("Run")
    task = run.run()
    qtbot.waitUntil(simulated_run["reached"].is_set, timeout=60_000)
    qtbot.wait(400)
    assert run.progress.value() == run.activity.value == 500
    assert not geometry_problems(panel)
    qtbot.mouseClick(run.cancel_button, __import__("qtpy").QtCore.Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: task.done, timeout=30_000)
    assert run.progress.value() == 0 and run.activity is None and run.times.text() == ""
    assert len(session.results) == 3  # a cancelled run adds no result

    # closing the panel takes the Inspector's crosshair with it
    viewer.window.remove_dock_widget(panel)
    qtbot.wait(200)
    assert "inspected voxel" not in viewer.layers
    assert not [n for n in notifications if n.severity == NotificationSeverity.ERROR]


def test_a_long_task_in_the_activity_dock_can_be_cancelled_there(qtbot, notifications):
    """Any long task started with ``activity=True`` (check data, save lesions, save result,
    open, QC figure, surface...): its bar in napari's activity dock moves with its reports,
    its label is short, napari's Cancel button cancels it, and the end is notified."""
    import threading

    from napari.utils import progress as napari_progress

    from napari_lesion_align._widgets._tasks import start_task
    from napari_lesion_align.core.base.errors import Cancelled

    halfway = threading.Event()

    def fn(progress, cancel):
        for i in range(1, 1000):
            if cancel():
                raise Cancelled()
            if i <= 40:
                progress(i / 100, f"indexing: sub-{i:02d}_run-1_bold.nii.gz and more details")
            else:
                halfway.set()
            time.sleep(0.01)
        return "finished"

    outcomes = []
    before = set(napari_progress._all_instances)
    task = start_task(fn, on_done=outcomes.append, name="check data", activity=True,
                      notify=True)
    (bar,) = set(napari_progress._all_instances) - before
    values = []
    bar.events.value.connect(lambda e: values.append(e.value))
    qtbot.waitUntil(halfway.is_set, timeout=30_000)
    qtbot.waitUntil(lambda: values and values[-1] == 400, timeout=5_000)
    assert values == sorted(values)
    assert str(bar.desc).startswith("Lesion Align: indexing")
    bar.cancel()  # napari's Cancel button
    qtbot.waitUntil(lambda: task.done, timeout=10_000)
    assert outcomes and outcomes[0].kind == "cancelled"
    assert bar not in napari_progress._all_instances  # closed
    assert any(n.message == "Lesion Align: check data cancelled" for n in notifications)


def test_the_run_tab_chooses_the_group_test_and_the_ceiling(make_napari_viewer, qtbot):
    """The [statistics] form: the permutation's statistic and sign flips are editable only
    with the permutation test and reach the config only then; the noise ceiling can be
    switched off; the schema's bounds hold in the form."""
    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")[1]
    run, session = panel.run, panel.run.session
    form = run.statistics_form
    assert form["inference"].value == "parametric"
    assert not form["method"].enabled and not form["n_perm"].enabled
    form["method"].value = "tfce"  # chosen, then the parametric test kept: not sent
    values = run.statistics_values()
    assert values == {"inference": "parametric", "ceiling": True}
    session.statistics = values
    assert session.build_config().statistics.inference == "parametric"
    form["inference"].value = "permutation"
    assert form["method"].enabled and form["n_perm"].enabled
    form["n_perm"].value = 500
    form["ceiling"].value = False
    session.statistics = run.statistics_values()
    cfg = session.build_config().statistics
    assert (cfg.inference, cfg.method, cfg.n_perm, cfg.ceiling) == \
        ("permutation", "tfce", 500, False)
    # the schema's bounds are the spin box's: too few sign flips cannot be typed
    assert form["n_perm"].min == 100
    with pytest.raises(ValueError):
        form["n_perm"].value = 10


def test_the_model_tab_chooses_how_the_lesions_get_their_alphas(make_napari_viewer, qtbot):
    """[encoding] condition_alphas in the lesion box: the intact model's alphas by default
    (the schema's default), "search" reaches the config, and changing it changes the fits'
    identity (a folder made with the other refits, not resumes)."""
    from napari_lesion_align.core.run.config import EncodingConfig
    from napari_lesion_align.core.run.store import identity

    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion Align")[1]
    model, session = panel.model, panel.model.session
    box = model.condition_alphas
    assert box.value == EncodingConfig.model_fields["condition_alphas"].default == "intact"
    assert set(box.choices) == {"intact", "search"}
    intact = session.build_config()
    assert intact.encoding.condition_alphas == "intact"
    box.value = "search"
    searched = session.build_config()
    assert searched.encoding.condition_alphas == "search"
    assert identity(searched)["fits"] != identity(intact)["fits"]
    model.set_lesion(condition_alphas="intact")
    assert session.build_config().encoding.condition_alphas == "intact"
    # the demo's own [encoding] keys stay (the override is merged key by key)
    assert session.build_config().encoding.alphas == intact.encoding.alphas
