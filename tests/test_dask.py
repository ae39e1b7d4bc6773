"""The analysis' units on a real Dask LocalCluster (the 'dask' extra): the same maps as in
one process, failures named while the other units are saved, a killed worker replaced."""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_lesion_align import cli  # noqa: E402
from napari_lesion_align.core.run.config import load_config  # noqa: E402
from napari_lesion_align.core.base.errors import LesionAlignError  # noqa: E402
from napari_lesion_align.core.run.executor import (DaskExecutor, InProcess,  # noqa: E402
                                                   thread_plan)
from napari_lesion_align.core.run import pipeline  # noqa: E402
from napari_lesion_align.core.run.pipeline import run_analysis  # noqa: E402
from test_resume import LESIONS, _maps, _study, _units, tiny_model  # noqa: E402,F401
from tolerances import assert_maps_close  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes with 1 BLAS thread each."""
    ex = DaskExecutor.local(2, threads=1)
    yield ex
    ex.close()


def _ceiling_record(out: Path) -> dict:
    return json.loads((out / "units" / "ceiling" / "lang-EN.json").read_text())


def _assert_same_maps(a: Path, b: Path) -> None:
    """Two runs with the same thread count per fit: bit for bit."""
    ma, mb = _maps(a), _maps(b)
    assert ma.keys() == mb.keys() and ma
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


def test_local_cluster_gives_the_maps_of_one_process_and_names_a_failing_unit(
        tmp_path, tiny_model, cluster, monkeypatch):
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=4, extra=LESIONS))
    # the workers' thread count ([compute] threads = 1): identical results
    run_analysis(cfg, tmp_path / "seq", executor=InProcess(thread_plan(threads=1)))
    assert cluster.description.startswith("Dask LocalCluster: 2 workers x 1 BLAS thread")
    said = []
    res = run_analysis(cfg, tmp_path / "dask", executor=cluster,
                       progress=lambda frac, msg: said.append(msg))
    assert res.provenance["executor"] == cluster.description
    # the workers' fits left the cleaned series; the noise ceiling read them after the
    # fits, in a stage of its own, and removed them; same maps
    assert res.provenance["units"]["ceilings"]["computed"] == ["lang-EN"]
    assert any("noise ceiling 1/1 languages done" in m for m in said)
    assert _ceiling_record(tmp_path / "dask")["from_fits"] is True
    assert not (tmp_path / "dask" / "units" / "scratch").exists()
    assert sorted(_units(tmp_path / "dask")["fits"]["computed"]) == [
        f"sub-{s:02d}_lang-EN" for s in range(1, 5)]
    _assert_same_maps(tmp_path / "seq", tmp_path / "dask")
    assert (tmp_path / "seq" / "summary.tsv").read_text() == \
        (tmp_path / "dask" / "summary.tsv").read_text()
    # without room on the disk for the series the ceiling reads the runs itself, beside the
    # fits, in their stage (its message is the fits' stage's); the same maps
    monkeypatch.setattr(pipeline, "ceiling_spills", lambda *args: set())
    said.clear()
    run_analysis(cfg, tmp_path / "beside", executor=cluster,
                 progress=lambda frac, msg: said.append(msg))
    assert any("noise ceiling EN done" in m for m in said)
    assert not any("languages done" in m for m in said)
    assert _ceiling_record(tmp_path / "beside")["from_fits"] is False
    _assert_same_maps(tmp_path / "seq", tmp_path / "beside")
    monkeypatch.undo()
    # one subject's data cannot be read when its unit runs (the file is damaged after the
    # inputs were checked, before the output folder was claimed): its unit fails, is
    # named, and the other units are saved; fixing the file and running again computes
    # only it
    bad = tmp_path / "study" / "sub-03" / "run-2.nii.gz"
    good = bad.read_bytes()
    raw = gzip.decompress(good)

    def damage_after_the_checks(frac, msg):
        if msg.startswith("lesions and features"):  # the model's stage: after the checks
            bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))

    out = tmp_path / "failing"
    with pytest.raises(LesionAlignError, match=r"1 of 4 fit units failed: sub-03_lang-EN"):
        run_analysis(cfg, out, executor=cluster, progress=damage_after_the_checks)
    assert not (out / "result.json").exists()
    assert sorted(p.stem for p in (out / "units" / "fit").glob("*.json")) == [
        "sub-01_lang-EN", "sub-02_lang-EN", "sub-04_lang-EN"]
    bad.write_bytes(good)
    again = run_analysis(cfg, out, executor=cluster)
    assert again.provenance["units"]["fits"]["computed"] == ["sub-03_lang-EN"]
    _assert_same_maps(tmp_path / "seq", out)


def test_the_workers_import_what_the_units_need_as_they_start(cluster):
    """The local cluster's workers import nilearn's maskers and the stages while the main
    process checks the data (not torch: only the model's worker needs it)."""
    from distributed import wait

    assert len(cluster._warm) == 2
    wait(cluster._warm, timeout=120)
    got = cluster.client.run(lambda: sorted(
        m for m in ("nilearn.maskers", "napari_lesion_align.core.run.stages")
        if m in __import__("sys").modules))
    assert list(got.values()) == [["napari_lesion_align.core.run.stages",
                                   "nilearn.maskers"]] * 2


def test_the_provenance_names_the_device_of_the_worker_that_ran_the_model(tmp_path,
                                                                         tiny_model,
                                                                         cluster):
    """A worker loaded the model (its features were missing): the run's provenance says so
    and names that worker's device, instead of what this process would resolve."""
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=2))
    cfg = cfg.replace(compute=cfg.compute.replace(feature_store=str(tmp_path / "fs")))
    res = run_analysis(cfg, tmp_path / "out", executor=cluster)
    assert res.provenance["units"]["features"]["computed"]
    assert res.provenance["compute"] == {"device": "cpu", "dtype": "float32",
                                         "model_loaded": True}


def test_cli_workers_runs_on_a_local_cluster(tmp_path, tiny_model, capsys):
    """--workers 2: the maps equal the in-process ones (the thread counts may differ: within
    float32 rounding, tests/tolerances.py), and the cluster is announced on the console."""
    cfg = _study(tmp_path / "study", tiny_model, n_subjects=2)
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Dask LocalCluster: 2 workers" in err
    assert_maps_close(_maps(tmp_path / "one"), _maps(tmp_path / "two"), n_subjects=2)
    doc = json.loads((tmp_path / "two" / "result.json").read_text())
    assert doc["executor"].startswith("Dask LocalCluster: 2 workers")


def test_a_killed_worker_is_replaced_and_the_run_completes(tmp_path, tiny_model, cluster):
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=6))
    out = tmp_path / "out"
    records = out / "units" / "fit"
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = run_analysis(cfg, out, executor=cluster)
        except Exception as err:  # noqa: BLE001 - reported below
            outcome["error"] = err

    pids = cluster.client.run(os.getpid)  # {worker address: pid}
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and t.is_alive():
        if records.is_dir() and any(records.glob("*.json")):
            break
        time.sleep(0.01)
    assert t.is_alive(), "the run ended before a worker could be killed"
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    t.join(600)
    assert not t.is_alive(), "the run hangs after a worker died"
    if "error" in outcome:  # a clear error is acceptable; the rerun must then complete
        assert isinstance(outcome["error"], LesionAlignError), outcome["error"]
        run_analysis(cfg, out, executor=cluster)
    assert (out / "result.json").is_file()
    assert sorted(p.stem for p in records.glob("*.json")) == [
        f"sub-{s:02d}_lang-EN" for s in range(1, 7)]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for p in out.glob("*_statmap.nii.gz"):  # every map is complete
        assert np.isfinite(nib.load(str(p)).get_fdata()).any()
    # the cluster has its two workers again
    deadline = time.monotonic() + 60
    while len(cluster.client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(cluster.client.scheduler_info()["workers"]) == 2


def test_cancel_stops_the_units_not_started_and_the_rerun_resumes(tmp_path, tiny_model,
                                                                  cluster):
    from napari_lesion_align.core.base.errors import Cancelled

    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=8))
    out = tmp_path / "out"
    records = out / "units" / "fit"

    def cancel():  # as the GUI's Cancel button does, once the first unit has landed
        return records.is_dir() and any(records.glob("*.json"))

    with pytest.raises(Cancelled):
        run_analysis(cfg, out, executor=cluster, cancel=cancel)
    time.sleep(2)  # units already running on a worker may still land
    done = sorted(p.stem for p in records.glob("*.json"))
    assert 1 <= len(done) < 8 and not (out / "result.json").exists()
    res = run_analysis(cfg, out, executor=cluster)
    # what was done is reused, the rest computed; a unit that was running at the cancel
    # may land later than the 2 s on a busy machine (then it is reused too, not computed)
    fits = res.provenance["units"]["fits"]
    assert set(done) <= set(fits["reused"]) and not set(fits["reused"]) & set(fits["computed"])
    assert sorted(fits["reused"] + fits["computed"]) == [f"sub-{s:02d}_lang-EN"
                                                         for s in range(1, 9)]
    # the cancel stopped the units not started: of the 8, at most 2 landed before it was
    # seen (one per worker) and 2 were running
    assert len(fits["computed"]) >= 8 - 4
