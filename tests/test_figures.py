"""The QC figure (matplotlib only) and the tiny result the napari tests share."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.analysis import statistics as an
from napari_lesion_align.core.data.bold import VolumeSpace
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.results.figures import (DPI, FIGSIZE, bar_groups, category_colours,
                                                      qc_figure)
from napari_lesion_align.core.results.result import AlignmentResult

#: a 4 mm MNI grid (x -40..40, y -60..32, z -20..48): grid points are also 2 mm template points
AFFINE_4MM = np.array([[4.0, 0, 0, -40], [0, 4.0, 0, -60], [0, 0, 4.0, -20], [0, 0, 0, 1]])
SHAPE = (21, 24, 18)
LANGS = ["EN", "FR"]
EN, FR = (an.language_colour(c, LANGS) for c in LANGS)
CONDS = ["intact", "shared", "sharedRandom", "specificEN", "specificFR"]


def _test(sig: np.ndarray) -> an.PairedTest:
    q = np.where(sig, 0.001, 0.9).astype(np.float32)
    return an.PairedTest(t=np.where(sig, 5.0, 0.1).astype(np.float32), p=q, q=q, n_subjects=3)


def make_tiny_result(shared: bool = True, seed: int = 0) -> AlignmentResult:
    """3 subjects x EN/FR x (intact, shared + its random control, one specific lesion per
    language) on a small 4 mm MNI grid, with group t/p/q maps and a ``lesion`` category
    map from :func:`analysis.categories`: shared = left frontal (x < 0, y > 0, z > 10)
    when ``shared``, specific:EN = right, z > 10, specific:FR = right, z <= 10."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, dtype=np.int8)
    mask[2:19, 2:22, 2:16] = 1
    space = VolumeSpace(nib.Nifti1Image(mask, AFFINE_4MM))
    xyz = space.coordinates()
    V = len(xyz)
    drop = {"intact": 0.0, "shared": 0.06, "sharedRandom": 0.01, "specificEN": 0.04,
            "specificFR": 0.03}
    maps = {}
    for s in ("01", "02", "03"):
        for lang in LANGS:
            for cond in CONDS:
                r = 0.2 - drop[cond] + 0.02 * rng.normal(size=V)
                maps[(s, lang, cond, "r")] = r.astype(np.float32)
                if cond != "intact":
                    maps[(s, lang, cond, "deltar")] = (maps[(s, lang, "intact", "r")]
                                                       - maps[(s, lang, cond, "r")])
    zero = np.zeros(V, dtype=bool)
    shared_sig = (xyz[:, 0] < 0) & (xyz[:, 1] > 0) & (xyz[:, 2] > 10) if shared else zero
    en_only = (xyz[:, 0] > 8) & (xyz[:, 2] > 10)
    fr_only = (xyz[:, 0] > 8) & (xyz[:, 2] <= 10)
    shared_tests = {lang: _test(shared_sig) for lang in LANGS}
    specific = {"EN": {"EN": _test(en_only), "FR": _test(zero)},
                "FR": {"EN": _test(zero), "FR": _test(fr_only)}}
    labels, legend = an.categories(shared_tests, specific, LANGS)
    group = {}
    for lang in LANGS:
        for cond, res in (("intact", _test(np.ones(V, bool))), ("shared", shared_tests[lang]),
                          ("specificEN", specific["EN"][lang]),
                          ("specificFR", specific["FR"][lang])):
            for stat in ("t", "p", "q"):
                group[(lang, cond, stat)] = getattr(res, stat)
    return AlignmentResult(space=space, maps=maps, group_maps=group,
                           categories={"lesion": (labels, legend)},
                           controls={"sharedRandom": "shared"},
                           provenance={"model": {"name": "tiny"}},
                           n_valid={(s, lang): V for s in ("01", "02", "03") for lang in LANGS})


def _pixels_near(img: np.ndarray, hex_colour: str, tol: int = 12) -> np.ndarray:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(img[..., :3].astype(int) - rgb) <= tol).all(-1)


def _read_png(path) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(str(path))[..., :3] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "result"
    make_tiny_result().save(out)
    return out


def test_qc_figure_written_with_category_colours(tiny_folder, tmp_path):
    path = qc_figure(tiny_folder, tmp_path / "qc.png")
    assert path.is_file()
    img = _read_png(path)
    assert img.shape[:2] == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)
    h, w = img.shape[:2]
    slices = img[: h // 2, : int(0.75 * w)]  # the axial slices (not the legend, not the bars)
    assert _pixels_near(slices, an.CATEGORY_COLOURS["shared"]).sum() > 20
    assert _pixels_near(slices, EN).sum() > 20
    assert _pixels_near(slices, FR).sum() > 20
    bars = img[h // 2:]
    assert _pixels_near(bars, EN).sum() > 100
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary file left


def test_qc_figure_shared_colour_only_where_shared_voxels(tmp_path):
    qc_figure(make_tiny_result(shared=False), tmp_path / "qc.png")
    img = _read_png(tmp_path / "qc.png")
    h, w = img.shape[:2]
    assert _pixels_near(img[: h // 2, : int(0.75 * w)], an.CATEGORY_COLOURS["shared"]).sum() == 0


def test_qc_figure_left_hemisphere_on_the_left(tmp_path):
    """Shared voxels are only at x < 0: in each slice panel they lie in its left half."""
    qc_figure(make_tiny_result(), tmp_path / "qc.png", slices=[20.0])
    img = _read_png(tmp_path / "qc.png")
    h, w = img.shape[:2]
    amber = _pixels_near(img[: h // 2, : int(0.5 * w)], an.CATEGORY_COLOURS["shared"])
    fr = _pixels_near(img[: h // 2, : int(0.5 * w)], EN)
    ys, xs = np.nonzero(amber)
    yb, xb = np.nonzero(fr)
    assert len(xs) and len(xb)
    assert xs.max() < xb.min()  # left frontal shared voxels left of the right-sided EN ones
    assert ys.mean() < yb.mean() + 1  # anterior (y > 0) shared voxels not below


def test_qc_figure_errors_write_nothing(tiny_folder, tmp_path):
    with pytest.raises(LesionAlignError, match="no category map 'nope'"):
        qc_figure(tiny_folder, tmp_path / "a.png", name="nope")
    with pytest.raises(LesionAlignError, match="ending .png"):
        qc_figure(tiny_folder, tmp_path / "a.pdf")
    with pytest.raises(LesionAlignError, match="outside the template"):
        qc_figure(tiny_folder, tmp_path / "b.png", slices=[500])
    with pytest.raises(LesionAlignError, match="no result.json"):
        qc_figure(tmp_path, tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []


def test_bar_groups_put_the_random_draws_after_their_lesion():
    assert bar_groups(make_tiny_result()) == [
        ("intact", ("intact",)), ("shared", ("shared",)),
        ("shared random (1)", ("sharedRandom",)), ("specificEN", ("specificEN",)),
        ("specificFR", ("specificFR",))]


def test_bar_values_band_of_the_random_draws():
    from napari_lesion_align.core.results.figures import bar_values, hatched_bars

    res = make_tiny_result()
    # a second draw of the shared lesion: r lower by 0.02 everywhere
    for s in res.subjects:
        for lang in res.languages:
            res.maps[(s, lang, "sharedRandom2", "r")] = res.maps[(s, lang, "sharedRandom",
                                                                   "r")] - 0.02
    res.controls = {"sharedRandom": "shared", "sharedRandom2": "shared"}
    res.summary = None
    values, hatched = bar_values(res, index=0)
    assert "shared random (2)" in values and hatched == hatched_bars(res)
    assert hatched == {"shared random (2)"}
    for lang in res.languages:
        d1 = np.mean([res.maps[(s, lang, "sharedRandom", "r")][0] for s in res.subjects])
        mean, band = values["shared random (2)"][lang]
        assert mean == pytest.approx(d1 - 0.01, abs=1e-6)
        assert band == pytest.approx(np.std([d1, d1 - 0.02], ddof=1), abs=1e-6)


def test_category_colours_are_the_analysis_colours():
    _, legend = make_tiny_result().categories["lesion"]
    colours = category_colours(legend)
    assert colours[1] == an.CATEGORY_COLOURS["shared"]
    names = {lab: e["name"] for lab, e in legend.items()}
    for lab, name in names.items():
        if name.startswith("specific:"):
            assert colours[lab] == an.language_colour(name.split(":")[1], ["EN", "FR"])
            assert colours[lab] == legend[lab]["colour"]
    only_en = category_colours(legend, languages=["EN"])
    fr = next(lab for lab, n in names.items() if n == "specific:FR")
    assert only_en[fr] == an.CATEGORY_COLOURS["none"]


def test_category_colours_stay_apart_with_colour_blindness():
    """Shared and the first three languages' colours remain distinct from each other under
    simulated protanopia, deuteranopia and tritanopia, and none of them turns grey (an
    outline must stand out on the grey template). Okabe-Ito's bluish green, the first
    language's earlier colour, fails the second check under deuteranopia."""
    from matplotlib.colors import to_rgb

    from napari_lesion_align.core.results.figures import simulate_cvd

    names = ["shared", "EN", "FR", "ZH"]
    rgb = np.array([to_rgb(an.CATEGORY_COLOURS["shared"])]
                   + [to_rgb(an.language_colour(c, names[1:])) for c in names[1:]])
    for kind in ("protanopia", "deuteranopia", "tritanopia"):
        sim = simulate_cvd(rgb, kind)
        d = np.linalg.norm(sim[:, None] - sim[None], axis=-1)
        # (tritanopia, far rarer, brings shared blue and FR sky blue closer)
        assert d[np.triu_indices(4, 1)].min() > (0.1 if kind == "tritanopia" else 0.15), \
            (kind, d)
        chroma = np.linalg.norm(sim - sim.mean(axis=1, keepdims=True), axis=1)  # grey: 0
        assert chroma.min() > 0.2, (kind, chroma)
    bluish_green = simulate_cvd(np.array([to_rgb(an.OKABE_ITO["bluish green"])]),
                                "deuteranopia")[0]
    assert np.linalg.norm(bluish_green - bluish_green.mean()) < 0.1  # why it was replaced
    # the simulation itself: a grey stays grey, pure red loses its red-green contrast
    g = simulate_cvd(np.array([[0.5, 0.5, 0.5]]), "deuteranopia")
    np.testing.assert_allclose(g, 0.5, atol=0.01)
    r, gr = simulate_cvd(np.array([[1.0, 0, 0], [0, 0.5, 0]]), "deuteranopia")
    assert abs(r[0] - r[1]) < 0.6  # red is no longer far redder than green


def _category_rgb(languages=("EN", "FR", "ZH")):
    from matplotlib.colors import to_rgb

    return np.array([to_rgb(an.CATEGORY_COLOURS["shared"])]
                    + [to_rgb(an.language_colour(c, list(languages))) for c in languages])


def _nearest(colours, ramp, kind):
    """The smallest distance between a category colour and a map colour, as seen with
    ``kind`` (None: normal vision)."""
    from napari_lesion_align.core.results.figures import simulate_cvd

    c = colours if kind is None else simulate_cvd(colours, kind)
    m = ramp if kind is None else simulate_cvd(ramp, kind)
    return float(np.linalg.norm(c[:, None] - m[None], axis=-1).min())


@pytest.mark.parametrize("kind", [None, "protanopia", "deuteranopia", "tritanopia"])
def test_maps_shown_with_categories_cannot_be_taken_for_a_category(kind):
    """While category overlays are shown, maps use the grey |value| ramp
    (``core.display.map_kind``): no map colour comes near shared or a language's colour,
    with normal vision or a simulated colour-vision deficiency. The maps' own red-yellow /
    blue-cyan ramps would fail: ZH orange lies inside red-yellow, shared blue and FR sky
    blue inside blue-cyan (why the maps switch)."""
    from napari_lesion_align.core.analysis import display

    cats = _category_rgb()
    assert display.map_kind("t", categories_shown=True) == "magnitude"
    assert display.map_kind("q", categories_shown=True) == "magnitude"
    assert display.map_kind("t", categories_shown=False) == "diverging"
    grey = display.map_colours("magnitude")
    assert _nearest(cats, grey, kind) > 0.2
    if kind is None:
        assert _nearest(cats, display.map_colours("diverging"), kind) < 0.12


def test_the_layers_use_the_grey_ramp_while_categories_are_shown():
    """What a result opens with: the map's visible colours are all grey (chroma 0) while
    the category overlay is on; switched off, the map is in its colours again."""
    import napari_lesion_align._layers as L
    from napari_lesion_align._view_model import result_tuples

    tuples = result_tuples(make_tiny_result(), with_template=False)
    kw = tuples[0][1]
    assert tuples[1][1]["visible"] and tuples[1][1]["metadata"]["stat"] == "categories"
    rgba = np.asarray(kw["colormap"].colors)
    shown = rgba[rgba[:, 3] > 0, :3]
    assert len(shown) and np.ptp(shown, axis=1).max() < 1e-6  # grey
    coloured = L.threshold_display("r", 0.1)["colormap"].colors
    assert np.ptp(np.asarray(coloured)[:, :3], axis=1).max() > 0.5


def test_qc_figure_states_the_test_behind_the_categories():
    """The title says what a category voxel means, from the result's own settings."""
    import dataclasses

    from napari_lesion_align.core.results.figures import _title

    result = make_tiny_result()
    assert "(significant drops, q < 0.05 FDR, 2 df)" in _title(result, "lesion")
    prov = {**result.provenance, "config": {"lesions": {"alpha": 0.01, "correction": "none"}}}
    other = dataclasses.replace(result, provenance=prov)
    assert "(significant drops, p < 0.01 uncorrected, 2 df)" in _title(other, "lesion")
