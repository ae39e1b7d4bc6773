"""Model & lesion dock widget: the language model, its layer, and the lesion to make.

The lesion's size (elements per layer) is shown before running: it is computed in a
worker from the model's anatomy (loading a model may take seconds). Lesions can be saved
(``<label>.json`` + ``<label>.safetensors`` per lesion, :meth:`~..core.lesions.masks.Lesion.save`)
and loaded back to run them again.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                            QVBoxLayout, QWidget)

from ..core.base.errors import LesionAlignError
from ..core.data.dataset import load_stimuli
from ..core.lesions.masks import Lesion
from ..core.lesions.plan import LesionPlan
from ..core.lesions.vocabulary import DEFAULT_RANDOM_CONTROLS, IMPORTANCE_ELEMENTS, UNIT_ELEMENTS
# (torch-free at import: the workers import torch and transformers first, one thread at a
# time, with _tasks.import_model_libraries)
from ..core.model import loading  # loading.load_model: tests replace it
from ..core.model.anatomy import describe_model
from ..core.run.config import EncodingConfig, LesionConfig, ModelConfig
from . import _lesion_size as ls
from . import _tasks  # _tasks.import_model_libraries: tests replace it
from ._dock import scroll_layout
from ._forms import choices, schema_form
from ._lesion_size import parse_indices, parse_list
from ._state import DEFAULT_LESIONS, connect, session_for
from ._tasks import start_task

#: the [model] keys the form shows (generated from :class:`ModelConfig`)
MODEL_FIELDS = ("name", "layer", "offline", "device", "dtype")
#: the [lesions] keys the form shows (generated from :class:`LesionConfig`); ``element`` is
#: also the element of a manual lesion or a sweep
LESION_FIELDS = ("element", "method", "k_percent", "mode", "random_controls", "alpha",
                 "correction", "min_relative_drop")
#: the [encoding] keys the lesion box shows: how the lesions' (and the null controls')
#: fits choose their alphas
ENCODING_FIELDS = ("condition_alphas",)


def SELECTIONS(languages) -> list[tuple[str, str, str]]:  # noqa: N802 (a table)
    """The "Selection" box's items: ``(text, data, meaning)``; the texts stay short enough
    for the Model tab at 1,366 x 768, the meaning is the item's tooltip."""
    return ([("shared + specific", "default",
              "the shared lesion and one specific lesion per language")]
            + [("shared", "shared", "the units important for every language")]
            + [(f"specific: {code}", f"specific:{code}",
                f"the units important for {code} only") for code in languages]
            + [("manual (indices)", "manual", "the units typed under Indices"),
               ("layer sweep", "sweep", "whole layers, one lesion per layer under Indices"),
               ("lesion files", "files", "only the saved lesion files listed below")])


def element_choices() -> tuple[str, ...]:
    """What the form's element may be: the selections' elements, then the units of manual
    lesions and sweeps (the schema's ``element`` and ``sweep_element`` choices)."""
    out = list(choices(LesionConfig, "element"))
    out += [c for c in choices(LesionConfig, "sweep_element") if c not in out]
    return tuple(out)


class ModelLesionWidget(QWidget):
    """Choose the model, the layer and the lesion; see its size; save / load lesions."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.size_task = None
        self.save_task = None
        self.size_text = ""
        self.size_info: dict | None = None
        self._size_dirty = False
        self._last_error = None
        self._updating = False

        lay = scroll_layout(self)
        # ---- model: the [model] table's form (choices, defaults, help from the schema)
        mbox = QGroupBox("Model")
        mf = QVBoxLayout(mbox)
        self.model_form = schema_form(
            ModelConfig, MODEL_FIELDS,
            labels={"name": "Model", "layer": "Layer", "offline": "offline (never download)",
                    "device": "Device", "dtype": "Weights"})
        # the fields' magicgui widgets (``form["name"]``: a Container's ``.name`` is its own)
        self.model_name, self.layer, self.offline, self.device, self.dtype = (
            self.model_form[f] for f in MODEL_FIELDS)
        folder = QPushButton("Model folder…")
        folder.setToolTip("Choose a local model folder (Hugging Face format)")
        folder.clicked.connect(self._pick_folder)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        mf.addWidget(self.model_form.native)
        mf.addWidget(folder)
        mf.addWidget(self.model_info)
        lay.addWidget(mbox)

        # ---- lesion
        self.lesion_box = QGroupBox("Lesion")
        self.lesion_box.setCheckable(True)
        self.lesion_box.setChecked(True)
        lf = QFormLayout(self.lesion_box)
        # what to lesion (not a config key: it picks selections, a manual lesion, a sweep
        # or the files) and the indices of a manual lesion or a sweep
        self.selection = QComboBox()
        # a few characters wide at least, not its longest item: the dock decides the width
        self.selection.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.selection.setMinimumContentsLength(8)
        self.indices = QLineEdit()
        self.indices.setPlaceholderText("e.g. 0: 1-10, 15; 3: 5")
        self.indices.setToolTip("manual lesion: layer: units, e.g. '0: 1-10, 15; 3: 5'; "
                                "layer sweep: the layers, e.g. '0, 10, 20'")
        lf.addRow("Selection", self.selection)
        lf.addRow("Indices", self.indices)
        # the [lesions] table's form, starting from the widgets' lesion recipe; "default"
        # for the minimum drop: the config's own (the demo's recipe, else the schema's)
        self.lesion_form = schema_form(
            LesionConfig, LESION_FIELDS,
            labels={"element": "Element", "method": "Importance", "k_percent": "k",
                    "mode": "Ablation", "random_controls": "Random draws / lesion",
                    "alpha": "Significance", "correction": "Correction",
                    "min_relative_drop": "Min. drop"},
            overrides={"element": {"choices": element_choices()},
                       "k_percent": {"suffix": " %"}, "alpha": {"step": 0.01},
                       "min_relative_drop": {"unset": "default", "step": 0.05}})
        self.lesion_form.set_values(**{k: v for k, v in DEFAULT_LESIONS.items()
                                       if k in LESION_FIELDS}, min_relative_drop=None)
        for name in LESION_FIELDS:
            setattr(self, name, self.lesion_form[name])
        lf.addRow(self.lesion_form.native)
        # [encoding] condition_alphas: the lesions and draws refit with the intact model's
        # alphas (the default) or search their own (sent as an [encoding] override)
        self.encoding_form = schema_form(EncodingConfig, ENCODING_FIELDS,
                                         labels={"condition_alphas": "Lesion alphas"})
        self.condition_alphas = self.encoding_form["condition_alphas"]
        lf.addRow(self.encoding_form.native)
        self.files = QListWidget()
        self.files.setMaximumHeight(70)
        lf.addRow("Lesion files", self.files)
        frow = QWidget()
        fl = QHBoxLayout(frow)
        fl.setContentsMargins(0, 0, 0, 0)
        self.load_button = QPushButton("Load lesion…")
        self.remove_button = QPushButton("Remove")
        self.save_button = QPushButton("Save lesions…")
        self.save_button.setToolTip("Compute the lesions of this form on the model and save "
                                    "each one (.json + .safetensors) into a folder")
        for b in (self.load_button, self.remove_button, self.save_button):
            fl.addWidget(b)
        lf.addRow(frow)
        lay.addWidget(self.lesion_box)

        self.size_label = QLabel("")
        self.size_label.setWordWrap(True)
        self.size_label.setTextInteractionFlags(self.size_label.textInteractionFlags()
                                                | self.size_label.textInteractionFlags().
                                                TextSelectableByMouse)
        lay.addWidget(QLabel("<b>Lesion size</b>"))
        lay.addWidget(self.size_label)
        lay.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.update_size)

        self.load_button.clicked.connect(lambda: self._pick_lesion())
        self.remove_button.clicked.connect(self._remove_file)
        self.save_button.clicked.connect(lambda: self._pick_save_folder())
        self.model_form.changed.connect(self._changed)
        self.lesion_form.changed.connect(self._changed)
        self.encoding_form.changed.connect(self._changed)
        self.selection.currentIndexChanged.connect(self._changed)
        self.lesion_box.toggled.connect(self._changed)
        self.indices.textChanged.connect(self._changed)
        connect(self.session.data_changed, self._languages_changed)
        connect(self.session.busy_changed, self._busy_changed)
        self._languages_changed()
        self._changed()

    # ------------------------------------------------------------------ form
    def _pick_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Model folder (Hugging Face format)")
        if path:
            self.set_model(path)

    def set_model(self, name: str, layer: int | None = None, **model) -> None:
        """Fill the model form (``model``: other [model] keys of the form, e.g. ``device``)."""
        values = dict(model, name=str(name))
        if layer is not None:
            values["layer"] = int(layer)
        self.model_form.set_values(**values)

    def _languages_changed(self, *_):
        current = self.selection.currentData()
        self._updating = True
        try:
            self.selection.clear()
            # short item texts (the box is ~140 px wide at 1,366 x 768), each with its
            # meaning as a tooltip
            for text, data, tip in SELECTIONS(self.session.languages()):
                self.selection.addItem(text, data)
                self.selection.setItemData(self.selection.count() - 1, tip,
                                           Qt.ItemDataRole.ToolTipRole)
            i = self.selection.findData(current)
            self.selection.setCurrentIndex(max(i, 0))
        finally:
            self._updating = False
        self._changed()

    def set_lesion(self, *, enabled: bool = True, element: str | None = None,
                   selection: str | None = None, method: str | None = None,
                   k_percent: float | None = None, indices: str | None = None,
                   mode: str | None = None, random_control: bool | None = None,
                   random_controls: int | None = None,
                   alpha: float | None = None, correction: str | None = None,
                   min_relative_drop: float | None = None,
                   condition_alphas: str | None = None) -> None:
        """Fill the lesion form (``selection``: default, shared, specific:<L>, manual,
        sweep, files; ``min_relative_drop`` < 0: the default; ``condition_alphas``:
        "intact" or "search", [encoding] condition_alphas)."""
        values = {k: v for k, v in (("element", element), ("method", method),
                                    ("k_percent", k_percent), ("mode", mode),
                                    ("random_controls", random_controls), ("alpha", alpha),
                                    ("correction", correction)) if v is not None}
        if random_control is not None and random_controls is None:
            # older callers: on (the default count) or off
            values["random_controls"] = DEFAULT_RANDOM_CONTROLS if random_control else 0
        if min_relative_drop is not None:
            values["min_relative_drop"] = (None if min_relative_drop < 0
                                           else float(min_relative_drop))
        self._updating = True
        try:
            self.lesion_box.setChecked(enabled)
            if selection is not None:
                i = self.selection.findData(selection)
                if i < 0:
                    raise LesionAlignError(f"unknown selection {selection!r}")
                self.selection.setCurrentIndex(i)
            if indices is not None:
                self.indices.setText(indices)
            self.lesion_form.set_values(**values)
            if condition_alphas is not None:
                self.encoding_form.set_values(condition_alphas=condition_alphas)
        finally:
            self._updating = False
        self._changed()

    def form_tables(self):
        """``(model, lesions)`` from the form, as config tables (raises LesionAlignError).

        ``lesions`` is the ``[lesions]`` table (``{}``: the intact model only): importance
        selections, a ``[[lesions.manual]]`` entry, a sweep or the loaded files, with
        ``selections = []`` when the form asks for no importance-based selection.
        """
        model = self.model_form.values()  # texts stripped
        if not model["name"]:
            raise LesionAlignError("Model: give the built-in model, a folder or a Hugging Face id")
        self.model_form.section.parse(model)  # what the config would refuse, refused now
        if not self.lesion_box.isChecked():
            return model, {}
        les = self.lesion_form.values()
        el = les.pop("element")
        method = les.pop("method")
        sel = self.selection.currentData() or "default"
        files = [self.files.item(i).data(256) for i in range(self.files.count())]
        les["enabled"] = True
        if files:
            les["files"] = files
        if sel in ("default", "shared") or sel.startswith("specific:"):
            if el not in IMPORTANCE_ELEMENTS:
                raise LesionAlignError(
                    f"Lesion: shared / specific selections rank weights, neurons or heads by "
                    f"importance, not {el}; lesion {el} with 'manual' or 'layer sweep'")
            les.update(element=el, method=method)
            if sel != "default":
                les["selections"] = [sel]
            return model, les
        les["selections"] = []  # no importance-based selection: the lesions below only
        if sel in ("manual", "sweep") and el not in UNIT_ELEMENTS:
            raise LesionAlignError(
                f"Lesion: {'manual lesions' if sel == 'manual' else 'layer sweeps'} address "
                f"units (neurons, heads, hidden, layers), not {el}")
        if sel == "manual":
            indices = parse_indices(self.indices.text(), el)
            les["manual"] = [{"name": "manual", "element": el,
                              "indices": {str(b): idx for b, idx in indices.items()}}]
        elif sel == "sweep":
            les.update(sweep=True, sweep_element=el)
            idx = parse_list(self.indices.text())
            if idx:
                les["sweep_indices"] = idx
        elif not files:
            raise LesionAlignError("Lesion: load a lesion file first (Load lesion…)")
        return model, les

    def _changed(self, *_) -> None:
        if self._updating:
            return
        sel = self.selection.currentData() or "default"
        self.indices.setEnabled(sel in ("manual", "sweep"))
        self.method.enabled = sel in ("default", "shared") or sel.startswith("specific:")
        try:
            model, les = self.form_tables()
            if les:
                LesionConfig.parse(les)  # what the config would refuse, refused now
            self.session.model_error = None
            self.session.encoding.update(self.encoding_form.values())
            self.session.set_model(model, les)
        except LesionAlignError as err:
            self.session.model_error = str(err)
            self.session.model_changed.emit()
        self.size_info = None
        if self.isVisible():
            self._timer.start()

    # ------------------------------------------------------------------ size
    def showEvent(self, event):  # noqa: N802 (Qt)
        super().showEvent(event)
        if self.size_info is None and (self.size_task is None or not self.size_task.running):
            self._timer.start()

    def update_size(self):
        """Compute the lesion's size from the model's anatomy in a worker (returns the task)."""
        if self.session.model_error:
            self._show_size(self.session.model_error, error=True)
            return None
        if self.size_task is not None and self.size_task.running:
            self._size_dirty = True
            return self.size_task
        s = self.session
        model = dict(s.model)
        plan = s.lesion_plan()

        def fn(progress, cancel):
            _tasks.import_model_libraries()
            progress(0.0, f"loading {model['name']}")
            lm = loading.load_model(model["name"], offline=model["offline"], device=model["device"])
            anatomy = describe_model(lm.model)
            sizes = [(spec.label, per, el) for spec, per, el in plan.sizes(anatomy)]
            return {"anatomy": anatomy.describe(), "n_layers": lm.n_layers, "sizes": sizes,
                    "text": ls.describe(anatomy, sizes, plan.n_random)}

        self._show_size("computing… (loading the model may take a few seconds)")
        self.size_task = start_task(fn, owner=self, on_done=self._size_done,
                                    name="lesion size")
        return self.size_task

    def _show_size(self, text: str, error: bool = False) -> None:
        self.size_text = text
        if error:
            self.size_label.setTextFormat(Qt.TextFormat.RichText)
            self.size_label.setText(f"<span style='color:#e63946'>{escape(text)}</span>")
        else:
            self.size_label.setTextFormat(Qt.TextFormat.PlainText)
            self.size_label.setText(text)

    def _size_done(self, outcome) -> None:
        if self._size_dirty:
            self._size_dirty = False
            self.update_size()
            return
        if outcome.kind == "ok":
            info = self.size_info = outcome.value
            n = info["n_layers"]
            self.model_info.setText(f"{n} blocks; layer -1 = output of block {n - 1}. "
                                    f"{info['anatomy']}")
            # the layers this model has (a value outside is clamped, like a typed one)
            before = self.layer.value
            self._updating = True
            try:
                self.layer.range = (-(n + 1), n)
            finally:
                self._updating = False
            if self.layer.value != before:
                self._changed()
            self._show_size(info["text"])
            self._last_error = None
        elif outcome.kind in ("error", "crash"):
            self._show_size(outcome.message, error=True)
            if outcome.kind == "error" and outcome.message != self._last_error:
                show_error(outcome.message)
            self._last_error = outcome.message

    # ------------------------------------------------------------------ files
    def _pick_lesion(self):
        path, _ = QFileDialog.getOpenFileName(self, "Lesion file", "",
                                              "Lesion (*.json *.safetensors)")
        if path:
            self.load_lesion(path)

    def load_lesion(self, path) -> bool:
        """Add a saved lesion (``.json`` + ``.safetensors``) to the run."""
        try:
            lesion = Lesion.load(path)
        except LesionAlignError as err:
            show_error(str(err))
            return False
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        per = ", ".join(f"L{b} {n}" for b, n in lesion.per_layer().items())
        item = QListWidgetItem(f"{base.name}: {lesion.n_elements:,} {lesion.element} ({per})")
        item.setData(256, str(base))
        item.setToolTip(str(base))
        self.files.addItem(item)
        self._changed()
        return True

    def _remove_file(self):
        for item in self.files.selectedItems():
            self.files.takeItem(self.files.row(item))
        self._changed()

    def _pick_save_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Folder for the lesion files")
        if path:
            self.save_lesions(path)

    def save_lesions(self, folder):
        """Compute this form's lesions on the model (worker) and save each into ``folder``."""
        s = self.session
        if s.busy:
            show_error(f"wait for the {s.busy} to finish")
            return None
        try:
            if s.model_error:
                raise LesionAlignError(s.model_error)
            config = s.build_config()
        except LesionAlignError as err:
            show_error(str(err))
            return None
        folder = Path(folder)

        def fn(progress, cancel):
            _tasks.import_model_libraries()
            m = config.model
            lm = loading.load_model(m.name, **m.load_options())
            stimuli = {lang.code: load_stimuli(lang) for lang in config.data.languages}
            conds = LesionPlan.of(config).build(lm, stimuli, progress=progress, cancel=cancel)
            folder.mkdir(parents=True, exist_ok=True)
            written = []
            for c in conds:
                if c.lesion is not None:
                    written.extend(c.lesion.save(folder / c.label))
            return written

        s.set_busy("lesion computation")
        self.save_task = start_task(fn, owner=self, on_done=self._saved, name="save lesions",
                                    on_progress=lambda f, m: self._show_size(
                                        f"computing lesions… {m}"),
                                    activity=True, notify=True)
        return self.save_task

    def _saved(self, outcome) -> None:
        self.session.set_busy(None)
        if outcome.kind == "ok":
            files = [p for p in outcome.value if str(p).endswith(".json")]
            folder = Path(files[0]).parent if files else ""
            show_info(f"saved {len(files)} lesion(s) in {folder}")
            self._show_size(f"saved {len(files)} lesion(s) in {folder}: "
                            + ", ".join(Path(f).stem for f in files))
        elif outcome.kind == "error":
            show_error(outcome.message)
            self._show_size(outcome.message, error=True)
        elif outcome.kind == "cancelled":
            self._show_size("cancelled")

    def _busy_changed(self, what) -> None:
        self.save_button.setEnabled(what is None)

    def closeEvent(self, event):  # noqa: N802 (Qt)
        for t in (self.size_task, self.save_task):
            if t is not None and t.running:
                t.cancel()
        super().closeEvent(event)
