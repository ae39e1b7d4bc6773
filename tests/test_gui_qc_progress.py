"""Long work as the activity dock shows it: a time left that settles when part of the work
is reused from the store (a simulated run on a fake clock, no sleeping), and a bar whose
label never squeezes napari's own Cancel button on a 1,366 x 768 screen."""

from __future__ import annotations

import numpy as np
import pytest


def _cached_then_slow(seed: int, cached: int, slow: int, unit_s: float, dt: float = 0.005):
    """``[(elapsed s, fraction)]`` of a run: the data checks and the lesions reused (0.002
    and 0.01 s), ``cached`` feature runs read from the store (about ``dt`` s each), then ``slow``
    feature runs to extract (``unit_s`` s each, a report at the end of each, an irregular
    pace), then the fits (``slow`` units at ``2 * unit_s``) and the group test (1 s)."""
    from napari_lesion_align.core.run.engine import PHASES

    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    for k in range(4):  # data
        t += 0.002
        out.append((t, PHASES["data"][1] * (k + 1) / 4))
    t += 0.01  # lesions: reused
    out.append((t, PHASES["lesions"][1]))
    lo, hi = PHASES["features"]
    n = cached + slow
    for k in range(n):
        t += dt * rng.uniform(0.5, 1.5) if k < cached else unit_s * rng.lognormal(0, 0.2)
        out.append((t, lo + (hi - lo) * (k + 1) / n))
    lo, hi = PHASES["fits"]
    for k in range(slow):
        t += 2 * unit_s * rng.lognormal(0, 0.2)
        out.append((t, lo + (hi - lo) * (k + 1) / slow))
    t += 1.0
    out.append((t, 1.0))
    return out


def _readings(reports, estimate, every: float = 1.0):
    """``[(t, true left, shown left)]`` read every ``every`` s of the fake clock."""
    total = reports[-1][0]
    rows, i = [], 0
    for tick in np.arange(every, total, every):
        while i < len(reports) and reports[i][0] <= tick:
            estimate.add(*reports[i])
            i += 1
        rows.append((tick, total - tick, estimate.left(tick)))
    return rows


@pytest.mark.parametrize("seed, cached, dt", [(0, 20, 0.005), (1, 30, 0.005), (2, 10, 0.005),
                                              (3, 30, 0.05), (4, 20, 0.05)])
def test_time_left_settles_when_the_first_steps_are_cached(seed, cached, dt):
    """The first feature runs come from the store (instant), the rest take seconds each:
    the raw phase pace (engine.time_left) then says a fraction of the truth for the whole
    features phase; the shown estimate is never below half the truth once the first slow
    unit was seen, never jumps by more than 30 s between two readings a second apart, and
    within 15 % + 10 s of the truth over the last 40 % of the run."""
    from napari_lesion_align._widgets._tasks import TimeEstimate, paced_time_left
    from napari_lesion_align.core.run.engine import PHASES, time_left

    reports = _cached_then_slow(seed, cached=cached, slow=12, unit_s=6.0, dt=dt)
    total = reports[-1][0]
    # what the user saw: the features phase's raw pace is pulled down by the cached runs
    lo, hi = PHASES["features"]
    first_slow = next(t for (t0, f0), (t, f) in zip(reports, reports[1:])
                      if f0 >= lo and t - t0 > 1.0)
    raw_low = [time_left(reports[:k + 1]) / (total - reports[k][0])
               for k in range(len(reports)) if first_slow + 6 < reports[k][0] and
               reports[k][1] < hi - 0.05]
    assert raw_low and min(raw_low) < 0.5, raw_low

    rows = _readings(reports, TimeEstimate())
    if dt < 0.01:  # no estimate from instant work alone (it said "about 0:00 left")
        assert all(shown is None for t, true, shown in rows if t < first_slow - 0.01)
    after = [(t, true, shown) for t, true, shown in rows if t >= first_slow]
    settled = [(t, true, shown) for t, true, shown in after if t >= first_slow + 12]
    assert all(shown is not None and shown >= 0.6 * true for t, true, shown in settled
               if true > 10), settled[:10]
    jumps = [abs(b[2] - a[2] + (b[0] - a[0])) for a, b in zip(after, after[1:])
             if a[2] is not None and b[2] is not None]
    assert max(jumps) < 30, max(jumps)
    late = [(true, shown) for t, true, shown in rows if t > 0.6 * total and true > 5]
    assert late and all(abs(shown - true) <= 0.15 * true + 10 for true, shown in late), late
    # the rule itself: cached stretches out, time with no progress in
    assert paced_time_left([(0.0, 0.0), (0.1, 0.5), (10.1, 0.6)]) == pytest.approx(40.0)
    assert paced_time_left([(0.0, 0.0), (0.1, 0.5)]) is None  # nothing took time
    assert paced_time_left([(0.0, 0.1), (5.0, 0.2), (10.0, 0.2)]) == pytest.approx(80.0)
    # slower than the instant pace, but 50x faster than the typical stretch: cached
    assert paced_time_left([(0.0, 0.16), (2.0, 0.26), (12.0, 0.27)]) == \
        pytest.approx(0.73 * 1000.0)


def test_time_left_is_unchanged_for_a_run_without_cached_steps():
    """A run at a steady pace (nothing cached): the estimate is the plain pace's."""
    from napari_lesion_align._widgets._tasks import TimeEstimate

    reports = [(2.0 * k, k / 100) for k in range(1, 101)]
    rows = _readings(reports, TimeEstimate())
    late = [(true, shown) for t, true, shown in rows if t > 20 and true > 2]
    assert all(abs(shown - true) <= 0.05 * true + 2 for true, shown in late), late[:5]


# --------------------------------------------------------------------------- activity dock
#: the longest step texts a run and the widgets' tasks report (core/run, core/lesions,
#: _widgets), a path, and the longest time text (over an hour)
LONG_STEPS = [
    "importance (gradient x weight): EN",
    "features EN run 12, random lesion 10 of 10 (shared): 1,203 words",
    "lesions and features on a Dask worker",
    "fits 120/120 units done (3605 s): EN random 10 of 10",
    "loading model xlm-roberta-large-finetuned-conll03-english",
    "subject sub-EN057, EN: loading and cleaning",
    "reading /home/someone/a/very/long/folder/name/of/results/demo-result-2026-12-07",
    "x" * 200,
]


def _activity_row(win, bar):
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    dlg = win._activity_dialog
    return dlg, next(w for w in dlg.findChildren(QtLabeledProgressBar) if w.progress is bar)


@pytest.mark.parametrize("eta", ["about 0:09 left", "about 1:02:03 left"])
def test_activity_dock_keeps_napari_cancel_button_visible(make_napari_viewer, qtbot, eta):
    """At 1,366 x 768 the activity dock (napari's, bottom right) shows a task's bar with
    the longest step texts a run reports: napari's Cancel button lies inside the dock's
    visible area at its full size (the label "Lesion Align: " + 28 characters widened the
    row to 603 px in a 500 px dock and cut Cancel off), the bar keeps a usable width, and
    the label says whose task it is."""
    from napari_lesion_align._widgets._tasks import ActivityBar

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1366, 768)
    qtbot.wait(50)
    bar = ActivityBar("run", cancel=lambda: None)
    try:
        dlg, row = _activity_row(win, bar.bar)
        dlg.show()
        problems = []
        for i, step in enumerate(LONG_STEPS):
            bar.set(0.1 + 0.1 * i, step, eta)
            qtbot.wait(60)
            view = dlg._scrollArea.viewport()
            button = row.cancel_button
            assert button.isVisible() and button.text() == "Cancel"
            top_left = button.mapTo(view, button.rect().topLeft())
            right = top_left.x() + button.width()
            if right > view.width() or top_left.x() < 0:
                problems.append(f"{step[:30]!r}: Cancel at x {top_left.x()}..{right}, "
                                f"the dock shows 0..{view.width()}")
            if button.width() < button.sizeHint().width():
                problems.append(f"{step[:30]!r}: Cancel {button.width()} px < "
                                f"{button.sizeHint().width()}")
            if row.qt_progress_bar.width() < 60:
                problems.append(f"{step[:30]!r}: bar {row.qt_progress_bar.width()} px")
            if row.eta_label.width() < row.eta_label.sizeHint().width():
                problems.append(f"{step[:30]!r}: time text cut")
            assert row.description_label.text().startswith("Lesion Align: ")
            if step[:10] not in row.description_label.toolTip():
                problems.append(f"{step[:30]!r}: the full step is not in the tooltip")
        assert not problems, "\n".join(problems)
    finally:
        bar.close()
