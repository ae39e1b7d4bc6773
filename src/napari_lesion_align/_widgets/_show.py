"""Put a result into the viewer: session state first, then its layers one per event-loop
turn (built beforehand in the worker, see :func:`result_layer_objects`)."""

from __future__ import annotations

import weakref

from ._tasks import LayerFeeder, make_layer

#: marks the layers a result added (so the same result's next layers replace them)
RESULT_TAG = "lesion_align_result"
#: the key of the open result a layer belongs to (``Session.results``)
RESULT_KEY = "result_key"


def result_layer_objects(result, with_template: bool = True) -> list:
    """napari layers of a result (template, group maps, category overlays), built off the
    GUI thread; [] for region results."""
    from ._run_prep import result_tuples

    layers = []
    for t in result_tuples(result, with_template):
        layer = make_layer(t)
        if layer.metadata.get("stat") != "template":
            layer.metadata[RESULT_TAG] = True
        layers.append(layer)
    return layers


def tag_layer(layer, session, key) -> None:
    """Mark ``layer`` as one of result ``key``'s; when another open result already has a
    layer of that name, the result's label is appended (``"t EN shared (group) [demo]"``),
    so several results can be shown side by side."""
    if layer.metadata.get("stat") == "template":
        return
    layer.metadata[RESULT_TAG] = True
    layer.metadata[RESULT_KEY] = key
    entry = session.results.get(key)
    if entry is not None and len(session.results) > 1 and \
            any(k != key for k in session.results) and not layer.name.endswith("]"):
        first = next(iter(session.results))
        if key != first:
            layer.name = f"{layer.name} [{entry.label}]"


def show_result(viewer, session, result, layers: list, folder=None, per_tick: int = 1,
                on_done=None, parent=None) -> LayerFeeder:
    """Register ``result`` as an open result, make it current, and add its layers without
    blocking.

    Only this result's earlier layers are replaced (the same names) or removed (names it
    no longer has); other open results keep theirs. A template layer is added only when
    the viewer has none.
    """
    ref = getattr(session, "_feeder", None)
    prev = ref() if ref is not None else None
    if prev is not None and not prev.done:
        prev.stop()
    key = session.key_for(result, folder)
    has_template = any(layer.metadata.get("stat") == "template" for layer in viewer.layers)
    todo = [layer for layer in (make_layer(x) for x in layers)
            if not (has_template and layer.metadata.get("stat") == "template")]
    session.add_result(result, folder, key=key, select=False)
    for layer in todo:
        tag_layer(layer, session, key)
    names = {layer.name for layer in todo}
    for layer in list(viewer.layers):
        if layer.metadata.get(RESULT_KEY) == key and layer.name not in names:
            viewer.layers.remove(layer)
    session.select_result(key, force=True)
    feeder = LayerFeeder(viewer, todo, per_tick=per_tick, parent=parent)
    if on_done is not None:
        feeder.finished.connect(on_done)
    session._feeder = weakref.ref(feeder)
    return feeder.start()


# --------------------------------------------------------------------------- the view
#: marks the one map layer the Results widget shows (replaced when the choice changes)
VIEW_TAG = "lesion_align_view"
#: display thresholds a map starts with (|value| below is transparent; p, q: at or above)
DEFAULT_THRESHOLDS = {"r": 0.1, "deltar": 0.05, "t": 3.0, "lpi": 0.2, "q": 0.05, "p": 0.05}


def group_mean(result, language, condition, stat="r"):
    """Mean over subjects of a subject map (NaN where every subject is NaN)."""
    import warnings

    import numpy as np

    stack = [result.maps[(s, language, condition, stat)] for s in result.subjects
             if (s, language, condition, stat) in result.maps]
    if not stack:
        from ..core.errors import LesionAlignError

        raise LesionAlignError(f"no {stat} maps for {language} {condition}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels
        return np.nanmean(np.stack(stack), axis=0).astype(np.float32)


def view_choices(result) -> dict:
    """What the Results widget offers: subjects (``group`` first when there are several),
    languages, conditions per subject kind, stats, category sets."""
    group_conds = list(dict.fromkeys(c for (_, c, _) in result.group_maps))
    return {"subjects": (["group"] if len(result.subjects) > 1 else []) + result.subjects,
            "languages": result.languages,
            "conditions": list(dict.fromkeys(result.conditions + group_conds)),
            "category_sets": list(result.categories)}


def stats_for(result, subject, condition) -> list[str]:
    """Stats available for one subject (or ``group``) and condition, in display order."""
    have = set()
    if subject == "group":
        have |= {st for (_, c, st) in result.group_maps if c == condition}
        have |= {st for (_, _, c, st) in result.maps if c == condition}  # group means
    else:
        have |= {st for (s, _, c, st) in result.maps if s == subject and c == condition}
    order = ["r", "deltar", "t", "q", "p", "lpi", "beyondrandom", "tvsrandom", "qvsrandom",
             "pvsrandom"]
    out = [s for s in order if s in have] + sorted(have - set(order))
    if result.categories:
        out.append("categories")
    return out


def default_view(result) -> dict:
    """The map shown after a run: r of the intact model in the first language, the mean
    over subjects when there are several."""
    subject = "group" if len(result.subjects) > 1 else result.subjects[0]
    conds = list(result.conditions)
    condition = "intact" if "intact" in conds or not conds else conds[0]
    return {"subject": subject, "language": result.languages[0], "condition": condition,
            "stat": "r"}


def view_tuple(result, subject, language, condition, stat, threshold=None) -> tuple:
    """Layer data tuple of one map (group means of r / Δr computed here), or of a
    category set (``stat="categories"``, ``condition`` = the set, ``language`` = one
    language's specific voxels only, or ``"all"``)."""
    import dataclasses

    from .. import _layers

    if stat == "categories":
        langs = None if language in (None, "", "all") else [language]
        return _layers.category_layer(result, condition, languages=langs)
    if subject == "group" and (language, condition, stat) not in result.group_maps:
        mean = group_mean(result, language, condition, stat)
        result = dataclasses.replace(result, group_maps={**result.group_maps,
                                                         (language, condition, stat): mean})
    return _layers.map_layer(result, subject, language, condition, stat, threshold)


def view_layer(result, view: dict, threshold=None):
    """The map layer of a view (``threshold`` default: :data:`DEFAULT_THRESHOLDS`)."""
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS.get(view["stat"])
    layer = make_layer(view_tuple(result, view["subject"], view["language"],
                                  view["condition"], view["stat"], threshold))
    layer.metadata[VIEW_TAG] = True
    layer.metadata[RESULT_TAG] = True
    return layer


def run_layers(result, with_template: bool = True) -> list:
    """What a finished run shows: the template (bottom), the default map, and the
    category overlays (``categories lesion`` visible, on top); built off the GUI thread."""
    from .. import _layers

    if getattr(result.space, "kind", None) != "volume":
        return []
    out = [make_layer(_layers.template_layer(2))] if with_template else []
    out.append(view_layer(result, default_view(result)))
    for name in result.categories:
        layer = make_layer(_layers.category_layer(result, name, visible=(name == "lesion")))
        layer.metadata[RESULT_TAG] = True
        out.append(layer)
    return out


def space_layers(mask, name: str = "analysis mask") -> list:
    """The space of the data, shown when it is checked: the MNI template and the analysis
    mask's outline (to see at a glance that the mask sits on the brain); built off the GUI
    thread."""
    from .. import _layers

    data, kwargs, kind = _layers.nifti_layer(mask, name=name, stat="mask")
    kwargs.update(opacity=0.7, blending="translucent")
    mask_layer = make_layer((data, kwargs, kind))
    mask_layer.contour = 1
    return [make_layer(_layers.template_layer(2)), mask_layer]
