"""The NaN-volume rule (bold.censored_volumes): a few NaN volumes are censored (their TRs
leave the fit, BOLD and features), the subject stays; mostly-NaN or constant runs are
errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.data.bold import (CleaningOptions, censored_volumes,
                                                check_subject_runs, clean_run)
from napari_lesion_align.core.run.config import load_config
from napari_lesion_align.core.base.errors import LesionAlignError
from test_pipeline import AFFINE, write_study
from tiny_models import make_tiny_model


def test_the_rule_censors_a_few_nan_volumes_and_refuses_mostly_nan_runs():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(150, 40))
    assert censored_volumes(Y, "r").all()
    Y[10] = np.nan  # an all-NaN volume
    Y[20, :25] = np.nan  # NaN in more than half of the voxels: censored too
    Y[30, :3] = np.inf  # a few voxels: kept (those voxels are excluded later)
    keep = censored_volumes(Y, "r")
    assert np.flatnonzero(~keep).tolist() == [10, 20]
    Y[:15] = np.nan  # 16 volumes: more than 10 % of 150
    with pytest.raises(LesionAlignError, match=r"r: 16 of 150 volumes are NaN.*at most 15"):
        censored_volumes(Y, "r")
    # no signal: a subject whose every run is constant is excluded later (with a warning);
    # one such run next to runs with data is an error naming it
    ones, good = np.ones((150, 4)), rng.normal(size=(150, 4))
    assert len(check_subject_runs([ones, ones], ["a", "b"])) == 2
    with pytest.raises(LesionAlignError, match="^b: every voxel/region of the run is constant"):
        check_subject_runs([good, ones], ["a", "b"])


def test_clean_run_of_a_censored_run_matches_the_clean_run():
    rng = np.random.default_rng(1)
    T = 200
    t = np.arange(T)
    Y = 100 + 0.05 * t[:, None] + rng.normal(size=(T, 5))
    C = rng.normal(size=(T, 3))
    opts = CleaningOptions()
    full = clean_run(Y, 2.0, opts, C)
    # every volume kept: the censored path is not taken, the result is nilearn's
    np.testing.assert_array_equal(clean_run(Y, 2.0, opts, C, keep=np.ones(T, bool)), full)
    keep = np.ones(T, bool)
    keep[[50, 51, 120]] = False
    Yn = Y.copy()
    Yn[~keep] = np.nan
    cens = clean_run(Yn, 2.0, opts, C, keep=keep)
    assert cens.shape == (T - 3, 5) and np.isfinite(cens).all()
    np.testing.assert_allclose(cens.mean(0), 0, atol=1e-5)
    for j in range(5):
        assert np.corrcoef(cens[:, j], full[keep, j])[0, 1] > 0.999


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


def test_nan_volumes_are_censored_and_the_maps_stay_those_of_the_clean_data(tmp_path,
                                                                           tiny_model):
    """Ground truth: the study's planted word-rate signal. One all-NaN volume in one run
    and a mostly-NaN volume in another: the subject is fitted (not dropped), with the same
    voxels, and its r map stays that of the clean data; a second subject without NaN
    volumes is fitted apart (its map equals the clean run's exactly)."""
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg_path = write_study(tmp_path / "study", tiny_model, n_subjects=2)
    cfg = load_config(cfg_path)
    clean = run_analysis(cfg, tmp_path / "clean")
    for run, vols, frac in ((2, [60], 1.0), (3, [5, 100], 0.7)):
        p = tmp_path / "study" / "sub-01" / f"run-{run}.nii.gz"
        data = np.asarray(nib.load(str(p)).dataobj).copy()
        for v in vols:
            vol = data[..., v]
            flat = vol.reshape(-1)
            flat[: int(frac * flat.size)] = np.nan
            data[..., v] = vol
        nib.save(nib.Nifti1Image(data, AFFINE), str(p))
    out = tmp_path / "censored"
    res = run_analysis(cfg, out)
    rec = json.loads((out / "units" / "fit" / "sub-01_lang-EN.json").read_text())
    assert rec["censored_volumes"] == {"2": 1, "3": 2}
    assert res.n_valid[("01", "EN")] == clean.n_valid[("01", "EN")]
    a, b = res.get("01", "EN"), clean.get("01", "EN")
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = np.isfinite(a)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.98
    assert np.abs(a[ok] - b[ok]).max() < 0.05
    # the planted signal is still found: x < 0 voxels carry it
    xs = res.space.coordinates()[:, 0]
    assert a[ok & (xs < 0)].mean() > 0.3 and abs(a[ok & (xs > 0)].mean()) < 0.1
    np.testing.assert_allclose(res.get("02", "EN"), clean.get("02", "EN"), atol=1e-4,
                               equal_nan=True)
    assert "censored_volumes" not in json.loads(
        (out / "units" / "fit" / "sub-02_lang-EN.json").read_text())
