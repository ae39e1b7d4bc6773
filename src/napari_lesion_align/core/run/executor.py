"""Where the units run: in this process (the default), or on a Dask cluster.

:class:`InProcess` runs the stages here, one unit after the other (the GUI, the demo, the
tests). :class:`DaskExecutor` runs them on a ``dask.distributed`` cluster: a
:class:`~distributed.LocalCluster` of N worker processes on this machine (``--workers N``)
or an existing cluster (``--scheduler ADDRESS``, e.g. one started by ``dask-jobqueue`` on
SLURM). Either way:

* the model's work (building the lesions, extracting features) runs where the model is:
  in one process (a worker, for Dask; on its GPU when it has one), which loads the model
  once (:func:`~.model.load_model` keeps it per process);
* the fits, which need only stored features and one subject's BOLD, run as independent
  units, spread over every worker; each worker opens the data source once;
* a unit that fails is reported with its units, condition and error, the others finish
  and are saved, and the run then stops with one error listing the failures; running the
  same command again computes only what failed (the resume of :mod:`.stages`);
* a worker that dies is replaced by Dask and its unit runs again elsewhere (after
  ``distributed.scheduler.allowed-failures`` deaths of the same unit, it is reported as
  failed); cancel stops the units not yet started.

The cluster's output folder and feature store must be on a file system every worker
sees (docs/cluster.md).
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import Cancelled, LesionAlignError, UnitFailed, unit_failed
from .engine import PHASES, Progress
from .stages import (CeilingJob, _TRFeatures, ceiling_unit, fit_jobs, make_engine,
                     run_ceiling_job, run_fit_job, stage_conditions, stage_features,
                     unit_name)
from .store import identity

BLAS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's, a batch job's
    or ``taskset``'s share), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    """How the cores are shared (the one rule): ``processes`` running units at once, each
    with ``threads`` BLAS and torch threads (0: the workers' own setting, on a cluster this
    process does not start), within ``cores`` (None: the cluster's, unknown here)."""

    processes: int
    threads: int
    cores: int | None

    def describe(self) -> dict:
        """result.json's ``threads``."""
        return {"processes": self.processes, "threads_per_process": self.threads or None,
                "cores": self.cores}


def thread_plan(workers: int = 0, threads: int = 0, scheduler: str | None = None,
                cores: int | None = None) -> ThreadPlan:
    """The threads of ``[compute]`` (``workers``, ``threads``, ``scheduler``): in this
    process, ``threads`` (0: every usable core); with N local workers, ``threads`` per
    worker (0: the cores divided among them); with a scheduler, ``threads`` per worker or
    the workers' own setting. A request beyond the cores (processes x threads) is cut to
    the cores, with a warning: oversubscribed BLAS threads run many times slower than one
    (docs/benchmarks.md)."""
    if scheduler:
        return ThreadPlan(0, int(threads), None)
    cores = cores or usable_cores()
    processes = max(1, int(workers))
    fair = max(1, cores // processes)
    want = int(threads) or fair
    if processes * want > max(cores, processes):
        warnings.warn(f"[compute] threads = {want} with {processes} process(es) would run "
                      f"{processes * want} threads on {cores} cores: using {fair} per "
                      "process", stacklevel=2)
        want = fair
    return ThreadPlan(processes, want, cores)


@contextmanager
def blas_threads(n: int):
    """Limit BLAS / OpenMP / torch threads to ``n`` inside the block (0: leave them)."""
    if not n:
        yield
        return
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def failures_error(failures: list, total: int, out: Path,
                   what: str = "fit units") -> LesionAlignError:
    """One error for the units that failed (the others are saved)."""
    shown = "; ".join(str(f) for f in failures[:5])
    more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
    n = sum(len(getattr(f, "units", ())) or 1 for f in failures)
    return LesionAlignError(
        f"{n} of {total} {what} failed: {shown}{more}. The other units are "
        f"saved in {out}; fix the cause and run the same command again: only the failed "
        "units run")


class InProcess:
    """Every unit in this process, one after the other, with the threads of ``plan``
    (:func:`thread_plan`; default: every usable core)."""

    description = "in this process"
    #: fit units running at once (:func:`.stages.cut_units`)
    parallelism = 1

    def __init__(self, plan: ThreadPlan | None = None):
        self.plan = plan or thread_plan()

    def model_stages(self, eng) -> None:
        """The lesions (or their record) and the features the missing fits need."""

        eng.progress.phase(*PHASES["lesions"])
        eng.progress(0.0, "choosing lesions" if eng.config.lesions.enabled else "intact model")
        with blas_threads(self.plan.threads):
            stage_conditions(eng)
            jobs, _ = fit_jobs(eng)
            if jobs:
                eng.progress.phase(*PHASES["features"])
                stage_features(eng)

    def fits(self, eng, jobs: list, ceilings: list = ()) -> tuple[list, list]:
        """Run the fit jobs; ``(units computed, failures)``. (``ceilings``: in one process
        the noise ceilings run after the fits, :meth:`ceilings`: nothing would idle.)"""
        with blas_threads(self.plan.threads):
            return self._fits(eng, jobs)

    def ceilings(self, eng, jobs: list) -> tuple[list, list]:
        """Run the noise-ceiling units (one per language); ``(units computed, failures)``."""
        with blas_threads(self.plan.threads):
            return self._ceilings(eng, jobs)

    def _fits(self, eng, jobs: list) -> tuple[list, list]:
        total = sum(len(j.todo) for j in jobs)
        if not total:
            return [], []
        eng.source.prepare(eng)
        trf = _TRFeatures(eng)
        computed, failures, done = [], [], 0
        for job in jobs:
            eng.progress.check()
            lo, hi = done / total, (done + len(job.todo)) / total
            try:
                computed += run_fit_job(eng, job, trf, eng.progress.sub(lo, hi))
            except UnitFailed as err:
                failures.append(err)
                eng.progress(hi, f"failed: {err}")
            done += len(job.todo)
        return computed, failures

    def _ceilings(self, eng, jobs: list) -> tuple[list, list]:
        if not jobs:
            return [], []
        eng.source.prepare(eng)
        computed, failures = [], []
        for k, job in enumerate(jobs):
            eng.progress.check()
            lo, hi = k / len(jobs), (k + 1) / len(jobs)
            try:
                computed += run_ceiling_job(eng, job, eng.progress.sub(lo, hi))
            except UnitFailed as err:
                failures.append(err)
                eng.progress(hi, f"failed: {err}")
        return computed, failures

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- dask
_ENGINES: dict = {}


def _worker_engine(config, out_root: str):
    """This worker process' engine for one analysis (made once: the data source opened,
    the conditions read from their record, the demo's drivers prepared)."""
    key = (str(out_root), identity(config)["fits"])
    eng = _ENGINES.get(key)
    if eng is None:
        eng = make_engine(config, Path(out_root))
        stage_conditions(eng)
        eng.trf = _TRFeatures(eng)
        eng.prepared = False
        _ENGINES.clear()  # one analysis per worker at a time
        _ENGINES[key] = eng
    return eng


def _model_task(config, out_root: str, threads: int) -> dict:
    """On one worker: the lesions and the missing features (loads the model once)."""

    with blas_threads(threads):
        eng = make_engine(config, Path(out_root), Progress(None, None))
        stage_conditions(eng)
        jobs, _ = fit_jobs(eng)
        if jobs:
            stage_features(eng)
        lm = eng.model  # loaded here when a feature was missing
        return {"counts": eng.counts.get("features", {"computed": 0, "reused": 0}),
                "timings": eng.timings,
                "compute": None if lm is None else {"device": str(lm.device),
                                                    "dtype": lm.dtype, "model_loaded": True}}


def _warm_imports() -> None:
    """On a worker as it starts: the imports every fit unit needs (nilearn's maskers above
    all, seconds each), while the main process checks the data."""
    import importlib

    for name in ("nilearn.maskers", "nilearn.signal", f"{__package__}.stages"):
        importlib.import_module(name)


def _prepared_engine(config, out_root: str):
    """This worker's engine with its data source prepared (once per worker)."""
    eng = _worker_engine(config, out_root)
    if not eng.prepared:
        eng.source.prepare(eng)
        eng.prepared = True
    return eng


def _fit_task(config, out_root: str, job, threads: int) -> list[str]:
    """On any worker: one fit job (a subject, or subjects fitted together)."""
    with blas_threads(threads):
        eng = _prepared_engine(config, out_root)
        return run_fit_job(eng, job, eng.trf, lambda f, m: None)


def _ceiling_task(config, out_root: str, job, threads: int) -> list[str]:
    """On any worker: the noise ceiling of one language."""
    with blas_threads(threads):
        return run_ceiling_job(_prepared_engine(config, out_root), job, lambda f, m: None)


def _job_cost(eng, job) -> int:
    """A fit or ceiling job's size, to order the units: its subjects x their volumes (a
    ceiling reads every subject of its language: as large as a unit of them all)."""
    return len(job.subjects) * sum(r.n_vols for r in eng.source.runs(job.subjects[0],
                                                                      job.language))


class DaskExecutor:
    """Units on a Dask cluster: a :class:`~distributed.LocalCluster` this executor starts
    (and closes), or a :class:`~distributed.Client` / scheduler address given."""

    def __init__(self, client, cluster=None, threads: int = 0, description: str = "",
                 slots: int = 0):
        self.client = client
        self.cluster = cluster
        self.threads = int(threads)
        self.slots = int(slots)
        self.description = description or f"Dask scheduler {client.scheduler.address}"
        #: the ceiling units run beside the last fits: (their jobs, computed, failures)
        self._ceilings_done = None
        self._warm: list = []  # the workers' warm-up imports (:meth:`local`)

    @property
    def plan(self) -> ThreadPlan:
        """The threads (:func:`thread_plan`): the local workers', or a cluster's as given."""
        if self.cluster is not None:
            return ThreadPlan(self.slots, self.threads, usable_cores())
        return ThreadPlan(self.parallelism, self.threads, None)

    @property
    def parallelism(self) -> int:
        """Fit units running at once: the local cluster's workers, or the connected
        cluster's worker threads now (a cluster still starting its jobs counts the workers
        that have arrived: ``client.wait_for_workers(n)`` first, docs/cluster.md)."""
        if self.slots:
            return self.slots
        workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    @classmethod
    def local(cls, n_workers: int, threads: int = 0) -> "DaskExecutor":
        """A LocalCluster of ``n_workers`` processes, one unit at a time each, with
        ``threads`` BLAS threads per worker (0: the cores divided among the workers)."""
        import logging

        import dask  # reason: dask is the optional 'dask' extra
        # reason: distributed is the optional 'dask' extra
        from distributed import Client, LocalCluster

        t = thread_plan(n_workers, threads).threads
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.update({k: t for k in BLAS_ENV})
        # Dask trims freed memory back to the OS at 64 KiB; the fits reuse large buffers,
        # and memory touched afresh is slow on some machines: measured 8-13 % slower units,
        # the same peak memory (docs/benchmarks.md)
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=1,
                                   processes=True, silence_logs=logging.ERROR)
        client = Client(cluster)
        # every worker imports what the units need now, beside the data checks of this
        # process (not torch: only the worker that takes the model's stage loads it)
        warm = [client.submit(_warm_imports, pure=False, workers=[addr],
                              allow_other_workers=False)
                for addr in client.scheduler_info().get("workers", {})]
        link = getattr(client, "dashboard_link", None)
        ex = cls(client, cluster, t, f"Dask LocalCluster: {n_workers} workers x {t} BLAS "
                                     f"thread(s)" + (f"; dashboard {link}" if link else ""),
                 slots=int(n_workers))
        ex._warm = warm  # held: a future let go of may be cancelled before it runs
        return ex

    @classmethod
    def connect(cls, address: str, threads: int = 0) -> "DaskExecutor":
        """The cluster whose scheduler listens at ``address`` (``tcp://host:8786``)."""
        from distributed import Client  # reason: distributed is the optional 'dask' extra

        try:
            client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise LesionAlignError(f"cannot reach the Dask scheduler at {address!r} ({err}); "
                                   "check the address and that the scheduler runs") from err
        n = len(client.scheduler_info().get("workers", {}))
        link = getattr(client, "dashboard_link", None)
        return cls(client, None, threads, f"Dask scheduler {address}: {n} workers"
                                          + (f"; dashboard {link}" if link else ""))

    def _wait(self, futures: dict, eng, on_done) -> list:
        """Wait for ``futures`` ({future: job}), calling ``on_done(job, result)`` as each
        finishes; returns the failures; cancel cancels what has not run."""
        from distributed import as_completed  # reason: distributed is the optional 'dask' extra

        ac = as_completed(list(futures))
        failures = []
        while not ac.is_empty():
            try:
                eng.progress.check()
            except Cancelled:
                self.client.cancel(list(futures))
                raise
            if not ac.has_ready():
                time.sleep(0.1)
                continue
            for fut in ac.next_batch(block=False):
                job = futures[fut]
                if fut.status == "finished":
                    on_done(job, fut.result())
                    continue
                err = fut.exception()
                if isinstance(err, UnitFailed):
                    failures.append(err)
                else:  # e.g. KilledWorker: the unit's worker died too often

                    names = [] if job is None else (
                        [ceiling_unit(job.language)] if not hasattr(job, "todo") else
                        [unit_name(s, job.language) for s in job.todo])
                    failures.append(unit_failed(names or ["the model stage"], None, err))
        return failures

    def model_stages(self, eng) -> None:

        eng.progress.phase(PHASES["lesions"][0], PHASES["features"][1])
        eng.progress(0.0, "lesions and features on a Dask worker")
        fut = self.client.submit(_model_task, eng.config, str(eng.out.root), self.threads,
                                 pure=False)
        res = {}
        failures = self._wait({fut: None}, eng, lambda job, r: res.update(r))
        if failures:
            raise LesionAlignError(str(failures[0]).removeprefix("the model stage: "))
        eng.counts["features"] = res["counts"]
        eng.timings.update(res["timings"])
        if res.get("compute"):  # the worker's model: the device it ran on
            eng.compute = res["compute"]
        stage_conditions(eng)  # here: read the record the worker wrote

    def fits(self, eng, jobs: list, ceilings: list = ()) -> tuple[list, list]:
        """Run the fit jobs on the workers; ``(units computed, failures)``. ``ceilings``:
        the noise-ceiling jobs, run beside the fits (they read the BOLD only), so that no
        worker idles while another ends the fits and then a ceiling runs alone; their
        outcome is kept for :meth:`ceilings`, and this returns once they are done too."""
        total = sum(len(j.todo) for j in jobs)
        self._ceilings_done = None
        if not total:
            return [], []
        root = str(eng.out.root)
        # the largest units first (subjects x volumes): no long unit starts last
        futures = {self.client.submit(_fit_task, eng.config, root, job, self.threads,
                                      pure=False, priority=_job_cost(eng, job)): job
                   for job in jobs}
        futures.update(self._submit_ceilings(eng, ceilings))
        computed, c_computed = [], []
        t0 = time.perf_counter()

        def on_done(job, names):
            if isinstance(job, CeilingJob):
                c_computed.extend(names)
                eng.progress(len(computed) / total, f"noise ceiling {job.language} done")
                return
            computed.extend(names)
            n = len(computed)
            el = time.perf_counter() - t0
            eng.progress(n / total, f"fits {n}/{total} units done ({el:.0f} s): "
                                    f"{', '.join(names)}")

        failures = self._wait(futures, eng, on_done)
        c_names = {ceiling_unit(j.language) for j in ceilings}
        c_failures = [f for f in failures if c_names & set(getattr(f, "units", ()))]
        self._ceilings_done = (list(ceilings), c_computed, c_failures)
        return computed, [f for f in failures if f not in c_failures]

    def _submit_ceilings(self, eng, jobs) -> dict:
        root = str(eng.out.root)
        return {self.client.submit(_ceiling_task, eng.config, root, job, self.threads,
                                   pure=False, priority=_job_cost(eng, job)): job
                for job in jobs}

    def ceilings(self, eng, jobs: list) -> tuple[list, list]:
        """The noise-ceiling units, one per language, spread over the workers (those
        already run beside the fits: their outcome)."""
        done, self._ceilings_done = self._ceilings_done, None
        beside, computed, failures = done if done is not None else ([], [], [])
        computed, failures = list(computed), list(failures)
        rest = [j for j in jobs if j not in beside]
        if not rest:
            return computed, failures

        def on_done(job, names):
            computed.extend(names)
            eng.progress(len(computed) / len(jobs), f"noise ceiling {len(computed)}/"
                                                     f"{len(jobs)} languages done")

        failures += self._wait(self._submit_ceilings(eng, rest), eng, on_done)
        return computed, failures

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def executor_for(compute):
    """The executor a ``[compute]`` table asks for (the caller closes it)."""
    if not (compute.scheduler or compute.workers):
        return InProcess(thread_plan(threads=compute.threads))
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise LesionAlignError(
            "[compute] workers / scheduler (--workers / --scheduler) need Dask: pip install "
            "'napari-lesion-align[dask]', or leave them out to run in this process")
    if compute.scheduler:
        return DaskExecutor.connect(compute.scheduler, compute.threads)
    return DaskExecutor.local(compute.workers, compute.threads)
