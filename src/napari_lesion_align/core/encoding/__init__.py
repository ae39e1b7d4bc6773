"""Voxelwise encoding models: cross-validated ridge regression with one alpha per voxel,
in modules split as himalaya splits its own (lowest first; each imports only those above it
in this list):

``backends``          the array backends (numpy or torch: dtype, device), ``get_backend``
``splits``            ``Fold``, ``leave_one_group_out``, ``contiguous_blocks``, run-wise row reads
``solver``            one fold's decompositions (tridiagonal / eigen), the per-alpha solve and
                      its scores, ``pearson_r``
``cross_validation``  ``ridge_cv`` (alpha chosen per voxel by inner CV, refit, test r),
                      ``cross_validated_r`` (the outer folds of one subject), ``DEFAULT_ALPHAS``
"""

from .backends import get_backend
from .cross_validation import (DEFAULT_ALPHAS, EncodingResult, RidgeResult, cross_validated_r,
                               ridge_cv)
from .solver import pearson_r
from .splits import Fold, contiguous_blocks, leave_one_group_out

__all__ = ["DEFAULT_ALPHAS", "EncodingResult", "Fold", "RidgeResult", "contiguous_blocks",
           "cross_validated_r", "get_backend", "leave_one_group_out", "pearson_r", "ridge_cv"]
