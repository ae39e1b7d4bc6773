"""Permutation inference against truth: null studies keep the family-wise error rate, planted
effects are found."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.analysis.inference import check_power, sign_flip_test, smallest_p


def _grid(shape=(9, 9, 9)):
    mask = np.zeros(shape, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    blob = np.zeros(shape, dtype=bool)
    blob[2:5, 2:5, 2:5] = True
    return nib.Nifti1Image(mask.astype(np.uint8), affine), blob[mask]


def test_max_t_keeps_the_family_wise_error_rate_over_null_studies():
    """200 null studies of 8 subjects x 60 voxels: the share of studies with any corrected
    p < 0.05 stays near 5 % (binomial: 10 expected, sd 3.1), where uncorrected p finds
    something in nearly every study."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(1)
    any_fwe, any_raw = 0, 0
    for study in range(200):
        d = rng.standard_normal((8, 60))
        res = sign_flip_test(d, method="max-t", n_perm=100, seed=study)
        any_fwe += bool(res.significant(0.05).any())
        any_raw += bool((ttest_1samp(d, 0, alternative="greater").pvalue < 0.05).any())
    assert 3 <= any_fwe <= 19, any_fwe
    assert any_raw > 150


def test_max_t_finds_a_planted_effect_and_reports_its_power():
    rng = np.random.default_rng(2)
    found, false = [], 0
    for study in range(20):
        d = rng.standard_normal((12, 80))
        d[:, :10] += 1.5
        sig = sign_flip_test(d, method="max-t", n_perm=200, seed=study).significant(0.05)
        found.append(sig[:10].mean())
        false += int(sig[10:].sum())
    assert np.mean(found) > 0.5, f"power {np.mean(found):.2f}"
    assert false <= 3


@pytest.mark.parametrize("method", ["tfce", "cluster"])
def test_spatial_methods_find_a_planted_blob_and_nothing_in_noise(method):
    img, blob = _grid()
    rng = np.random.default_rng(3)
    d = rng.standard_normal((10, blob.size))
    null = sign_flip_test(d, method=method, n_perm=100, seed=0, mask_img=img)
    assert not null.significant(0.05).any()
    d[:, blob] += 1.5
    res = sign_flip_test(d, method=method, n_perm=100, seed=0, mask_img=img)
    sig = res.significant(0.05)
    assert sig[blob].mean() > 0.5 and sig[~blob].sum() <= 0.1 * blob.sum()
    assert res.label.startswith(f"permutation {method}, FWE")


def test_the_family_is_where_it_is_tested():
    img, blob = _grid()
    rng = np.random.default_rng(4)
    d = rng.standard_normal((10, blob.size))
    d[:, blob] += 2.0
    within = np.zeros(blob.size, dtype=bool)
    within[: blob.size // 2] = True
    res = sign_flip_test(d, method="tfce", n_perm=50, within=within, mask_img=img)
    assert (res.p_fwe[~within] == 1).all() and (res.t[~within] == 0).all()
    assert np.array_equal(res.family, within)


def test_bad_requests_are_refused_with_the_fix():
    d = np.random.default_rng(0).standard_normal((5, 20))
    with pytest.raises(LesionAlignError, match="needs the voxels' places"):
        sign_flip_test(d, method="tfce")
    with pytest.raises(LesionAlignError, match="use one of max-t, tfce, cluster"):
        sign_flip_test(d, method="fdr")
    with pytest.raises(LesionAlignError, match=r"5 subjects cannot reach p < 0.01"):
        check_power(5, 0.01)
    check_power(8, 0.01)
    assert smallest_p(5) == 1 / 32
    img, _ = _grid()
    with pytest.raises(LesionAlignError, match="the mask has 343 voxels and the maps 20"):
        sign_flip_test(d, method="cluster", mask_img=img)
