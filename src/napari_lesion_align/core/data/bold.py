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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Sequence

import numpy as np
from pydantic import Field, Strict

from ..base.errors import LesionAlignError
from ..base.io import read_bytes, read_text, regular_file
from ..base.schema import Bool, Table


# --------------------------------------------------------------------------- spaces
class VolumeSpace:
    """A brain mask on an MNI grid; maps volumes <-> voxel vectors (nilearn NiftiMasker)."""

    kind = "volume"

    def __init__(self, mask, source: str = "<mask>"):
        import nibabel as nib
        from nilearn.maskers import NiftiMasker

        if not isinstance(mask, nib.spatialimages.SpatialImage):
            regular_file(mask, "brain mask", "set [data].mask to a 3D NIfTI image")
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

        path = regular_file(path, "BOLD run", "give one 4D NIfTI image per run")
        try:
            img = nib.load(str(path))
        except Exception as err:
            raise LesionAlignError(f"{path}: cannot read as NIfTI ({err})") from err
        if len(img.shape) != 4:
            raise LesionAlignError(f"{path}: a BOLD run must be a 4D image, got shape {img.shape}")
        self.check_grid(img, path)
        try:
            if not self.same_grid(img):  # resample the run onto the mask's grid
                img = resample_to_img(img, self.mask_img, interpolation="continuous",
                                      force_resample=True, copy_header=True)
            data = img.get_fdata(dtype=np.float32)
        except Exception as err:
            raise LesionAlignError(f"{path}: cannot read the image data "
                                   f"({' '.join(str(err).split())}); the file "
                                   "may be truncated or damaged") from err
        m = np.asarray(self.mask_img.dataobj, dtype=bool)
        return np.ascontiguousarray(data[m].T)  # same C order as NiftiMasker

    def same_grid(self, img) -> bool:
        """Whether an image is on the mask's grid (same shape and affine)."""
        return img.shape[:3] == self.shape and np.allclose(img.affine, self.affine, atol=1e-3)

    def check_grid(self, img, path) -> None:
        """A run on another grid is resampled onto the mask's; it must cover the mask's
        voxels (a run of another space, or with a broken affine, is refused by name)."""
        if self.same_grid(img):
            return
        aff = np.asarray(img.affine, dtype=float)
        if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise LesionAlignError(f"{path}: the image's affine is not usable ({aff.tolist()});"
                                   " fix the NIfTI header (qform / sform)")
        ijk = np.argwhere(np.asarray(self.mask_img.dataobj, dtype=bool))
        xyz = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        inv = np.linalg.inv(aff)
        rc = xyz @ inv[:3, :3].T + inv[:3, 3]
        inside = np.all((rc > -0.5) & (rc < np.asarray(img.shape[:3]) - 0.5), axis=1)
        if inside.mean() < 0.5:
            raise LesionAlignError(
                f"{path}: the run's field of view covers {100 * inside.mean():.0f} % of the "
                f"mask's voxels (grid {tuple(img.shape[:3])}, mask {self.shape}): the run and "
                "the mask are not in the same space. Register the run to the mask's space, "
                "or use the mask of this space")

    def to_image(self, values: np.ndarray, fill: float = 0.0):
        """A 3D float32 image with ``values`` inside the mask."""
        import nibabel as nib

        m = np.asarray(self.mask_img.dataobj, dtype=bool)
        vol = np.full(m.shape, fill, dtype=np.float32)
        vol[m] = np.asarray(values, dtype=np.float32)
        img = nib.Nifti1Image(vol, self.affine)
        img.header.set_xyzt_units("mm", "sec")
        return img

    def labels_image(self, labels: np.ndarray):
        """A 3D int16 image of category ``labels`` inside the mask, 0 outside."""
        import nibabel as nib

        m = np.asarray(self.mask_img.dataobj, dtype=bool)
        vol = np.zeros(m.shape, dtype=np.int16)
        vol[m] = np.asarray(labels, dtype=np.int16)
        return nib.Nifti1Image(vol, self.affine)

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


def read_region_series(path, names: Sequence[str] | None = None, skip_rows: int = 0,
                       what: str = "region time-series table"):
    """Read a ``T x V`` array of region time series.

    ``.npy`` (a 1D or 2D numeric array), or a text table: ``.csv`` (commas), ``.tsv``
    (tabs) or whitespace-separated (``.txt`` and others), with or without a header row of
    region names. Every row must have one number per column: a short or long row, an
    empty field or a value that is not a number is an error naming the line (``nan`` is a
    number: see :func:`censored_volumes`). Region names (header or ``names``) must be
    distinct and free of tabs and line breaks (they are written into TSV tables).

    Returns ``(data, names)``; ``names`` come from a header row when the file has one, from
    ``names`` otherwise, else ``roi-1 .. roi-V``.
    """
    path = Path(path)
    header = None
    fix = "use .npy, .tsv/.csv or whitespace .txt with one column per region"
    if path.suffix == ".npy":
        import io

        try:
            data = np.load(io.BytesIO(read_bytes(path, what, fix)), allow_pickle=False)
            data = np.asarray(data, dtype=np.float64)
        except LesionAlignError:
            raise
        except Exception as err:
            raise LesionAlignError(f"{path}: cannot read a T x V numeric array ({err}); "
                                   f"{fix}") from err
    else:
        data, header = _parse_table(path, read_text(path, what, fix))
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or 0 in data.shape:
        raise LesionAlignError(f"{path}: expected a 2D T x V array, got shape {data.shape}")
    data = np.asarray(data, dtype=np.float32)[skip_rows:]
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
    check_region_names(names, str(path))
    if data.shape[0] == 0:
        raise LesionAlignError(f"{path}: no rows left after skipping {skip_rows}")
    return np.ascontiguousarray(data), names


def _parse_table(path: Path, text: str):
    """``(T x V float64 array, header names or None)`` of a text table; every row checked."""
    import csv
    import io

    sep = {".csv": ",", ".tsv": "\t"}.get(path.suffix)
    if sep is None:
        rows = [(i, line.split()) for i, line in enumerate(text.splitlines(), 1)]
    else:
        reader = csv.reader(io.StringIO(text), delimiter=sep)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as err:
            raise LesionAlignError(f"{path}: cannot read the table ({err})") from err
    rows = [(i, [f.strip() for f in r]) for i, r in rows if r and any(f.strip() for f in r)]
    if not rows:
        raise LesionAlignError(f"{path}: the table is empty; it needs one row per volume and "
                               "one column per region")
    header = None
    first = rows[0][1]
    if not all(_is_number(t) for t in first if t):
        header = first
        rows = rows[1:]
    width = len(header) if header is not None else len(first)
    kind = {",": "comma", "\t": "tab"}.get(sep, "whitespace")
    out = np.empty((len(rows), width), dtype=np.float64)
    for k, (line, row) in enumerate(rows):
        if len(row) != width:
            raise LesionAlignError(
                f"{path}: line {line} has {len(row)} {kind}-separated fields but "
                f"{'the header has' if header is not None else 'the first row has'} {width}; "
                "every row needs one value per region (fix the missing or extra fields)")
        try:
            out[k] = [float(f) for f in row]
        except ValueError:
            j = next(j for j, f in enumerate(row) if not _is_number(f))
            raise LesionAlignError(
                f"{path}: line {line}, column {j + 1}: {row[j]!r} is not a number; every "
                "value must be a number (write nan for a missing one)") from None
    return out, header


def check_region_names(names: Sequence[str], where: str) -> None:
    """Region names go into TSV tables: distinct, not empty, no tab or line break."""
    for n in names:
        if not str(n).strip() or any(ch in str(n) for ch in "\t\n\r\x00"):
            raise LesionAlignError(f"{where}: region name {str(n)!r} is empty or holds a tab or "
                                   "a line break; rename the region (names are written into "
                                   "tab-separated tables)")
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise LesionAlignError(f"{where}: region name(s) {dup} appear more than once; every "
                               "region needs its own name")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


#: nilearn's preset denoising strategies (``load_confounds_strategy``)
CONFOUND_PRESETS = ("simple", "scrubbing", "compcor", "ica_aroma")
#: an fMRIPrep confounds table: ``<entities>_desc-confounds_timeseries.tsv`` (``_regressors``
#: before fMRIPrep 20.2)
FMRIPREP_CONFOUNDS = r"^(?P<prefix>.+)_desc-confounds_(timeseries|regressors)\.tsv$"


def confound_strategy(value, where: str = "[data].confounds") -> dict | None:
    """The one reading of a confound strategy (``[data].confounds``): ``None`` / ``false``
    (the tables' columns as they are), a preset name of nilearn's
    :func:`~nilearn.interfaces.fmriprep.load_confounds_strategy` (``"simple"``,
    ``"scrubbing"``, ``"compcor"``, ``"ica_aroma"``), or a table of arguments of
    :func:`~nilearn.interfaces.fmriprep.load_confounds` (``{strategy = ["motion",
    "wm_csf"], motion = "basic"}``), optionally with ``denoise_strategy = "<preset>"`` to
    adjust a preset. Returns the arguments as a dict (``denoise_strategy`` set for a preset).
    """
    import inspect

    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

    if value is None or value is False:
        return None
    fix = (f"write {where} = \"simple\" (or \"scrubbing\", \"compcor\", \"ica_aroma\"), or "
           "a table of nilearn load_confounds arguments, e.g. {strategy = [\"motion\", "
           "\"wm_csf\"], motion = \"basic\"}")
    if isinstance(value, str):
        value = {"denoise_strategy": value}
    if not isinstance(value, dict) or not value:
        raise LesionAlignError(f"{where} = {value!r}: {fix}")
    out = dict(value)
    preset = out.get("denoise_strategy")
    if preset is not None and preset not in CONFOUND_PRESETS:
        raise LesionAlignError(f"{where}: denoise_strategy {preset!r} is not one of nilearn's "
                               f"presets {list(CONFOUND_PRESETS)}; {fix}")
    fn = load_confounds_strategy if preset is not None else load_confounds
    allowed = set(inspect.signature(load_confounds).parameters) - {"img_files"}
    if preset is not None:
        allowed = (allowed | {"denoise_strategy"}) - {"strategy"}
    bad = sorted(set(out) - allowed)
    if bad:
        raise LesionAlignError(f"{where}: unknown key(s) {bad} for nilearn's {fn.__name__}; "
                               f"allowed: {sorted(allowed)}")
    if "strategy" in out:
        s = out["strategy"]
        if isinstance(s, str):
            s = [s]
        if not isinstance(s, (list, tuple)) or not all(isinstance(x, str) for x in s):
            raise LesionAlignError(f"{where}.strategy = {out['strategy']!r}: write a list of "
                                   "noise components, e.g. [\"motion\", \"wm_csf\"]")
        out["strategy"] = list(s)
    return out


def _fmriprep_confounds(path, strategy: dict, record: dict | None = None) -> np.ndarray:
    """The confounds nilearn's fMRIPrep interface selects from one fMRIPrep table.

    nilearn finds the table from the name of the BOLD image next to it; the image named
    here (``<entities>_desc-preproc_bold.nii.gz``) only carries the entities, it is not read.
    Volumes that nilearn marks for removal (non-steady-state volumes, scrubbed motion
    outliers: its ``sample_mask``) become one spike regressor each, so that cleaning
    regresses them out (equivalent to censoring them in the confound regression).
    """
    import re

    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

    path = regular_file(path, "confounds table", "give fMRIPrep's "
                        "*_desc-confounds_timeseries.tsv")
    m = re.match(FMRIPREP_CONFOUNDS, Path(path).name)
    if m is None:
        raise LesionAlignError(
            f"{path}: a confound strategy ([data].confounds) reads fMRIPrep confound tables, "
            "named <entities>_desc-confounds_timeseries.tsv; rename the file or remove the "
            "strategy to use every column of the table as it is")
    image = str(Path(path).parent / f"{m['prefix']}_desc-preproc_bold.nii.gz")
    kw = dict(strategy)
    preset = kw.pop("denoise_strategy", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if preset is not None:
                conf, sample_mask = load_confounds_strategy(image, denoise_strategy=preset, **kw)
            else:
                conf, sample_mask = load_confounds(image, **kw)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        import pandas as pd

        try:
            cols = list(pd.read_csv(path, sep="\t", nrows=0).columns)
        except Exception:  # noqa: BLE001 - the columns are only shown
            cols = []
        shown = ", ".join(cols[:12]) + (", ..." if len(cols) > 12 else "")
        raise LesionAlignError(
            f"{path}: nilearn's load_confounds could not apply the confound strategy "
            f"{strategy} ({' '.join(str(err).split())}); the table has columns [{shown}]. "
            "Choose a strategy whose columns the table has ([data].confounds)") from err
    import pandas as pd

    n = len(pd.read_csv(path, sep="\t", usecols=[0]))
    data = (np.zeros((n, 0)) if conf is None
            else np.asarray(conf.to_numpy(dtype=np.float64)).reshape(n, -1))
    dropped = (np.setdiff1d(np.arange(n), np.asarray(sample_mask, dtype=int))
               if sample_mask is not None else np.zeros(0, dtype=int))
    if len(dropped):
        spikes = np.zeros((n, len(dropped)))
        spikes[dropped, np.arange(len(dropped))] = 1.0
        data = np.column_stack([data, spikes])
    if record is not None:
        steady = non_steady_state_volumes(path)
        record["columns"] = [] if conf is None else [str(c) for c in conf.columns]
        record["non_steady_state"] = [int(i) for i in dropped if i in steady]
        record["spikes"] = [int(i) for i in dropped if i not in steady]
    return data


#: fMRIPrep's non-steady-state columns (one per volume it flags at a run's start)
NON_STEADY_COLUMNS = r"^non_steady_state_outlier\d+$"
#: the confound strategy of a BIDS config whose ``[data].confounds`` is left out or false:
#: no confound column, only fMRIPrep's non-steady-state volumes (as spike regressors)
NON_STEADY_ONLY = {"strategy": ["non_steady_state"]}


def non_steady_state_volumes(path) -> list[int]:
    """The volumes (0-based) an fMRIPrep confounds table flags as non-steady-state (its
    ``non_steady_state_outlierXX`` columns); ``[]`` when it has none."""
    import re

    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except Exception as err:  # noqa: BLE001 - named in the error
        raise LesionAlignError(f"{path}: cannot read the confounds table ({err})") from err
    cols = [c for c in df.columns if re.match(NON_STEADY_COLUMNS, str(c))]
    if not cols:
        return []
    flags = np.nan_to_num(df[cols].to_numpy(dtype=np.float64)) > 0
    return [int(i) for i in np.flatnonzero(flags.any(axis=1))]


def spike_regressors(n_vols: int, volumes) -> np.ndarray:
    """One column per volume of ``volumes`` (0-based), 1 at that volume, 0 elsewhere: a
    regression off these columns removes those volumes from the cleaning's fit."""
    vols = sorted({int(v) for v in volumes if 0 <= int(v) < n_vols})
    out = np.zeros((n_vols, len(vols)), dtype=np.float32)
    out[vols, np.arange(len(vols))] = 1.0
    return out


def read_confounds(path, n_vols: int, skip_rows: int = 0,
                   strategy: dict | None = None, record: dict | None = None) -> np.ndarray:
    """Read a confounds table (e.g. 6 motion parameters), one row per volume.

    ``strategy`` (:func:`confound_strategy`): the columns of an fMRIPrep table that
    nilearn's ``load_confounds`` / ``load_confounds_strategy`` select (plus a spike
    regressor per volume it removes: the non-steady-state volumes always, scrubbed motion
    outliers with ``"scrubbing"``); ``None``: every column of the table.

    ``record``: filled with what was read, for the cleaning record: ``columns`` (the
    confound columns), ``non_steady_state`` and ``spikes`` (the volumes, 0-based, removed
    by a spike regressor as non-steady-state or as motion outliers)."""
    if strategy:
        data = np.asarray(_fmriprep_confounds(path, strategy, record),
                          dtype=np.float32)[skip_rows:]
    else:
        import re

        try:
            data, names = read_region_series(path, skip_rows=skip_rows,
                                             what="confounds table")
            if record is not None:
                record["columns"] = [str(c) for c in names]
                record["non_steady_state"] = [
                    int(i) for c, col in zip(names, data.T)
                    if re.match(NON_STEADY_COLUMNS, str(c))
                    for i in np.flatnonzero(np.nan_to_num(col) > 0)]
                record["spikes"] = []
        except LesionAlignError as err:
            if re.match(FMRIPREP_CONFOUNDS, Path(path).name):  # every column of fMRIPrep's
                raise LesionAlignError(f"{err}. This is an fMRIPrep confounds table: choose "
                                       "its columns with a strategy, e.g. [data].confounds = "
                                       "\"simple\"") from None
            raise
    if not np.all(np.isfinite(data)):
        i, j = np.argwhere(~np.isfinite(data))[0]
        raise LesionAlignError(f"{path}: row {i + 1 + skip_rows}, column {j + 1} is "
                               f"{data[i, j]}; confounds must be finite numbers (fill the "
                               "missing values, e.g. with 0 for the first volume's motion "
                               "derivatives)")
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


#: a volume is censored when at least this fraction of its voxels / regions is NaN or inf
CENSOR_VOLUME_FRACTION = 0.5
#: a run may lose at most this fraction of its volumes (and at least one volume) to censoring
MAX_CENSORED_FRACTION = 0.1


def censored_volumes(Y: np.ndarray, source: str) -> np.ndarray:
    """The volumes of one run that are kept: the NaN-volume rule.

    A volume (one TR) in which at least half of the voxels / regions are NaN or infinite
    (:data:`CENSOR_VOLUME_FRACTION`; e.g. an all-NaN volume written for a dropped or
    corrupted acquisition) is *censored*: that TR is left out of the fit of this run --
    its BOLD row and the matching row of every feature matrix (the FIR delays are applied
    on the full time grid first, so the other volumes keep their true timing) -- and the
    drifts and confounds are regressed out of the kept volumes at their true acquisition
    times (:func:`clean_run`). The subject stays in the analysis; its fit record lists the
    censored volumes per run (``censored_volumes``). A run may lose at most 10 % of its
    volumes this way (:data:`MAX_CENSORED_FRACTION`, at least one volume): a run whose
    volumes are mostly NaN is an error naming the file. After censoring, a voxel / region
    with a NaN in a kept volume, or constant in a run, is excluded from the subject's maps
    and counted (``n_excluded``); see :func:`check_subject_runs` for runs with no signal.

    Returns the boolean mask of the kept volumes (all True for a clean run).
    """
    Y = np.asarray(Y)
    T = Y.shape[0]
    if T == 0 or Y.ndim != 2 or Y.shape[1] == 0:
        raise LesionAlignError(f"{source}: the run has no data (shape {Y.shape})")
    bad = (~np.isfinite(Y)).mean(axis=1) >= CENSOR_VOLUME_FRACTION
    n = int(bad.sum())
    most = max(1, int(MAX_CENSORED_FRACTION * T))
    if n > most:
        first = ", ".join(str(i + 1) for i in np.flatnonzero(bad)[:5])
        raise LesionAlignError(
            f"{source}: {n} of {T} volumes are NaN or infinite (in at least half of the "
            f"voxels/regions; volumes {first}{', ...' if n > 5 else ''}): more than the "
            f"{int(100 * MAX_CENSORED_FRACTION)} % (at most {most}) that are censored. "
            "Check the preprocessing of this run, or leave the run out")
    return ~bad


def has_signal(Y: np.ndarray, keep: np.ndarray) -> bool:
    """Whether any voxel / region of a run is finite and varies over its kept volumes."""
    K = np.asarray(Y)[keep]
    finite = np.isfinite(K).all(axis=0)
    if not finite.any():
        return False
    Kf = K[:, finite]
    return bool(np.any(Kf.std(axis=0) > 1e-8 * (1.0 + np.abs(Kf).max(axis=0))))


def check_subject_runs(runs: Sequence[np.ndarray], sources: Sequence[str]) -> list:
    """The kept volumes of each run of one subject (:func:`censored_volumes`), and the rule
    for runs without signal: a subject whose every run is constant or NaN (a placeholder
    file of zeros) is excluded from the analysis with a warning in ``result.json``; a run
    without signal *next to runs with data* (a file of zeros, a run outside the mask) is an
    error naming the file -- it would otherwise exclude every voxel of the subject."""
    keeps = [censored_volumes(Y, src) for Y, src in zip(runs, sources)]
    empty = [src for Y, k, src in zip(runs, keeps, sources) if not has_signal(Y, k)]
    if empty and len(empty) < len(keeps):
        raise LesionAlignError(
            f"{empty[0]}: every voxel/region of the run is constant or NaN over time (e.g. "
            "a file of zeros, or a run that does not overlap the mask) while the subject's "
            "other runs have data; check the file and the mask")
    return keeps


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
              confounds: np.ndarray | None = None,
              keep: np.ndarray | None = None) -> np.ndarray:
    """Clean one run with nilearn: detrend, high-pass (cosine drift basis), confounds, z-score.

    The signal and the confounds are detrended and high-passed the same way first, then the
    filtered confounds are regressed out; this equals one joint regression on [drifts,
    confounds] and avoids nilearn dropping its whole cosine basis when a confound (slow
    motion) correlates with one of the cosines. Returns float32; constant columns stay 0.

    ``keep``: the volumes kept (:func:`censored_volumes`); the censored ones are dropped
    (the result has ``keep.sum()`` rows) and the linear trend and cosine drifts, evaluated
    at the kept volumes' true times, are regressed out of the kept volumes (for a run
    without censored volumes this equals nilearn's detrending and cosine high-pass).
    """
    from nilearn.signal import clean

    if keep is not None and not np.all(keep):
        return _clean_censored(Y, tr, opts, confounds, np.asarray(keep, dtype=bool))

    def filt(x):
        return clean(np.asarray(x, dtype=np.float64), detrend=opts.detrend, standardize=None,
                     high_pass=opts.high_pass_hz, t_r=tr,
                     filter="cosine" if opts.high_pass_hz else False)

    return _regress_standardize(filt(Y), None if confounds is None else filt(confounds),
                                opts)


def cleaning_regressors(n_vols: int, tr: float, opts: CleaningOptions = CleaningOptions(),
                        confounds: np.ndarray | None = None,
                        keep: np.ndarray | None = None) -> np.ndarray:
    """The regressors :func:`clean_run` projects a run off, at its kept volumes.

    ``(keep.sum(), k)`` float64: a constant, the linear trend (``detrend``), the cosine
    drifts below ``high_pass_hz`` (at the volumes' true times) and the confounds as given
    (their filtered versions span the same space together with the drifts). The cleaned run
    is orthogonal to these columns; the z-scoring adds a scale per voxel.

    With a single run, :func:`.encoding.cross_validated_r` projects the training rows of
    each outer fold off the training rows of these columns (``nuisance``): whole-run
    cleaning fits them on every volume, so that the held-out block's cleaned BOLD depends on
    the training blocks' (and theirs on it) through the fitted coefficients; after the
    projection the training BOLD no longer does.
    """
    from nilearn.signal import create_cosine_drift

    keep = np.ones(n_vols, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    cols = [np.ones((n_vols, 1))]
    if opts.detrend:
        cols.append(np.arange(n_vols, dtype=np.float64)[:, None])
    if opts.high_pass_hz:
        with warnings.catch_warnings():  # a run too short for any cosine: none
            warnings.filterwarnings("ignore", message="Cosine filter was not created")
            cols.append(create_cosine_drift(opts.high_pass_hz, np.arange(n_vols) * tr)[:, :-1])
    if confounds is not None:
        cols.append(np.asarray(confounds, dtype=np.float64).reshape(n_vols, -1))
    return np.column_stack(cols)[keep]


def _clean_censored(Y, tr, opts, confounds, keep) -> np.ndarray:
    """:func:`clean_run` of a run with censored volumes: one projection on the kept rows
    off [constant, linear trend, cosine drifts] at the true frame times."""
    from nilearn.signal import create_cosine_drift

    T = len(keep)
    cols = [np.ones((T, 1)), np.arange(T, dtype=np.float64)[:, None]] if opts.detrend else []
    if opts.high_pass_hz:
        cols.append(create_cosine_drift(opts.high_pass_hz, np.arange(T) * tr)[:, :-1])
    Dk = np.column_stack(cols)[keep] if cols else np.zeros((int(keep.sum()), 0))
    if not opts.detrend:  # the mean stays (nilearn centres the drifts)
        Dk = Dk - Dk.mean(0)

    def filt(x):
        x = np.asarray(x, dtype=np.float64)[keep]
        if not Dk.shape[1]:
            return x  # neither detrend nor high-pass: nothing to remove
        beta, *_ = np.linalg.lstsq(Dk, x, rcond=None)
        return x - Dk @ beta

    return _regress_standardize(filt(Y), None if confounds is None else filt(confounds),
                                opts)


def _regress_standardize(out: np.ndarray, C, opts) -> np.ndarray:
    """The filtered run without the (filtered) confounds ``C``, z-scored when asked."""
    if C is not None:
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
