"""Long work off the GUI thread: a napari ``thread_worker`` with progress, cancel and an outcome.

:func:`start_task` runs ``fn(progress, cancel)`` in napari's thread pool
(:func:`napari.qt.threading.create_worker`). ``progress(fraction, message)`` may be called
as often as the core likes: it is throttled and relayed to the GUI thread through a Qt
signal (a queued connection); ``cancel()`` returns True once :meth:`Task.cancel` was
called. The GUI thread receives one :class:`Outcome`: ``ok`` with the value, ``error``
with the message of a :class:`~..core.errors.LesionAlignError`, ``cancelled``, or
``crash`` for an unexpected exception (napari's worker has already shown that one as a
notification with its traceback).

:class:`LayerFeeder` adds layers to a viewer one (or a few) per event-loop turn, so that
adding many layers at the end of a run never blocks the GUI for long; build the layer
objects in the worker (:func:`make_layer`) so the GUI thread only inserts them.

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

from qtpy.QtCore import QObject, QTimer, Signal

from ..core.errors import Cancelled, LesionAlignError


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
        import torch  # noqa: F401
        import transformers  # noqa: F401


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
    from napari.qt.threading import FunctionWorker

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
    """Lives in the GUI thread; emitted from the worker thread (queued to the GUI)."""

    progressed = Signal(float, str)


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
               activity: bool = False) -> Task:
    """Run ``fn(progress, cancel)`` in a napari thread worker (see the module docstring).

    ``owner``: the widget the task reports to; when it is destroyed the task is cancelled
    and ``on_done`` is not called. ``activity``: also show the progress as a bar in
    napari's activity dock (``napari.utils.progress``), closed when the task ends. The task also stops when napari quits (its workers are
    asked to quit then).
    """
    from napari.qt.threading import create_worker

    cancel_event = threading.Event()
    gone = threading.Event()  # the owner was destroyed
    holder: list = []
    relay = _Relay()
    if on_progress is not None:
        relay.progressed.connect(on_progress)
    bar = None
    if activity:
        from napari.utils import progress as napari_progress

        bar = napari_progress(total=1000, desc=f"Lesion Align: {name}")

        def to_bar(frac: float, msg: str) -> None:
            if msg:
                bar.set_description(f"Lesion Align: {msg}"[:80])
            bar.n = int(round(1000 * min(max(frac, 0.0), 1.0)))
            bar.refresh()

        relay.progressed.connect(to_bar)
    last = {"t": 0.0, "head": None}

    def progress(frac: float, msg: str = "") -> None:
        if gone.is_set():
            return  # the owner is gone: nobody to tell
        now = time.perf_counter()
        head = (msg or "").split(":")[0]
        gap = now - last["t"]
        # a new phase's first message always goes through (its head differs)
        if gap >= min_interval or frac >= 1.0 or head != last["head"]:
            last["t"], last["head"] = now, head
            try:
                relay.progressed.emit(float(frac), str(msg or ""))
            except RuntimeError as err:  # the relay was deleted (the application closes)
                if not _deleted(err):
                    raise

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
            if bar is not None:
                bar.close()
            task.done = True
            task.t_end = time.perf_counter()

    def finish(outcome: Outcome) -> None:
        ended()
        if not gone.is_set():
            on_done(outcome)

    worker.returned.connect(finish)
    worker.finished.connect(ended)
    # napari's worker already shows unexpected errors as a notification (with traceback)
    worker.errored.connect(lambda exc: finish(Outcome("crash", exc, f"{type(exc).__name__}: "
                                                                   f"{exc}")))
    worker.start()
    return task


def make_layer(layer_or_tuple):
    """A napari layer from a ``(data, kwargs, layer_type)`` tuple (or the layer itself).

    Pure model objects (no Qt): the workers build them, so that the GUI thread only has
    to insert them.
    """
    from napari.layers import Layer

    if isinstance(layer_or_tuple, Layer):
        return layer_or_tuple
    t = tuple(layer_or_tuple)
    kwargs = dict(t[1]) if len(t) > 1 and t[1] else {}
    layer = Layer.create(t[0], kwargs, t[2] if len(t) > 2 else "image")
    apply_contour(layer)
    return layer


def apply_contour(layer) -> None:
    """Category overlays are outlines (``metadata["contour"]``, see ``_layers``)."""
    contour = layer.metadata.get("contour")
    if contour is not None and hasattr(layer, "contour") and layer.contour != contour:
        layer.contour = int(contour)


def add_layer(viewer, layer_or_tuple):
    """Add a layer (or layer data tuple); a layer of the same name is replaced in place
    (same position in the layer list)."""
    layer = make_layer(layer_or_tuple)
    index = None
    if layer.name in viewer.layers:
        old = viewer.layers[layer.name]
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
    if index is None:
        viewer.layers.append(layer)
    else:
        viewer.layers.insert(index, layer)
    return layer


class LayerFeeder(QObject):
    """Adds layer tuples ``per_tick`` at a time, one event-loop turn apart."""

    finished = Signal()

    def __init__(self, viewer, layers: list, per_tick: int = 1, parent=None,
                 on_layer: Callable | None = None):
        import weakref

        from ._state import unwrap

        super().__init__(parent)
        self._viewer = weakref.ref(unwrap(viewer))  # never keep a viewer alive
        self.todo = list(layers)
        self.per_tick = max(1, int(per_tick))
        self.on_layer = on_layer
        self.added: list = []
        self.done = False

    def start(self) -> "LayerFeeder":
        QTimer.singleShot(0, self._step)
        return self

    def stop(self) -> None:
        self.todo.clear()

    def _step(self) -> None:
        viewer = self._viewer()
        if viewer is None:
            self.todo.clear()
        for _ in range(self.per_tick):
            if not self.todo:
                break
            layer = add_layer(viewer, self.todo.pop(0))
            self.added.append(layer)
            if self.on_layer is not None:
                self.on_layer(layer)
        if self.todo:
            QTimer.singleShot(0, self._step)
        else:
            self.done = True
            self.finished.emit()
