"""Layers into the viewer: :func:`make_layer` builds a napari layer from a layer data tuple
(pure model objects: the workers call it, so that the GUI thread only inserts them);
:func:`add_layer` adds or replaces one; :class:`LayerFeeder` adds layers to a viewer one
(or a few) per event-loop turn, so that adding many layers at the end of a run never
blocks the GUI for long."""

from __future__ import annotations

from typing import Callable

from napari.layers import Layer
from qtpy.QtCore import QObject, QTimer, Signal


def make_layer(layer_or_tuple):
    """A napari layer from a ``(data, kwargs, layer_type)`` tuple (or the layer itself).

    Pure model objects (no Qt): the workers build them, so that the GUI thread only has
    to insert them.
    """
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

        super().__init__(parent)
        # the viewer behind napari's PublicOnlyProxy; never keep a viewer alive
        self._viewer = weakref.ref(getattr(viewer, "__wrapped__", viewer))
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
