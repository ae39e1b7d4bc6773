"""What the viewer shows of the open results, without Qt: the registry's naming rules
(every layer carries its result's identity), what a result shows when it opens, and
:class:`ResultView`, the Results dock's model (which result, map, threshold, colormap
and layer names are shown), which the tests drive without a window.

The widgets only bind this: :mod:`._widgets.results` reads a :class:`ResultView`,
:mod:`._widgets._show` / :mod:`._widgets._viewer` put the layers it describes into a
viewer. Thresholds and colours come from :mod:`.core.display` (one owner).

Layer identity (``layer.metadata``):

* ``result_key``: the result's registry key (its resolved folder, or ``"run N"``);
* ``result_label``: its label in the Results dock, also the suffix of every layer name of
  the result (``"t EN shared (group) [res1]"``), so two results never share a name;
* ``lesion_align_view``: the one map layer that shows the result's current view (the
  Results dock replaces it when the choice changes); other layers of the result
  (category overlays) are switched on and off, never replaced by another result's.

The MNI152 template belongs to no result (one per viewer, kept at the bottom).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from . import _layers  # the layer tuples below the view model
from .core.analysis import display
from .core.base.errors import LesionAlignError
from .core.results.figures import category_colours
from .core.results.result import AlignmentResult

#: metadata key: the registry key of the result a layer belongs to
RESULT_KEY = "result_key"
#: metadata key: that result's label (also the layer name's suffix)
RESULT_LABEL = "result_label"
#: metadata key: marks layers of a result (``True``)
RESULT_TAG = "lesion_align_result"
#: metadata key: marks the one map layer showing a result's current view
VIEW_TAG = "lesion_align_view"
#: the order the Results dock lists statistics in (the statistics table's)
STAT_ORDER = display.SHOW_ORDER


# --------------------------------------------------------------------------- identity
def result_key(folder) -> str:
    """The registry key of a result folder (its resolved path)."""
    return str(Path(folder).expanduser().resolve())


def unique_label(base: str, taken) -> str:
    """``base``, or ``base (2)``, ``base (3)``… the first not in ``taken``."""
    taken = set(taken)
    if base not in taken:
        return base
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


def folder_label(folder) -> str:
    """The label of a result folder: its name (``…/demo-result-0.9-g3`` ->
    ``demo-result-0.9-g3``)."""
    return Path(str(folder)).name or str(folder)


def owned_name(name: str, label: str | None) -> str:
    """``name`` with its result's label: ``"t EN shared (group) [res1]"``."""
    if not label or f"[{label}]" in name:
        return name
    return f"{name} [{label}]"


def own(layer_tuple: tuple, key: str, label: str) -> tuple:
    """Give a layer tuple (``(data, kwargs, type)``) its result's identity (name and
    metadata); the template belongs to no result and is left alone."""
    data, kwargs, kind = layer_tuple
    meta = kwargs.setdefault("metadata", {})
    if meta.get("stat") == "template":
        return layer_tuple
    meta[RESULT_KEY] = key
    meta[RESULT_LABEL] = label
    meta[RESULT_TAG] = True
    kwargs["name"] = owned_name(kwargs.get("name", ""), label)
    return data, kwargs, kind


def owner_of(metadata) -> str | None:
    """The key of the result a layer (its metadata) belongs to, None for none."""
    return (metadata or {}).get(RESULT_KEY)


# --------------------------------------------------------------------------- choices
def group_mean(result, language, condition, stat="r"):
    """Mean over subjects of a subject map (NaN where every subject is NaN)."""
    stack = [result.maps[(s, language, condition, stat)] for s in result.subjects
             if (s, language, condition, stat) in result.maps]
    if not stack:
        raise LesionAlignError(f"no {stat} maps for {language} {condition}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels
        return np.nanmean(np.stack(stack), axis=0).astype(np.float32)


def view_choices(result) -> dict:
    """What the Results widget offers: subjects (``group`` first when there are several or
    the result holds group maps: the shipped sample keeps one subject's maps beside the
    demo's group maps), languages, conditions, category sets."""
    group_conds = list(dict.fromkeys(c for (_, c, _) in result.group_maps))
    group = len(result.subjects) > 1 or bool(result.group_maps)
    return {"subjects": (["group"] if group else []) + result.subjects,
            "languages": result.languages,
            "conditions": list(dict.fromkeys(result.conditions + group_conds)),
            "category_sets": list(result.categories)}


def stats_for(result, subject, condition) -> list[str]:
    """Stats available for one subject (or ``group``) and condition, in display order."""
    have = set()
    if subject == "group":
        have |= {st for (_, c, st) in result.group_maps if c == condition}
        if len(result.subjects) > 1:  # group means of the subjects' maps
            have |= {st for (_, _, c, st) in result.maps if c == condition}
    else:
        have |= {st for (s, _, c, st) in result.maps if s == subject and c == condition}
    out = [s for s in STAT_ORDER if s in have] + sorted(have - set(STAT_ORDER))
    if result.categories:
        out.append("categories")
    return out


def default_view(result) -> dict:
    """The map a result opens with: r of the intact model in the first language (the
    mean over subjects when there are several): whether the model aligns at all is the
    first thing to check; the lesions' maps are one choice away in the Results dock."""
    subject = "group" if len(result.subjects) > 1 else result.subjects[0]
    conds = list(result.conditions)
    condition = "intact" if "intact" in conds or not conds else conds[0]
    return {"subject": subject, "language": result.languages[0], "condition": condition,
            "stat": "r"}


def view_values(result, view: dict):
    """The values of a view's map (group means of subject maps computed here)."""
    subject, language, condition, stat = (view[k] for k in ("subject", "language",
                                                             "condition", "stat"))
    if subject == "group":
        if (language, condition, stat) in result.group_maps:
            return display.group_map_shown(result, language, condition, stat)
        return group_mean(result, language, condition, stat)
    return result.get(subject, language, condition, stat)


def view_tuple(result, subject, language, condition, stat, threshold=None) -> tuple:
    """Layer data tuple of one map (group means of r / Δr computed here), or of a
    category set (``stat="categories"``, ``condition`` = the set, ``language`` = one
    language's specific voxels only, or ``"all"``)."""
    if stat == "categories":
        langs = None if language in (None, "", "all") else [language]
        return _layers.category_layer(result, condition, languages=langs)
    if subject == "group" and (language, condition, stat) not in result.group_maps:
        mean = group_mean(result, language, condition, stat)
        result = dataclasses.replace(result, group_maps={**result.group_maps,
                                                         (language, condition, stat): mean})
    return _layers.map_layer(result, subject, language, condition, stat, threshold)


def view_threshold(result, view: dict) -> display.Threshold:
    """The default threshold of a view's map (``core.analysis.display.default_threshold``)."""
    return display.default_threshold(result, view["stat"], view.get("language"),
                                     view.get("condition"))


def map_view_tuple(result, view: dict, threshold=None, *, key=None, label=None,
                   magnitude: bool = False) -> tuple:
    """The layer tuple of a view's map at ``threshold`` (default: the statistic's one
    rule), marked as the result's view layer and owned by the result (``key``,
    ``label``)."""
    if threshold is None:
        threshold = view_threshold(result, view).value
    t = view_tuple(result, view["subject"], view["language"], view["condition"],
                   view["stat"], threshold)
    meta = t[1]["metadata"]
    meta[VIEW_TAG] = True
    meta[RESULT_TAG] = True
    if magnitude and view["stat"] in display.DIVERGING + display.SEQUENTIAL:
        t[1].update(_layers.threshold_display(view["stat"], threshold,
                                              meta.get("limit") or 1.0, magnitude=True))
        meta["magnitude"] = True
    return own(t, key, label) if key is not None else t


def result_tuples(result, *, key=None, label=None, with_template: bool = True,
                  view: dict | None = None, source=None) -> list[tuple]:
    """What a result shows when it opens (the reader, a run, the Results dock, the
    sample alike): the MNI template (optional, bottom), its view's map (``view``, default
    :func:`default_view`) at the statistic's default threshold, and the category
    overlays (``lesion`` visible, in the maps' grey ``|value|`` ramps meanwhile; the other
    sets hidden). Every other map is added on demand from the Results dock, so the layer
    list holds what is shown. [] for region results."""
    if getattr(result.space, "kind", None) != "volume":
        return []
    out = [_layers.template_layer(2)] if with_template else []
    cats = list(result.categories)
    shown_set = "lesion" if "lesion" in cats else (cats[0] if cats else None)
    out.append(map_view_tuple(result, view or default_view(result), key=key, label=label,
                              magnitude=shown_set is not None))
    for name in cats:
        t = _layers.category_layer(result, name, visible=(name == shown_set),
                                   source=source)
        out.append(own(t, key, label) if key is not None else t)
    if source is not None:
        for _, kw, _ in out:
            if kw["metadata"].get("stat") != "template":
                kw["metadata"]["source"] = source
    return out


# --------------------------------------------------------------------------- the model
class ResultView:
    """The Results dock's state for one open result: the view (subject, language,
    condition, statistic), its threshold, colormap kind and layer name; no Qt, no
    viewer. The dock binds its combo boxes and slider to it."""

    def __init__(self, result, key: str | None = None, label: str | None = None,
                 view: dict | None = None):
        self.result = result
        self.key = key
        self.label = label
        self.view = dict(view or default_view(result))
        self.categories_shown = bool(result.categories)
        #: the user's threshold per statistic (None: the default rule)
        self.user_thresholds: dict = {}

    # ------------------------------------------------------------------ choices
    @property
    def stat(self) -> str:
        return self.view["stat"]

    def choices(self) -> dict:
        ch = view_choices(self.result)
        ch["stats"] = stats_for(self.result, self.view["subject"], self.view["condition"])
        return ch

    def choose(self, **changes) -> dict:
        """Change the view (``subject``, ``language``, ``condition``, ``stat``); raises a
        clear error for a choice the result does not have."""
        want = {**self.view, **{k: v for k, v in changes.items() if v is not None}}
        unknown = set(changes) - {"subject", "language", "condition", "stat"}
        if unknown:
            raise LesionAlignError(f"unknown view keys {sorted(unknown)}; use subject, "
                                   "language, condition, stat")
        ch = view_choices(self.result)
        if want["subject"] not in ch["subjects"]:
            raise LesionAlignError(f"subject {want['subject']!r} is not in this result; "
                                   f"choices: {ch['subjects']}")
        if want["stat"] != "categories":
            if want["language"] not in ch["languages"]:
                raise LesionAlignError(f"language {want['language']!r} is not in this "
                                       f"result; choices: {ch['languages']}")
            stats = stats_for(self.result, want["subject"], want["condition"])
            if want["stat"] not in stats:
                raise LesionAlignError(
                    f"{display.statistic(want['stat']).label} is not available for "
                    f"{want['subject']} / {want['condition']}; choices: {stats}")
        self.view = want
        return self.view

    # ------------------------------------------------------------------ threshold
    def default_threshold(self) -> display.Threshold:
        return view_threshold(self.result, self.view)

    @property
    def threshold(self):
        """The threshold shown (the user's for this statistic, else the default)."""
        user = self.user_thresholds.get(self.stat)
        return user if user is not None else self.default_threshold().value

    def set_threshold(self, value) -> None:
        """The user's threshold for the current statistic (None: back to the default)."""
        self.user_thresholds[self.stat] = None if value is None else float(value)

    def threshold_text(self) -> str:
        """The threshold in words (``"t ≥ 4.2 · q < 0.05 FDR · 4 df"``)."""
        if self.stat == "categories":
            return self.categories_text()
        return display.describe(self.stat, self.threshold, self.default_threshold())

    def categories_text(self) -> str:
        """What a category voxel means: the group test behind the category maps."""
        alpha, correction = display.test_settings(self.result)
        df = display.degrees_of_freedom(self.result)
        which = "q" if correction == "fdr" else "p"
        corr = "FDR" if correction == "fdr" else "uncorrected"
        return (f"categories: significant drops, {which} < {alpha:g} {corr}"
                + (f" · {df} df" if df else ""))

    def slider(self, data_limit: float | None = None) -> display.SliderScale:
        """The slider of the current statistic in its own units."""
        if data_limit is None and self.stat not in ("categories",):
            try:
                data_limit = _layers.robust_limit(view_values(self.result, self.view))
            except LesionAlignError:
                data_limit = 1.0
        return display.slider_scale(self.stat, data_limit or 1.0,
                                     self.default_threshold().value)

    # ------------------------------------------------------------------ display
    def colormap_kind(self) -> str:
        """``diverging`` / ``sequential`` / ``magnitude`` (category overlays shown)."""
        return display.map_kind(self.stat, self.categories_shown)

    def layer_name(self) -> str:
        """The name of the view's layer, with its result's label."""
        v = self.view
        if v["stat"] == "categories":
            return owned_name(_layers.category_layer_name(v["condition"]), self.label)
        return owned_name(_layers.layer_name(v["subject"], v["language"], v["condition"],
                                             v["stat"]), self.label)

    def layer_tuple(self) -> tuple:
        """The view's layer tuple (owned by the result)."""
        return map_view_tuple(self.result, self.view, self.threshold, key=self.key,
                              label=self.label,
                              magnitude=self.colormap_kind() == "magnitude")

    def legend(self, name: str | None = None) -> list[tuple[str, str, str]]:
        """``[(colour, title, meaning)]`` of a category set (default: ``lesion`` or the
        first), from ``core.results.figures.category_colours``."""
        sets = list(self.result.categories)
        name = name or ("lesion" if "lesion" in sets else (sets[0] if sets else None))
        if name is None:
            return []
        legend = self.result.categories[name][1]
        colours = category_colours(legend)
        out = []
        for label, entry in sorted(legend.items()):
            if int(label) == 0:
                continue
            title = str(entry.get("name", label)).replace("specific:", "")
            out.append((colours[int(label)][:7], title, str(entry.get("meaning", ""))))
        return out


def result_layers(result_or_folder, *, subjects=False, stats=None, conditions=None,
                  controls=False, threshold=None, template=False) -> list[tuple]:
    """Layer tuples of a result folder (``template=True``: nilearn's MNI152 template
    first, beneath the maps).

    With no option, what the reader adds (:func:`result_tuples`): the
    result's default map at its statistic's default threshold and the category overlays,
    nothing hidden to flood the layer list. The options ask for a set of group maps
    instead (hidden, except the first when no overlay is visible), e.g. for a script:

    Parameters
    ----------
    subjects : also add each subject's r maps (intact and the selected conditions).
    stats : group stats to add (e.g. ``("t", "q")``).
    conditions : conditions to add (default: every condition except random controls and
        the layer sweep; ``controls=True`` adds the controls too).
    threshold : display threshold of the group t maps (default: the group test's
        significance, :func:`._layers.significance_threshold`; p/q maps use 0.05).

    Returns group maps (hidden), then the category layers (``categories lesion`` visible,
    on top). Without group maps (one subject), the subjects' r maps are added and the
    first is visible.
    """
    source = None
    if not hasattr(result_or_folder, "maps"):
        source = str(result_or_folder)
        result = AlignmentResult.load(result_or_folder)
    else:
        result = result_or_folder
    _layers._volume_space(result)
    if stats is None and conditions is None and not subjects and not controls and \
            threshold is None:
        layers = result_tuples(result, with_template=template, source=source)
        if source is not None:  # the widgets' registry of open results reads this
            folder = str(Path(source).expanduser().resolve())
            for _, kw, _ in layers:
                if kw["metadata"].get("stat") != "template":
                    kw["metadata"]["result_folder"] = folder
        return layers
    stats = ("t",) if stats is None else stats
    conds = _layer_conditions(result, conditions, controls)
    layers = []
    for (lang, cond, stat) in result.group_maps:
        if stat in stats and cond in conds:
            th = threshold if stat in display.DIVERGING else None
            if th is None and stat == "t":
                th = _layers.significance_threshold(result, lang, cond)
            layers.append(_layers.map_layer(result, "group", lang, cond, stat, th,
                                            source=source, visible=False))
    if subjects or not result.group_maps:
        for (s, lang, cond, stat) in result.maps:
            if stat == "r" and cond in conds:
                layers.append(_layers.map_layer(result, s, lang, cond, stat, source=source,
                                                visible=False))
    for i, name in enumerate(result.categories):
        layers.append(_layers.category_layer(result, name, source=source,
                                             visible=(name == "lesion" or i == 0)))
    if layers and not any(kw.get("visible", True) for _, kw, _ in layers):
        layers[0][1]["visible"] = True
    if source is not None:  # the widgets' registry of open results reads this
        folder = str(Path(source).expanduser().resolve())
        for _, kw, _ in layers:
            kw["metadata"]["result_folder"] = folder
    if template and layers:
        layers.insert(0, _layers.template_layer(2))
    return layers


def _layer_conditions(result, conditions, controls) -> list[str]:
    every = list(dict.fromkeys(list(result.conditions)
                               + [c for (_, c, _) in result.group_maps]))
    if conditions is not None:
        unknown = [c for c in conditions if c not in every]
        if unknown:
            raise LesionAlignError(f"unknown conditions {unknown}; this result has {every}")
        return list(conditions)
    sweep = set(result.sweep or [])
    ctrl = set(result.controls or {})
    return [c for c in every if c not in sweep and (controls or c not in ctrl)]
