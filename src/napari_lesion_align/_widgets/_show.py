"""Put results into a viewer, through the viewer's one registry of open results
(:attr:`._state.Session.results`): a result's layers carry its identity
(:mod:`.._view_model`: ``result_key`` / ``result_label`` metadata and the label as a name
suffix), are added one per event-loop turn (built beforehand, off the GUI thread), and
only :func:`close_result` removes them, all of them and nothing else.

:func:`open_result_folder` is the one way to open a saved result folder in a viewer (the
Results dock's **Open result folder…** and File > Open Sample use it; the reader's layers
join the same registry through :mod:`._viewer`).
"""

from __future__ import annotations

import weakref
from pathlib import Path

from napari.utils.notifications import show_error

from .. import _layers
from .._view_model import (RESULT_KEY, RESULT_LABEL, RESULT_TAG, VIEW_TAG,  # noqa: F401
                           default_view, group_mean, map_view_tuple, owned_name,
                           result_tuples, stats_for, view_choices, view_tuple)
from ..core.analysis.display import MASK_COLOUR
from ..core.results.result import AlignmentResult
from ._layer_feed import LayerFeeder, make_layer
from ._state import result_key, session_for, unwrap
from ._tasks import start_task


def result_layer_objects(result, with_template: bool = True) -> list:
    """napari layers of a result (template, its view's map, category overlays), built off
    the GUI thread; [] for region results. :func:`show_result` gives them their result's
    identity."""
    return [make_layer(t) for t in result_tuples(result, with_template=with_template)]


#: what a finished run shows (the same as any result that opens)
run_layers = result_layer_objects


def tag_layer(layer, session, key) -> None:
    """Give ``layer`` the identity of the open result ``key`` (metadata, and its label as
    the name's suffix: ``"t EN shared (group) [res1]"``); the template belongs to no
    result."""
    if layer.metadata.get("stat") == "template":
        return
    entry = session.results.get(key)
    label = entry.label if entry is not None else None
    layer.metadata[RESULT_TAG] = True
    layer.metadata[RESULT_KEY] = key
    layer.metadata[RESULT_LABEL] = label
    layer.name = owned_name(layer.name, label)


def layers_of(viewer, key) -> list:
    """The layers of open result ``key`` in ``viewer``."""
    return [layer for layer in viewer.layers if layer.metadata.get(RESULT_KEY) == key]


def view_layer(result, view: dict, threshold=None, magnitude: bool = False):
    """The map layer of a view (``threshold`` default: ``core.analysis.display``'s rule)."""
    return make_layer(map_view_tuple(result, view, threshold, magnitude=magnitude))


def show_result(viewer, session, result, layers: list, folder=None, per_tick: int = 1,
                on_done=None, parent=None, new: bool = False) -> LayerFeeder:
    """Register ``result`` as an open result, make it current, and add its layers without
    blocking.

    A result already open (the same folder) is only made current: nothing is added twice
    and nothing is removed; other open results keep their layers. A ``new`` result (a run) in the folder of an open one (a run into it
    again) replaces that one's layers. A template layer is added only when the viewer has
    none.
    """
    ref = session._feeder
    prev = ref() if ref is not None else None
    if prev is not None and not prev.done:
        prev.stop()
    key = session.key_for(result, folder)
    entry = session.results.get(key)
    same = entry is not None and (entry.result is result or not new)
    if same and layers_of(viewer, key):
        session.select_result(key, force=True)
        todo = []
    else:
        if entry is not None:  # a newer result in the same folder: it takes the layers' place
            for layer in layers_of(viewer, key):
                viewer.layers.remove(layer)
        has_template = any(layer.metadata.get("stat") == "template"
                           for layer in viewer.layers)
        todo = [layer for layer in (make_layer(x) for x in layers)
                if not (has_template and layer.metadata.get("stat") == "template")]
        session.add_result(result, folder, key=key, select=False)
        for layer in todo:
            tag_layer(layer, session, key)
        session.select_result(key, force=True)
    feeder = LayerFeeder(viewer, todo, per_tick=per_tick, parent=parent)
    if on_done is not None:
        feeder.finished.connect(on_done)
    session._feeder = weakref.ref(feeder)
    return feeder.start()


def close_result(viewer, session, key) -> int:
    """Close open result ``key``: remove exactly its layers and forget it (the template
    and other results' layers stay); returns how many layers were removed."""
    mine = layers_of(viewer, key)
    for layer in mine:
        viewer.layers.remove(layer)
    session.close_result(key)
    return len(mine)


def open_result_folder(viewer, folder, *, on_done=None, parent=None):
    """Open a saved result folder in ``viewer``: read it in a worker (napari's activity
    dock shows it), then register it and add its layers (template, its default map at
    the statistic's default threshold, category overlays). A folder open already is made
    current instead (returns None, nothing is read). ``on_done(outcome)`` is called at
    the end (``outcome.kind``: ok, error, cancelled). Returns the task. The one entry
    point for the Results dock and File > Open Sample."""
    viewer = unwrap(viewer)
    session = session_for(viewer)
    folder = Path(folder)

    def fn(progress, cancel):
        progress(0.0, f"reading {folder}")
        result = AlignmentResult.load(folder)
        return result, result_layer_objects(result, with_template=True)

    def done(outcome):
        if outcome.kind == "ok":
            result, layers = outcome.value
            session._open_feeder = show_result(viewer, session, result, layers, folder,
                                               parent=parent)
        elif outcome.kind == "error":
            show_error(outcome.message)
        if on_done is not None:
            on_done(outcome)

    key = result_key(folder)
    if key in session.results and layers_of(viewer, key):  # open already: made current
        session.select_result(key, force=True)
        return None
    return start_task(fn, on_done=done, name="open result", activity=True, owner=parent)


# --------------------------------------------------------------------------- data check
def space_layers(mask, name: str = "analysis mask") -> list:
    """The space of the data, shown when it is checked: the MNI template and the analysis
    mask's outline (magenta, ``core.analysis.display.MASK_COLOUR``: visible on the grey template);
    built off the GUI thread."""
    data, kwargs, kind = _layers.nifti_layer(mask, name=name, stat="mask")
    cmap = dict(kwargs["colormap"])
    for label in list(cmap):
        if label not in (None, 0):
            cmap[label] = MASK_COLOUR
    kwargs.update(opacity=1.0, blending="translucent", colormap=cmap)
    mask_layer = make_layer((data, kwargs, kind))
    mask_layer.contour = 1
    return [make_layer(_layers.template_layer(2)), mask_layer]
