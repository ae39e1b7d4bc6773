"""Run dock widget: start and cancel the analysis, follow its progress, save the result.

The analysis (:func:`~..core.run.pipeline.run_analysis`) runs in a napari thread worker; its
progress reaches the GUI thread through a queued Qt signal, so the viewer stays usable.
Its units run in napari's process, on a local Dask cluster (*Compute*: N workers) or on a
running Dask cluster (a scheduler address). Cancel stops it at the core's next check (the
model is restored: lesions are applied in a context manager; Dask units not yet started
are cancelled). With an output folder, running again into it resumes. At the end the
result's layers are added a few per event-loop turn.
"""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import FileEdit
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QFileDialog, QHBoxLayout, QProgressBar,
                            QPushButton, QWidget)

from ..core.base.errors import LesionAlignError
from ..core.run.config import ComputeConfig, StatisticsConfig
from . import _run_prep, _tasks  # module imports: tests replace their functions
from ._dock import ErrorLabel, scroll_layout, wrap_label
from ._forms import schema_form
from ._lesion_size import describe_run
from ._show import show_result
from ._state import connect, session_for
from ._tasks import ActivityBar, TimeEstimate, clock, freeze_gc_once, start_task


#: the [compute] keys the form shows (generated from :class:`ComputeConfig`)
COMPUTE_FIELDS = ("workers", "scheduler", "threads")
#: the [statistics] keys the form shows (generated from :class:`StatisticsConfig`); the
#: permutation keys are sent only with inference = "permutation"
STATISTICS_FIELDS = ("inference", "method", "n_perm", "ceiling")
PERMUTATION_FIELDS = ("method", "n_perm")


_clock = clock  # the tasks' one clock format


class RunWidget(QWidget):
    """Start / cancel a run; progress with the current step, elapsed and remaining time."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.task = None
        self.save_task = None
        self.feeder = None
        self.outcome = None
        self.fraction = 0.0
        self.message = ""
        self._t0 = None
        #: the one time estimate both bars show (this dock's and the activity dock's)
        self.estimate = TimeEstimate()
        self.activity: ActivityBar | None = None

        lay = scroll_layout(self)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the analysis of the Data and Model & lesion widgets")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        # why the run did not start or failed, under its button; gone once the forms change
        self.error = ErrorLabel()
        lay.addWidget(self.error)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        lay.addWidget(self.progress)
        self.step = wrap_label("ready")
        lay.addWidget(self.step)
        self.times = wrap_label("")
        lay.addWidget(self.times)
        # what the run will do and why each step runs (e.g. why importance is scored)
        self.plan = wrap_label("")
        self.plan.setObjectName("lesion_align_run_plan")
        lay.addWidget(self.plan)
        # where the units run (the [compute] table's form, generated from the schema) and
        # the output folder (not a config key: the CLI's --out)
        self.compute_form = schema_form(
            ComputeConfig, COMPUTE_FIELDS,
            labels={"workers": "Dask workers", "scheduler": "Scheduler",
                    "threads": "BLAS threads"},
            overrides={"scheduler": {"placeholder": "optional: tcp://host:8786"}})
        self.workers, self.scheduler, self.threads = (self.compute_form[f]
                                                      for f in COMPUTE_FIELDS)
        self.out_dir = FileEdit(mode="d", nullable=True, name="out_dir", label="Output",
                                tooltip="optional: save each run into this folder (running "
                                        "again into it resumes)")
        self.out_dir.line_edit.native.setPlaceholderText("optional: a folder for the run")
        self.out_dir.choose_btn.text = "…"
        self.compute_form.insert(0, self.out_dir)
        lay.addWidget(self.compute_form.native)
        # the group test (parametric t + FDR, or sign-flip permutations with FWE control)
        # and the noise ceiling: the [statistics] table's form
        self.statistics_form = schema_form(
            StatisticsConfig, STATISTICS_FIELDS,
            labels={"inference": "Group test", "method": "Permutation",
                    "n_perm": "Sign flips", "ceiling": "Noise ceiling"})
        self.statistics_form["inference"].changed.connect(self._inference_changed)
        self._inference_changed()
        lay.addWidget(self.statistics_form.native)
        self.with_template = QCheckBox("MNI152 template under the maps")
        self.with_template.setChecked(True)
        lay.addWidget(self.with_template)
        self.save_button = QPushButton("Save result…")
        self.save_button.setEnabled(False)
        self.save_button.setToolTip("Write the maps (NIfTI), summary.tsv and result.json")
        lay.addWidget(self.save_button)
        self.summary = wrap_label("")
        lay.addWidget(self.summary)
        lay.addStretch(1)

        self._clock = QTimer(self)
        self._clock.setInterval(250)
        self._clock.timeout.connect(self._tick)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self._pick_save())
        connect(self.session.busy_changed, self._busy_changed)
        connect(self.session.result_changed, self._result_changed)
        connect(self.session.model_changed, self._plan_changed)
        connect(self.session.data_changed, self._plan_changed)
        self._plan_changed()
        # a run outlives no widget: destroyed mid-run, it is cancelled and frees the session
        self.destroyed.connect(lambda *_, s=self.session: s.set_busy(None)
                               if s.busy == "run" else None)

    # ------------------------------------------------------------------ statistics
    def _inference_changed(self, *_):
        """The permutation's statistic and sign flips only matter for a permutation test."""
        on = self.statistics_form["inference"].value == "permutation"
        for f in PERMUTATION_FIELDS:
            self.statistics_form[f].enabled = on

    def statistics_values(self) -> dict:
        """The [statistics] keys of the form (the permutation's only with a permutation
        test: the config refuses a permutation statistic with the parametric test)."""
        values = self.statistics_form.values()
        if values.get("inference") != "permutation":
            for f in PERMUTATION_FIELDS:
                values.pop(f, None)
        StatisticsConfig.parse(values)  # a wrong value: the config file's message
        return values

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def run(self):
        """Build the config from the forms and start the worker (returns the task)."""
        s = self.session
        if self.running:
            return self.task
        if s.busy:
            show_error(f"wait for the {s.busy} to finish")
            return None
        try:
            self.compute_form.parse()  # a wrong value: the config file's message
            s.compute = self.compute_form.values()
            s.statistics = self.statistics_values()
            config = s.build_config()
        except LesionAlignError as err:
            self._failed(str(err), "not run")
            return None
        out = str(self.out_dir.value) if self.out_dir.value is not None else None
        with_template = self.with_template.isChecked()

        def fn(progress, cancel):
            _tasks.import_model_libraries()  # through the module: tests replace it
            return _run_prep.run(config, with_template, progress, cancel, out_dir=out)

        self.outcome = None
        self.error.set_error(None)
        self._open_activity()
        self.fraction, self.message = 0.0, "starting"
        self.progress.setValue(0)
        self.step.setText("starting…")
        self.summary.setText("")
        self._t0 = time.perf_counter()
        self.estimate.reset()
        self._clock.start()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.save_button.setEnabled(False)
        s.set_busy("run")
        freeze_gc_once()
        self.task = start_task(fn, owner=self, on_done=self._done,
                               on_progress=self._progress, name="run")
        self._out = out
        return self.task

    def _open_activity(self) -> None:
        """The run's bar in napari's activity dock (bottom right): the same value and
        time estimate as this dock's bar; its Cancel button cancels the run."""
        self._close_activity()
        self.activity = ActivityBar("run", cancel=self.cancel)

    def _close_activity(self) -> None:
        if self.activity is not None:
            self.activity.close()
        self.activity = None

    def _plan_changed(self, *_) -> None:
        if self.error.message is not None and not self.running:  # fixed, or being fixed
            self.error.set_error(None)
            self.step.setText("ready")

        try:
            self.plan.setText(describe_run(self.session.lesion_plan()))
        except LesionAlignError:
            self.plan.setText("")  # the form's own error is shown next to it

    def cancel(self) -> None:
        """Ask the run to stop (at the core's next check, well under a second); both bars
        stop showing progress and time left at once."""
        if self.running:
            self.task.cancel()
            self.cancel_button.setEnabled(False)
            self.step.setText("cancelling…")
            self._reset_progress()

    def _reset_progress(self) -> None:
        self._clock.stop()
        self.estimate.reset()
        self.fraction = 0.0
        self.progress.setValue(0)
        self.times.setText("")
        self._close_activity()

    def _progress(self, frac: float, msg: str) -> None:
        if self.task is not None and self.task.cancelled:
            return  # a report still on its way after Cancel
        # napari's activity bar may run the event loop while it updates: a report
        # delivered meanwhile is applied after this one (in order), not before it
        self._latest = (frac, msg)
        if getattr(self, "_applying", False):
            return
        self._applying = True
        try:
            while self._latest is not None:
                (frac, msg), self._latest = self._latest, None
                self.fraction, self.message = frac, msg
                if self._t0 is not None:
                    self.estimate.add(time.perf_counter() - self._t0, frac)
                self.progress.setValue(int(round(1000 * min(max(frac, 0.0), 1.0))))
                if msg:
                    self.step.setText(msg)
                self._tick()
        finally:
            self._applying = False

    def _tick(self) -> None:
        """Both bars' time text from the one estimate (also every 250 ms between reports,
        so the countdown moves)."""
        if self._t0 is None or (self.task is not None and self.task.cancelled):
            return
        el = time.perf_counter() - self._t0
        self.times.setText(self.estimate.text(el))
        if self.activity is not None:
            left = self.estimate.left(el)
            self.activity.set(self.fraction, self.message,
                              f"about {clock(left)} left" if left is not None else "")

    def _failed(self, message: str, step: str = "failed") -> None:
        self.step.setText(step)
        self.error.set_error(message)
        show_error(message)

    def _done(self, outcome) -> None:
        self.outcome = outcome
        self._clock.stop()
        if outcome.kind == "ok":
            self._tick()
        self._close_activity()
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.session.set_busy(None)
        if outcome.kind == "ok":
            result, tuples = outcome.value
            self.progress.setValue(1000)
            self.step.setText(f"done in {_clock(outcome.seconds)}; adding {len(tuples)} "
                              "layers…")
            folder = Path(self._out) if self._out else None
            self.feeder = show_result(self.viewer, self.session, result, tuples, folder,
                                      on_done=self._layers_added, parent=self, new=True)
        elif outcome.kind == "error":
            self._failed(outcome.message)
        elif outcome.kind == "cancelled":
            self._reset_progress()
            self.step.setText("cancelled")
            show_info("Run cancelled; the model is unchanged")
        else:
            self.step.setText("failed")
            self.error.set_error(outcome.message)

    def _layers_added(self) -> None:
        text = f"done in {_clock(self.outcome.seconds)}"
        self.step.setText(text)
        # in an event-loop turn of its own (not with the last layer's insertion)
        QTimer.singleShot(0, lambda: show_info(f"Lesion Align: run {text}; its maps are "
                                               "in the layer list"))

    # ------------------------------------------------------------------ result
    def _result_changed(self, result) -> None:
        self.save_button.setEnabled(result is not None and not self.running)
        if result is None:
            self.summary.setText("")
            return
        # the run's closing summary (as on the console): the model against its controls,
        # each lesion against its random draws, the category counts
        lines = result.closing_summary()
        more = f"\n… {len(lines) - 30} more lines (summary.tsv)" if len(lines) > 30 else ""
        notices = "".join(f"\n{n}" for n in result.notices(max_excluded=3))
        self.summary.setText("\n".join(lines[:30]) + more + notices)

    def _pick_save(self):
        path = QFileDialog.getExistingDirectory(self, "Save the result into a folder")
        if path:
            self.save_result(path)

    def save_result(self, folder):
        """Write the last result (maps, summary.tsv, result.json) in a worker."""
        result = self.session.result
        if result is None:
            return None
        folder = Path(folder)

        def fn(progress, cancel):
            return result.save(folder)

        self.save_button.setEnabled(False)
        self.save_task = start_task(fn, owner=self, on_done=lambda o: self._saved(o, folder),
                                    name="save result", activity=True)
        return self.save_task

    def _saved(self, outcome, folder) -> None:
        self.save_button.setEnabled(True)
        if outcome.kind == "ok":
            self.session.result_folder = folder
            show_info(f"saved {len(outcome.value)} files in {folder}")
        elif outcome.kind == "error":
            show_error(outcome.message)

    def _busy_changed(self, what) -> None:
        if not self.running:
            self.run_button.setEnabled(what is None)

    def closeEvent(self, event):  # noqa: N802 (Qt)
        if self.running:
            self.task.cancel()
        super().closeEvent(event)
