"""The state the dock widgets of one viewer share: data, model & lesion settings, last result.

:func:`session_for` returns the :class:`Session` of a viewer (one per viewer, created on
first use, forgotten with the viewer). The widgets write their forms into it as plain
config tables (the same keys as the TOML file, see docs/configuration.md), and
:meth:`Session.build_config` turns them into an :class:`~..core.run.config.AnalysisConfig`
through the core's own parser, so the GUI and the CLI validate input the same way.

Events (psygnal, emitted in the GUI thread):

* ``data_changed()`` -- the data form changed (languages may have changed);
* ``model_changed()`` -- the model / lesion form changed;
* ``result_changed(result)`` -- the current :class:`~..core.results.result.AlignmentResult`
  changed (a new one arrived, or another open one was chosen; ``None`` when cleared);
* ``results_changed()`` -- the list of open results changed (the Results widget's chooser).

Open results (:attr:`Session.results`): every result the viewer shows, whatever opened it
(a run, the reader, File > Open Sample, **Open result folder…**), keyed by its folder
(resolved path) or ``"run N"`` for a run kept only in memory; the Results and Inspector
widgets follow the current one (:attr:`Session.result`). The reader and the sample data
mark their layers with ``metadata["result_folder"]``; :mod:`._viewer` loads such a folder
once and adds it here, with the label every layer name of the result ends with
(:meth:`Session.label_for`). This module imports nothing of the widgets: :mod:`._viewer`
registers its ``attach`` in :data:`NEW_SESSION_HOOKS` when imported.
* ``busy_changed(what)`` -- a long task that uses the model started (``what`` says which)
  or ended (``None``); the widgets disable their other model tasks meanwhile, because
  importance scoring and lesioned feature extraction must not share the model at once.

Nothing here imports Qt.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from .._view_model import folder_label, result_key, unique_label  # Qt-free naming rules
from ..core.base.errors import LesionAlignError
from ..core.lesions.plan import LesionPlan
from ..core.run.config import AnalysisConfig, LesionConfig, ModelConfig, config_from_dict
from ..core.run.sources import DEFAULT_KIND, SourceKind, source_kind

#: the lesion recipe the widgets start with: the default source's (the demo's: top 1 % of
#: weights by Wanda)
DEFAULT_LESIONS = dict(DEFAULT_KIND.lesions)


@dataclass
class OpenResult:
    """One result open in the viewer."""

    key: str  # the resolved folder, or "run N"
    result: object  # AlignmentResult
    folder: Path | None
    label: str  # what the chooser shows




def unwrap(viewer):
    """The viewer behind napari's ``PublicOnlyProxy`` (what plugin widgets receive)."""
    return getattr(viewer, "__wrapped__", viewer)


class Session:
    """What the widgets of one viewer share (see the module docstring)."""

    data_changed = Signal()
    model_changed = Signal()
    result_changed = Signal(object)
    results_changed = Signal()
    busy_changed = Signal(object)

    def __init__(self):
        #: ``{"data": {...}, "languages": {...}}`` as in a config file; at first the
        #: default source's tables (the registry's :data:`~..core.run.sources.DEFAULT_KIND`)
        self.data: dict = DEFAULT_KIND.start_tables()
        #: a config file the data comes from (its encoding / features / cleaning too)
        self.data_file: str | None = None
        #: what is wrong with the data form (raised by build_config), None when complete
        self.data_error: str | None = None
        #: the [model] table (the Model & lesion form's; the schema's defaults until then)
        self.model: dict = ModelConfig().model_dump(
            include={"name", "layer", "offline", "device", "dtype"})
        #: the [lesions] table (manual lesions and sweeps included); empty = intact only
        self.lesions: dict = dict(DEFAULT_LESIONS)
        #: what is wrong with the model / lesion form (raised by build_config)
        self.model_error: str | None = None
        #: [encoding] overrides (e.g. a shorter alpha grid)
        self.encoding: dict = {}
        #: [compute]: where the units run (the Run widget's form)
        self.compute: dict = {}
        #: [statistics]: the group test and the noise ceiling (the Run widget's form)
        self.statistics: dict = {}
        self.seed: int = 0
        self.name: str = "napari"
        #: every open result, by key (see the module docstring); insertion ordered
        self.results: dict[str, OpenResult] = {}
        self.current: str | None = None
        self._runs = 0
        self.busy: str | None = None
        #: labels given to results still being loaded (key -> label; :meth:`label_for`)
        self._labels: dict[str, str] = {}
        # what the modules around the session keep per viewer (declared here, set there):
        #: the layer feeder of the last result shown (a weakref; ._show)
        self._feeder = None
        #: the layer feeder of a result folder being opened (._show, the Results dock)
        self._open_feeder = None
        #: the task computing the demo result, and the feeder of its layers (._sample_data)
        self._demo_task = None
        self._demo_feeder = None
        #: whether the surface scene's layer hooks are connected (._viewer)
        self._surface_hooked: bool = False

    # ------------------------------------------------------------------ data
    @property
    def source(self) -> SourceKind | None:
        """The kind of source the data form chose (the registry's entry; None for a config
        file, whose own ``[data]`` decides, or an unknown kind)."""
        return None if self.data_file is not None else source_kind(self.data)

    @property
    def is_demo(self) -> bool:
        """Whether the data is a built-in source (one that brings its own data: the demo)."""
        return self.source is not None and self.source.builtin

    def languages(self) -> list[str]:
        """Language codes of the current data (best effort: [] when unknown)."""
        if self.source is not None and self.source.languages:
            return list(self.source.languages)
        if self.data_file is not None:
            try:
                return list(_read_table(self.data_file).get("languages", {}))
            except LesionAlignError:
                return []
        return [str(c) for c in self.data.get("languages", {})]

    def set_data(self, tables: dict, data_file: str | None = None) -> None:
        self.data = tables
        self.data_file = data_file
        self.data_changed.emit()

    def set_model(self, model: dict, lesions: dict) -> None:
        self.model = dict(model)
        self.lesions = dict(lesions)
        self.model_changed.emit()

    @property
    def result(self):
        """The current result (None when no result is open)."""
        entry = self.results.get(self.current) if self.current else None
        return entry.result if entry is not None else None

    @property
    def result_folder(self) -> Path | None:
        entry = self.results.get(self.current) if self.current else None
        return entry.folder if entry is not None else None

    @result_folder.setter
    def result_folder(self, folder) -> None:
        """The current result was saved into ``folder`` (its key stays the same)."""
        entry = self.results.get(self.current) if self.current else None
        if entry is not None:
            entry.folder = Path(folder) if folder is not None else None

    def key_for(self, result=None, folder=None) -> str:
        """The key ``result`` has (or would get): its folder's, else the key it was
        registered under, else a new ``"run N"``."""
        if folder is not None:
            return result_key(folder)
        for key, entry in self.results.items():
            if entry.result is result:
                return key
        self._runs += 1
        return f"run {self._runs}"

    def label_for(self, key: str, folder=None) -> str:
        """The label result ``key`` has or will get: the one it was given (registered,
        or being loaded), else its folder's name (``"run N"`` in memory) made unique
        among the other open results (``"res1 (2)"``). Every layer name of the result
        ends with it."""
        if key in self.results:
            return self.results[key].label
        pending = self._labels
        if key in pending:
            return pending[key]

        base = folder_label(folder) if folder is not None else key
        taken = {e.label for e in self.results.values()} | set(pending.values())
        pending[key] = unique_label(base, taken)
        return pending[key]

    def add_result(self, result, folder=None, *, select: bool = True, key=None) -> str:
        """Register an open result (replacing one of the same key) and make it current
        (``select``); returns its key."""
        key = key or self.key_for(result, folder)
        folder = Path(folder) if folder is not None else None
        label = self.label_for(key, folder)
        self._labels.pop(key, None)
        self.results[key] = OpenResult(key, result, folder, label)
        self.results_changed.emit()
        if select or self.current is None:
            self.select_result(key, force=True)
        return key

    def select_result(self, key, force: bool = False) -> None:
        """Make the open result ``key`` current (``None``: no result)."""
        if key is not None and key not in self.results:
            raise LesionAlignError(f"no open result {key!r}; open: {list(self.results)}")
        if key == self.current and not force:
            return
        self.current = key
        self.result_changed.emit(self.result)

    def close_result(self, key) -> None:
        """Forget an open result (``._show.close_result`` also removes its layers); the
        last other one becomes current."""
        self.results.pop(key, None)
        self.results_changed.emit()
        if self.current == key:
            self.select_result(next(reversed(self.results), None), force=True)

    def set_result(self, result, folder: Path | None = None) -> str:
        """Register ``result`` (from a run or a folder) and make it current (``None``:
        no current result)."""
        if result is None:
            self.select_result(None, force=True)
            return None
        return self.add_result(result, folder)

    def set_busy(self, what: str | None) -> None:
        self.busy = what
        self.busy_changed.emit(what)

    # ------------------------------------------------------------------ config
    def build_config(self) -> AnalysisConfig:
        """The :class:`AnalysisConfig` of the current forms (raises LesionAlignError)."""
        if self.data_error:
            raise LesionAlignError(self.data_error)
        if self.model_error:
            raise LesionAlignError(self.model_error)
        lesions = dict(self.lesions)
        model = dict(self.model)
        source = self.source
        if source is not None and source.config is not None:
            overrides = {"model": model}
            if self.encoding:
                overrides["encoding"] = dict(self.encoding)
            if self.compute:
                overrides["compute"] = dict(self.compute)
            if self.statistics:
                overrides["statistics"] = dict(self.statistics)
            # the source's own config: the form's [lesions] over its defaults (the demo's
            # recipe, its category rule included)
            return source.config(self.data, seed=self.seed, lesions=lesions, **overrides)
        if self.data_file is not None:
            d = _read_table(self.data_file)
            base = Path(self.data_file).resolve().parent
            source = str(self.data_file)
        else:
            d = {k: _copy(v) for k, v in self.data.items()}
            base, source = Path.cwd(), None
        d["model"] = model
        d["lesions"] = lesions
        if self.encoding:
            d.setdefault("encoding", {}).update(self.encoding)
        if self.compute:
            d.setdefault("compute", {}).update(self.compute)
        if self.statistics:
            d.setdefault("statistics", {}).update(self.statistics)
        d.setdefault("name", self.name)
        d.setdefault("seed", self.seed)
        return config_from_dict(d, base=base, source=source)

    def lesion_plan(self):
        """The :class:`~..core.lesions.plan.LesionPlan` of the forms (what the size preview shows):
        the config's when the forms make one, else the lesion form's alone on the known
        languages (the data form may still be incomplete)."""
        if self.model_error:
            raise LesionAlignError(self.model_error)
        try:
            return LesionPlan.of(self.build_config())
        except LesionAlignError:
            les = LesionConfig(**self.lesions) if self.lesions else LesionConfig()
            return LesionPlan.from_config(les, self.languages(), self.seed)


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_copy(x) for x in v]
    return v


def _read_table(path) -> dict:
    """A config file as a dict (TOML or JSON), with the core's error messages."""
    import json
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise LesionAlignError(f"{p}: config file not found")
    try:
        if p.suffix == ".json":
            return json.loads(p.read_text(encoding="utf-8"))
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except Exception as err:
        raise LesionAlignError(f"{p}: cannot parse the config ({err})") from err


_SESSIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: called with each viewer that gets a session (``._viewer`` registers its ``attach``
#: here when imported: this module imports nothing of the widgets)
NEW_SESSION_HOOKS: list = []


def session_for(viewer) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use; dropped with the viewer)."""
    v = unwrap(viewer)
    s = _SESSIONS.get(v)
    if s is None:
        s = _SESSIONS[v] = Session()
        for hook in list(NEW_SESSION_HOOKS):
            hook(v)
    return s


def viewers_with_sessions() -> list:
    """The viewers that have a session (``._viewer`` attaches to those made before it was
    imported)."""
    return list(_SESSIONS.keys())


def connect(signal, method) -> None:
    """Connect a session event to a widget's method; disconnected when the widget dies."""
    signal.connect(method)
    widget = method.__self__

    def drop(*_):
        try:
            signal.disconnect(method, missing_ok=True)
        except Exception:  # the signal's owner may be gone already
            pass

    widget.destroyed.connect(drop)
