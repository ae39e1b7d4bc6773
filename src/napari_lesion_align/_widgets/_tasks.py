"""Long work off the GUI thread: a napari ``thread_worker`` with progress, cancel and an outcome.

:func:`start_task` runs ``fn(progress, cancel)`` in napari's thread pool
(:func:`napari.qt.threading.create_worker`). ``progress(fraction, message)`` may be called
as often as the core likes: it is throttled and relayed to the GUI thread through a Qt
signal (a queued connection); ``cancel()`` returns True once :meth:`Task.cancel` was
called. The GUI thread receives one :class:`Outcome`: ``ok`` with the value, ``error``
with the message of a :class:`~..core.base.errors.LesionAlignError`, ``cancelled``, or
``crash`` for an unexpected exception (napari's worker has already shown that one as a
notification with its traceback).

The layers a task makes are built and added by :mod:`._layer_feed`.

A task outlives its widget safely: when the owner is destroyed (its viewer closed, a test
ended) the task is cancelled and its worker asked to quit, and a worker that finishes
after Qt deleted its signal object (at interpreter exit, while a model still loads) ends
quietly instead of raising from Qt's thread pool, which would abort the process.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication, QSizePolicy

from ..core.base.errors import Cancelled, LesionAlignError
from ..core.run.engine import PHASE_RATE_MIN_S, PHASES


_GC_FROZEN = False


def freeze_gc_once() -> None:
    """Keep full garbage collections short while long work runs next to the GUI.

    A process with napari, torch and transformers loaded tracks millions of objects; a
    full (generation 2) collection then pauses every thread, the GUI included, for about
    half a second. :func:`gc.freeze` moves everything alive now (mostly modules and their
    objects, which live as long as the process) into a permanent generation that
    collections skip, so they only scan what was created since. Done once per process.
    """
    import gc

    global _GC_FROZEN
    if not _GC_FROZEN:
        gc.freeze()
        _GC_FROZEN = True


_MODEL_IMPORT = threading.Lock()


def import_model_libraries() -> None:
    """Import torch and transformers once, one thread at a time: two workers importing
    them at once (e.g. the lesion size and a run) can see half-initialised modules
    (``'prims' object has no attribute 'sum'``). Call it first in tasks that use the
    model."""
    with _MODEL_IMPORT:
        # reason: torch and transformers load only in the workers that use the model
        import torch  # noqa: F401
        import transformers  # noqa: F401


# --------------------------------------------------------------------------- texts
# (here, at the bottom of the widgets' layers, so that every widget module may use them)
def number(value, digits: int = 1, plus: bool = False) -> str:
    """A coordinate as text with ``digits`` decimals (``plus``: always signed), never a
    negative zero: ``-0.04`` -> ``"0.0"`` (``"+0.0"``), not ``"-0.0"``. The one format of
    the MNI coordinates the status bar, the Inspector, the sliders and the exports show."""
    v = round(float(value), digits)
    if v == 0.0:  # -0.0 and values that round to it
        v = 0.0
    return f"{v:+.{digits}f}" if plus else f"{v:.{digits}f}"


def plain_text(value) -> str:
    """The text of a value shown in a label or a table cell: a napari ``Notification`` (or
    any event with a ``message``) shows its message, an exception its text, None nothing;
    never an object's repr (``<Notification ...>``)."""
    if value is None:
        return ""
    message = getattr(value, "message", None)
    if message is not None and not isinstance(value, str):
        return plain_text(message)
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return str(value)


# --------------------------------------------------------------------------- progress
def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def short_step(message: str, width: int = 28) -> str:
    """The step a progress message names, short enough for a progress bar's label:
    ``"importance (wanda): EN"`` -> ``"importance (wanda)"`` (the details go to the
    widget's own step line)."""
    head = plain_text(message).split(":")[0].strip()
    return head if len(head) <= width else head[:width - 1] + "…"


class TimeEstimate:
    """The one estimate of the time a task has left, which every bar of the task shows.

    Each progress report ``add(elapsed, fraction)`` gives a raw estimate of the task's
    end: the pace of the work that took time, in the current phase once it has run
    :data:`~..core.run.engine.PHASE_RATE_MIN_S` of it, else over the whole run
    (:func:`paced_time_left`; the phases are :data:`~..core.run.engine.PHASES`). Stretches
    where the bar moved faster than :attr:`INSTANT_S` seconds per whole bar, or
    :attr:`CACHED_RATIO` times faster than the typical stretch, are work that cost nothing (lesions and features reused from the store, a cached step): they move
    the bar but say nothing of the pace of what is left, so they are left out of the pace
    (they pulled the time left towards 0 and then let it jump up). No estimate while only
    such stretches were seen. The end shown is the raw one smoothed over :attr:`TAU`
    seconds (at most :attr:`SLEW` s per second, continuously between reports), so that a
    report from a faster or slower stretch (a new phase, a slow unit) moves it gradually
    instead of making the countdown jump. :meth:`left` is the smoothed
    end less the time now; :meth:`reset` forgets everything (a cancelled task shows no time
    left). No Qt here.
    """

    #: seconds over which a new raw estimate replaces the shown one (exponential smoothing)
    TAU = 8.0
    #: the most the shown end moves per second (a correction is spread over seconds)
    SLEW = 15.0
    #: a stretch of the bar covered at this pace or faster (seconds for the whole bar) is
    #: cached work: left out of the pace
    INSTANT_S = 1.0
    #: a stretch this many times faster than the typical one is cached work too
    CACHED_RATIO = 10.0
    #: no estimate before this much of the run took time (a stray slow cached step)
    MIN_PAID_S = 0.5

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.history: list[tuple[float, float]] = []
        #: the raw end the shown end moves towards, and where it started from (t, end)
        self._target: float | None = None
        self._anchor: tuple[float, float] | None = None
        self._done = False

    @property
    def fraction(self) -> float:
        return self.history[-1][1] if self.history else 0.0

    def _shown_end(self, elapsed: float) -> float | None:
        """The end shown at ``elapsed``: the raw end approached continuously (exponential,
        :attr:`TAU`, at most :attr:`SLEW` s per second) from the end shown when it was
        last updated, so that two readings a second apart never differ by more than
        :attr:`SLEW` s, however far apart the reports are."""
        import math

        if self._target is None or self._anchor is None:
            return None
        t_a, e_a = self._anchor
        dt = max(elapsed - t_a, 0.0)
        move = (self._target - e_a) * (1.0 - math.exp(-dt / self.TAU))
        return e_a + math.copysign(min(abs(move), self.SLEW * dt), move)

    def add(self, elapsed: float, fraction: float) -> None:
        self.history.append((float(elapsed), float(fraction)))
        if fraction >= 1.0:
            self._done = True
        left = paced_time_left(self.history, self.INSTANT_S)
        if left is None:
            return
        end = float(elapsed) + left
        shown = self._shown_end(elapsed)
        self._anchor = (float(elapsed), end if shown is None else shown)
        self._target = end

    def left(self, elapsed: float) -> float | None:
        """Seconds left at ``elapsed`` (None before an estimate exists or once done)."""
        end = self._shown_end(elapsed)
        if end is None or self._done or self.fraction >= 1.0:
            return None
        return max(end - elapsed, 0.0)

    def text(self, elapsed: float) -> str:
        """``"elapsed 1:02 · about 3:25 left"``."""
        left = self.left(elapsed)
        more = f" · about {clock(left)} left" if left is not None else ""
        return f"elapsed {clock(elapsed)}{more}"


def paced_time_left(history, instant_s: float = TimeEstimate.INSTANT_S,
                    ratio: float = TimeEstimate.CACHED_RATIO) -> float | None:
    """Seconds a task has left from its progress ``history`` ``[(elapsed s, fraction)]``
    (in order), from the stretches between reports that took time.

    A stretch that moved the bar by ``df`` is cached work (left out) when it took less
    than ``df * instant_s`` seconds, or when its pace (seconds per unit of the bar) is
    under ``1 / ratio`` of the typical pace (the time-weighted median of the stretches
    compared); a stretch with no progress counts (time passed). The pace is the current
    phase's (:data:`~..core.run.engine.PHASES`) once that phase has
    :data:`~..core.run.engine.PHASE_RATE_MIN_S` of such time, else the whole run's;
    ``None`` before :attr:`TimeEstimate.MIN_PAID_S` took time, before 2 % or when done."""

    if not history:
        return None
    f = history[-1][1]
    if not 0.02 < f < 1.0:
        return None
    lo = max(a for a, _ in PHASES.values() if a <= f)
    run, phase = [], []
    for (t0, f0), (t1, f1) in zip(history, history[1:]):
        dt, df = t1 - t0, f1 - f0
        if dt <= 0 or df < 0 or (df > 0 and dt < df * instant_s):
            continue  # no time passed, or faster than any real work: cached
        run.append((dt, df))
        if f0 >= lo:
            phase.append((dt, df))

    def pace(stretches):
        """(seconds, fraction) of the stretches at the typical pace or slower."""
        moving = sorted((dt / df, dt) for dt, df in stretches if df > 0)
        if not moving:
            return 0.0, 0.0
        half, acc, typical = sum(dt for _, dt in moving) / 2, 0.0, moving[-1][0]
        for p, dt in moving:
            acc += dt
            if acc >= half:
                typical = p
                break
        kept = [(dt, df) for dt, df in stretches if df == 0 or dt / df >= typical / ratio]
        return sum(dt for dt, _ in kept), sum(df for _, df in kept)

    phase_t, phase_f = pace(phase)
    if phase_t >= PHASE_RATE_MIN_S and phase_f > 0:
        return (1.0 - f) * phase_t / phase_f
    run_t, run_f = pace(run)
    if run_t >= TimeEstimate.MIN_PAID_S and run_f > 0:
        return (1.0 - f) * run_t / run_f
    return None


@functools.cache
def _bar_class():
    """napari's ``cancelable_progress`` whose Cancel button (activity dock) cancels the
    task at once, and whose time text is the task's own estimate, not tqdm's."""
    class TaskBar(cancelable_progress):
        eta_text = ""

        def display(self, msg=None, pos=None) -> None:  # no terminal output either
            self.events.eta(value=self.eta_text)

        def cancel(self) -> None:
            if not self.is_canceled:
                self.is_canceled = True
                if self.cancel_callback is not None:
                    self.cancel_callback()

    return TaskBar


def _napari_row(bar):
    """napari's widget showing ``bar`` in the activity dock (``QtLabeledProgressBar``), or
    None (no viewer, another napari)."""
    try:
        # reason: napari's private module, absent in other napari versions (then no row)
        from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar
    except ImportError:
        return None
    if QApplication.instance() is None:
        return None
    return next((w for w in QApplication.allWidgets()
                 if isinstance(w, QtLabeledProgressBar) and w.progress is bar), None)


class ActivityBar:
    """A task's bar in napari's activity dock (``napari.utils.progress``).

    Its label stays short (``"Lesion Align: features"``: :func:`short_step` to
    :attr:`STEP_CHARS`), its value moves with every report (napari's bar follows
    ``value`` events, which ``update`` emits and assigning ``n`` does not), its time text
    is a :class:`TimeEstimate`'s and its Cancel button cancels the task (``cancel``).

    napari lays a bar's row out at its label's full width: a long label widened the row
    past the activity dock (520 px at 1,366 x 768) and pushed napari's Cancel button out
    of sight. So the step is short, and napari's label of this bar may shrink (its full
    text in its tooltip): the bar, the time and Cancel always keep their room."""

    TOTAL = 1000
    #: the most characters of the step the label shows (with "Lesion Align: ")
    STEP_CHARS = 18

    def __init__(self, name: str, cancel: Callable[[], None] | None = None):
        self.name = name
        self.bar = _bar_class()(total=self.TOTAL, desc=f"Lesion Align: {name}",
                                cancel_callback=cancel)
        self._step = name
        self._latest = None
        self._busy = False
        self._label = None
        row = _napari_row(self.bar)
        if row is not None:
            self._label = row.description_label
            self._label.setMinimumWidth(0)
            self._label.setSizePolicy(QSizePolicy.Policy.Ignored,
                                      self._label.sizePolicy().verticalPolicy())
            self._label.setToolTip(f"Lesion Align: {name}")

    @property
    def value(self) -> int:
        return int(self.bar.n)

    @property
    def description(self) -> str:
        """The label shown (tqdm adds ": " to a description; not counted here)."""
        return str(self.bar.desc).removesuffix(": ")

    def set(self, fraction: float, message: str = "", eta: str | None = None) -> None:
        """Show ``fraction`` (0..1), the step of ``message`` and the time text ``eta``.

        napari's bar may run the event loop while it updates; a call made meanwhile (a
        newer report) is applied after this one, never overwritten by it."""
        self._latest = (fraction, message, eta)
        if self._busy or self.bar is None:
            return
        self._busy = True
        try:
            while self._latest is not None and self.bar is not None:
                (fraction, message, eta), self._latest = self._latest, None
                self._apply(fraction, message, eta)
        finally:
            self._busy = False

    def _apply(self, fraction: float, message: str, eta: str | None) -> None:
        bar = self.bar
        value = int(round(self.TOTAL * min(max(fraction, 0.0), 1.0)))
        step = short_step(message, self.STEP_CHARS) if message else ""
        if step and step != self._step:
            self._step = step
            bar.set_description(f"Lesion Align: {step}")
            if self._label is not None:
                try:
                    self._label.setToolTip(f"Lesion Align: {plain_text(message)}")
                except RuntimeError:  # napari closed the row
                    self._label = None
        if eta is not None and eta != bar.eta_text:
            bar.eta_text = eta
            bar.display()
        if value != bar.n:
            bar.n = value  # the value itself (tqdm's update adds a step)
            bar.events.value(value=value)  # what napari's bar follows

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()

    @property
    def closed(self) -> bool:
        return self.bar is None


@dataclass
class Outcome:
    kind: str  # ok | error | cancelled | crash
    value: Any = None
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class _Named:
    """A callable whose ``str`` is a readable name (napari's activity dock shows it)."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return self.name


def _deleted(err: RuntimeError) -> bool:
    """Whether ``err`` says a Qt object was deleted under its Python wrapper."""
    return "has been deleted" in str(err)


@functools.cache
def _worker_class():
    """napari's ``FunctionWorker`` whose ``run`` survives its signals being deleted."""
    class GuardedWorker(FunctionWorker):
        def run(self) -> None:
            try:
                super().run()
            except RuntimeError as err:
                # the signals' Qt object is gone (the application is closing): nobody is
                # left to tell, and an exception here would abort the process
                if not _deleted(err):
                    raise

    return GuardedWorker


class _Relay(QObject):
    """Lives in the GUI thread. The worker emits ``reported`` (queued to the GUI) with a
    sequence number; ``progressed`` passes the reports on in order (a report older than
    one already passed on is dropped: a held-back report may be delivered from the GUI
    thread before older ones still queued)."""

    progressed = Signal(float, str)
    reported = Signal(int, float, str)

    def __init__(self):
        super().__init__()
        self.seen = -1
        self.reported.connect(self._in_order)

    def _in_order(self, seq: int, frac: float, msg: str) -> None:
        if seq > self.seen:
            self.seen = seq
            self.progressed.emit(frac, msg)


class Task:
    """A running (or finished) background task; keep a reference while it runs."""

    def __init__(self, worker, cancel_event: threading.Event, relay: _Relay, name: str):
        self.worker = worker
        self._cancel = cancel_event
        self.relay = relay
        self.name = name
        self.done = False
        self.t_start = time.perf_counter()
        self.t_cancel: float | None = None
        self.t_end: float | None = None
        #: when the worker itself finished (its own clock, not the GUI's delivery)
        self.t_worker_end: float | None = None

    def cancel(self) -> None:
        """Ask the task to stop at the core's next cancel check."""
        if not self._cancel.is_set():
            self.t_cancel = time.perf_counter()
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return not self.done


def start_task(fn: Callable, *, on_done: Callable[[Outcome], None],
               on_progress: Callable[[float, str], None] | None = None,
               name: str = "task", min_interval: float = 0.1, owner=None,
               activity: bool = False, notify: bool = False) -> Task:
    """Run ``fn(progress, cancel)`` in a napari thread worker (see the module docstring).

    ``owner``: the widget the task reports to; when it is destroyed the task is cancelled
    and ``on_done`` is not called. ``activity``: also show the progress as a bar in
    napari's activity dock (:class:`ActivityBar`: short label, the task's own time
    estimate, a Cancel button), closed when the task ends. ``notify``: a napari
    notification when the task is done or cancelled (long tasks the user may have stopped
    watching; an error is ``on_done``'s to show). The task also stops when napari quits (its workers are asked
    to quit then).
    """
    cancel_event = threading.Event()
    gone = threading.Event()  # the owner was destroyed
    holder: list = []
    relay = _Relay()
    if on_progress is not None:
        relay.progressed.connect(on_progress)
    bar = None
    if activity:
        bar = ActivityBar(name, cancel=cancel_event.set)
        estimate = TimeEstimate()
        t_start = time.perf_counter()

        def to_bar(frac: float, msg: str) -> None:
            if bar.closed:
                return
            el = time.perf_counter() - t_start
            estimate.add(el, frac)
            left = estimate.left(el)
            bar.set(frac, msg, f"about {clock(left)} left" if left is not None else "")

        relay.progressed.connect(to_bar)
    last = {"t": 0.0, "head": None, "held": None, "seq": 0}

    def progress(frac: float, msg: str = "") -> None:
        if gone.is_set():
            return  # the owner is gone: nobody to tell
        now = time.perf_counter()
        head = (msg or "").split(":")[0]
        gap = now - last["t"]
        last["seq"] += 1
        report = (last["seq"], float(frac), str(msg or ""))
        # a new phase's first message always goes through (its head differs)
        if gap >= min_interval or frac >= 1.0 or head != last["head"]:
            last["t"], last["head"], last["held"] = now, head, None
            try:
                relay.reported.emit(*report)
            except RuntimeError as err:  # the relay was deleted (the application closes)
                if not _deleted(err):
                    raise
        else:  # held back: delivered by the next report or by the flush below
            last["held"] = report

    # the last report before a pause (a long unit) is not lost to the throttle: the GUI
    # thread delivers a held-back report once it is min_interval old
    flush = QTimer(relay)
    flush.setInterval(max(int(1000 * min_interval), 50))

    def deliver_held() -> None:
        held = last["held"]
        if held is not None and time.perf_counter() - last["t"] >= min_interval:
            last["held"] = None
            last["t"] = time.perf_counter()
            relay.reported.emit(*held)

    flush.timeout.connect(deliver_held)
    flush.start()

    def cancelled() -> bool:
        return cancel_event.is_set() or (bool(holder) and holder[0].abort_requested)

    def work():
        t0 = time.perf_counter()
        try:
            value = fn(progress, cancelled)
        except Cancelled:
            return Outcome("cancelled", None, "cancelled", _ended(t0))
        except LesionAlignError as err:
            return Outcome("error", None, str(err), _ended(t0))
        return Outcome("ok", value, "", _ended(t0))

    def _ended(t0) -> float:
        now = time.perf_counter()
        if holder_task:
            holder_task[0].t_worker_end = now
        return now - t0

    holder_task: list = []

    worker = create_worker(_Named(work, f"napari-lesion-align: {name}"), _start_thread=False,
                           _ignore_errors=True, _worker_class=_worker_class())
    holder.append(worker)
    task = Task(worker, cancel_event, relay, name)
    holder_task.append(task)
    if owner is not None:
        def owner_gone(*_):
            gone.set()
            cancel_event.set()
            worker.quit()  # no result is emitted once it ends
        owner.destroyed.connect(owner_gone)

    def ended() -> None:  # with a result, or after a quit (no result emitted then)
        if not task.done:
            flush.stop()
            if bar is not None:
                bar.close()
            task.done = True
            task.t_end = time.perf_counter()

    def finish(outcome: Outcome) -> None:
        ended()
        if notify:
            _notify_end(name, outcome)
        if not gone.is_set():
            on_done(outcome)

    worker.returned.connect(finish)
    worker.finished.connect(ended)
    # napari's worker already shows unexpected errors as a notification (with traceback)
    worker.errored.connect(lambda exc: finish(Outcome("crash", exc, f"{type(exc).__name__}: "
                                                                   f"{exc}")))
    worker.start()
    return task


def _notify_end(name: str, outcome: Outcome) -> None:
    """Done or cancelled (an error is the ``on_done`` handler's to show, once)."""
    name = plain_text(name)
    if outcome.kind == "ok":
        show_info(f"Lesion Align: {name} done in {clock(outcome.seconds)}")
    elif outcome.kind == "cancelled":
        show_info(f"Lesion Align: {name} cancelled")
