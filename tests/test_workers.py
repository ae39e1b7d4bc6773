"""Fit units cut for the executor (:func:`~napari_lesion_align.core.run.stages.cut_units`): with
N parallel slots, at least 2N units when the study has the subject x language pairs, each
within ``[encoding] stack_mb``; in one process the budget groups as before. A folder started
with one number of workers resumes with another (maps within float32 rounding)."""

from __future__ import annotations

import json
import math
import time
from itertools import product
from pathlib import Path

import pytest

from napari_lesion_align.core.run.config import load_config
from napari_lesion_align.core.base.errors import Cancelled
from napari_lesion_align.core.run.executor import InProcess, thread_plan
from napari_lesion_align.core.run.pipeline import run_analysis
from napari_lesion_align.core.run.stages import UNITS_PER_SLOT, cut_units
from test_pipeline import N_VOLS, write_study
from test_resume import tiny_model  # noqa: F401  (a fixture)

#: the tiny study's mask voxels and one subject's cleaned BOLD (3 runs, float32)
VOXELS = 24
SUBJECT_BYTES = 3 * N_VOLS * VOXELS * 4

# --------------------------------------------------------------------------- the rule
def _subjects(n: int, first: int = 1) -> list[str]:
    return [f"{s:02d}" for s in range(first, first + n)]


def test_in_one_process_the_budget_alone_groups_the_subjects():
    subs = _subjects(7)
    assert cut_units([(subs, 100)], 300, 1) == [[tuple(subs[:3]), tuple(subs[3:6]),
                                                 tuple(subs[6:])]]
    # stack_mb = 0, or a budget below one subject: one subject per unit
    for budget in (0, 99):
        assert cut_units([(subs, 100)], budget, 1) == [[(s,) for s in subs]]
    # the same cut whatever the number of subjects the budget could hold beyond them
    assert cut_units([(subs[:2], 100), (subs[2:], 50)], 10_000, 1) == [
        [tuple(subs[:2])], [tuple(subs[2:])]]


def test_the_lpp_shaped_study_spreads_over_the_workers():
    """3 runs of 300 volumes on the 4 mm mask (29,384 voxels): 101 MiB per subject, ten
    of them in the default budget of 1,024 MiB."""
    size, budget = 3 * 300 * 29_384 * 4, 1024 * 2**20
    four, sixteen = _subjects(4), _subjects(16)
    assert cut_units([(four, size)], budget, 1) == [[tuple(four)]]  # one unit: no spread
    assert cut_units([(four, size)], budget, 2) == [[(s,) for s in four]]
    assert [len(g) for g in cut_units([(sixteen, size)], budget, 2)[0]] == [4, 4, 4, 4]
    assert [len(g) for g in cut_units([(sixteen, size)], budget, 4)[0]] == [2] * 8
    assert [len(g) for g in cut_units([(sixteen, size)], budget, 1)[0]] == [10, 6]


@pytest.mark.parametrize("slots", [2, 3, 4, 8, 16])
def test_with_parallel_slots_at_least_two_units_per_slot_within_the_budget(slots):
    for counts, caps in product([(1,), (4,), (5, 3), (16,), (7, 7, 2), (40,), (49, 28, 35)],
                                [(1,), (3,), (10,), (2, 5, 40)]):
        size = 100
        classes = [(_subjects(n, first=100 * i), size * 1000 // caps[i % len(caps)])
                   for i, n in enumerate(counts)]
        budget = size * 1000
        cut = cut_units(classes, budget, slots)
        assert cut == cut_units(classes, budget, slots)  # deterministic
        n_pairs = sum(counts)
        n_units = sum(len(groups) for groups in cut)
        where = f"classes {counts}, caps {caps}, {slots} slots: {cut}"
        assert n_units >= min(n_pairs, UNITS_PER_SLOT * slots), where
        fewest = sum(math.ceil(len(s) / max(1, budget // b)) for s, b in classes)
        # spread, not scattered: the budget's units plus a few per slot at most
        assert n_units <= fewest + 2 * UNITS_PER_SLOT * slots + len(classes), where
        for (subjects, b), groups in zip(classes, cut):
            assert [s for g in groups for s in g] == subjects, where  # each once, in order
            assert all(1 <= len(g) <= max(1, budget // b) for g in groups), where
            assert max(map(len, groups)) - min(map(len, groups)) <= 1, where  # balanced


# --------------------------------------------------------------------------- the runs
class _CutFor(InProcess):
    """The units in this process, cut as for ``parallelism`` slots (the cut is all that
    differs between executors; the real cluster is below)."""

    def __init__(self, parallelism: int):
        super().__init__(thread_plan(threads=1))  # the workers' thread count
        self.parallelism = parallelism


def _fitted_with(out: Path) -> dict:
    return {p.stem: tuple(json.loads(p.read_text())["fitted_with"])
            for p in sorted((out / "units" / "fit").glob("*.json"))}


def _first_record_cancels(out: Path):
    records = out / "units" / "fit"
    return lambda: records.is_dir() and any(records.glob("*.json"))


def _budget_of(n_subjects: float) -> str:
    return f"stack_mb = {n_subjects * SUBJECT_BYTES / 2**20!r}\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model):  # noqa: F811
    """4 subjects, a budget of 2.5 subjects (2 per unit in one process), and the maps of
    an uninterrupted run in one process."""
    root = tmp_path_factory.mktemp("workers")
    cfg = write_study(root / "study", tiny_model, n_subjects=4)
    cfg.write_text(cfg.read_text().replace("[encoding]\n", "[encoding]\n" + _budget_of(2.5)))
    config = load_config(cfg)
    # one thread per process, as the cluster's workers below ([compute] threads)
    config = config.replace(compute=config.compute.replace(threads=1))
    run_analysis(config, root / "whole")
    assert set(_fitted_with(root / "whole").values()) == {("01", "02"), ("03", "04")}
    return config, root / "whole"


def _same_maps(a: Path, b: Path) -> None:
    """Two runs cut into other units: the maps within float32 rounding (tests/tolerances)."""
    from test_resume import _maps
    from tolerances import assert_maps_close

    assert_maps_close(_maps(a), _maps(b), n_subjects=4)


def test_the_units_follow_the_executors_parallelism(study, tmp_path):
    config, whole = study
    res = run_analysis(config, tmp_path / "two", executor=_CutFor(2))
    assert set(_fitted_with(tmp_path / "two").values()) == {("01",), ("02",), ("03",),
                                                            ("04",)}
    assert sorted(res.provenance["units"]["fits"]["computed"]) == [
        f"sub-{s}_lang-EN" for s in _subjects(4)]
    _same_maps(whole, tmp_path / "two")


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_after_a_change_of_the_number_of_workers(study, tmp_path, first, then):
    """Cancelled after the first unit under one cut, finished under the other: the done
    subjects are reused (records are per subject x language), only the others are fitted,
    cut anew by the same rule, and the maps match the uninterrupted run."""
    config, whole = study
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run_analysis(config, out, executor=_CutFor(first), cancel=_first_record_cancels(out))
    before = _fitted_with(out)
    # one unit landed: a subject alone (2 slots), or the first budget group (one process)
    assert before == ({"sub-01_lang-EN": ("01",)} if first == 2 else
                      {"sub-01_lang-EN": ("01", "02"), "sub-02_lang-EN": ("01", "02")})
    res = run_analysis(config, out, executor=_CutFor(then))
    units = res.provenance["units"]["fits"]
    assert sorted(units["reused"]) == sorted(before)
    assert sorted(units["computed"]) == [f"sub-{s}_lang-EN" for s in _subjects(4)
                                         if f"sub-{s}_lang-EN" not in before]
    after = _fitted_with(out)
    assert {k: after[k] for k in before} == before  # the done units were not redone
    # what was left, cut anew: in one process (2 per unit) 02-03 then 04; with 2 slots,
    # 03 and 04 alone
    left = {k: v for k, v in after.items() if k not in before}
    assert set(left.values()) == ({("02", "03"), ("04",)} if then == 1 else {("03",), ("04",)})
    _same_maps(whole, out)
    # resumed again with the cut it finished with: nothing to do
    again = run_analysis(config, out, executor=_CutFor(then))
    assert again.provenance["units"]["fits"]["computed"] == []


def test_a_local_cluster_run_resumes_in_one_process_and_the_other_way_round(study, tmp_path):
    """--workers 2 (a real LocalCluster, 2 workers x 1 thread) cancelled after its first
    unit, finished in this process; a run in this process cancelled after its first unit,
    finished on the cluster: both give the uninterrupted run's maps."""
    pytest.importorskip("distributed")
    from napari_lesion_align.core.run.executor import DaskExecutor

    config, whole = study
    cluster = DaskExecutor.local(2, threads=1)
    try:
        assert cluster.parallelism == 2
        # a cluster given by its client (--scheduler): its workers' threads
        assert DaskExecutor(cluster.client).parallelism == 2
        out = tmp_path / "cluster_first"
        with pytest.raises(Cancelled):
            run_analysis(config, out, executor=cluster, cancel=_first_record_cancels(out))
        _settle(cluster.client)  # units running when cancelled still land
        before = _fitted_with(out)
        assert 1 <= len(before) < 4 and set(map(len, before.values())) == {1}
        res = run_analysis(config, out)
        assert sorted(res.provenance["units"]["fits"]["reused"]) == sorted(before)
        assert len(res.provenance["units"]["fits"]["computed"]) == 4 - len(before)
        _same_maps(whole, out)

        out = tmp_path / "process_first"
        with pytest.raises(Cancelled):
            run_analysis(config, out, cancel=_first_record_cancels(out))
        assert _fitted_with(out) == {"sub-01_lang-EN": ("01", "02"),
                                     "sub-02_lang-EN": ("01", "02")}
        res = run_analysis(config, out, executor=cluster)
        assert sorted(res.provenance["units"]["fits"]["computed"]) == ["sub-03_lang-EN",
                                                                       "sub-04_lang-EN"]
        assert {_fitted_with(out)[f"sub-{s}_lang-EN"] for s in ("03", "04")} == {("03",),
                                                                                ("04",)}
        _same_maps(whole, out)
    finally:
        cluster.close()


def _settle(client, limit_s: float = 300.0) -> None:
    """Wait until no worker runs a unit (a cancelled unit already running still lands)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the workers still run units {limit_s:.0f} s after the cancel")
