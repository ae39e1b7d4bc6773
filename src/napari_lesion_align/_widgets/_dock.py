"""Dock layout shared by the five widgets: scrollable content, readable tab titles, labels
that wrap, error text next to its field, a layer-controls panel that keeps its width.

* :func:`scroll_layout` puts a widget's content in a ``QScrollArea``: the five docks fit a
  small screen (1,366 x 768) together, each scrolling when it is taller than its share;
* :func:`fix_tab_titles` keeps an ``&`` in a dock's title literal in the tab bar Qt shows
  for tabified docks (Qt reads ``&`` there as a keyboard mnemonic: "Model & lesion"
  became "Model _lesion").
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (QAbstractSpinBox, QApplication, QComboBox, QDockWidget, QFrame,
                            QLabel, QLineEdit, QScrollArea, QSizePolicy, QTabBar, QVBoxLayout,
                            QWidget)

#: the smallest height a dock asks for: the rest scrolls
MIN_DOCK_HEIGHT = 90


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """A ``QVBoxLayout`` for ``widget``'s content, inside a ``QScrollArea`` that fills it."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    # the content follows the dock's width: nothing may scroll sideways (a test checks
    # every control's minimum width against the dock's at 1,366 x 768)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setMinimumHeight(MIN_DOCK_HEIGHT)
    inner = QWidget(area)
    # napari's style sheet gives combo boxes a wide minimum: a dock would scroll sideways
    inner.setStyleSheet("QComboBox { min-width: 4em; }")
    area.setWidget(inner)
    outer.addWidget(area)
    widget.scroll_area = area
    widget.installEventFilter(_TabTitleFixer.instance())
    viewer = getattr(widget, "viewer", None)
    if viewer is not None:
        _watch_layer_controls(viewer, widget)
    return QVBoxLayout(inner)


#: the last layer insertion compacted (the widgets of a viewer share it)
_LAST_INSERT: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _watch_layer_controls(viewer, widget) -> None:
    """After a layer is added, compact napari's colormap boxes in ``widget``'s window
    (:func:`compact_layer_controls`)."""
    ref = weakref.ref(widget)

    def added(event=None, *_):
        w = ref()
        if w is None or (event is not None and _LAST_INSERT.get("event") is event):
            return  # another widget of this viewer did it for this insertion
        _LAST_INSERT["event"] = event
        try:
            # at once, before Qt lays the new controls out (a dock once widened stays so)
            compact_layer_controls(w.window())
        except RuntimeError:  # deleted meanwhile
            pass

    # after napari's own handler, which builds the new layer's controls
    viewer.layers.events.inserted.connect(added, position="last")

    def drop(*_):
        try:
            viewer.layers.events.inserted.disconnect(added)
        except Exception:  # the viewer is gone already
            pass

    widget.destroyed.connect(drop)


def compact_layer_controls(window) -> int:
    """napari's colormap boxes (the layer controls, left) ask for a dozen characters of
    width, not their longest colormap name: a long name (every registered colormap is
    listed) widened the layer controls by 100 px and left a 600 px canvas on a
    1,366 x 768 screen. Returns how many boxes were changed."""
    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    n = 0
    try:
        combos = window.findChildren(QComboBox, "colormapComboBox")
    except RuntimeError:  # deleted
        return 0
    for combo in combos:
        if combo.sizeAdjustPolicy() != policy:
            combo.setSizeAdjustPolicy(policy)
            combo.setMinimumContentsLength(12)
            # Qt drops the cached minimum size only on a style (or font) change
            QApplication.sendEvent(combo, QEvent(QEvent.Type.StyleChange))
            combo.updateGeometry()
            n += 1
    return n


class _TabTitleFixer(QObject):
    """On show / parent change of a widget, escapes ``&`` in the main window's tab bars."""

    _instance = None

    @classmethod
    def instance(cls) -> "_TabTitleFixer":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def eventFilter(self, obj, event):  # noqa: N802 (Qt)
        kind = event.type()
        if kind in (QEvent.Type.Show, QEvent.Type.ParentChange):
            self._schedule_dock_title(obj)
            if kind == QEvent.Type.Show:
                compact_combos(obj)
            window = obj.window()
            if window is not None and window is not obj and \
                    not window.property("lesion_align_tab_filter"):
                # the main window: its tab bars appear when docks are tabified
                window.setProperty("lesion_align_tab_filter", True)
                window.installEventFilter(self)
            self._schedule(window)
        elif kind in (QEvent.Type.ChildAdded, QEvent.Type.LayoutRequest):
            self._schedule(obj)
        return False

    @staticmethod
    def _schedule_dock_title(widget) -> None:
        ref = weakref.ref(widget)
        QTimer.singleShot(0, lambda: escape_dock_title(ref()))

    def _schedule(self, window) -> None:
        if window is None or window.property("lesion_align_tab_pending"):
            return
        window.setProperty("lesion_align_tab_pending", True)
        ref = weakref.ref(window)  # a pending timer must not keep a closed window alive

        def run():
            w = ref()
            if w is None:
                return
            try:
                w.setProperty("lesion_align_tab_pending", False)
            except RuntimeError:  # deleted meanwhile
                return
            fix_tab_titles(w)
            compact_layer_controls(w)

        QTimer.singleShot(0, run)


#: the colour of error text next to a field (napari's error red reads on dark and light)
ERROR_COLOUR = "#e63946"


def wrap_label(text: str = "") -> QLabel:
    """A word-wrapped label that asks for no width of its own: the dock's width decides,
    the text wraps (a long message never widens the dock or scrolls it sideways)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumWidth(1)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


class ErrorLabel(QLabel):
    """Red text placed next to the field it is about; hidden when there is no error
    (:meth:`set_error` with ``None``): an old error never outlives its fix."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setMinimumWidth(1)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setStyleSheet(f"color: {ERROR_COLOUR};")
        self.setObjectName("lesion_align_error")
        self.setVisible(False)
        self.message: str | None = None

    def set_error(self, message: str | None) -> None:
        self.message = message or None
        self.setText(self.message or "")
        self.setVisible(self.message is not None)


def compact_combos(widget) -> None:
    """Combo boxes of ``widget`` ask for a few characters of width, not their longest item
    (a long result folder name must not make the dock scroll sideways)."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(6)


def escape_dock_title(widget) -> bool:
    """Escape a single ``&`` in the title of the dock holding ``widget``: Qt's tab bar (and
    the dock's menu action) then show it literally; napari's own title bar keeps the
    name it was made with. Returns whether the title changed."""
    dock = widget
    try:
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is None:
            return False
        title = dock.windowTitle()
    except RuntimeError:  # deleted meanwhile
        return False
    if "&" in title and "&&" not in title:
        dock.setWindowTitle(title.replace("&", "&&"))
        return True
    return False


def fix_tab_titles(window) -> int:
    """Escape single ``&`` in the tab texts of ``window``'s tab bars (tabified docks);
    returns how many tabs were changed."""
    if window is None:
        return 0
    try:
        bars = window.findChildren(QTabBar)
    except RuntimeError:  # deleted
        return 0
    n = 0
    for bar in bars:
        if not _connected(bar):
            bar.currentChanged.connect(lambda *_, b=bar: _fix_bar(b))
        n += _fix_bar(bar)
    return n


def _connected(bar) -> bool:
    done = bar.property("lesion_align_tabs")
    if not done:
        bar.setProperty("lesion_align_tabs", True)
    return bool(done)


def _fix_bar(bar) -> int:
    n = 0
    for i in range(bar.count()):
        text = bar.tabText(i)
        if "&" in text and "&&" not in text:
            bar.setTabText(i, text.replace("&", "&&"))
            n += 1
    return n


def full_text_tooltips(root) -> None:
    """Every line edit and combo box under ``root`` keeps its full text in its tooltip
    (after its own help): a value, placeholder or item wider than the box (a path, a
    long model name on a 1,366 x 768 screen) is cut by Qt, the tooltip shows it whole."""

    def tip(help_text: str, *texts) -> str:
        return "\n\n".join(t for t in (help_text, *texts) if t)

    for edit in root.findChildren(QLineEdit):
        if isinstance(edit.parent(), (QComboBox, QAbstractSpinBox)):
            continue
        help_text = edit.toolTip()

        def update(*_, e=edit, h=help_text):
            e.setToolTip(tip(h, e.text() or e.placeholderText()))

        edit.textChanged.connect(update)
        update()
    for box in root.findChildren(QComboBox):
        help_text = box.toolTip()

        def items(*_, b=box):
            for i in range(b.count()):
                if not b.itemData(i, Qt.ItemDataRole.ToolTipRole):
                    b.setItemData(i, b.itemText(i), Qt.ItemDataRole.ToolTipRole)

        def current(*_, b=box, h=help_text):
            i = b.currentIndex()
            text = b.currentText()
            item_tip = str(b.itemData(i, Qt.ItemDataRole.ToolTipRole) or "") if i >= 0 else ""
            b.setToolTip(tip(h, text, item_tip if item_tip != text else ""))

        box.model().rowsInserted.connect(items)
        box.currentIndexChanged.connect(current)
        items()
        current()
