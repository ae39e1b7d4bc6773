"""napari side: layer tuples, orientation (left is left), reader, writer, sample data.

Viewer tests use pytest-qt's ``make_napari_viewer`` under Xvfb (pytest-xvfb).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import coord_transform

from napari_lesion_align import _layers as L
from napari_lesion_align import _view_model as VM
from napari_lesion_align.core.analysis import statistics as an
from napari_lesion_align.core.base.errors import LesionAlignError
from test_figures import make_tiny_result

RAS_4MM = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
LAS_4MM = np.array([[-4.0, 0, 0, 90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
SHAPE_4MM = (45, 54, 45)
#: an oblique-free but permuted grid (voxel axes j, k, i ~ x, y, z) with a flip
PERMUTED = np.array([[0, 0, 3.0, -10], [2.0, 0, 0, 5], [0, -4.0, 0, 50], [0, 0, 0, 1]])


def _voxel(affine, xyz):
    ijk = np.linalg.solve(affine, [*xyz, 1.0])[:3]
    assert np.allclose(ijk, np.round(ijk)), "test point not on the grid"
    return tuple(int(v) for v in np.round(ijk))


def _blob_volume(affine, blobs):
    """Zeros with a 3x3x3 blob (centre voxel a bit higher) of value v at each MNI point."""
    vol = np.zeros(SHAPE_4MM, dtype=np.float32)
    for xyz, v in blobs:
        i, j, k = _voxel(affine, xyz)
        vol[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = v
        vol[i, j, k] = 1.2 * v
    return vol


def _add(viewer, layer_tuple):
    from napari.layers import Layer

    return viewer.add_layer(Layer.create(*layer_tuple))


def _read(path):
    from napari_lesion_align._reader import napari_get_reader

    reader = napari_get_reader(str(path))
    assert reader is not None, f"{path} not claimed"
    return reader(str(path))


def _show_slice(viewer, mni_z):
    viewer.reset_view()
    viewer.dims.set_point(0, L.mni_to_world((0, 0, mni_z))[0])
    return viewer.screenshot(canvas_only=True, flash=False)


def _warm(img):
    rgb = img[..., :3].astype(int)
    return (rgb[..., 0] > 150) & (rgb[..., 2] < 100)


def _cold(img):
    rgb = img[..., :3].astype(int)
    return (rgb[..., 2] > 150) & (rgb[..., 0] < 100)


# --------------------------------------------------------------------------- coordinates
def test_world_mni_round_trip_and_voxel_to_mni():
    for xyz in [(-42.0, 30.0, 20.0), (10.5, -3.0, -70.0)]:
        world = L.mni_to_world(xyz)
        assert world == (xyz[2], -xyz[1], xyz[0])
        assert L.world_to_mni(world) == pytest.approx(xyz)
        assert L.world_to_mni((3.0,) + world) == pytest.approx(xyz)  # leading volume axis
    # world (z, -y, x) is a rotation of MNI (x, y, z), not a mirror: napari's default
    # (right-handed) 3D view is therefore not mirrored either
    assert np.linalg.det(L.WORLD_FROM_MNI[:3, :3]) == pytest.approx(1.0)
    for aff in (RAS_4MM, LAS_4MM, PERMUTED):
        assert L.voxel_to_mni(aff, (3, 4, 5)) == pytest.approx(coord_transform(3, 4, 5, aff))


@pytest.mark.parametrize("affine", [RAS_4MM, LAS_4MM, PERMUTED], ids=["RAS", "LAS", "permuted"])
def test_layer_world_position_is_the_nilearn_mni_point(affine):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(7, 8, 9)).astype(np.float32)
    data_l, kwargs, kind = L.nifti_layer(nib.Nifti1Image(data, affine), stat="r")
    from napari.layers import Layer

    layer = Layer.create(data_l, kwargs, kind)
    assert np.allclose(layer.scale, 1)  # positioned by the affine only
    for ijk in [(0, 0, 0), (6, 7, 8), (3, 1, 5)]:
        value = data[ijk]
        idx = np.argwhere(layer.data == value)
        assert len(idx) == 1
        mni = L.world_to_mni(layer.data_to_world(idx[0]))
        assert mni == pytest.approx(coord_transform(*ijk, affine), abs=1e-4)


# --------------------------------------------------------------------------- left is left
@pytest.mark.parametrize("affine", [RAS_4MM, LAS_4MM], ids=["RAS", "LAS"])
def test_left_is_left_anterior_is_up(make_napari_viewer, tmp_path, affine):
    """A positive blob at left-anterior MNI (-42, 30, 20) and a negative one at right-
    posterior (42, -30, 20): in the default 2D view the warm pixels are in the left/top
    halves of the canvas, the cold ones in the right/bottom halves, whatever the voxel
    order of the file (RAS or LAS)."""
    left, right = (-42.0, 30.0, 20.0), (42.0, -30.0, 20.0)
    path = tmp_path / "sub-01_lang-EN_desc-intact_stat-t_statmap.nii.gz"
    nib.save(nib.Nifti1Image(_blob_volume(affine, [(left, 5.0), (right, -5.0)]), affine), path)
    viewer = make_napari_viewer(show=True)
    (layer_tuple,) = _read(path)
    layer = _add(viewer, layer_tuple)
    assert layer.name == "t EN intact (sub-01)"
    img = _show_slice(viewer, left[2])
    h, w = img.shape[:2]
    ys, xs = np.nonzero(_warm(img))
    yc, xc = np.nonzero(_cold(img))
    assert len(xs) > 20 and len(xc) > 20, "blobs not drawn"
    assert xs.max() < w / 2 and ys.max() < h / 2  # left hemisphere left, anterior up
    assert xc.min() > w / 2 and yc.min() > h / 2
    # the blob's centre voxel: world position -> MNI equals nilearn's coordinate
    ijk_file = np.unravel_index(np.argmax(np.asarray(nib.load(path).dataobj)), SHAPE_4MM)
    idx_layer = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    viewer.cursor.position = layer.data_to_world(idx_layer)
    assert L.world_to_mni(viewer.cursor.position) == pytest.approx(
        coord_transform(*ijk_file, affine))
    assert L.world_to_mni(viewer.cursor.position) == pytest.approx(left)


def test_template_and_4mm_map_overlay(make_napari_viewer):
    """At any world point, the 2 mm template layer and a 4 mm map layer sample the voxels
    their NIfTI affines put at the same MNI point."""
    from nilearn.datasets import load_mni152_template

    viewer = make_napari_viewer()
    template = _add(viewer, L.template_layer(2))
    assert template.name == "MNI152 template (2 mm)"
    t_img = load_mni152_template(resolution=2)
    rng = np.random.default_rng(0)
    vals = rng.permutation(np.prod(SHAPE_4MM)).reshape(SHAPE_4MM).astype(np.float32)
    layer = _add(viewer, L.nifti_layer(nib.Nifti1Image(vals, LAS_4MM)))
    assert viewer.layers.index(template) == 0
    t_data = np.asarray(t_img.dataobj)
    for ijk in [(33, 39, 23), (10, 20, 30), (22, 27, 22)]:
        world = layer.data_to_world(np.argwhere(layer.data == vals[ijk])[0])
        mni = L.world_to_mni(world)
        assert mni == pytest.approx(coord_transform(*ijk, LAS_4MM))
        t_idx = np.round(template.world_to_data(world)).astype(int)
        t_ijk = np.round(coord_transform(*mni, np.linalg.inv(t_img.affine))).astype(int)
        assert template.data[tuple(t_idx)] == t_data[tuple(t_ijk)]
        assert np.allclose(template.data_to_world(t_idx), world)


# --------------------------------------------------------------------------- styles
def test_style_diverging_symmetric_and_threshold_transparent():
    values = np.concatenate([np.linspace(-2, 3, 200), [np.nan, 0.0]])
    st = L.style("t", values, threshold=1.0)
    lo, hi = st["contrast_limits"]
    # the threshold lives in the contrast limits (|v| < BAND * limit is transparent)
    assert lo == -hi and hi == pytest.approx((1.0 - L.EDGE_MARGIN) / L.BAND)
    free = L.style("t", values)
    assert free["contrast_limits"][1] == pytest.approx(L.robust_limit(values))
    cmap = st["colormap"]

    def alpha(v):
        return cmap.map(np.array([(v - lo) / (hi - lo)]))[0, 3]

    assert alpha(0.0) == 0 and alpha(0.9) == 0 and alpha(-0.9) == 0
    assert alpha(1.1) == 1 and alpha(-1.1) == 1 and alpha(hi) == 1
    assert alpha(1.0) == 1 and alpha(-1.0) == 1  # exactly at the threshold: shown
    p = L.style("q", np.linspace(0, 1, 50))
    assert p["contrast_limits"] == (0.0, 0.05)
    assert p["colormap"].map(np.array([0.2]))[0, 3] == 1  # q = 0.01: shown
    assert p["colormap"].map(np.array([1.0]))[0, 3] == 0  # q >= 0.05 (clipped): hidden
    assert L.style("lpi", values)["contrast_limits"] == (-1.0, 1.0)
    assert L.style(None, values)["colormap"] == "gray"


def test_threshold_hides_subthreshold_voxels_on_screen(make_napari_viewer):
    """A weak blob (|t| = 0.5) on the left, a strong one (3) on the right, threshold 1:
    only the right one is drawn; lowering the threshold to 0.2 shows both."""
    img = nib.Nifti1Image(_blob_volume(RAS_4MM, [((-42, 30, 20), 0.5), ((42, 30, 20), 3.0)]),
                          RAS_4MM)
    viewer = make_napari_viewer(show=True)
    layer = _add(viewer, L.nifti_layer(img, stat="t", threshold=1.0))
    shot = _show_slice(viewer, 20)
    w = shot.shape[1]
    xs = np.nonzero(_warm(shot))[1]
    assert len(xs) > 20 and xs.min() > w / 2
    L.set_threshold(layer, 0.2)
    xs = np.nonzero(_warm(_show_slice(viewer, 20)))[1]
    assert xs.min() < w / 2 and xs.max() > w / 2
    assert layer.metadata["threshold"] == 0.2
    # a threshold equal to the strong blob's value (as the group test's smallest
    # significant |t| is to its voxel): the blob is still drawn on screen
    L.set_threshold(layer, 3.0)
    xs = np.nonzero(_warm(_show_slice(viewer, 20)))[1]
    assert len(xs) > 20 and xs.min() > w / 2


def test_nan_outside_mask_is_transparent(make_napari_viewer):
    """A result map is NaN outside its mask: over the template it changes no pixel."""
    result = make_tiny_result()
    viewer = make_napari_viewer(show=True)
    _add(viewer, L.template_layer(2))
    layer = _add(viewer, L.map_layer(result, "01", "EN", "intact", "r"))
    assert np.isnan(layer.data).sum() > 0
    viewer.reset_view()
    viewer.dims.set_point(0, -60.0)  # below the tiny mask (z >= -12): all NaN there
    layer.visible = False
    before = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = True
    after = viewer.screenshot(canvas_only=True, flash=False)
    assert before.shape == after.shape and (before[..., :3] > 30).any()  # template drawn
    assert np.array_equal(before, after)
    inside = _show_slice(viewer, 20)
    assert _warm(inside).sum() > 20  # and the map is drawn where it has values


# --------------------------------------------------------------------------- results
def test_map_and_category_layers_of_a_result(make_napari_viewer):
    result = make_tiny_result()
    data, kwargs, kind = L.map_layer(result, "group", "EN", "shared", "t", threshold=2.0)
    assert kind == "image" and kwargs["name"] == "t EN shared (group)"
    meta = kwargs["metadata"]
    assert (meta["subject"], meta["language"], meta["condition"], meta["stat"]) == (
        "group", "EN", "shared", "t")
    assert np.array_equal(meta["nifti_affine"], result.space.affine)
    assert L.map_layer(result, "02", "FR", "shared", "deltar")[1]["name"] == \
        "Δr FR shared (sub-02)"
    with pytest.raises(LesionAlignError, match="no group map"):
        L.map_layer(result, "group", "EN", "nope", "t")

    data, kwargs, kind = L.category_layer(result)
    assert kind == "labels" and kwargs["name"] == "categories lesion"
    legend = kwargs["metadata"]["legend"]
    assert legend == result.categories["lesion"][1]
    viewer = make_napari_viewer()
    layer = _add(viewer, (data, kwargs, kind))
    by_name = {e["name"]: lab for lab, e in legend.items()}
    from napari.utils.colormaps.standardize_color import transform_color

    def shown(label):
        return layer.colormap.map(np.array([label]))[0]

    assert shown(0)[3] == 0
    # shared blue, the languages in their legend order
    assert np.allclose(shown(by_name["shared"]), transform_color(an.CATEGORY_COLOURS["shared"])[0])
    for lang, colour in (("EN", an.LIGHT_GREEN), ("FR", an.OKABE_ITO["sky blue"])):
        assert np.allclose(shown(by_name[f"specific:{lang}"]), transform_color(colour)[0])
    # no category colour is a colour of the map colormaps (diverging and p/q)
    ramp = np.vstack([L.plugin_colormap(k).colors[:, :3] for k in ("diverging", "sequential")])
    for label in by_name.values():
        if label:
            dist = np.abs(ramp - shown(label)[:3]).sum(axis=1)
            assert dist.min() > 0.25, (label, dist.min())
    assert layer.metadata["contour"] == L.CATEGORY_CONTOUR  # an outline: the map stays visible
    # the voxel counts survive the reorientation
    labels = result.categories["lesion"][0]
    for lab in by_name.values():
        if lab == 0:
            continue  # 0 is also everything outside the mask
        assert (labels == lab).sum() > 0
        assert (layer.data == lab).sum() == (labels == lab).sum()
    only_en = L.category_layer(result, languages=["EN"])[1]["colormap"]
    assert only_en[by_name["specific:FR"]] == "transparent"
    with pytest.raises(LesionAlignError, match="no category map"):
        L.category_layer(result, "nope")


def test_result_layers_default_set(tmp_path):
    """What a result opens with is what is shown (no hidden maps flooding the layer
    list): the default map (mean r of the intact model, first language), then the
    category overlays; the options still give a full set of group maps."""
    result = make_tiny_result()
    result.save(tmp_path / "res")
    layers = VM.result_layers(tmp_path / "res")
    names = [kw["name"] for _, kw, _ in layers]
    assert names == [L.layer_name("group", "EN", "intact", "r"), "categories lesion"]
    assert all(kw["visible"] for _, kw, _ in layers)
    folder = str((tmp_path / "res").resolve())
    assert all(kw["metadata"]["result_folder"] == folder for _, kw, _ in layers)
    # the map is drawn in grey |r| while the overlay is shown (colour = a category)
    assert layers[0][1]["metadata"]["magnitude"] is True
    assert layers[0][1]["colormap"].name == L.COLORMAP_NAMES["magnitude"]
    with_t = VM.result_layers(result, stats=("t",))
    expected = [L.layer_name("group", lang, c, "t") for lang in ("EN", "FR")
                for c in ("intact", "shared", "specificEN", "specificFR")]
    assert sorted(kw["name"] for _, kw, _ in with_t[:-1]) == sorted(expected)
    with_subjects = VM.result_layers(result, stats=("t",), subjects=True, controls=True)
    assert len(with_subjects) == len(with_t) + 3 * 2 * 5  # r maps: 3 subjects x 2 x 5 conds
    assert "r EN sharedRandom (sub-01)" in [kw["name"] for _, kw, _ in with_subjects]


# --------------------------------------------------------------------------- reader
def test_reader_claims_nifti_and_result_folders_only(tmp_path):
    from napari_lesion_align._reader import napari_get_reader

    result = make_tiny_result()
    folder = tmp_path / "res"
    result.save(folder)
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder without result.json
    assert napari_get_reader(str(folder / "summary.tsv")) is None
    layers = _read(folder)
    # the template first (beneath), then the result's layers
    assert [kw["name"] for _, kw, _ in layers] == ["MNI152 template (2 mm)"] + [
        kw["name"] for _, kw, _ in VM.result_layers(folder)]
    assert all(kw["metadata"]["result_folder"] == str(folder.resolve())
               for _, kw, _ in layers[1:])
    (t_map,) = _read(folder / "group_lang-FR_desc-shared_stat-t_statmap.nii.gz")
    assert t_map[1]["name"] == "t FR shared (group)" and t_map[2] == "image"
    assert np.isnan(t_map[0]).any()  # outside mask.nii.gz of the same folder
    (cats,) = _read(folder / "group_desc-lesion_categories.nii.gz")
    assert cats[2] == "labels"
    assert cats[1]["metadata"]["legend"] == result.categories["lesion"][1]
    assert len(napari_get_reader([str(folder / "mask.nii.gz")])([str(folder / "mask.nii.gz")])) == 1
    # region results have no volume: not ours to read
    regions = tmp_path / "regions"
    regions.mkdir()
    (regions / "result.json").write_text(json.dumps({"space": {"kind": "regions"}}))
    assert napari_get_reader(str(regions)) is None


def test_reader_bad_nifti_gives_a_clear_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(LesionAlignError, match=r"broken\.nii\.gz: cannot read as NIfTI.*re-export"):
        _read(bad)
    good = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), RAS_4MM), good)
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LesionAlignError, match="cut.nii.gz"):
        _read(good)
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5), np.float32), np.eye(4)), flat)
    with pytest.raises(LesionAlignError, match="3D images"):
        _read(flat)


def test_reader_four_d_gets_a_volume_axis(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7, 3)).astype(np.float32)
    path = tmp_path / "run.nii.gz"
    nib.save(nib.Nifti1Image(data, LAS_4MM), path)
    ((arr, kwargs, kind),) = _read(path)
    assert arr.shape[0] == 3 and kwargs["affine"].shape == (5, 5)
    assert kwargs["axis_labels"] == ("volume", "z", "-y", "x")


# --------------------------------------------------------------------------- writer
@pytest.mark.parametrize("affine", [RAS_4MM, LAS_4MM, PERMUTED], ids=["RAS", "LAS", "permuted"])
@pytest.mark.parametrize("four_d", [False, True], ids=["3D", "4D"])
def test_writer_round_trip(tmp_path, affine, four_d):
    from napari.layers import Layer

    from napari_lesion_align._writer import write_nifti

    shape = (6, 7, 8, 2) if four_d else (6, 7, 8)
    data = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    src = tmp_path / "in_stat-r_statmap.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    (layer_tuple,) = _read(src)
    layer = Layer.create(*layer_tuple)
    out_data, meta, _ = layer.as_layer_data_tuple()
    out = tmp_path / "out.nii.gz"
    assert write_nifti(str(out), out_data, meta) == [str(out)]
    back = nib.load(out)
    assert np.array_equal(np.asarray(back.dataobj), data)
    assert np.array_equal(back.affine, affine)
    assert back.get_data_dtype() == np.float32
    # a layer without our metadata: still the right MNI placement (array order may differ)
    meta["metadata"] = {}
    write_nifti(str(tmp_path / "plain.nii"), out_data, meta)
    plain = nib.load(tmp_path / "plain.nii")
    for ijk in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        v = data[ijk]
        hit = np.argwhere(np.asarray(plain.dataobj) == v)[0][:3]
        assert coord_transform(*hit, plain.affine) == pytest.approx(coord_transform(*ijk, affine))


def test_writer_round_trip_of_a_category_file(tmp_path):
    """A categories file (int16 labels, MNI sform code) -> labels layer -> NIfTI: same
    voxels, dtype, affine and sform code."""
    from napari.layers import Layer

    from napari_lesion_align._writer import write_nifti

    make_tiny_result().save(tmp_path / "res")
    src = tmp_path / "res" / "group_desc-lesion_categories.nii.gz"
    orig = nib.load(src)
    (layer_tuple,) = _read(src)
    layer = Layer.create(*layer_tuple)
    assert layer._type_string == "labels"
    out = tmp_path / "cats.nii.gz"
    write_nifti(str(out), *layer.as_layer_data_tuple()[:2])
    back = nib.load(out)
    assert back.get_data_dtype() == orig.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(orig.dataobj))
    assert np.array_equal(back.affine, orig.affine)
    assert int(back.header["sform_code"]) == int(orig.header["sform_code"])


def test_writer_rejects_2d_rgb_and_other_names(tmp_path):
    from napari_lesion_align._writer import write_nifti

    with pytest.raises(LesionAlignError, match="3D volume.*2D data"):
        write_nifti(str(tmp_path / "a.nii.gz"), np.zeros((5, 5)), {"name": "flat"})
    with pytest.raises(LesionAlignError, match="RGB"):
        write_nifti(str(tmp_path / "a.nii.gz"), np.zeros((5, 5, 3)), {"name": "photo", "rgb": True})
    with pytest.raises(LesionAlignError, match=".nii or .nii.gz"):
        write_nifti(str(tmp_path / "a.tif"), np.zeros((5, 5, 5)), {})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- sample data
def test_sample_data_template_and_cached_demo(tmp_path, monkeypatch):
    from napari_lesion_align import _sample_data

    (tpl,) = _sample_data.mni_template()
    assert tpl[1]["name"] == "MNI152 template (2 mm)" and tpl[2] == "image"
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path))
    runs = []

    def fake_run(config, out_dir, progress=None):
        runs.append(out_dir)
        assert config.lesions is not None and out_dir.parent == tmp_path
        make_tiny_result().save(out_dir)

    monkeypatch.setattr("napari_lesion_align.core.run.pipeline.run_analysis", fake_run)
    _sample_data.ensure_demo_result()  # the user's choice: compute the whole demo
    layers = _sample_data.demo_result()
    final = _sample_data.demo_cache_folder()
    assert final.parent == tmp_path and (final / "result.json").is_file()
    assert layers[0][1]["name"] == "MNI152 template (2 mm)"
    assert layers[-1][1]["name"] == "categories lesion"
    assert len(runs) == 1 and not runs[0].exists()  # computed once, renamed into place
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    again = _sample_data.demo_result()  # cached: no second run
    assert len(runs) == 1 and len(again) == len(layers)
    shutil.rmtree(final)


# --------------------------------------------------------------------------- manifest
def _repo_manifest(drop=()):
    """The repository's napari.yaml as an npe2 manifest (``drop``: keys to leave out)."""
    from pathlib import Path

    import npe2
    import yaml

    from napari_lesion_align import __file__ as pkg_file

    doc = yaml.safe_load((Path(pkg_file).parent / "napari.yaml").read_text())
    for key in drop:
        doc.pop(key, None)
    return npe2.PluginManifest(**doc)


def test_manifest_reader_writer_and_sample_through_npe2(make_napari_viewer, npe2pm, tmp_path,
                                                       qtbot):
    """Through napari's plugin machinery with the repository's napari.yaml (npe2 must
    accept the whole manifest for napari to load the plugin at all)."""
    check_through_npe2(make_napari_viewer, npe2pm, tmp_path, _repo_manifest(), qtbot)


def check_through_npe2(make_napari_viewer, npe2pm, tmp_path, manifest, qtbot):
    npe2pm.register(manifest)
    path = tmp_path / "sub-01_lang-EN_desc-intact_stat-r_statmap.nii.gz"
    nib.save(nib.Nifti1Image(_blob_volume(RAS_4MM, [((-42, 30, 20), 0.3)]), RAS_4MM), path)
    make_tiny_result().save(tmp_path / "res")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-lesion-align")
    assert layer.name == "r EN intact (sub-01)"
    out = tmp_path / "saved.nii.gz"
    layer.save(str(out), plugin="napari-lesion-align")
    assert np.array_equal(nib.load(out).affine, RAS_4MM)
    # the template sample added after a map goes beneath it
    viewer.open_sample("napari-lesion-align", "mni152")
    qtbot.waitUntil(lambda: viewer.layers[0].name == "MNI152 template (2 mm)", timeout=5000)
    assert [lay.name for lay in viewer.layers] == ["MNI152 template (2 mm)",
                                                   "r EN intact (sub-01)"]
    folder_layers = viewer.open(str(tmp_path / "res"), plugin="napari-lesion-align")
    assert folder_layers[-1].name == "categories lesion [res]"  # the result's label
    n = len(viewer.layers)
    viewer.open_sample("napari-lesion-align", "mni152")  # shown already: not twice
    qtbot.waitUntil(lambda: len(viewer.layers) == n, timeout=5000)
    assert [lay.metadata.get("stat") for lay in viewer.layers].count("template") == 1


def test_reader_thresholds_t_maps_at_the_group_tests_significance(tmp_path):
    """A group t map read from a folder shows exactly the voxels whose q (FDR) is below
    the result's alpha: the others are transparent."""
    result = make_tiny_result()
    folder = tmp_path / "res"
    result.save(folder)
    layers = {kw["name"]: (data, kw) for data, kw, _ in VM.result_layers(folder, stats=("t",))}
    checked = 0
    for (lang, cond, stat) in result.group_maps:
        if stat != "t" or (lang, cond, "q") not in result.group_maps:
            continue
        data, kw = layers[L.layer_name("group", lang, cond, "t")]
        q = nib.load(folder / f"group_lang-{lang}_desc-{cond}_stat-q_statmap.nii.gz")
        qdata = L.to_napari_order(q)[0]
        lo, hi = kw["contrast_limits"]
        finite = np.isfinite(data)
        x = np.clip((data[finite] - lo) / (hi - lo), 0, 1)
        alpha = kw["colormap"].map(x)[:, 3]
        sig = qdata[finite] < 0.05
        if sig.any():
            checked += 1
        assert (alpha[sig] == 1).all() and (alpha[~sig] == 0).all(), (lang, cond)
        assert kw["metadata"]["threshold"] is not None
    assert checked >= 1  # the tiny result has significant voxels somewhere


def test_template_keeps_white_matter_grey_and_the_mask_outline_stands_out():
    """The template's contrast leaves headroom (white matter a mid grey, nothing clipped
    to white), and the analysis mask's outline is drawn in a saturated colour, not white
    on the white template."""
    from napari_lesion_align._widgets._show import space_layers
    from napari_lesion_align.core.analysis.display import TEMPLATE_HEADROOM

    data, kw, _ = L.template_layer(2)
    brain = np.asarray(data, dtype=float)[np.asarray(data) > 0]
    hi = kw["contrast_limits"][1]
    assert (brain >= hi).mean() == 0
    assert np.percentile(brain, 99) / hi < 1 / TEMPLATE_HEADROOM + 0.01
    mask = Path(L.__file__).parent / "data" / "demo" / "mask_mni152_4mm.nii.gz"
    template, outline = space_layers(mask)
    assert outline.contour == 1
    rgba = np.asarray(outline.colormap.map(np.array([1]))).ravel()
    assert rgba[3] == 1 and np.ptp(rgba[:3]) > 0.5  # saturated, not white or grey


def test_a_map_file_of_a_result_folder_gets_the_same_threshold_rule(tmp_path):
    """One rule whatever opens the map: a group t file alone gets the group test's
    significance (the tiny result plants t = 5 where q < 0.05), a subject's r file the
    stated r default; the same file outside a result folder has no threshold."""
    result = make_tiny_result()
    folder = tmp_path / "res"
    result.save(folder)
    ((_, t_kw, _),) = _read(folder / "group_lang-EN_desc-shared_stat-t_statmap.nii.gz")
    assert t_kw["metadata"]["threshold"] == pytest.approx(5.0)
    ((_, r_kw, _),) = _read(folder / "sub-01_lang-EN_desc-intact_stat-r_statmap.nii.gz")
    assert r_kw["metadata"]["threshold"] == 0.1
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "group_lang-EN_desc-shared_stat-t_statmap.nii.gz", alone)
    ((_, kw, _),) = _read(alone / "group_lang-EN_desc-shared_stat-t_statmap.nii.gz")
    assert kw["metadata"]["threshold"] is None
