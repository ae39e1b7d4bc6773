"""Voxelwise encoding models.

``ridge``  the ridge solver (``ridge_cv``), folds, ``cross_validated_r``
"""
