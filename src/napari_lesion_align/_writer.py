"""npe2 writer: one image (or labels) layer as NIfTI, with its affine.

The layer's full data -> world transform (its ``affine`` composed with ``scale``,
``translate``, ``rotate``, ``shear``) is turned back into a NIfTI affine through the world
frame of :mod:`._layers` (world = ``(z, -y, x)`` MNI mm). When the layer came from this
plugin (its metadata keeps the original NIfTI affine and voxel order) the array is put back
into the original voxel order and the original affine is written exactly, so a read ->
write round trip reproduces the file's voxel array and affine. The file is written
atomically (a temporary file, then a rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import nifti_affine_from_world
from .core.base.errors import LesionAlignError
from .core.base.io import atomic_save_nifti


def write_nifti(path: str, data, meta: dict) -> list[str]:
    """Write one layer to ``path`` (``.nii`` or ``.nii.gz``); returns ``[path]``."""
    import nibabel as nib

    path = str(path)
    name = meta.get("name", "layer")
    if not path.lower().endswith((".nii", ".nii.gz")):
        raise LesionAlignError(f"{path}: NIfTI file names end with .nii or .nii.gz; "
                               "choose such a name")
    arr = np.asarray(data)
    if meta.get("rgb") or arr.ndim not in (3, 4):
        raise LesionAlignError(
            f"layer {name!r}: NIfTI needs a 3D volume (or a 4D series), got "
            f"{'an RGB image' if meta.get('rgb') else f'{arr.ndim}D data'} of shape "
            f"{arr.shape}; save 2D or RGB layers as .tif or .png instead")
    layer_meta = meta.get("metadata") or {}
    arr = _storable(arr, layer_meta.get("nifti_dtype"))
    img = nib.Nifti1Image(_spatial_last(arr), _nifti_affine(meta, arr.ndim))
    img = _restore_original(img, layer_meta)
    img.header.set_xyzt_units("mm", "sec")
    atomic_save_nifti(img, Path(path))
    return [path]


def _storable(arr: np.ndarray, original_dtype=None) -> np.ndarray:
    """The file's original dtype when the values fit it exactly; int64 (napari's labels)
    as int32 when they fit (NIfTI readers handle int64 poorly); otherwise unchanged."""
    for dtype in ([original_dtype] if original_dtype else []) + (
            ["int32"] if arr.dtype == np.int64 else []):
        try:
            cast = arr.astype(dtype)
        except (TypeError, ValueError):
            continue
        if np.array_equal(cast, arr, equal_nan=arr.dtype.kind == "f" and cast.dtype.kind == "f"):
            return cast
    return arr


def _spatial_last(arr: np.ndarray) -> np.ndarray:
    """napari order (volume, a, b, c) -> NIfTI order (a, b, c, volume)."""
    return np.moveaxis(arr, 0, -1) if arr.ndim == 4 else arr


def _nifti_affine(meta: dict, ndim: int) -> np.ndarray:
    """NIfTI affine (voxel -> MNI mm) of the layer's spatial (last three) axes."""
    from napari.utils.transforms import Affine  # napari: loaded with a layer to write

    phys = Affine(scale=meta.get("scale", np.ones(ndim)),
                  translate=meta.get("translate", np.zeros(ndim)),
                  rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=ndim)
    extra = meta.get("affine")
    extra = np.eye(ndim + 1) if extra is None else np.asarray(
        getattr(extra, "affine_matrix", extra), dtype=float)
    full = extra @ phys.affine_matrix
    spatial = np.eye(4)
    spatial[:3, :3] = full[-4:-1, -4:-1]
    spatial[:3, 3] = full[-4:-1, -1]
    return nifti_affine_from_world(spatial)


def _restore_original(img, layer_meta: dict):
    """Back to the original voxel order and exact affine when the layer metadata has them."""
    from nibabel.orientations import io_orientation, ornt_transform

    orig = layer_meta.get("nifti_affine")
    if orig is None:
        return img
    orig = np.asarray(orig, dtype=float)
    back = ornt_transform(io_orientation(img.affine), io_orientation(orig))
    img = img.as_reoriented(back)
    if np.allclose(img.affine, orig, atol=1e-5):
        sform, qform = layer_meta.get("nifti_codes", (0, 0)) or (0, 0)
        img.set_sform(orig, code=int(sform) or 2)
        img.set_qform(orig, code=int(qform) or 2)
    return img
