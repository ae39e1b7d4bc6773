"""BOLD time series: reading, masking, length checks and cleaning.

Two kinds of input:

* volumes: one 4D NIfTI per run and a brain mask; :class:`VolumeSpace` wraps nilearn's
  ``NiftiMasker`` (``transform`` to voxel vectors, ``inverse_transform`` back to images);
* regions: a ``T x V`` array per run (``.npy``, ``.tsv``/``.csv`` with or without a header
  row, or whitespace ``.txt``) of ROI or parcel time series; results are then one value per
  region.

Each run is cleaned the standard way with :func:`nilearn.signal.clean` (detrend,
high-pass, optional confounds, z-score) before any fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Sequence

import numpy as np
from pydantic import Field, Strict

from .errors import LesionAlignError
from .schema import Bool, Table


# --------------------------------------------------------------------------- spaces
class VolumeSpace:
    """A brain mask on an MNI grid; maps volumes <-> voxel vectors (nilearn NiftiMasker)."""

    kind = "volume"

    def __init__(self, mask, source: str = "<mask>"):
        import nibabel as nib
        from nilearn.maskers import NiftiMasker

        try:
            img = mask if isinstance(mask, nib.spatialimages.SpatialImage) else nib.load(str(mask))
            data = np.asanyarray(img.dataobj)
        except Exception as err:  # nibabel raises many types for bad files
            raise LesionAlignError(f"{mask}: cannot read the mask as NIfTI ({err})") from err
        if data.ndim != 3:
            raise LesionAlignError(f"{mask}: the mask must be a 3D image, got shape {data.shape}")
        binary = (np.nan_to_num(data) > 0).astype(np.int8)
        if binary.sum() == 0:
            raise LesionAlignError(f"{mask}: the mask is empty (no voxel > 0)")
        self.mask_img = nib.Nifti1Image(binary, img.affine)
        self.source = str(source if not isinstance(mask, (str, Path)) else mask)
        self.masker = NiftiMasker(mask_img=self.mask_img, standardize=None).fit()
        self.n_features = int(binary.sum())
        self.names = None

    @property
    def affine(self) -> np.ndarray:
        return self.mask_img.affine

    @property
    def shape(self) -> tuple:
        return self.mask_img.shape

    def load_run(self, path) -> np.ndarray:
        """Read a 4D NIfTI run and return its masked (T, V) float32 time series."""
        import nibabel as nib
        from nilearn.image import resample_to_img

        path = Path(path)
        try:
            img = nib.load(str(path))
        except FileNotFoundError as err:
            raise LesionAlignError(f"{path}: BOLD file not found") from err
        except Exception as err:
            raise LesionAlignError(f"{path}: cannot read as NIfTI ({err})") from err
        if len(img.shape) != 4:
            raise LesionAlignError(f"{path}: a BOLD run must be a 4D image, got shape {img.shape}")
        if img.shape[:3] != self.shape or not np.allclose(img.affine, self.affine, atol=1e-3):
            # different grid: resample the run onto the mask's grid
            img = resample_to_img(img, self.mask_img, interpolation="continuous",
                                  force_resample=True, copy_header=True)
        try:
            data = img.get_fdata(dtype=np.float32)
        except Exception as err:
            raise LesionAlignError(f"{path}: cannot read the image data ({err})") from err
        m = np.asarray(self.mask_img.dataobj, dtype=bool)
        return np.ascontiguousarray(data[m].T)  # same C order as NiftiMasker

    def to_image(self, values: np.ndarray, fill: float = 0.0):
        """A 3D float32 image with ``values`` inside the mask."""
        import nibabel as nib

        m = np.asarray(self.mask_img.dataobj, dtype=bool)
        vol = np.full(m.shape, fill, dtype=np.float32)
        vol[m] = np.asarray(values, dtype=np.float32)
        img = nib.Nifti1Image(vol, self.affine)
        img.header.set_xyzt_units("mm", "sec")
        return img

    def coordinates(self) -> np.ndarray:
        """MNI coordinates (mm) of the mask's voxels, in the vector order."""
        ijk = np.argwhere(np.asarray(self.mask_img.dataobj, dtype=bool))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


class RegionSpace:
    """Regions (ROIs / parcels): one column per region, results per region."""

    kind = "regions"

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.n_features = len(self.names)


def read_region_series(path, names: Sequence[str] | None = None, skip_rows: int = 0):
    """Read a ``T x V`` array of region time series.

    Returns ``(data, names)``; ``names`` come from a header row when the file has one, from
    ``names`` otherwise, else ``roi-1 .. roi-V``.
    """
    path = Path(path)
    if not path.exists():
        raise LesionAlignError(f"{path}: region time-series file not found")
    header = None
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            import pandas as pd

            sep = "," if path.suffix == ".csv" else ("\t" if path.suffix == ".tsv" else r"\s+")
            first = path.read_text(errors="replace").splitlines()[:1]
            tokens = first[0].replace(",", " ").split() if first else []
            has_header = bool(tokens) and not all(_is_number(t) for t in tokens)
            df = pd.read_csv(path, sep=sep, header=0 if has_header else None, engine="python")
            if has_header:
                header = [str(c) for c in df.columns]
            data = df.to_numpy(dtype=np.float64)
    except LesionAlignError:
        raise
    except Exception as err:
        raise LesionAlignError(
            f"{path}: cannot read a T x V numeric table ({err}); use .npy, .tsv/.csv or "
            "whitespace .txt with one column per region"
        ) from err
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise LesionAlignError(f"{path}: expected a 2D T x V array, got shape {data.shape}")
    data = data[skip_rows:]
    V = data.shape[1]
    if names is not None:
        if len(names) != V:
            raise LesionAlignError(
                f"{path}: {V} columns but {len(names)} region names were given ({list(names)})"
            )
        names = list(names)
    elif header is not None:
        names = header
    else:
        names = [f"roi-{i + 1}" for i in range(V)]
    return np.ascontiguousarray(data), names


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_confounds(path, n_vols: int, skip_rows: int = 0) -> np.ndarray:
    """Read a confounds table (e.g. 6 motion parameters), one row per volume."""
    data, _ = read_region_series(path, skip_rows=skip_rows)
    if data.shape[0] != n_vols:
        raise LesionAlignError(
            f"{path}: {data.shape[0]} confound rows (after skipping {skip_rows}) but the run has "
            f"{n_vols} volumes; set confounds_skip_rows or fix the file"
        )
    return data


# --------------------------------------------------------------------------- checks
def expected_volumes(duration_s: float, tr: float, start_s: float = 0.0) -> int:
    """Volumes needed to cover the annotations: ceil((last offset - start) / TR)."""
    return int(math.ceil((duration_s - start_s) / tr - 1e-9))


def check_run_length(n_vols: int, last_offset_s: float, tr: float, where: str,
                     start_s: float = 0.0, tolerance: int = 10,
                     audio_end_s: float | None = None) -> None:
    """Raise a clear error when a run's length does not match its annotations.

    The run must cover the last word (``last_offset_s``); it may extend past the end of the
    audio (``audio_end_s`` when the annotation records it, else the last word) by up to
    ``tolerance`` volumes, as the scanner keeps running while the response decays.
    """
    need = expected_volumes(last_offset_s, tr, start_s)
    end = max(audio_end_s or 0.0, last_offset_s)
    most = expected_volumes(end, tr, start_s) + tolerance
    if n_vols < need:
        raise LesionAlignError(
            f"{where}: the run has {n_vols} volumes ({n_vols * tr:.1f} s at TR={tr} s) but its "
            f"last word ends at {last_offset_s:.1f} s, i.e. {need} volumes: {need - n_vols} "
            "missing. Check the TR, the file pairing, or bold_start_s if volumes were dropped."
        )
    if n_vols > most:
        raise LesionAlignError(
            f"{where}: the run has {n_vols} volumes ({n_vols * tr:.1f} s) but its annotations end "
            f"at {end:.1f} s ({most - tolerance} volumes at TR={tr} s): {n_vols - most} volumes "
            f"more than the tolerance of {tolerance}. Check the TR and the file pairing, or "
            "raise [data].length_tolerance_trs."
        )


def valid_columns(runs: Sequence[np.ndarray]) -> np.ndarray:
    """Columns that are finite and not constant in every run."""
    ok = np.ones(runs[0].shape[1], dtype=bool)
    for Y in runs:
        ok &= np.isfinite(Y).all(0)
        ok &= np.nanstd(Y, axis=0) > 1e-8 * (1.0 + np.nanmax(np.abs(Y), axis=0))
    return ok


class CleaningOptions(Table):
    """Options of :func:`nilearn.signal.clean`, applied to each run (``[cleaning]``)."""

    TABLE: ClassVar[str] = "[cleaning]"
    #: remove linear trends
    detrend: Bool = True
    #: high-pass cut-off (cosine drift basis); 0 or None disables it
    high_pass_hz: Annotated[float, Strict(), Field(ge=0)] | None = 0.008
    #: z-score every run
    standardize: Bool = True

    def describe(self) -> dict:
        return {"detrend": self.detrend, "high_pass_hz": self.high_pass_hz,
                "standardize": self.standardize}


def clean_run(Y: np.ndarray, tr: float, opts: CleaningOptions = CleaningOptions(),
              confounds: np.ndarray | None = None) -> np.ndarray:
    """Clean one run with nilearn: detrend, high-pass (cosine drift basis), confounds, z-score.

    The signal and the confounds are detrended and high-passed the same way first, then the
    filtered confounds are regressed out; this equals one joint regression on [drifts,
    confounds] and avoids nilearn dropping its whole cosine basis when a confound (slow
    motion) correlates with one of the cosines. Returns float32; constant columns stay 0.
    """
    from nilearn.signal import clean

    def filt(x):
        return clean(np.asarray(x, dtype=np.float64), detrend=opts.detrend, standardize=None,
                     high_pass=opts.high_pass_hz, t_r=tr,
                     filter="cosine" if opts.high_pass_hz else False)

    out = filt(Y)
    if confounds is not None:
        C = filt(confounds)
        C = C[:, C.std(0) > 1e-12 * (1 + np.abs(C).max())]
        if C.shape[1]:
            beta, *_ = np.linalg.lstsq(C, out, rcond=None)
            out = out - C @ beta
    if opts.standardize:
        sd = out.std(0, ddof=1)
        out = np.where(sd > 0, (out - out.mean(0)) / np.where(sd > 0, sd, 1), 0.0)
    return out.astype(np.float32)


@dataclass
class SubjectRuns:
    """Cleaned BOLD of one subject in one language: runs of (T_i, V) float32."""

    subject: str
    language: str
    runs: list
    sources: list = field(default_factory=list)
    valid: np.ndarray | None = None  # (V,) columns used in the fit
