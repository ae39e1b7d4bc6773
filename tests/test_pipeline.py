"""End to end: config files -> CLI -> output folder, on a tiny random model (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_lesion_align import cli
from napari_lesion_align.core.run.config import load_config
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.results.result import SUMMARY_COLUMNS, AlignmentResult
from napari_lesion_align.core.data import demo
from tiny_models import make_tiny_model

AFFINE = np.array([[4.0, 0, 0, -10], [0, 4.0, 0, -12], [0, 0, 4.0, -8], [0, 0, 0, 1]])
SHAPE = (5, 6, 4)
N_VOLS = 150  # the demo annotations' runs: 290 s of words, 300 s of audio at TR 2 s


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


def _word_rate_signal(textgrid: Path) -> np.ndarray:
    """Word presence per volume convolved with the SPM HRF.

    Any word model predicts it: volumes without words have all-zero features (the paper's
    binning), volumes with words the mean of their word vectors.
    """
    from nilearn.glm.first_level import spm_hrf

    from napari_lesion_align.core.data.stimuli import read_words

    w = read_words(textgrid)
    rate = np.bincount(np.floor(w.onsets / 2.0).astype(int), minlength=N_VOLS)[:N_VOLS] > 0
    s = np.convolve(rate - rate.mean(), spm_hrf(2.0, oversampling=1))[:N_VOLS]
    return s / s.std()


def write_study(root: Path, model_folder: Path, n_subjects=2, n_vols=N_VOLS, seed=0):
    """A small NIfTI study: 2 subjects x 3 runs of the demo's English annotations.

    Voxels with x < 0 carry the word-rate signal (plus noise), the others only noise;
    one voxel is constant (it must be excluded and counted). Returns the config path.
    """
    rng = np.random.default_rng(seed)
    stim = root / "stim"
    stim.mkdir(parents=True)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 1:5, 1:3] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(root / "mask.nii.gz"))
    xs = (np.indices(SHAPE)[0] * 4.0 - 10)  # MNI x of every voxel
    for r in (1, 2, 3):
        shutil.copy(demo.DEMO_DIR / f"EN_run-{r}.TextGrid", stim / f"EN_run-{r}.TextGrid")
    for s in range(1, n_subjects + 1):
        sub = root / f"sub-{s:02d}"
        sub.mkdir()
        for r in (1, 2, 3):
            sig = _word_rate_signal(stim / f"EN_run-{r}.TextGrid")
            data = rng.normal(0, 1, SHAPE + (n_vols,)).astype(np.float32)
            data[xs < 0] += 1.5 * sig[None, :n_vols] if n_vols <= N_VOLS else 0
            data += 100.0
            data[2, 2, 1, :] = 7.0  # constant voxel inside the mask
            nib.save(nib.Nifti1Image(data, AFFINE), str(sub / f"run-{r}.nii.gz"))
    cfg = root / "study.toml"
    cfg.write_text(f"""
name = "tiny"
[data]
kind = "volume"
tr = 2.0
mask = "mask.nii.gz"
subjects = {[f"{s:02d}" for s in range(1, n_subjects + 1)]}

[languages.EN]
text_language = "en"
annotations = ["stim/EN_run-1.TextGrid", "stim/EN_run-2.TextGrid", "stim/EN_run-3.TextGrid"]
bold = "sub-{{subject}}/run-{{run}}.nii.gz"

[model]
name = "{model_folder}"
layer = -1

[encoding]
alphas = {{logspace = [0, 6, 7]}}
""")
    return cfg


def test_cli_run_end_to_end(tmp_path, tiny_model, capsys):
    cfg = write_study(tmp_path / "study", tiny_model)
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    # the intact model and its controls ([controls] on by default): r per subject, group
    # t / p / q of the model above each (the intact model: above 0)
    labels = ["intact", "nullShift", "nullShuffled", "wordRate", "aboveWordRate"]
    assert names == sorted(
        ["controls.tsv", "mask.nii.gz", "report", "result.json", "summary.tsv", "units"]
        + [f"sub-{s}_lang-EN_desc-{c}_stat-r_statmap.nii.gz" for s in ("01", "02")
           for c in labels]
        + [f"group_lang-EN_desc-{c}_stat-{t}_statmap.nii.gz" for c in labels
           for t in ("t", "p", "q", "normr")]
        # the noise ceiling ([statistics] ceiling, on by default), beside the intact model
        + [f"group_lang-EN_desc-intact_stat-{t}_statmap.nii.gz"
           for t in ("ceiling", "isc", "qceiling")])
    img = nib.load(str(out / "sub-01_lang-EN_desc-intact_stat-r_statmap.nii.gz"))
    assert img.get_data_dtype() == np.float32 and img.shape == SHAPE
    np.testing.assert_allclose(img.affine, AFFINE)
    r = np.asarray(img.dataobj)
    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
    assert np.isnan(r[~mask]).all()  # NaN outside the mask: no tool takes it for a result
    assert np.isnan(r[2, 2, 1])  # the constant voxel: excluded, NaN
    xs = np.indices(SHAPE)[0] * 4.0 - 10
    sig = mask & (xs < 0) & np.isfinite(r)
    noise = mask & (xs > 0) & np.isfinite(r)
    # ground truth: the planted word-rate signal is found, noise voxels are near 0
    assert r[sig].mean() > 0.3
    assert abs(r[noise].mean()) < 0.1
    assert r[sig].min() > r[noise].max() - 0.05
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"]["weights_hash"] and doc["version"]
    assert doc["config"]["data"]["tr"] == 2.0
    assert {m["file"] for m in doc["maps"]} == {n for n in names if "statmap" in n}
    fits = doc["fits"]["01/EN"]
    assert fits["n_excluded"] == 1 and "leave-one-run-out over 3 runs" in fits["cv"]
    summary = pd.read_csv(out / "summary.tsv", sep="\t", dtype={"subject": str})
    assert list(summary.columns) == SUMMARY_COLUMNS
    summary = summary[summary["condition"] == "intact"].reset_index(drop=True)
    assert summary["subject"].tolist() == ["01", "02", "group"]
    assert summary["n_voxels"].tolist() == [int(mask.sum()) - 1] * 3
    assert summary["n_excluded"].tolist() == [1] * 3  # the constant voxel, reported
    np.testing.assert_allclose(summary["mean_r"][0], np.nanmean(r[mask]), atol=1e-5)
    np.testing.assert_allclose(summary["mean_r"][2], summary["mean_r"][:2].mean(), atol=1e-5)
    assert summary["rel_drop"].isna().all()  # intact only: no lesion
    # the folder reads back
    res = AlignmentResult.load(out)
    np.testing.assert_allclose(res.get("01", "EN"), r[mask], equal_nan=True)
    console = capsys.readouterr().out
    assert "mean r" in console
    assert f"excluded: sub-01 EN: 1 of {int(mask.sum())} voxels excluded (constant or NaN" \
        in console


def test_mismatched_run_length_is_one_clear_error(tmp_path, tiny_model, capsys):
    cfg = write_study(tmp_path / "study", tiny_model, n_subjects=1, n_vols=120)
    code = cli.main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: subject 01, language EN, run 1")
    assert "run-1.nii.gz vs EN_run-1.TextGrid" in err[0] and "25 missing" in err[0]
    assert not (tmp_path / "out").exists()


def test_unreadable_files_are_one_clear_error(tmp_path, tiny_model, capsys):
    cfg = write_study(tmp_path / "study", tiny_model, n_subjects=1)
    (tmp_path / "study" / "stim" / "EN_run-2.TextGrid").write_bytes(b"\x00\x01garbage\xff")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "o1"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EN_run-2.TextGrid" in err[0]
    (tmp_path / "study" / "sub-01" / "run-3.nii.gz").write_bytes(b"not a nifti at all")
    shutil.copy(demo.DEMO_DIR / "EN_run-2.TextGrid", tmp_path / "study" / "stim")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run-3.nii.gz" in err[0] and "cannot read" in err[0]
    assert cli.main(["run", str(tmp_path / "nope.toml"), "--out", "x", "--quiet"]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_unknown_model_folder_is_a_clear_error(tmp_path, tiny_model, capsys):
    cfg = write_study(tmp_path / "study", tiny_model, n_subjects=1)
    text = cfg.read_text().replace(str(tiny_model), str(tmp_path / "no-such-model"))
    cfg.write_text(text)
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_interrupted_write_leaves_no_half_written_file_and_resumes(tmp_path, tiny_model,
                                                                    monkeypatch):
    """A write that fails half-way (disk full) fails its unit, named in the error; the
    finished units are complete, there is no temporary file and no result.json; the rerun
    computes only the missing unit."""
    from napari_lesion_align.core.run import pipeline
    from napari_lesion_align.core.base import io as result_mod

    cfg = load_config(write_study(tmp_path / "study", tiny_model, n_subjects=2))
    real = result_mod.atomic_write_bytes

    def flaky(path, data):
        if Path(path).name.startswith("sub-02"):  # the second subject's map
            tmp = Path(path).parent / ".partial.tmp"
            tmp.write_bytes(data[: len(data) // 2])
            tmp.unlink()
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(result_mod, "atomic_write_bytes", flaky)
    out = tmp_path / "out"
    with pytest.raises(LesionAlignError,
                       match=r"1 of 2 fit units failed: sub-02_lang-EN: OSError: disk full"):
        pipeline.run_analysis(cfg, out)
    files = sorted(p.name for p in out.iterdir())
    # the first subject's unit is complete; nothing else, no temporary file, no result.json
    first = [f"sub-01_lang-EN_desc-{c}_stat-r_statmap.nii.gz" for c in
             ("intact", "nullShift", "nullShuffled", "wordRate", "aboveWordRate")]
    assert files == sorted(first) + ["units"]
    assert sorted(p.name for p in (out / "units" / "fit").iterdir()) == ["sub-01_lang-EN.json"]
    nib.load(str(out / files[0])).get_fdata()  # readable, complete
    monkeypatch.setattr(result_mod, "atomic_write_bytes", real)
    res = pipeline.run_analysis(cfg, out)
    assert res.provenance["units"]["fits"] == {"computed": ["sub-02_lang-EN"],
                                               "reused": ["sub-01_lang-EN"]}
    assert (out / "result.json").is_file()


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    from napari_lesion_align.core.base import io as result_mod

    target = tmp_path / "x.txt"
    target.write_text("old")
    monkeypatch.setattr(result_mod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(OSError):
        result_mod.atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    from napari_lesion_align.core.base import io as result_mod

    old = os.umask(0o022)
    try:
        result_mod.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_region_input_writes_tsv_per_region(tmp_path, tiny_model):
    from napari_lesion_align.core.run.pipeline import run_analysis

    root = tmp_path / "rois"
    root.mkdir()
    shutil.copy(demo.DEMO_DIR / "EN_run-1.TextGrid", root / "words.TextGrid")
    sig = _word_rate_signal(root / "words.TextGrid")
    rng = np.random.default_rng(3)
    Y = rng.normal(0, 1, (N_VOLS, 3))
    Y[:, 0] += 2 * sig
    Y[:, 2] = 5.0  # constant region
    np.savetxt(root / "s1.txt", Y + 50)
    (root / "c.toml").write_text(f"""
[data]
kind = "regions"
tr = 2.0
roi_names = ["A", "B", "C"]
[languages.EN]
annotations = ["words.TextGrid"]
bold = {{ s1 = ["s1.txt"] }}
[model]
name = "{tiny_model}"
[encoding]
n_blocks = 4
alphas = [1.0, 100.0, 10000.0]
""")
    res = run_analysis(load_config(root / "c.toml"), tmp_path / "out")
    df = pd.read_csv(tmp_path / "out" / "sub-s1_lang-EN_desc-intact_stat-r_statmap.tsv", sep="\t")
    assert df["region"].tolist() == ["A", "B", "C"]
    assert df["value"][0] > 0.3 and abs(df["value"][1]) < 0.3 and np.isnan(df["value"][2])
    assert "4 contiguous blocks" in res.provenance["fits"]["s1/EN"]["cv"]


def test_bad_subject_label_is_rejected(tmp_path, tiny_model):
    from napari_lesion_align.core.data.dataset import load_dataset

    cfg = write_study(tmp_path / "study", tiny_model, n_subjects=1)
    cfg.write_text(cfg.read_text().replace('subjects = [\'01\']', 'subjects = ["0_1"]'))
    with pytest.raises(LesionAlignError, match="letters and digits"):
        load_dataset(load_config(cfg))


def test_lesion_conditions_end_to_end(tmp_path, tiny_model):
    """Shared + specific weight lesions with random controls and a layer sweep on a tiny
    model, two languages, from the config to the output files; the model stays intact."""
    from napari_lesion_align.core.model.loading import load_model, parameters_hash
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg_path = write_study(tmp_path / "study", tiny_model, n_subjects=3)
    root = cfg_path.parent
    for r in (1, 2, 3):
        shutil.copy(demo.DEMO_DIR / f"FR_run-{r}.TextGrid", root / "stim" / f"FR_run-{r}.TextGrid")
    text = cfg_path.read_text() + """
[languages.FR]
text_language = "fr"
annotations = ["stim/FR_run-1.TextGrid", "stim/FR_run-2.TextGrid", "stim/FR_run-3.TextGrid"]
bold = "sub-{subject}/run-{run}.nii.gz"

[lesions]
element = "weights"
method = "wanda"
k_percent = 5.0
sweep = true
sweep_element = "hidden"
sweep_indices = [0, 3, 6, 9]
correction = "none"
random_controls = 1
"""
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    lm = load_model(str(tiny_model), offline=True, device="cpu")
    h0 = parameters_hash(lm.model)
    out = tmp_path / "out"
    res = run_analysis(cfg, out, model=lm)
    assert parameters_hash(lm.model) == h0
    labels = [c["label"] for c in res.provenance["conditions"]]
    assert labels == ["intact", "shared", "sharedRandom", "specificEN", "specificENRandom",
                      "specificFR", "specificFRRandom", "sweepL0", "sweepL0Random", "sweepL1",
                      "sweepL1Random"]
    conds = {c["label"]: c for c in res.provenance["conditions"]}
    assert conds["shared"]["n_elements"] == conds["sharedRandom"]["n_elements"] > 0
    assert conds["shared"]["per_layer"] == conds["sharedRandom"]["per_layer"]
    assert conds["sweepL1"]["per_layer"] == {1: 4}
    names = {p.name for p in out.iterdir()}
    for f in ("sub-01_lang-FR_desc-shared_stat-deltar_statmap.nii.gz",
              "sub-03_lang-EN_desc-specificENRandom_stat-r_statmap.nii.gz",
              "group_lang-EN_desc-shared_stat-t_statmap.nii.gz",
              "group_lang-EN_desc-shared_stat-p_statmap.nii.gz",
              "group_lang-FR_desc-specificFR_stat-q_statmap.nii.gz",
              "group_lang-FR_desc-specificFR_stat-lpi_statmap.nii.gz",
              "group_desc-lesion_categories.nii.gz", "group_desc-random_categories.nii.gz",
              "categories.json", "layer_sweep.tsv", "summary.tsv", "result.json"):
        assert f in names, f
    # delta r is intact minus lesioned, voxel by voxel
    np.testing.assert_allclose(res.maps[("02", "EN", "shared", "deltar")],
                               res.get("02", "EN") - res.get("02", "EN", "shared"), atol=1e-6)
    cats = json.loads((out / "categories.json").read_text())
    assert cats["lesion"]["labels"]["1"]["name"] == "shared"
    assert cats["lesion"]["labels"]["3"]["name"] == "specific:FR"
    summary = pd.read_csv(out / "summary.tsv", sep="\t", dtype={"subject": str})
    row = summary[(summary.subject == "01") & (summary.language == "EN")
                  & (summary.condition == "shared")].iloc[0]
    m0 = np.nanmean(res.get("01", "EN"))
    m1 = np.nanmean(res.get("01", "EN", "shared"))
    assert row["rel_drop"] == pytest.approx((m0 - m1) / m0, abs=1e-5)
    ctrl = np.nanmean(res.get("01", "EN", "sharedRandom"))
    assert row["control_rel_drop"] == pytest.approx((m0 - ctrl) / m0, abs=1e-5)
    sweep = pd.read_csv(out / "layer_sweep.tsv", sep="\t")
    assert sweep["layer"].tolist() == [0, 0, 1, 1] and set(sweep["language"]) == {"EN", "FR"}
    back = AlignmentResult.load(out)
    assert set(back.categories) == {"lesion", "random"}
    np.testing.assert_array_equal(back.categories["lesion"][0], res.categories["lesion"][0])
    np.testing.assert_allclose(back.group_maps[("EN", "shared", "t")],
                               res.group_maps[("EN", "shared", "t")], atol=1e-6)


def test_subjects_fitted_together_match_one_at_a_time(tmp_path, tiny_model):
    """Subjects with the same runs share one fit (voxels side by side); the maps equal
    those of fitting each subject alone, and each subject keeps its own excluded voxels."""
    from napari_lesion_align.core.model.loading import load_model
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg = load_config(write_study(tmp_path / "study", tiny_model, n_subjects=3))
    # subject 02 gets a second constant voxel: the stacked fit must keep the columns apart
    img = nib.load(str(tmp_path / "study" / "sub-02" / "run-2.nii.gz"))
    data = np.asarray(img.dataobj).copy()
    data[1, 1, 1, :] = 3.0
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "study" / "sub-02" / "run-2.nii.gz"))
    lm = load_model(str(tiny_model), offline=True, device="cpu")
    together = run_analysis(cfg, model=lm)
    alone = run_analysis(cfg.replace(encoding=cfg.encoding.replace(stack_mb=0)), model=lm)
    assert together.provenance["fits"]["01/EN"]["fitted_with"] == ["01", "02", "03"]
    assert alone.provenance["fits"]["01/EN"]["fitted_with"] == ["01"]
    for s in ("01", "02", "03"):
        a, b = together.get(s, "EN"), alone.get(s, "EN")
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, atol=1e-4, equal_nan=True)
    assert together.n_valid[("02", "EN")] == together.n_valid[("01", "EN")] - 1
    assert np.isnan(together.get("02", "EN")).sum() == 2
    assert np.isnan(together.get("01", "EN")).sum() == 1


def _simulated_run(phase_seconds: dict, step: float = 1.0) -> list:
    """The progress history ``[(elapsed s, fraction)]`` of a run whose phases
    (core.stages.PHASES) take ``phase_seconds`` each, progressing evenly inside each."""
    from napari_lesion_align.core.run.engine import PHASES

    history, t = [], 0.0
    for name, (lo, hi) in PHASES.items():
        n = max(1, int(phase_seconds[name] / step))
        for i in range(1, n + 1):
            history.append((t + i * phase_seconds[name] / n, lo + (hi - lo) * i / n))
        t += phase_seconds[name]
    return history


@pytest.mark.parametrize("features_s", [3.0, 120.0], ids=["stored features", "computed"])
def test_time_left_follows_the_current_phases_rate(features_s):
    """With stored features the features phase takes seconds and the fits minutes: the
    estimate from the fits' own rate is right within 10 % a minute into the fits, where
    the whole run's mean rate says a fraction of it (the estimate the Run widget showed:
    "about 0:25 left" with 4 minutes to go)."""
    from napari_lesion_align.core.run.engine import time_left

    seconds = {"data": 2.0, "lesions": 10.0, "features": features_s, "fits": 240.0,
               "group": 5.0}
    history = _simulated_run(seconds)
    total = sum(seconds.values())
    start_of_fits = seconds["data"] + seconds["lesions"] + features_s
    now = [h for h in history if h[0] <= start_of_fits + 60.0]
    truth = total - now[-1][0]
    got = time_left(now)
    assert abs(got - truth) < 0.1 * truth, (got, truth)
    t, f = now[-1]
    naive = t * (1 - f) / f
    if features_s < 10:
        assert naive < 0.5 * truth  # the mean rate was far too optimistic here
    # early in a phase (under PHASE_RATE_MIN_S): the run's mean rate; none before 2 %
    early = [h for h in history if h[0] <= start_of_fits + 2.0]
    t, f = early[-1]
    assert time_left(early) == pytest.approx(t * (1 - f) / f)
    assert time_left(history[:1]) is None and time_left([]) is None
    assert time_left(history) is None  # done
