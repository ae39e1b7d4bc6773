"""Faults while a result is being written over an earlier one: afterwards the output folder
loads as exactly one complete result, or is refused with a message saying how to finish it;
never a mix of two runs. Each run is a fresh process (killed, or limited in file size)."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.results.result import AlignmentResult
from test_resume import LESIONS, REPO, _study, tiny_model  # noqa: F401 (a fixture)


def _command(cfg: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "napari_lesion_align.cli", "run", str(cfg), "--out",
            str(out), "--quiet", *extra]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def _run(cfg: Path, out: Path, *extra, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_command(cfg, out, *extra), env=_env(), capture_output=True,
                          text=True, **kw)


def _content(out: Path) -> dict:
    """What a result is: every file but result.json (provenance: times) and units/."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()
            if p.is_file() and p.name != "result.json"}


def _state(out: Path, complete: dict) -> str:
    """Which complete result the folder loads as (a key of ``complete``), or "refused"."""
    try:
        AlignmentResult.load(out, lazy=True)
    except LesionAlignError as err:
        assert "\n" not in str(err)
        assert "run the same command again" in str(err), str(err)
        return "refused"
    content = _content(out)
    hits = [name for name, c in complete.items() if c == content]
    assert hits, "the folder loads, but as none of the complete results"
    return hits[0]


def _kill_after(cfg: Path, out: Path, delay: float) -> None:
    """Start a run, wait until it holds the folder (its pid in the lock) plus ``delay``
    seconds, SIGKILL it."""
    proc = subprocess.Popen(_command(cfg, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lock = out / "units" / ".lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                break
        except OSError:
            pass
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model):
    """A study, config A, config B (other group statistics: the fits are reused, every
    group file is written again), and the complete results of A and of B in fresh folders."""
    root = tmp_path_factory.mktemp("faults")
    cfg_a = _study(root / "study", tiny_model, n_subjects=3, extra=LESIONS)
    cfg_b = cfg_a.with_name("b.toml")
    cfg_b.write_text(cfg_a.read_text().replace('correction = "none"',
                                               'correction = "none"\nalpha = 0.3'))
    ref_a, ref_b = root / "ref-a", root / "ref-b"
    for cfg, ref in ((cfg_a, ref_a), (cfg_b, ref_b)):
        assert _run(cfg, ref, check=True).returncode == 0
    assert _content(ref_a) != _content(ref_b)  # B's group maps differ from A's
    return {"a": cfg_a, "b": cfg_b, "ref_a": ref_a, "ref_b": ref_b}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("change", ["group options", "an input file"])
def test_sigkill_while_writing_over_an_earlier_result(tmp_path, study, change):
    """An earlier complete result, then a run that writes over it, killed at several
    moments: each time the folder is the earlier result, the new one, or refused; the same
    command run again finishes it, equal to an uninterrupted run."""
    out = _copy(study["ref_a"], tmp_path / "out")
    complete = {"earlier": _content(study["ref_a"])}
    if change == "group options":
        cfg = study["b"]
        complete["new"] = _content(study["ref_b"])
    else:  # a subject's BOLD run changed: its unit is fitted again, then the group stage
        cfg = study["a"]
        run2 = cfg.parent / "sub-02" / "run-2.nii.gz"
        saved = run2.read_bytes()
        img = nib.load(str(run2))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 1.5 + 3, img.affine), str(run2))
    try:
        if change != "group options":
            ref_new = tmp_path / "ref-new"
            assert _run(cfg, ref_new).returncode == 0
            complete["new"] = _content(ref_new)
        states = []
        for delay in (0.0, 0.5, 1.2):
            _kill_after(cfg, out, delay)
            states.append(_state(out, complete))  # earlier, new or refused: never a mix
        # once the new result is complete, a later kill does not undo it
        after_new = states[states.index("new"):] if "new" in states else []
        assert "earlier" not in after_new, states
        # the same command again: one complete result, the new one
        done = _run(cfg, out)
        assert done.returncode == 0, done.stderr
        assert _state(out, complete) == "new"
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    finally:
        if change != "group options":
            run2.write_bytes(saved)


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_write_that_fails_part_way(tmp_path, study):
    """RLIMIT_FSIZE lets the group maps through but not result.json: one line naming the
    file and the fix (exit 2), the folder refused (not a mix of the earlier result and the
    new maps), nothing temporary left; run again without the limit: the new result."""
    out = _copy(study["ref_a"], tmp_path / "out")
    # (report/ is made after result.json, from the complete result)
    sizes = {str(p.relative_to(study["ref_b"])): p.stat().st_size
             for p in study["ref_b"].rglob("*")
             if p.is_file() and p.relative_to(study["ref_b"]).parts[0] != "report"}
    limit = max(v for k, v in sizes.items() if k != "result.json") + 1024
    assert limit < sizes["result.json"]  # result.json is the file that cannot be written
    failed = _run(study["b"], out, preexec_fn=_limit_file_size(limit))
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    assert "result.json: cannot be written (File too large)" in lines[0]
    assert "run the same command again" in lines[0]
    complete = {"earlier": _content(study["ref_a"]), "new": _content(study["ref_b"])}
    assert _state(out, complete) == "refused"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    again = _run(study["b"], out)
    assert again.returncode == 0, again.stderr
    assert _state(out, complete) == "new"


def test_two_runs_into_one_folder_at_once(tmp_path, study):
    """Two runs started together into one new folder: one does the work, the other is
    refused with one line (or, if it came after, finds nothing left to do); the folder is
    one complete result."""
    out = tmp_path / "out"
    procs = [subprocess.Popen(_command(study["a"], out), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, err in results:
        if rc == 2:
            assert len(err.strip().splitlines()) == 1
            assert "another run is writing into this folder" in err
    assert _state(out, {"a": _content(study["ref_a"])}) == "a"


def test_a_changed_or_missing_file_is_refused_by_load_and_the_reader(tmp_path, study):
    """The manifest: a map changed or removed by hand after the run makes the folder
    refused by load (and so by the napari reader and the widgets), naming the file."""
    from napari_lesion_align._reader import napari_get_reader

    out = _copy(study["ref_a"], tmp_path / "out")
    AlignmentResult.load(out)  # as written: it loads
    name = "group_lang-EN_desc-shared_stat-t_statmap.nii.gz"
    original = (out / name).read_bytes()
    (out / name).write_bytes((out / name.replace("shared", "intact")).read_bytes())
    with pytest.raises(LesionAlignError, match=f"{name} has changed"):
        AlignmentResult.load(out)
    reader = napari_get_reader(str(out))
    with pytest.raises(LesionAlignError, match="do not match result.json"):
        reader(str(out))
    (out / name).unlink()
    with pytest.raises(LesionAlignError, match=f"{name} is missing"):
        AlignmentResult.load(out)
    (out / name).write_bytes(original)
    AlignmentResult.load(out)


def test_maps_hold_nan_outside_the_mask(study):
    """Every statistic map (r, delta r, t, p, q, relative drop) is NaN outside the mask, so
    thresholding it without a mask in another tool shows nothing there; category maps hold
    0 (no category) outside the mask."""
    ref = study["ref_a"]
    mask = np.asarray(nib.load(str(ref / "mask.nii.gz")).dataobj) > 0
    stats = set()
    for p in ref.glob("*_statmap.nii.gz"):
        v = np.asarray(nib.load(str(p)).dataobj)
        assert np.isnan(v[~mask]).all(), p.name
        assert np.isfinite(v[mask]).any(), p.name
        stats.add(p.name.split("_stat-")[1].split("_")[0])
    assert {"r", "deltar", "t", "p", "q", "reldrop"} <= stats


def test_save_replaces_only_a_saved_result(tmp_path, study):
    """AlignmentResult.save (the Run widget's "Save result...") writes a new folder or
    replaces an earlier saved result as a whole; it refuses a folder with other files and
    an analysis' output folder, leaving them as they were."""
    res = AlignmentResult.load(study["ref_a"], lazy=True)
    dest = tmp_path / "saved"
    res.save(dest)

    def same(a: Path, b: Path) -> bool:  # (summary.tsv: the same rows, maybe reordered)
        ca, cb = _content(a), _content(b)
        del ca["summary.tsv"], cb["summary.tsv"]
        rows = [sorted((f / "summary.tsv").read_text().splitlines()) for f in (a, b)]
        return ca == cb and rows[0] == rows[1]

    assert same(dest, study["ref_a"]) and not (dest / "units").exists()
    AlignmentResult.load(dest)
    (dest / "group_lang-EN_desc-shared_stat-t_statmap.nii.gz").write_bytes(b"stale")
    (dest / "report").mkdir()  # a report made of the saved result (names.OWN_FOLDERS)
    (dest / "report" / "report.html").write_text("<html>stale</html>")
    res.save(dest)  # over an earlier saved result: replaced as a whole (its report too)
    assert same(dest, study["ref_a"]) and not (dest / "report").exists()
    AlignmentResult.load(dest)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(LesionAlignError, match="not a saved result"):
        res.save(mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    run_folder = _copy(study["ref_a"], tmp_path / "run")
    before = _content(run_folder)
    with pytest.raises(LesionAlignError, match="output folder"):
        res.save(run_folder)
    assert _content(run_folder) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_stale_maps_do_not_survive_into_the_new_result(tmp_path, study):
    """A map of ours that the new result does not list (left by an earlier analysis or
    group stage) is deleted before result.json is written; files that are not ours stay."""
    out = _copy(study["ref_a"], tmp_path / "out")
    stale = out / "group_lang-EN_desc-oldlesion_stat-t_statmap.nii.gz"
    stale.write_bytes((out / "group_lang-EN_desc-shared_stat-t_statmap.nii.gz").read_bytes())
    (out / "notes.txt").write_text("mine")
    done = _run(study["b"], out)
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert _state(out, {"b": _content(study["ref_b"])}) == "b"


def test_a_half_written_map_of_a_killed_worker_is_removed_when_the_run_ends(
        tmp_path, tiny_model, monkeypatch):
    """A Dask worker killed while it writes a map leaves its temporary file; the unit is
    fitted again elsewhere and the run completes: the folder it ends with holds no
    temporary file (here the kill's leftover is planted while the fits run)."""
    from napari_lesion_align.core.run import executor
    from napari_lesion_align.core.run.config import load_config
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=2))
    out = tmp_path / "out"
    real = executor.InProcess.fits
    planted = []

    def fits(self, eng, jobs, ceilings=()):
        leftover = out / ".sub-01_lang-EN_desc-intact_stat-r_statmap.nii.gz.x1y2z3.tmp"
        leftover.write_bytes(b"half a map")  # what a SIGKILL during atomic_write leaves
        planted.append(leftover)
        return real(self, eng, jobs, ceilings)

    monkeypatch.setattr(executor.InProcess, "fits", fits)
    result = run_analysis(cfg, out)
    assert planted and not planted[0].exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert result.subjects == ["01", "02"]
    AlignmentResult.load(out, lazy=True)  # a complete result
