"""Results dock widget: which open result and which of its maps to show, its threshold, the
category overlay (outlined or filled) and its legend, and exports (the current view as a
PNG with legend, colour bar, slice position and orientation; the standard QC figure).

The widget binds a Qt-free :class:`.._view_model.ResultView` per open result (which map,
threshold, colormap and layer name are shown); the threshold slider moves in the
statistic's own units from its one default rule (``core.analysis.display``), stated in words
below it; the canvas shows the same words, the category legend and the map's colour bar.

The result list holds every result open in the viewer (a run, the reader, File > Open
Sample, **Open result folder…**: :attr:`._state.Session.results`); the subject, language,
condition and statistic lists come from what the chosen result contains, so new kinds of
conditions (controls, null models) appear without changes here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QPushButton, QSlider, QWidget)

from .. import _layers
from .._view_model import (RESULT_KEY, VIEW_TAG, ResultView, default_view, stats_for,
                           view_choices, view_values)
from ..core.analysis import display
from ..core.analysis.statistics import CATEGORY_COLOURS, language_colour
from ..core.base.errors import LesionAlignError
from ..core.results.figures import qc_figure
from . import _export, _viewer
from ._dock import scroll_layout
from ._layer_feed import LayerFeeder, add_layer, make_layer
from ._show import close_result, open_result_folder, tag_layer
from ._state import connect, session_for
from ._tasks import start_task
from ._viewer import camera, edge_letters, markers_hidden
from .clusters import report_button  # the clusters window and the HTML report

STAT_NAMES = display.LABELS
SEQUENTIAL = display.SEQUENTIAL


class ResultsWidget(QWidget):
    """Choose subject / group, language, condition and statistic of the map shown."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.task = None
        self.qc_task = None
        self.feeder = None
        self._limit = 1.0
        self._scale = display.SliderScale(0.0, 1.0, 0.01)
        self.models: dict = {}  # a ResultView per open result (its view survives switching)
        self._populating = False

        lay = scroll_layout(self)
        self.open_button = QPushButton("Open result folder…")
        self.open_button.setToolTip("A folder written by a run or by "
                                    "'napari-lesion-align run/demo' (result.json)")
        lay.addWidget(self.open_button)
        form = QFormLayout()
        self.result_choice = QComboBox()
        self.result_choice.setToolTip("The results open in this viewer (runs, folders opened "
                                      "with File > Open or here, the sample)")
        form.addRow("Result", self.result_choice)
        self.subject = QComboBox()
        self.language = QComboBox()
        self.condition = QComboBox()
        self.stat = QComboBox()
        form.addRow("Subject", self.subject)
        form.addRow("Language", self.language)
        form.addRow("Condition", self.condition)
        form.addRow("Statistic", self.stat)
        row = QWidget()
        rl = QHBoxLayout(row)
        rl.setContentsMargins(0, 0, 0, 0)
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold_label = QLabel("")
        self.threshold_label.setToolTip("The threshold, in the statistic's units")
        rl.addWidget(self.threshold, 1)
        rl.addWidget(self.threshold_label)
        form.addRow("Threshold", row)
        self.threshold_text = QLabel("")
        self.threshold_text.setWordWrap(True)
        self.threshold_text.setToolTip("What a coloured voxel means: the threshold, the "
                                       "test's correction and degrees of freedom (the "
                                       "default is the group test's significance for t, "
                                       "p and q; a stated display default otherwise)")
        form.addRow("", self.threshold_text)
        crow = QWidget()
        cl = QHBoxLayout(crow)
        cl.setContentsMargins(0, 0, 0, 0)
        self.overlay = QCheckBox("overlay")
        self.overlay.setChecked(True)
        self.category_set = QComboBox()
        self.category_set.setToolTip("lesion: the shared / specific lesions; random: their "
                                     "random controls")
        self.filled = QCheckBox("filled")
        self.filled.setToolTip("Fill the categories (hides the map beneath) instead of "
                               "drawing their outlines")
        cl.addWidget(self.overlay)
        cl.addWidget(self.filled)
        cl.addStretch(1)
        form.addRow("Categories", self.category_set)
        form.addRow("", crow)
        lay.addLayout(form)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        lay.addWidget(self.legend)
        brow = QHBoxLayout()
        self.export_button = QPushButton("Export view…")
        self.export_button.setToolTip("Save the view as a PNG with the map's name, colour "
                                      "bar, category legend, slice position and orientation")
        self.qc_button = QPushButton("QC figure…")
        self.qc_button.setToolTip("The standard QC figure: category slices + mean r per "
                                  "condition and language (PNG)")
        self.surface_button = QPushButton("Surface…")
        self.surface_button.setToolTip("The map shown and the category overlay on the "
                                       "fsaverage5 cortex (nilearn vol_to_surf; both "
                                       "hemispheres, inflated and pial), in a 3D view")
        self.close_button = QPushButton("Close result")
        self.close_button.setToolTip("Remove exactly this result's layers and forget it "
                                     "(other results and the template stay)")
        brow.addWidget(self.export_button)
        brow.addWidget(self.qc_button)
        lay.addLayout(brow)
        brow2 = QHBoxLayout()
        brow2.addWidget(self.surface_button)
        brow2.addWidget(self.close_button)
        lay.addLayout(brow2)
        lay.addWidget(report_button(self))
        self.status = QLabel("No result yet: run one (Run) or open a result folder.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        # what the cleaning removed (AlignmentResult.cleaning_lines: the console's lines)
        self.cleaning = QLabel("")
        self.cleaning.setWordWrap(True)
        self.cleaning.setToolTip("What the cleaning did before the fits: confound columns, "
                                 "volumes removed or noted (result.json has each run's)")
        lay.addWidget(self.cleaning)
        lay.addStretch(1)

        self.open_button.clicked.connect(lambda: self._pick_folder())
        self.export_button.clicked.connect(lambda: self._pick_export())
        self.qc_button.clicked.connect(lambda: self._pick_qc())
        self.surface_button.clicked.connect(lambda: self.show_surface())
        self.close_button.clicked.connect(lambda: self.close_result())
        self.subject.currentIndexChanged.connect(lambda *_: self._choice_changed("subject"))
        self.language.currentIndexChanged.connect(lambda *_: self._choice_changed("language"))
        self.condition.currentIndexChanged.connect(lambda *_: self._choice_changed("condition"))
        self.stat.currentIndexChanged.connect(lambda *_: self._choice_changed("stat"))
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.overlay.toggled.connect(lambda *_: self.set_overlay())
        self.filled.toggled.connect(lambda *_: self.set_filled())
        self.result_choice.currentIndexChanged.connect(lambda *_: self._result_chosen())
        self.category_set.currentIndexChanged.connect(lambda *_: self.set_overlay())
        connect(self.session.result_changed, self._result_changed)
        connect(self.session.results_changed, self._results_listed)
        _viewer.on_theme(self.viewer, self, self._update_legend)
        layers_events = self.viewer.layers.events
        layers_events.inserted.connect(self._layer_inserted)
        self.destroyed.connect(lambda *_, ev=layers_events, cb=self._layer_inserted:
                               ev.inserted.disconnect(cb))
        self._enable(False)
        self._results_listed()
        if self.session.result is not None:
            self._result_changed(self.session.result)

    # ------------------------------------------------------------------ state
    @property
    def result(self):
        return self.session.result

    @property
    def key(self):
        """The key of the current result (``Session.results``)."""
        return self.session.current

    @property
    def model(self) -> ResultView | None:
        """The view model of the current result (made on first use)."""
        key, result = self.key, self.result
        if result is None:
            return None
        model = self.models.get(key)
        if model is None or model.result is not result:
            entry = self.session.results.get(key)
            model = self.models[key] = ResultView(result, key,
                                                  entry.label if entry else None)
        return model

    def _mine(self, layer) -> bool:
        """Whether ``layer`` belongs to the current result."""
        return layer.metadata.get(RESULT_KEY) == self.key and self.key is not None

    @property
    def view_layer(self):
        """The map layer shown for the current result (the one this widget replaces)."""
        shown = [layer for layer in self.viewer.layers
                 if layer.metadata.get(VIEW_TAG) and self._mine(layer)]
        return shown[-1] if shown else None

    def _results_listed(self) -> None:
        """Refill the result list (a result was opened or closed)."""
        entries = list(self.session.results.values())
        self.result_choice.blockSignals(True)
        self.result_choice.clear()
        for e in entries:
            self.result_choice.addItem(e.label, e.key)
            self.result_choice.setItemData(self.result_choice.count() - 1,
                                           str(e.folder or "in memory (not saved)"),
                                           Qt.ItemDataRole.ToolTipRole)
        i = self.result_choice.findData(self.session.current)
        self.result_choice.setCurrentIndex(max(i, 0))
        self.result_choice.blockSignals(False)
        self.result_choice.setEnabled(len(entries) > 1)

    def _result_chosen(self) -> None:
        key = self.result_choice.currentData()
        if key is not None and key != self.session.current:
            self.session.select_result(key)

    def choose_result(self, key_or_label) -> None:
        """Make an open result current, by key or by the label the list shows."""
        for e in self.session.results.values():
            if key_or_label in (e.key, e.label):
                self.session.select_result(e.key)
                return
        raise LesionAlignError(f"Results: no open result {key_or_label!r}; open: "
                               f"{[e.label for e in self.session.results.values()]}")

    def _layer_inserted(self, event) -> None:
        try:
            if event.value.metadata.get(VIEW_TAG):
                self._update_threshold_range()
        except RuntimeError:  # this widget is being deleted
            pass

    def _enable(self, on: bool) -> None:
        for w in (self.subject, self.language, self.condition, self.stat, self.threshold,
                  self.overlay, self.category_set, self.export_button, self.qc_button,
                  self.surface_button, self.filled, self.close_button):
            w.setEnabled(on)

    def _set_items(self, combo: QComboBox, items, current=None, labels=None) -> None:
        combo.blockSignals(True)
        combo.clear()
        for it in items:
            combo.addItem((labels or {}).get(it, it), it)
        i = combo.findData(current) if current is not None else -1
        combo.setCurrentIndex(i if i >= 0 else 0)
        combo.blockSignals(False)

    def current_view(self) -> dict:
        return {"subject": self.subject.currentData(), "language": self.language.currentData(),
                "condition": self.condition.currentData(), "stat": self.stat.currentData()}

    def _result_changed(self, result) -> None:
        i = self.result_choice.findData(self.session.current)
        if i >= 0 and i != self.result_choice.currentIndex():
            self.result_choice.blockSignals(True)
            self.result_choice.setCurrentIndex(i)
            self.result_choice.blockSignals(False)
        self.models = {k: m for k, m in self.models.items() if k in self.session.results}
        if result is None:
            self._enable(False)
            _viewer.show_canvas_legend(self.viewer)
            return
        self._enable(True)
        ch = view_choices(result)
        view = dict(self.model.view) if self.model is not None else default_view(result)
        shown = self.view_layer
        if shown is not None and shown.metadata.get("language"):
            # follow what the viewer shows (e.g. the map a run added)
            view = {k: shown.metadata.get(k) for k in ("subject", "language", "condition",
                                                        "stat")}
        self._populating = True
        try:
            self._set_items(self.subject, ch["subjects"], view["subject"])
            self._set_items(self.category_set, ch["category_sets"], "lesion")
            self._refresh_choices(view)
        finally:
            self._populating = False
        self.overlay.setEnabled(bool(ch["category_sets"]))
        self._update_legend()
        self._update_threshold_range()
        self.update_canvas()
        model = (result.provenance.get("model") or {}).get("name", "")
        self.status.setText(f"{len(result.subjects)} subject(s), languages "
                            f"{', '.join(result.languages)}, conditions "
                            f"{', '.join(ch['conditions'])}" + (f"; model {model}" if model
                                                                else ""))
        lines = result.cleaning_lines()
        self.cleaning.setText("Cleaning: " + "; ".join(lines) if lines else "")
        self.cleaning.setVisible(bool(lines))

    def _refresh_choices(self, want: dict) -> None:
        """Fill the language / condition / stat lists for the chosen subject (and stat)."""
        result = self.result
        ch = view_choices(result)
        subject = want.get("subject") or self.subject.currentData()
        if want.get("stat") == "categories":
            self._set_items(self.language, ["all"] + ch["languages"], want.get("language"))
            self._set_items(self.condition, ch["category_sets"], want.get("condition"))
            stats = stats_for(result, subject, (result.conditions or ["intact"])[0])
            self._set_items(self.stat, stats, "categories", STAT_NAMES)
            return
        self._set_items(self.language, ch["languages"], want.get("language"))
        if subject == "group":
            conds = ch["conditions"]
        else:
            conds = list(dict.fromkeys(c for (s, _, c, _) in result.maps if s == subject))
        cond = want.get("condition")
        if cond not in conds and conds:
            cond = conds[0]  # e.g. leaving the categories: the result's first condition
        self._set_items(self.condition, conds, cond)
        stats = stats_for(result, subject, self.condition.currentData())
        self._set_items(self.stat, stats, want.get("stat"), STAT_NAMES)

    def _choice_changed(self, which: str) -> None:
        if self._populating or self.result is None:
            return
        want = self.current_view()
        if which == "stat" and want["stat"] == "categories":
            want.update(language="all", condition=self.category_set.currentData())
        elif which == "stat" and self.language.findData("all") >= 0:
            want.update(language=None, condition=None)
        self._populating = True
        try:
            self._refresh_choices(want)
        finally:
            self._populating = False
        self.show_view()

    # ------------------------------------------------------------------ map
    def set_view(self, subject=None, language=None, condition=None, stat=None):
        """Choose the map programmatically (like the combo boxes) and show it."""
        want = self.current_view()
        want.update({k: v for k, v in dict(subject=subject, language=language,
                                           condition=condition, stat=stat).items()
                     if v is not None})
        sets = self._items("category_set")
        if want["stat"] == "categories" and want["condition"] not in sets:
            want["condition"] = self.category_set.currentData()
            want["language"] = language or "all"
        elif want["stat"] != "categories" and want["condition"] in sets and \
                condition is None:
            want["condition"] = None  # the result's first condition
        if want["stat"] != "categories" and want["language"] == "all":
            want["language"] = None
        self._populating = True
        try:
            self._set_items(self.subject, [self.subject.itemData(i)
                                           for i in range(self.subject.count())],
                            want["subject"])
            self._refresh_choices(want)
        finally:
            self._populating = False
        got = self.current_view()
        for k, v in want.items():
            if k in ("language", "condition") and v is None:
                continue
            if v is not None and got[k] != v:
                raise LesionAlignError(f"Results: {k} {v!r} is not available here; "
                                       f"choices: {self._items(k)}")
        return self.show_view()

    def _items(self, which):
        combo = getattr(self, which)
        return [combo.itemData(i) for i in range(combo.count())]

    def show_view(self):
        """Replace the shown map by the current choice. ``categories`` shows the category
        overlay of the chosen set (one language's specific voxels only, or all)."""
        model = self.model
        if model is None:
            return None
        view = self.current_view()
        if None in view.values():
            return None
        old = self.view_layer
        if view["stat"] == "categories":
            model.view = dict(view)
            if old is not None:
                self.viewer.layers.remove(old)
            lang = view["language"]
            out = self.set_overlay(True, view["condition"],
                                   languages=None if lang == "all" else [lang])
            self._update_threshold_range()
            return out
        try:
            model.choose(**view)
            model.categories_shown = self._categories_shown()
            layer = make_layer(model.layer_tuple())
        except LesionAlignError as err:
            show_error(str(err))
            return None
        tag_layer(layer, self.session, self.key)
        if old is not None:  # the user's display settings survive the switch
            layer.opacity = old.opacity
            layer.blending = old.blending
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        else:  # below this result's category overlays, above everything else
            cats = [i for i, lay in enumerate(self.viewer.layers)
                    if lay.metadata.get("stat") == "categories" and self._mine(lay)]
            index = min(cats) if cats else len(self.viewer.layers)
        add_layer(self.viewer, layer)
        cur = self.viewer.layers.index(layer)
        if cur != index and index < len(self.viewer.layers):
            self.viewer.layers.move(cur, index)
        self._update_threshold_range()
        self.update_canvas()
        return layer

    def _categories_shown(self) -> bool:
        cats = self.category_layer()
        return bool(self.overlay.isChecked() and cats is not None and cats.visible)

    def _update_threshold_range(self) -> None:
        """The slider in the statistic's own units (``core.analysis.display.slider_scale``), at the
        view's threshold; the threshold in words below it."""
        model = self.model
        stat = self.stat.currentData()
        layer = self.view_layer
        ok = model is not None and layer is not None and stat not in (None, "categories") \
            and layer.metadata.get("stat") == stat
        self.threshold.setEnabled(ok)
        if not ok:
            self.threshold_label.setText("")
            self.threshold_text.setText(model.categories_text() if model is not None and
                                        model.result.categories else "")
            return
        limit = display.statistic(stat).limit or _layers.robust_limit(layer.data)
        self._scale = model.slider(limit)
        self._limit = self._scale.maximum
        current = layer.metadata.get("threshold")
        if current is None:
            current = model.threshold
        self.threshold.blockSignals(True)
        self.threshold.setRange(0, self._scale.positions)
        self.threshold.setSingleStep(1)
        self.threshold.setPageStep(max(1, self._scale.positions // 10))
        self.threshold.setValue(self._scale.position(current))
        self.threshold.blockSignals(False)
        self._show_threshold(current)

    def _show_threshold(self, value) -> None:
        model = self.model
        self.threshold_label.setText(f"{float(value):.3g}" if value is not None else "")
        self.threshold_text.setText(model.threshold_text() if model is not None else "")

    def threshold_value(self) -> float:
        """The threshold shown, in the statistic's units."""
        layer = self.view_layer
        if layer is not None and layer.metadata.get("threshold") is not None:
            return float(layer.metadata["threshold"])
        return self._scale.value(self.threshold.value())

    def set_threshold(self, value: float | None) -> None:
        """Set the display threshold (in the statistic's units; None: its default)."""
        model = self.model
        if model is None:
            return
        model.set_threshold(value)
        self._apply_threshold(model.threshold)
        self.threshold.blockSignals(True)
        self.threshold.setValue(self._scale.position(model.threshold))
        self.threshold.blockSignals(False)

    def _threshold_changed(self, position) -> None:
        model = self.model
        if model is None or not self.threshold.isEnabled():
            return
        value = self._scale.value(position)
        default = model.default_threshold().value
        if default is not None and self._scale.position(default) == position:
            value = default  # the slider's default position is the rule's exact value
        model.set_threshold(value)
        self._apply_threshold(value)

    def _apply_threshold(self, value) -> None:
        layer = self.view_layer
        if layer is None or layer not in self.viewer.layers:
            return
        _layers.set_threshold(layer, value or None)
        self._show_threshold(value)
        self.update_canvas()

    # ------------------------------------------------------------------ overlay
    def category_layer(self, name=None):
        name = name or self.category_set.currentData()
        if not name:
            return None
        for layer in self.viewer.layers:
            if layer.metadata.get("stat") == "categories" and self._mine(layer) and \
                    layer.metadata.get("category_set", layer.metadata.get("condition")) == name:
                return layer
        return None

    def set_filled(self, on: bool | None = None) -> None:
        """Draw the category overlays filled (``on``) or as outlines (the default)."""
        if on is not None:
            self.filled.blockSignals(True)
            self.filled.setChecked(on)
            self.filled.blockSignals(False)
        contour = 0 if self.filled.isChecked() else _layers.CATEGORY_CONTOUR
        for layer in self.viewer.layers:
            if layer.metadata.get("stat") == "categories" and self._mine(layer):
                layer.metadata["contour"] = contour
                layer.contour = contour
                layer.opacity = 0.6 if contour == 0 else 1.0

    def set_overlay(self, on: bool | None = None, name: str | None = None, languages=None):
        """Show (or hide) the category overlay of a set (``lesion`` / ``random``);
        ``languages``: show only these languages' specific categories (and shared).
        While an overlay is shown the map is drawn in grey ``|value|`` (colour then only
        ever means a category, ``core.analysis.display.map_kind``)."""
        if on is not None:
            self.overlay.blockSignals(True)
            self.overlay.setChecked(on)
            self.overlay.blockSignals(False)
        if name is not None:
            self.category_set.blockSignals(True)
            self.category_set.setCurrentIndex(max(self.category_set.findData(name), 0))
            self.category_set.blockSignals(False)
        result = self.result
        if result is None or not result.categories:
            return None
        chosen = self.category_set.currentData()
        on = self.overlay.isChecked()
        for set_name in result.categories:
            layer = self.category_layer(set_name)
            want = on and set_name == chosen
            shown_langs = layer.metadata.get("languages") if layer is not None else None
            if want and (layer is None or shown_langs != languages):
                old = layer
                layer = make_layer(_layers.category_layer(result, set_name,
                                                          languages=languages))
                tag_layer(layer, self.session, self.key)
                layer.metadata["languages"] = languages
                if old is not None:
                    layer.name = old.name
                add_layer(self.viewer, layer)
                self.set_filled()
            elif layer is not None:
                layer.visible = want
        model = self.model
        shown = self._categories_shown()
        if model is not None:
            model.categories_shown = shown
        view = self.view_layer
        if view is not None:
            _layers.set_magnitude(view, shown)
        self._update_legend()
        self.update_canvas()
        return self.category_layer(chosen)

    def _update_legend(self) -> None:
        model = self.model
        if model is None:
            self.legend.setText("")
            self.legend_entries = []
            return
        result = model.result
        name = self.category_set.currentData()
        if name and name in result.categories:
            entries = model.legend(name)
        else:
            entries = [(CATEGORY_COLOURS["shared"], "shared", "all languages")]
            entries += [(language_colour(code, result.languages), code, code)
                        for code in result.languages]
        self.legend_entries = [(c[:7], t) for c, t, _ in entries]
        self.legend.setText(_viewer.legend_html(entries, getattr(self.viewer, "theme", "dark")))

    def canvas_text(self) -> str:
        """What the canvas says the map is: its name, then (next line) its threshold in
        words (or the meaning of the category overlay)."""
        model = self.model
        if model is None:
            return ""
        layer = self.view_layer
        if layer is not None and layer.visible:
            return f"{layer.name}\n{model.threshold_text()}"
        cats = self.category_layer()
        if cats is not None and cats.visible:
            return f"{cats.name}\n{model.categories_text()}"
        return ""

    def update_canvas(self) -> None:
        """The canvas legend (napari overlays): the map and its threshold in words, the
        category legend while an overlay is shown, the map's colour bar."""
        layer = self.view_layer
        cats = self.category_layer()
        entries = [(c, t) for c, t in getattr(self, "legend_entries", [])] \
            if cats is not None and cats.visible else []
        _viewer.show_canvas_legend(self.viewer, self.canvas_text(), entries,
                                   layer if layer is not None and layer.visible else None)

    # ------------------------------------------------------------------ open / export
    def _pick_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Result folder (with result.json)")
        if path:
            self.open_result(path)

    def open_result(self, folder):
        """Load a saved result folder in a worker and show it (``._show.open_result_folder``;
        returns the task, None when the folder is open already: it is made current)."""
        folder = Path(folder)
        self.status.setText(f"opening {folder}…")
        self.open_button.setEnabled(False)
        self.task = open_result_folder(self.viewer, folder,
                                       on_done=lambda o: self._opened(o, folder),
                                       parent=self)
        if self.task is None:
            self.open_button.setEnabled(True)
            self._result_changed(self.result)
        return self.task

    def _opened(self, outcome, folder) -> None:
        self.open_button.setEnabled(True)
        if outcome.kind == "ok":
            self.feeder = getattr(self.session, "_open_feeder", None)
            if self.feeder is not None:
                self.feeder.finished.connect(self.update_canvas)
        else:
            self.status.setText(outcome.message)

    def close_result(self, key=None) -> int:
        """Close an open result (default: the current one): exactly its layers go;
        returns how many."""
        key = key or self.key
        if key is None:
            return 0
        self.models.pop(key, None)
        return close_result(self.viewer, self.session, key)

    def _pick_export(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export the view", "view.png",
                                              "PNG (*.png)")
        if path:
            self.export_view(path)

    def export_view(self, path) -> Path:
        """Save the view as a PNG: the canvas with the map's name, the slice position, the
        directions at its edges, the map's colour bar, the category legend, and the
        threshold in words (its correction and degrees of freedom)."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")

        with markers_hidden(self.viewer):  # drawn in the margins instead
            shot = self.viewer.screenshot(canvas_only=True, flash=False)
        layer = self.view_layer
        visible = [lay for lay in self.viewer.layers if lay.visible and
                   lay.metadata.get("stat") not in (None, "template", "categories", "mask")]
        layer = layer if layer is not None and layer.visible else (visible[-1] if visible
                                                                   else None)
        dims = self.viewer.dims
        where, letters = "", {}
        if dims.ndisplay == 2 and dims.ndim >= 3:
            ndim = dims.ndim
            axis = dims.order[-3]
            where = _export.slice_text(axis - ndim + 3, float(dims.point[axis]))
            v_axis, h_axis = (a - ndim + 3 for a in dims.order[-2:])

            vertical = str(camera(self.viewer).orientation2d[0])
            letters = edge_letters(v_axis, h_axis, "up" if "up" in vertical.lower()
                                   else "down")
        cats = self.category_layer()
        legend = [(c, t) for c, t in getattr(self, "legend_entries", [])] \
            if cats is not None and cats.visible else []
        title = layer.name if layer is not None else (cats.name if cats is not None
                                                      else "napari-lesion-align")
        model = self.model
        notes = []
        if model is not None and layer is not None and layer is self.view_layer:
            notes.append(model.threshold_text())
        if model is not None and legend:
            notes.append(model.categories_text())
        _export.compose(shot, path, title=title, where=where, letters=letters,
                        colorbar=_export.colorbar_of(layer) if layer is not None else None,
                        legend=legend, note="; ".join(notes))
        show_info(f"saved {path}")
        return path

    def show_surface(self):
        """Project the map shown (and the category overlay shown, if any) onto fsaverage5
        in a worker, then add them as Surface layers and switch to 3D (returns the task)."""
        layer = self.view_layer
        cats = self.category_layer()
        if layer is None and cats is None:
            show_error("show a map (or the category overlay) first")
            return None
        result = self.result
        view = self.current_view() if layer is not None else None
        threshold = layer.metadata.get("threshold") if layer is not None else None
        name = layer.name if layer is not None else None
        cat_set = cats.metadata.get("category_set") if cats is not None and cats.visible \
            else None

        def fn(progress, cancel):
            out = []
            if view is not None:
                progress(0.1, "projecting the map onto fsaverage5")
                values = view_values(result, view)
                img = result.space.to_image(values, fill=np.nan)
                out += _layers.surface_layers(img, name=name, stat=view["stat"],
                                              threshold=threshold,
                                              magnitude=cat_set is not None)
            if cat_set is not None and not cancel():
                progress(0.6, "projecting the categories onto fsaverage5")
                labels, legend = result.categories[cat_set]
                out += _layers.surface_layers(result.space.labels_image(labels),
                                              name=_layers.category_layer_name(cat_set),
                                              stat="categories", legend=dict(legend))
            return out

        self.surface_button.setEnabled(False)
        self.surface_task = start_task(fn, owner=self, on_done=self._surface_done,
                                       name="surface", activity=True)
        return self.surface_task

    def _surface_done(self, outcome) -> None:
        self.surface_button.setEnabled(True)
        if outcome.kind == "error":
            show_error(outcome.message)
            return
        if outcome.kind != "ok":
            return
        layers = []
        for t in outcome.value:
            layer = make_layer(t)
            tag_layer(layer, self.session, self.key)
            layers.append(layer)
        _viewer.shade_sulci(layers)
        _viewer.enter_surface_scene(self.viewer)
        self.surface_feeder = LayerFeeder(self.viewer, layers, per_tick=2, parent=self)
        self.surface_feeder.finished.connect(self._surface_shown)
        self.surface_feeder.start()

    def _surface_shown(self) -> None:
        maps = [layer for layer in self.surface_feeder.added
                if layer.visible and layer.metadata.get("stat") not in (None, "categories")]
        self.top_view()
        model = self.model
        text = (f"{maps[0].metadata.get('source_map', '')}\n{model.threshold_text()}"
                if maps and model is not None else "")
        cats = [layer for layer in self.surface_feeder.added
                if layer.metadata.get("stat") == "categories"]
        entries = [(c, t) for c, t in getattr(self, "legend_entries", [])] if cats else []
        _viewer.show_canvas_legend(self.viewer, text, entries, maps[0] if maps else None)

    def top_view(self) -> None:
        """3D camera from above (superior), anterior up: both hemispheres in frame."""
        if self.viewer.dims.ndisplay != 3:
            return
        _viewer.frame_surfaces(self.viewer)

    def lateral_view(self, hemisphere: str = "left") -> None:
        """3D camera on the lateral side of a hemisphere, superior up (world frame
        ``(z, -y, x)``: looking along +x for the left hemisphere, -x for the right)."""
        if self.viewer.dims.ndisplay != 3:
            return
        self.viewer.reset_view()
        sign = 1.0 if hemisphere == "left" else -1.0
        camera(self.viewer).set_view_direction((0.0, 0.0, sign), up_direction=(1.0, 0.0, 0.0))

    def _pick_qc(self):
        path, _ = QFileDialog.getSaveFileName(self, "QC figure", "qc.png", "PNG (*.png)")
        if path:
            self.qc_figure(path)

    def qc_figure(self, path):
        """Write the standard QC figure (``core.results.figures.qc_figure``) in a worker."""
        result = self.result
        if result is None:
            show_error("no result yet: run one or open a result folder")
            return None
        name = self.category_set.currentData() or "lesion"
        path = Path(path)

        def fn(progress, cancel):
            return qc_figure(result, path, name=name)

        self.qc_button.setEnabled(False)
        self.qc_task = start_task(fn, owner=self, on_done=self._qc_done,
                                  name="QC figure", activity=True)
        return self.qc_task

    def _qc_done(self, outcome) -> None:
        self.qc_button.setEnabled(True)
        if outcome.kind == "ok":
            show_info(f"saved {outcome.value}")
        elif outcome.kind == "error":
            show_error(outcome.message)
