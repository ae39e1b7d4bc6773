"""Data dock widget: the built-in demo, your files (per language: annotations and BOLD runs
or ROI time series; TR; mask), or a config file; shows what was found before a run."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLineEdit, QPlainTextEdit, QPushButton, QSizePolicy,
                            QStackedWidget, QVBoxLayout, QWidget)

from ..core.base.errors import LesionAlignError
from ..core.data.options import DataConfig, DemoConfig
from ..core.run.sources import DEFAULT_KIND, KINDS
from . import _datacheck
from ._dock import ERROR_COLOUR, ErrorLabel, scroll_layout, wrap_label
from ._forms import choices, schema_form
from ._layer_feed import LayerFeeder
from ._show import space_layers
from ._state import session_for
from ._tasks import start_task

SOURCES = (DEFAULT_KIND.label, "Files", "Config file")
#: the [data.demo] keys of the demo page (generated from :class:`DemoConfig`)
DEMO_FIELDS = ("n_subjects", "seed")
#: the [data] keys of the files page (generated from :class:`DataConfig`; the languages
#: are the boxes below it)
DATA_FIELDS = ("kind", "tr", "mask", "subjects")


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).replace("\n", ";").split(";") if t.strip()]


def _path_row(edit: QLineEdit, pick) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    btn = QPushButton("…")
    btn.setFixedWidth(28)
    btn.clicked.connect(pick)
    lay.addWidget(btn)
    return w


class LanguageBox(QGroupBox):
    """One language: code, text language, annotation files, BOLD runs (or ROI tables)."""

    def __init__(self, parent: "DataWidget", code: str = ""):
        super().__init__(f"Language {code}".strip(), parent)
        self.owner = parent
        form = QFormLayout(self)
        self.code = QLineEdit(code)
        self.code.setPlaceholderText("EN")
        self.text_language = QLineEdit()
        self.text_language.setPlaceholderText("ISO code of the text, e.g. en, fr, zh")
        self.annotations = QLineEdit()
        self.annotations.setPlaceholderText("one TextGrid / CSV / TSV per run, separated by ;")
        self.runs = QLineEdit()
        self.runs.setPlaceholderText("optional: run labels (a multi-run table's run column)")
        self.bold = QLineEdit()
        self.bold.setPlaceholderText("sub-{subject}/run-{run}.nii.gz, or files separated by ;")
        self.bold.setToolTip(
            "A template with {subject} and {run} (glob characters allowed), or one file per run "
            "and subject separated by ';' (subject by subject, runs in order).")
        remove = QPushButton("Remove language")
        remove.clicked.connect(lambda: parent.remove_language(self))
        form.addRow("Code", self.code)
        form.addRow("Text language", self.text_language)
        form.addRow("Annotations", _path_row(self.annotations, self._pick_annotations))
        form.addRow("Runs", self.runs)
        form.addRow("BOLD", _path_row(self.bold, self._pick_bold))
        form.addRow(remove)
        for e in (self.code, self.text_language, self.annotations, self.runs, self.bold):
            e.textChanged.connect(parent._form_changed)
        self.code.textChanged.connect(lambda t: self.setTitle(f"Language {t}".strip()))

    def _pick_annotations(self):
        files, _ = QFileDialog.getOpenFileNames(
            self, "Word annotations (one per run)", "",
            "Annotations (*.TextGrid *.textgrid *.csv *.tsv *.txt);;All files (*)")
        if files:
            self.annotations.setText("; ".join(files))

    def _pick_bold(self):
        files, _ = QFileDialog.getOpenFileNames(
            self, "BOLD runs or ROI time series (subject by subject, runs in order)", "",
            "BOLD (*.nii *.nii.gz *.tsv *.csv *.txt *.npy);;All files (*)")
        if files:
            self.bold.setText("; ".join(files))

    def values(self) -> dict:
        return {"code": self.code.text().strip(), "text_language": self.text_language.text(),
                "annotations": _split(self.annotations.text()),
                "runs": [r.strip() for r in self.runs.text().split(",") if r.strip()],
                "bold": _split(self.bold.text())}


class DataWidget(QWidget):
    """Choose the data of an analysis and check it before running."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.task = None
        self.report = None
        self.feeder = None
        self._loading = False
        self.language_boxes: list[LanguageBox] = []

        lay = scroll_layout(self)
        top = QFormLayout()
        self.source = QComboBox()
        self.source.addItems(SOURCES)
        top.addRow("Source", self.source)
        lay.addLayout(top)

        self.stack = QStackedWidget()
        lay.addWidget(self.stack)
        # demo page
        demo = QWidget()
        f = QVBoxLayout(demo)
        f.setContentsMargins(0, 0, 0, 0)
        self.demo_form = schema_form(DemoConfig, DEMO_FIELDS,
                                     labels={"n_subjects": "Subjects", "seed": "Seed"})
        self.demo_subjects, self.demo_seed = (self.demo_form[k] for k in DEMO_FIELDS)
        self.load_demo_button = QPushButton("Load demo")
        self.load_demo_button.setToolTip("Le Petit Prince annotations (EN, FR, ZH) with "
                                         "synthetic BOLD that has planted regions")
        self.load_demo_button.clicked.connect(lambda: self.load_demo())
        f.addWidget(self.demo_form.native)
        f.addWidget(self.load_demo_button)
        self.stack.addWidget(demo)
        # files page
        files = QWidget()
        fl = QVBoxLayout(files)
        fl.setContentsMargins(0, 0, 0, 0)
        # the [data] table's scalars (a built-in source, the demo, is the Source above, not
        # an input kind)
        self.files_form = schema_form(
            DataConfig, DATA_FIELDS,
            labels={"kind": "Input", "tr": "TR", "mask": "Mask", "subjects": "Subjects"},
            overrides={"kind": {"choices": [c for c in choices(DataConfig, "kind")
                                            if not (c in KINDS and KINDS[c].builtin)]},
                       "tr": {"suffix": " s", "step": 0.1},
                       "mask": {"widget_type": "FileEdit", "filter": "*.nii *.nii.gz",
                                "placeholder": "brain mask (NIfTI, > 0 inside)"},
                       "subjects": {"placeholder": "01, 02, 03"}})
        self.kind, self.tr, self.mask, self.subjects = (self.files_form[k]
                                                        for k in DATA_FIELDS)
        fl.addWidget(self.files_form.native)
        self.languages_layout = QVBoxLayout()
        fl.addLayout(self.languages_layout)
        add = QPushButton("Add language")
        add.clicked.connect(lambda: self.add_language())
        fl.addWidget(add)
        self.stack.addWidget(files)
        # config page
        conf = QWidget()
        cf = QFormLayout(conf)
        self.config_path = QLineEdit()
        self.config_path.setPlaceholderText("study.toml: its [data], [languages.*], "
                                            "[features], [encoding], [cleaning]")
        cf.addRow("Config", _path_row(self.config_path, self._pick_config))
        cf.addRow(wrap_label("Model and lesions come from the Model & lesion widget."))
        self.stack.addWidget(conf)
        # what is wrong with the form, right under it; hidden once fixed
        self.form_error = ErrorLabel()
        lay.addWidget(self.form_error)

        row = QHBoxLayout()
        self.check_button = QPushButton("Check data")
        self.check_button.clicked.connect(lambda: self.check())
        row.addWidget(self.check_button)
        lay.addLayout(row)
        self.status = wrap_label("")
        lay.addWidget(self.status)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setMinimumHeight(120)
        lay.addWidget(self.summary, 1)

        self.source.currentIndexChanged.connect(self._source_changed)
        self.config_path.textChanged.connect(self._form_changed)
        self.files_form.changed.connect(self._form_changed)
        self.demo_form.changed.connect(self._form_changed)
        self._source_changed(0)

    # ------------------------------------------------------------------ form
    def _pick_config(self):
        path, _ = QFileDialog.getOpenFileName(self, "Config file", "",
                                              "Config (*.toml *.json);;All files (*)")
        if path:
            self.config_path.setText(path)

    def add_language(self, code: str = "") -> LanguageBox:
        box = LanguageBox(self, code)
        self.language_boxes.append(box)
        self.languages_layout.addWidget(box)
        self._form_changed()
        return box

    def remove_language(self, box: LanguageBox) -> None:
        if box in self.language_boxes:
            self.language_boxes.remove(box)
            self.languages_layout.removeWidget(box)
            box.setParent(None)
            box.deleteLater()
            self._form_changed()

    def _source_changed(self, index: int) -> None:
        self.stack.setCurrentIndex(index)
        for i in range(self.stack.count()):  # the stack as tall as the page shown
            page = self.stack.widget(i)
            policy = QSizePolicy.Policy.Preferred if i == index else \
                QSizePolicy.Policy.Ignored
            page.setSizePolicy(policy, policy)
        self.stack.adjustSize()
        self._form_changed()

    def _form_changed(self, *_) -> None:
        if self._loading:
            return
        self.mask.enabled = self.kind.value == "volume"
        self.report = None
        self.summary.setPlainText("")
        self.status.setText("")
        self._push()
        self.form_error.set_error(self.session.data_error)

    def form_tables(self) -> tuple[dict, str | None]:
        """The form as config tables (``{"data": ..., "languages": ...}``, config file)."""
        src = self.source.currentIndex()
        if src == 0:
            self.demo_form.parse("[data.demo]")
            # the built-in page is the default source's: {"kind": "demo", "demo": {...}}
            return {"data": {"kind": DEFAULT_KIND.name,
                             DEFAULT_KIND.name: self.demo_form.values()}}, None
        if src == 2:
            path = self.config_path.text().strip()
            if not path:
                raise LesionAlignError("Data: choose a config file (TOML or JSON)")
            return {}, path
        data = self.files_form.values()
        self.files_form.parse()  # a wrong value: the config file's message
        if data["kind"] != "volume":
            data.pop("mask", None)  # region tables need no mask
        subjects = data.pop("subjects")
        if subjects:
            data["subjects"] = subjects
        langs = {}
        for box in self.language_boxes:
            v = box.values()
            code = v["code"]
            if not code:
                raise LesionAlignError("Data: every language needs a code (e.g. EN)")
            if code in langs:
                raise LesionAlignError(f"Data: language {code!r} is listed twice")
            if not v["annotations"]:
                raise LesionAlignError(f"Data: language {code}: choose its annotation files "
                                       "(one per run)")
            entry = {"annotations": v["annotations"] if len(v["annotations"]) > 1
                     or not v["runs"] else v["annotations"][0]}
            if v["runs"]:
                entry["runs"] = v["runs"]
            if v["text_language"].strip():
                entry["text_language"] = v["text_language"].strip()
            n_runs = len(v["runs"]) or len(v["annotations"])
            entry["bold"] = self._bold_value(code, v["bold"], subjects, n_runs)
            langs[code] = entry
        if not langs:
            raise LesionAlignError("Data: add at least one language (Add language)")
        return {"data": data, "languages": langs}, None

    @staticmethod
    def _bold_value(code, entries, subjects, n_runs):
        if not entries:
            raise LesionAlignError(f"Data: language {code}: give its BOLD runs (a template "
                                   "with {subject} and {run}, or the files)")
        if len(entries) == 1 and "{" in entries[0]:
            return entries[0]
        if not subjects:
            raise LesionAlignError(f"Data: language {code}: list the subjects to pair "
                                   "BOLD files with them")
        if len(entries) != n_runs * len(subjects):
            raise LesionAlignError(
                f"Data: language {code}: {len(entries)} BOLD files for {n_runs} run(s) x "
                f"{len(subjects)} subject(s); give {n_runs * len(subjects)} (subject by "
                "subject, runs in order) or a template with {subject} and {run}")
        return {s: entries[i * n_runs:(i + 1) * n_runs] for i, s in enumerate(subjects)}

    def _push(self) -> None:
        """Write the form into the session (an error is kept and raised at check/run)."""
        try:
            tables, path = self.form_tables()
            self.session.data_error = None
        except LesionAlignError as err:
            tables, path = {}, None
            self.session.data_error = str(err)
        self.session.set_data(tables, path)

    # ------------------------------------------------------------------ API
    def load_demo(self, n_subjects: int | None = None, seed: int | None = None):
        """Select the built-in demo and check it (what the Load demo button does)."""
        self._loading = True
        try:
            self.source.setCurrentIndex(0)
            self.demo_form.set_values(**{k: int(v) for k, v in (("n_subjects", n_subjects),
                                                                 ("seed", seed))
                                         if v is not None})
        finally:
            self._loading = False
        self._form_changed()
        return self.check()

    def set_files(self, *, kind: str | None = None, tr: float | None = None,
                  mask: str | None = None, subjects=(), languages=()) -> None:
        """Fill the Files form: ``languages`` is a list of dicts with ``code``,
        ``annotations`` (list), ``bold`` (template or list), optional ``text_language``
        and ``runs``; ``kind`` and ``tr`` left out: the config's defaults."""
        defaults = DataConfig()
        self._loading = True
        try:
            self.source.setCurrentIndex(1)
            self.files_form.set_values(kind=kind or defaults.kind,
                                       tr=defaults.tr if tr is None else float(tr), mask=mask,
                                       subjects=[str(s) for s in subjects])
            for box in list(self.language_boxes):
                self.remove_language(box)
            for lang in languages:
                box = self.add_language(lang["code"])
                box.text_language.setText(lang.get("text_language", ""))
                box.annotations.setText("; ".join(str(a) for a in lang["annotations"]))
                box.runs.setText(", ".join(str(r) for r in lang.get("runs", ())))
                bold = lang["bold"]
                box.bold.setText(bold if isinstance(bold, str)
                                 else "; ".join(str(b) for b in bold))
        finally:
            self._loading = False
        self._form_changed()

    def set_config_file(self, path) -> None:
        self._loading = True
        try:
            self.source.setCurrentIndex(2)
            self.config_path.setText(str(path))
        finally:
            self._loading = False
        self._form_changed()

    def check(self):
        """Read every annotation and BOLD header in a worker; show what was found."""
        if self.task is not None and self.task.running:
            return self.task
        self._push()
        session = self.session
        try:
            if session.data_error:
                raise LesionAlignError(session.data_error)
            source = session.source
            if source is not None and source.builtin:  # a source that brings its data
                n = int(session.data["data"][source.name]["n_subjects"])
                mask = source.mask

                def check(progress, cancel):
                    return _datacheck.BUILTIN_CHECKS[source.name](n, progress, cancel)
            else:
                config = session.build_config()
                mask = config.data.mask if config.data.kind == "volume" else None

                def check(progress, cancel):
                    return _datacheck.check_config(config, progress, cancel)

            def fn(progress, cancel):
                rep = check(progress, cancel)
                layers = []
                if mask is not None and rep.ok:
                    try:
                        layers = space_layers(mask, "analysis mask")
                    except LesionAlignError as err:
                        rep.errors.append(str(err))
                return rep, layers
        except LesionAlignError as err:
            self._show_error(str(err))
            show_error(str(err))
            return None
        self.status.setText("checking…")
        self.check_button.setEnabled(False)
        self.task = start_task(fn, owner=self, on_done=self._checked, name="check data",
                               on_progress=lambda f, m: self.status.setText(
                                   f"checking… {m}"), activity=True)
        return self.task

    def _show_space(self, layers) -> None:
        """Add the template (when the viewer has none) and the mask outline."""
        has_template = any(lay.metadata.get("stat") == "template" for lay in self.viewer.layers)
        todo = [lay for lay in layers
                if not (has_template and lay.metadata.get("stat") == "template")]
        self.feeder = LayerFeeder(self.viewer, todo, parent=self).start()

    def _show_error(self, message: str) -> None:
        from html import escape

        self.status.setText(f"<span style='color:{ERROR_COLOUR}'>{escape(message)}</span>")
        self.summary.setPlainText(message)

    def _checked(self, outcome) -> None:
        self.check_button.setEnabled(True)
        if outcome.kind == "ok":
            rep, layers = outcome.value
            self.report = rep
            self.summary.setPlainText(rep.text())
            if layers:
                self._show_space(layers)
            if rep.ok:
                self.status.setText("Data OK")
                show_info("Data OK: " + rep.lines[0])
            else:
                msg = f"{len(rep.errors)} problem(s) in the data: {rep.errors[0]}"
                self._show_error(msg)
                self.summary.setPlainText(rep.text())
                show_error(msg)
        elif outcome.kind == "error":
            self._show_error(outcome.message)
            show_error(outcome.message)
        elif outcome.kind == "crash":
            self._show_error(outcome.message)
        else:
            self.status.setText("check cancelled")

    def closeEvent(self, event):  # noqa: N802 (Qt)
        if self.task is not None and self.task.running:
            self.task.cancel()
        super().closeEvent(event)
