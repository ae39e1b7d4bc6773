"""The analysis as units on disk: resume after a kill, shared features, one analysis per
output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align import cli
from napari_lesion_align.core.run.config import load_config
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.run.pipeline import run_analysis
from test_pipeline import write_study
from tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
#: a shared lesion of 10 % of the neurons (Wanda) and its random control
LESIONS = ('\n[lesions]\nelement = "neurons"\nmethod = "wanda"\nk_percent = 10.0\n'
           'selections = ["shared"]\ncorrection = "none"\n')


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


def _study(root: Path, model: Path, n_subjects: int, extra: str = "") -> Path:
    """The test_pipeline study, one subject per fit unit (stack_mb = 0)."""
    cfg = write_study(root, model, n_subjects=n_subjects)
    cfg.write_text(cfg.read_text().replace("[encoding]\n", "[encoding]\nstack_mb = 0\n") + extra)
    return cfg


def _maps(out: Path) -> dict:
    """Every map file of a folder: name -> values (NaN where excluded)."""
    return {p.name: np.asarray(nib.load(str(p)).dataobj)
            for p in sorted(out.glob("*_statmap.nii.gz"))}


def _units(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())["units"]


def test_kill_in_the_middle_of_the_fits_and_resume(tmp_path, tiny_model):
    """SIGKILL while subjects are being fitted, run again: the maps equal those of an
    uninterrupted run bit for bit, and only the missing subjects were fitted again."""
    lesions = '\n[lesions]\nelement = "neurons"\nmethod = "wanda"\nk_percent = 10.0\n' \
              'selections = ["shared"]\ncorrection = "none"\nrandom_controls = 1\n' \
              '[controls]\nshifts = 1\nshuffled_words = false\nabove_word_rate = false\n'
    cfg = _study(tmp_path / "study", tiny_model, n_subjects=6, extra=lesions)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # every run in a fresh process with the same environment: BLAS and torch results
    # depend on their thread counts, which this test process' other tests have changed
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    command = [sys.executable, "-m", "napari_lesion_align.cli", "run", str(cfg), "--quiet"]
    subprocess.run(command + ["--out", str(whole)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(command + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "units" / "fit"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.stem for p in records.glob("*.json"))
    assert 2 <= len(done_before) < 6 and not (killed / "result.json").exists()
    for p in killed.glob("*_statmap.nii.gz"):  # whatever has a final name is complete
        nib.load(str(p)).get_fdata()
    # the rerun computes what is missing, and only that
    subprocess.run(command + ["--out", str(killed)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    fits = _units(killed)["fits"]
    assert sorted(fits["reused"]) == done_before
    assert sorted(fits["computed"]) == sorted(
        f"sub-{s:02d}_lang-EN" for s in range(1, 7) if f"sub-{s:02d}_lang-EN" not in done_before)
    assert _units(killed)["features"]["computed"] == 0  # all stored before the kill
    a, b = _maps(whole), _maps(killed)
    # per subject: r intact, r + deltar of shared and of its control, r of the two controls;
    # group: t/p/q of the intact alignment, t/p/q/reldrop of each lesion, t/p/q/beyondrandom
    # of shared against its draw, t/p/q of each control; the noise ceiling (ceiling, isc,
    # qceiling) and r / ceiling of intact, shared and the two controls
    assert a.keys() == b.keys() and len(a) == 6 * 7 + 3 + 2 * 4 + 4 + 2 * 3 + 3 + 4
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (whole / "summary.tsv").read_text() == (killed / "summary.tsv").read_text()
    # no temporary file is left under a final name, nothing half-written
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]


def test_a_second_analysis_reads_the_shared_features(tmp_path, tiny_model):
    """Features are content-addressed: another analysis of the same words, model, layer and
    options (here: other alphas) reads them from the feature store instead of the model."""
    store = tmp_path / "features"
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=2))
    cfg = cfg.replace(compute=cfg.compute.replace(feature_store=str(store)))
    first = run_analysis(cfg, tmp_path / "a")
    assert first.provenance["units"]["features"] == {"computed": 3, "reused": 0}
    n_files = len(list(store.rglob("*.npy")))
    assert n_files == 3  # one per run
    other = cfg.replace(encoding=cfg.encoding.replace(alphas=(1.0, 100.0)))
    second = run_analysis(other, tmp_path / "b")
    assert second.provenance["units"]["features"] == {"computed": 0, "reused": 3}
    assert len(list(store.rglob("*.npy"))) == n_files
    assert not np.array_equal(first.get("01", "EN"), second.get("01", "EN"), equal_nan=True)
    # another layer is other features
    third = run_analysis(cfg.replace(model=cfg.model.replace(layer=1)), tmp_path / "c")
    assert third.provenance["units"]["features"] == {"computed": 3, "reused": 0}


def test_one_analysis_per_output_folder(tmp_path, tiny_model, capsys):
    cfg = _study(tmp_path / "study", tiny_model, n_subjects=2)
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    first = _maps(out)
    # the same config again: nothing to do
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert _units(out)["fits"] == {"computed": [], "reused": ["sub-01_lang-EN",
                                                              "sub-02_lang-EN"]}
    assert "resumed: 2 subject fits were already done" in capsys.readouterr().out
    # another analysis into the same folder is refused, naming what differs
    other = cfg.with_name("other.toml")
    other.write_text(cfg.read_text().replace("logspace = [0, 6, 7]", "logspace = [0, 3, 4]"))
    assert cli.main(["run", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another analysis" in err[0]
    assert "encoding.alphas" in err[0] and "--force" in err[0]
    for name, values in _maps(out).items():  # nothing was touched
        np.testing.assert_array_equal(values, first[name])
    # --force deletes that analysis' files (only those) and runs the new one
    (out / "notes.txt").write_text("mine")
    assert (out / "report" / "report.html").is_file()  # the first analysis' report
    assert cli.main(["run", str(other), "--out", str(out), "--quiet", "--force",
                     "--no-report"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "report").exists()  # its report went with its maps (names.OWN_FOLDERS)
    assert _units(out)["fits"]["computed"] == ["sub-01_lang-EN", "sub-02_lang-EN"]


def test_group_statistics_options_resume_without_refitting(tmp_path, tiny_model):
    """alpha / correction / min_relative_drop change only the group statistics: the same
    folder is resumed, the subject fits are reused, the group maps are recomputed."""
    lesions = '\n[lesions]\nelement = "neurons"\nmethod = "wanda"\nk_percent = 10.0\n' \
              'selections = ["shared"]\nrandom_control = false\ncorrection = "none"\n'
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=3, extra=lesions))
    out = tmp_path / "out"
    a = run_analysis(cfg, out)
    p_before = np.asarray(a.group_maps[("EN", "shared", "p")]).copy()
    b = run_analysis(cfg.replace(lesions=cfg.lesions.replace(alpha=0.2)), out)
    assert b.provenance["units"]["fits"]["computed"] == []
    assert json.loads((out / "result.json").read_text())["config"]["lesions"]["alpha"] == 0.2
    np.testing.assert_array_equal(b.group_maps[("EN", "shared", "p")], p_before)


def test_a_memory_only_key_resumes_without_refitting(tmp_path, tiny_model):
    """[features] max_batch_tokens changes the memory of the feature passes, not the
    features: lowering it after running out of memory resumes the folder (no --force,
    nothing computed again)."""
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=2))
    out = tmp_path / "out"
    a = run_analysis(cfg, out)
    b = run_analysis(cfg.replace(features=cfg.features.replace(max_batch_tokens=300)), out)
    assert b.provenance["units"]["fits"]["computed"] == []
    assert json.loads((out / "result.json").read_text())["config"]["features"][
        "max_batch_tokens"] == 300
    np.testing.assert_array_equal(b.get(b.subjects[0], "EN"), a.get(a.subjects[0], "EN"))


def test_foreign_folders_are_never_written_into(tmp_path, tiny_model):
    """An output folder with files of the user's (e.g. the study folder itself, whose
    mask.nii.gz has an output's name) or an old result without units/ is refused."""
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=1))
    study = tmp_path / "study"
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    with pytest.raises(LesionAlignError, match="is not empty"):
        run_analysis(cfg, study)
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before
    with pytest.raises(LesionAlignError, match="is not empty"):
        run_analysis(cfg, study, force=True)  # --force deletes analyses, never user files
    old = tmp_path / "old"
    old.mkdir()
    (old / "result.json").write_text("{}")
    with pytest.raises(LesionAlignError, match="earlier version"):
        run_analysis(cfg, old)


def test_a_changed_input_file_reruns_its_unit(tmp_path, tiny_model):
    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=2))
    out = tmp_path / "out"
    run_analysis(cfg, out)
    run2 = tmp_path / "study" / "sub-02" / "run-2.nii.gz"
    img = nib.load(str(run2))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 1.5 + 3, img.affine), str(run2))
    res = run_analysis(cfg, out)
    assert res.provenance["units"]["fits"] == {"computed": ["sub-02_lang-EN"],
                                               "reused": ["sub-01_lang-EN"]}


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, tiny_model):
    """Two runs into one folder at once: the second is refused (a lock held while the first
    runs, released when it ends, however it ends); an --out that cannot be written is one
    message."""
    from napari_lesion_align.core.run.store import OutputFolder, identity

    cfg = load_config(_study(tmp_path / "study", tiny_model, n_subjects=1))
    out = tmp_path / "out"
    first = OutputFolder.open(out, identity(cfg))  # a run in progress holds the folder
    with pytest.raises(LesionAlignError, match=r"another run is writing into this folder "
                                               rf"\(process {os.getpid()}\)"):
        run_analysis(cfg, out)
    first.close()
    run_analysis(cfg, out)  # now free
    assert (out / "result.json").is_file()
    with pytest.raises(LesionAlignError, match="exists and is not a folder"):
        run_analysis(cfg, tmp_path / "study" / "mask.nii.gz")
    with pytest.raises(LesionAlignError, match="cannot write the output folder"):
        run_analysis(cfg, tmp_path / "study" / "mask.nii.gz" / "out")  # below a file


def test_an_empty_or_underpowered_result_says_why(tmp_path, tiny_model, capsys):
    """No voxel passes the intact group test (alpha 1e-12 with 3 subjects: impossible for a
    t-test with 2 degrees of freedom here): the console, summary.tsv (the group intact
    row's note) and result.json say the lesion and category maps are empty and what would
    help. With a usual alpha the same 3 subjects are called underpowered, also a group-only
    rerun (the fits are reused)."""
    import pandas as pd

    extra = LESIONS.replace('correction = "none"', 'correction = "fdr"\nalpha = 1e-12')
    cfg = _study(tmp_path / "study", tiny_model, n_subjects=3, extra=extra)
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    console = capsys.readouterr().out
    why = "EN: no voxel passes the intact model's group test (FDR-corrected p < 1e-12, 3 subjects)"
    assert f"warning: {why}" in console and "category maps of EN are empty" in console
    summary = pd.read_csv(out / "summary.tsv", sep="\t", dtype={"subject": str})
    row = summary[(summary["subject"] == "group") & (summary["condition"] == "intact")]
    assert row["note"].iloc[0].startswith(why[4:])
    assert summary[summary["subject"] != "group"]["note"].isna().all()
    assert any(w.startswith(why) for w in json.loads((out / "result.json").read_text())["warnings"])
    q = nib.load(str(out / "group_lang-EN_desc-shared_stat-q_statmap.nii.gz")).get_fdata()
    assert np.nanmin(q) == 1.0  # indeed: nothing tested, nothing significant
    # a usual alpha: voxels pass, but 3 subjects are flagged as little power
    cfg.write_text(cfg.read_text().replace("alpha = 1e-12", "alpha = 0.05"))
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    console = capsys.readouterr().out
    assert "warning: EN: only 3 subjects with data: the group tests have little power" \
        in console and "no voxel passes" not in console
    assert _units(out)["fits"]["computed"] == []


def test_the_cross_layout_tolerances_take_rounding_and_refuse_real_changes():
    """tests/tolerances.py: the float32 rounding of another thread layout passes (the p of
    1 of 120 voxels that once failed an absolute 1e-6), a real change of r does not, and a
    thresholded map has no tolerance."""
    from tolerances import R_ATOL, assert_maps_close, tolerance

    p = "group_lang-EN_desc-nullShuffled_stat-p_statmap.nii.gz"
    r = "sub-01_lang-EN_desc-intact_stat-r_statmap.nii.gz"
    a = {p: np.array([0.39047596, 1.0, np.nan], np.float32),
         r: np.array([0.25, -0.5, np.nan], np.float32)}
    b = {p: np.array([0.39047736, 1.0, np.nan], np.float32),
         r: np.array([0.25 + 4e-7, -0.5, np.nan], np.float32)}
    assert_maps_close(a, b, n_subjects=2)
    b[r] = np.array([0.25 + 1e-4, -0.5, np.nan], np.float32)  # a change of r, not rounding
    with pytest.raises(AssertionError):
        assert_maps_close(a, b, n_subjects=2)
    b[r] = np.array([0.25, -0.5, 0.1], np.float32)  # a voxel excluded in one run only
    with pytest.raises(AssertionError):
        assert_maps_close(a, b, n_subjects=2)
    assert 1e-6 < R_ATOL < 1e-5
    with pytest.raises(KeyError, match="beyondrandom"):
        tolerance("beyondrandom", 2)
