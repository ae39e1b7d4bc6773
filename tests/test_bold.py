"""BOLD input: masks, NIfTI runs, region tables, length checks, cleaning."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.data.bold import (CleaningOptions, VolumeSpace, check_run_length,
                                                clean_run, read_confounds, read_region_series,
                                                valid_columns)
from napari_lesion_align.core.base.errors import LesionAlignError

AFFINE = np.array([[4.0, 0, 0, -20], [0, 4.0, 0, -24], [0, 0, 4.0, -12], [0, 0, 0, 1]])


def _mask(tmp_path, shape=(6, 7, 5)):
    m = np.zeros(shape, dtype=np.uint8)
    m[1:5, 2:6, 1:4] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(m, AFFINE), str(path))
    return path, m


def test_volume_space_matches_nilearn_masker_order(tmp_path):
    from nilearn.maskers import NiftiMasker

    mpath, m = _mask(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.standard_normal(m.shape + (9,)).astype(np.float32)
    run = tmp_path / "run.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(run))
    space = VolumeSpace(mpath)
    Y = space.load_run(run)
    ref = NiftiMasker(mask_img=str(mpath), standardize=None).fit().transform(str(run))
    assert Y.shape == (9, int(m.sum()))
    np.testing.assert_allclose(Y, ref, rtol=1e-6)
    # to_image puts values back where the masker would
    img = space.to_image(Y[3])
    back = np.ravel(NiftiMasker(mask_img=str(mpath), standardize=None).fit().transform(img))
    np.testing.assert_allclose(back, Y[3], rtol=1e-6)
    # coordinates are the voxels' MNI positions
    ijk = np.argwhere(m > 0)[0]
    np.testing.assert_allclose(space.coordinates()[0], AFFINE[:3, :3] @ ijk + AFFINE[:3, 3])


def test_run_on_another_grid_is_resampled(tmp_path):
    mpath, m = _mask(tmp_path)
    space = VolumeSpace(mpath)
    fine = AFFINE.copy()
    fine[:3, :3] /= 2  # 2 mm grid covering the same box
    data = np.ones((12, 14, 10, 4), dtype=np.float32) * np.arange(4)
    run = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(data, fine), str(run))
    Y = space.load_run(run)
    assert Y.shape == (4, int(m.sum()))
    np.testing.assert_allclose(Y.mean(1), np.arange(4), atol=1e-4)


@pytest.mark.parametrize("content, what", [
    (b"not a nifti", "cannot read"),
    (None, "not found"),
])
def test_bad_bold_file_gives_one_clear_error(tmp_path, content, what):
    mpath, _ = _mask(tmp_path)
    space = VolumeSpace(mpath)
    bad = tmp_path / "bad.nii.gz"
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(LesionAlignError, match=what) as err:
        space.load_run(bad)
    assert "bad.nii.gz" in str(err.value)


def test_mask_errors(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), AFFINE), str(empty))
    with pytest.raises(LesionAlignError, match="empty"):
        VolumeSpace(empty)
    four = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 2), np.uint8), AFFINE), str(four))
    with pytest.raises(LesionAlignError, match="3D"):
        VolumeSpace(four)


def test_region_tables(tmp_path):
    data = np.arange(12, dtype=float).reshape(4, 3)
    txt = tmp_path / "s1.txt"
    np.savetxt(txt, data)
    Y, names = read_region_series(txt)
    np.testing.assert_array_equal(Y, data)
    assert names == ["roi-1", "roi-2", "roi-3"]
    Y, names = read_region_series(txt, names=["A", "B", "C"], skip_rows=1)
    assert Y.shape == (3, 3) and names == ["A", "B", "C"]
    tsv = tmp_path / "s1.tsv"
    tsv.write_text("LATL\tLPTL\n1\t2\n3\t4\n")
    Y, names = read_region_series(tsv)
    assert names == ["LATL", "LPTL"] and Y.shape == (2, 2)
    npy = tmp_path / "s1.npy"
    np.save(npy, data)
    assert read_region_series(npy)[0].shape == (4, 3)
    with pytest.raises(LesionAlignError, match="3 columns but 2 region names"):
        read_region_series(txt, names=["A", "B"])
    garbage = tmp_path / "g.tsv"
    garbage.write_text("a\tb\nx\ty\n")
    with pytest.raises(LesionAlignError, match="g.tsv"):
        read_region_series(garbage)


def test_confounds_length_checked(tmp_path):
    p = tmp_path / "rp.txt"
    np.savetxt(p, np.zeros((12, 6)))
    assert read_confounds(p, 10, skip_rows=2).shape == (10, 6)
    with pytest.raises(LesionAlignError, match="12 confound rows"):
        read_confounds(p, 10)


def test_run_length_check_says_which_run_and_by_how_much():
    check_run_length(150, 290.0, 2.0, "run 1")  # 145 needed, 5 extra: fine
    with pytest.raises(LesionAlignError) as err:
        check_run_length(140, 290.0, 2.0, "subject 01, language EN, run 2")
    msg = str(err.value)
    assert "run 2" in msg and "140 volumes" in msg and "5 missing" in msg
    with pytest.raises(LesionAlignError, match="30 volumes more than the tolerance of 10"):
        check_run_length(185, 290.0, 2.0, "run 3")
    # the audio end (TextGrid xmax) extends what is allowed
    check_run_length(160, 290.0, 2.0, "run 4", audio_end_s=300.0)
    # dropped volumes: the first volume is at 20 s on the annotation clock
    check_run_length(136, 290.0, 2.0, "run 5", start_s=20.0)
    with pytest.raises(LesionAlignError, match="missing"):
        check_run_length(130, 290.0, 2.0, "run 5", start_s=20.0)


def test_valid_columns_excludes_constant_and_nan():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 5)).astype(np.float32)
    b = rng.standard_normal((20, 5)).astype(np.float32)
    a[:, 1] = 3.0  # constant in one run only
    b[4, 3] = np.nan
    ok = valid_columns([a + 1000, b + 1000])
    assert ok.tolist() == [True, False, True, False, True]


def test_clean_run_detrends_and_zscores():
    t = np.arange(200, dtype=float)
    rng = np.random.default_rng(1)
    sig = np.sin(t / 5.0)
    drift = 0.05 * t
    Y = np.stack([1000 + 20 * sig + 30 * drift + rng.normal(0, 1, 200),
                  500 + rng.normal(0, 1, 200)], axis=1)
    Z = clean_run(Y, 2.0, CleaningOptions())
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(0, ddof=1), 1, atol=1e-4)
    # the drift is gone: the cleaned series follows the sinusoid
    assert np.corrcoef(Z[:, 0], sig)[0, 1] > 0.95
    assert abs(np.corrcoef(Z[:, 0], t)[0, 1]) < 0.1
    # confounds are regressed out
    conf = rng.standard_normal((200, 1))
    Y2 = Y[:, :1] + 50 * conf
    Z2 = clean_run(Y2, 2.0, CleaningOptions(), confounds=conf)
    assert abs(np.corrcoef(Z2[:, 0], conf[:, 0])[0, 1]) < 1e-6
