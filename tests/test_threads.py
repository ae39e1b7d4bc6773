"""Threads within the cores (``[compute] threads``, :func:`.executor.thread_plan`): processes
x BLAS / torch threads never exceed the usable cores, the units run with the plan's
threads in this process, and result.json records the plan."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from threadpoolctl import threadpool_info

from napari_lesion_align.core.run import executor as ex
from napari_lesion_align.core.run.config import ComputeConfig


@pytest.mark.parametrize("workers,threads,cores,want", [
    (0, 0, 8, (1, 8)), (1, 0, 8, (1, 8)), (4, 0, 8, (4, 2)), (3, 0, 8, (3, 2)),
    (16, 0, 8, (16, 1)), (2, 3, 8, (2, 3)), (0, 1, 2, (1, 1))])
def test_the_plan_shares_the_cores(workers, threads, cores, want):
    plan = ex.thread_plan(workers, threads, cores=cores)
    assert (plan.processes, plan.threads) == want and plan.cores == cores
    assert plan.processes * plan.threads <= max(cores, plan.processes)


def test_a_request_beyond_the_cores_is_cut_with_a_warning():
    with pytest.warns(UserWarning, match="would run 8 threads on 2 cores: using 1"):
        plan = ex.thread_plan(2, 4, cores=2)
    assert plan.threads == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ex.thread_plan(0, 2, cores=2).threads == 2


def test_a_scheduler_keeps_its_workers_setting():
    plan = ex.thread_plan(0, 0, scheduler="tcp://10.0.0.5:8786", cores=2)
    assert plan.threads == 0 and plan.cores is None
    assert plan.describe() == {"processes": 0, "threads_per_process": None, "cores": None}


def test_usable_cores_follow_the_affinity():
    import os

    assert ex.usable_cores() == len(os.sched_getaffinity(0))


def test_the_config_s_threads_reach_the_units_in_this_process(monkeypatch):
    seen = []

    def fake_job(eng, job, trf, progress):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        seen.append((set(blas), torch.get_num_threads()))
        return [job]

    monkeypatch.setattr(ex, "run_fit_job", fake_job)
    monkeypatch.setattr(ex, "_TRFeatures", lambda eng: None)
    progress = SimpleNamespace(check=lambda: None, sub=lambda lo, hi: None)
    eng = SimpleNamespace(progress=progress, source=SimpleNamespace(prepare=lambda e: None))
    before = torch.get_num_threads()
    runner = ex.executor_for(ComputeConfig(threads=1))
    assert isinstance(runner, ex.InProcess) and runner.plan.threads == 1
    job = SimpleNamespace(todo=("01",))
    computed, failures = runner.fits(eng, [job])
    assert computed == [job] and not failures
    assert seen == [({1}, 1)]
    assert torch.get_num_threads() == before  # given back after the units
