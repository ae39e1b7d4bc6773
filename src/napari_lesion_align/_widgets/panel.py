"""The plugin's one panel: the five widgets as tabs of one dock (**Lesion Align**).

Five docks side by side share a small screen's height (on 1,366 x 768 each got about
100 px); as tabs each gets the whole dock. The tabs are the same widgets as the single
docks (:class:`~.data.DataWidget`, :class:`~.model.ModelLesionWidget`,
:class:`~.run.RunWidget`, :class:`~.results.ResultsWidget`,
:class:`~.inspector.InspectorWidget`), sharing the viewer's one session, so a user who
wants two of them side by side can still open them as single docks from the Plugins
menu.

Every tab's content scrolls vertically and never sideways: each control asks for less
width than the dock has (:data:`DOCK_WIDTH`; ``tests/test_gui_session.py`` checks the
geometry at 1,366 x 768).
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget
from ._dock import full_text_tooltips

#: the width the panel asks for: the dock column of a 1,366 x 768 window, the canvas
#: keeping the rest
DOCK_WIDTH = 330

#: (tab title, attribute, widget module, class); the titles are short, so the five tabs
#: fit the dock's width without scroll arrows
TABS = (("Data", "data", "data", "DataWidget"),
        ("Model", "model", "model", "ModelLesionWidget"),
        ("Run", "run", "run", "RunWidget"),
        ("Results", "results", "results", "ResultsWidget"),
        ("Inspect", "inspector", "inspector", "InspectorWidget"))
#: the tooltips of the tabs (the single docks' titles)
TAB_TIPS = {"Data": "Data: the demo, your files or a config file",
            "Model": "Model & lesion: the language model, its layer and the lesion",
            "Run": "Run: start, follow and cancel the analysis; save the result",
            "Results": "Results: open results, the map shown, threshold, categories, exports",
            "Inspect": "Inspector: click a voxel for its MNI coordinate and r per condition"}


class LesionAlignPanel(QWidget):
    """The five widgets as tabs (``panel.data``, ``.model``, ``.run``, ``.results``,
    ``.inspector``; ``panel.show_tab("Run")``)."""

    def __init__(self, napari_viewer, parent=None):
        import importlib

        super().__init__(parent)
        self.viewer = napari_viewer
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        bar = self.tabs.tabBar()
        bar.setExpanding(False)
        bar.setUsesScrollButtons(False)  # every tab visible: the titles are short
        lay.addWidget(self.tabs)
        for title, attr, module, cls in TABS:
            mod = importlib.import_module(f".{module}", __package__)
            widget = getattr(mod, cls)(napari_viewer, parent=self.tabs)
            setattr(self, attr, widget)
            i = self.tabs.addTab(widget, title)
            self.tabs.setTabToolTip(i, TAB_TIPS[title])
            full_text_tooltips(widget)  # a value cut at the dock's width: whole in its tooltip
        self.session = self.data.session
        self.setMinimumWidth(min(DOCK_WIDTH, self.minimumSizeHint().width()))

    def sizeHint(self):  # noqa: N802 (Qt): the dock's width, whatever the tabs' content
        hint = super().sizeHint()
        hint.setWidth(DOCK_WIDTH)
        return hint

    def hideEvent(self, event):  # noqa: N802 (Qt)
        """The panel's dock closed or removed: the Inspector's crosshair goes too (the
        Inspector may be a hidden tab, which gets no hide event of its own then)."""
        super().hideEvent(event)
        import weakref

        ref = weakref.ref(self.inspector)
        QTimer.singleShot(0, lambda: ref() is not None and ref()._closed_check())

    @property
    def widgets(self) -> dict:
        """``{tab title: widget}``."""
        return {title: getattr(self, attr) for title, attr, *_ in TABS}

    def show_tab(self, title: str) -> QWidget:
        """Bring the tab ``title`` (one of :data:`TABS`) to the front; returns its widget."""
        widgets = self.widgets
        if title not in widgets:
            raise KeyError(f"no tab {title!r}; tabs: {list(widgets)}")
        self.tabs.setCurrentWidget(widgets[title])
        return widgets[title]
