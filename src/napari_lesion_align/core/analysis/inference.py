"""Group inference by permutation: sign-flipping with family-wise error control.

The parametric path (:func:`.statistics.paired_t`: a t-test per voxel, FDR over the voxels)
assumes normal differences and controls the false discovery rate. The standard for
whole-brain group maps with few subjects is a non-parametric test with family-wise control
(Nichols & Holmes 2002; Winkler et al. 2014): under the null hypothesis of no effect, each
subject's paired difference (intact - lesioned, or r - 0) is symmetric about zero, so its sign
may be flipped; the distribution of the maximum statistic over the brain across sign flips
gives every voxel a p-value corrected for the whole family. Three statistics, through
nilearn (``nilearn.mass_univariate.permuted_ols``):

* ``max-t``: the voxel's t against the maximum t over the family;
* ``tfce``: threshold-free cluster enhancement (Smith & Nichols 2009), each voxel's TFCE
  score against the maximum score (needs the voxels' places in the brain);
* ``cluster``: clusters of voxels above a cluster-forming threshold, each voxel given its
  cluster's size p-value against the maximum cluster size.

With ``S`` subjects there are only ``2**S`` distinct sign flips: the smallest p-value is
``2**-S`` (1/32 with 5 subjects), so a permutation test on very few subjects has little power;
:func:`smallest_p` says so before a run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..base.errors import LesionAlignError

#: the group inference options, parametric first (the default)
INFERENCES = ("parametric", "permutation")
#: the permutation test's statistics
PERMUTATION_METHODS = ("max-t", "tfce", "cluster")
#: the default cluster-forming threshold (uncorrected one-sided p)
CLUSTER_FORMING_P = 0.001


@dataclass
class PermutationTest:
    """A sign-flip test of ``mean > 0`` per voxel, family-wise corrected."""

    #: the one-sample t of the differences (0 outside the family)
    t: np.ndarray
    #: family-wise corrected p-value of the method (1 outside the family)
    p_fwe: np.ndarray
    method: str
    n_perm: int
    n_subjects: int
    #: where it was tested (the family)
    family: np.ndarray

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        return self.p_fwe < alpha

    @property
    def label(self) -> str:
        """How it was inferred, in words (for maps, tables and legends)."""
        return f"permutation {self.method}, FWE, {self.n_perm} sign flips"


def smallest_p(n_subjects: int) -> float:
    """The smallest p-value a sign-flip test on ``n_subjects`` can give (the identity flip
    counts among the ``2**n`` flips)."""
    return 2.0 ** -int(n_subjects)


def check_power(n_subjects: int, alpha: float) -> None:
    """Refuse a permutation test that cannot reach ``alpha`` (too few subjects)."""
    if smallest_p(n_subjects) >= alpha:
        raise LesionAlignError(
            f"a sign-flip permutation test on {n_subjects} subjects cannot reach p < {alpha} "
            f"(its smallest p-value is 2^-{n_subjects} = {smallest_p(n_subjects):.3g}); use "
            "inference = 'parametric' or more subjects")


def _mask_image(mask_img, family: np.ndarray):
    """The family's voxels as a mask image (the columns are the mask's voxels in C order)."""
    import nibabel as nib

    data = np.asarray(mask_img.dataobj) > 0
    if int(data.sum()) != family.size:
        raise LesionAlignError(
            f"the mask has {int(data.sum())} voxels and the maps {family.size}: the maps' "
            "columns must be the mask's voxels")
    sub = np.zeros(data.shape, dtype=np.uint8)
    sub[data] = family.astype(np.uint8)
    return nib.Nifti1Image(sub, mask_img.affine)


def sign_flip_test(diff: np.ndarray, *, method: str = "max-t", n_perm: int = 1000,
                   seed: int = 0, within: np.ndarray | None = None, mask_img=None,
                   cluster_forming_p: float = CLUSTER_FORMING_P) -> PermutationTest:
    """Test ``mean(diff) > 0`` per voxel (column) across subjects (rows) by sign flipping.

    ``within``: the voxels of the family (e.g. where the intact model aligns); default every
    voxel with finite, varying differences. ``mask_img``: for ``tfce`` and ``cluster``, the
    image whose voxels (> 0, in C order) are the columns.
    """
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    if method not in PERMUTATION_METHODS:
        raise LesionAlignError(f"permutation method {method!r}: use one of "
                               f"{', '.join(PERMUTATION_METHODS)}")
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2:
        raise LesionAlignError(f"a sign-flip test needs (subjects >= 2, voxels) differences, "
                               f"got shape {d.shape}")
    n, v = d.shape
    family = np.isfinite(d).all(0)
    family[family] = d[:, family].std(0) > 0
    if within is not None:
        family &= np.asarray(within, dtype=bool)
    t = np.zeros(v, dtype=np.float32)
    p = np.ones(v, dtype=np.float32)
    result = PermutationTest(t, p, method, int(n_perm), n, family)
    if not family.any():
        return result
    kwargs = {}
    if method != "max-t":
        if mask_img is None:
            raise LesionAlignError(f"permutation method {method!r} needs the voxels' places "
                                   "(the result's mask); use 'max-t' for regions")
        kwargs["masker"] = NiftiMasker(_mask_image(mask_img, family)).fit()
        if method == "tfce":
            kwargs["tfce"] = True
        else:
            kwargs["threshold"] = float(cluster_forming_p)
    with warnings.catch_warnings():
        # nilearn labels clusters in an int64 image and says so each permutation
        warnings.filterwarnings("ignore", message="Data array used to create a new image")
        out = permuted_ols(np.ones((n, 1)), d[:, family], model_intercept=False,
                           n_perm=int(n_perm), two_sided_test=False, random_state=int(seed),
                           n_jobs=1, verbose=0, **kwargs)
    key = {"max-t": "logp_max_t", "tfce": "logp_max_tfce", "cluster": "logp_max_size"}[method]
    t[family] = out["t"][0]
    p[family] = 10.0 ** -np.asarray(out[key][0], dtype=np.float64)
    return result
