"""The demo result shipped in the package (File > Open Sample > Demo result): it matches
what the demo computes, it loads through the result reader, it opens at once, and
computing the whole demo instead is the user's choice (offered, cancellable, notified)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_lesion_align import _sample_data
from napari_lesion_align.core.base.errors import Cancelled
from napari_lesion_align.core.results.result import AlignmentResult
from test_figures import make_tiny_result

SAMPLE = _sample_data.SAMPLE_FOLDER
PLUGIN = "napari-lesion-align"


@pytest.fixture(scope="module")
def sample() -> AlignmentResult:
    return AlignmentResult.load(SAMPLE)  # checks every file against the manifest


def test_the_sample_is_small_and_holds_group_maps_categories_and_one_subject(sample):
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size < 8e6, f"the shipped sample is {size / 1e6:.1f} MB"
    assert len(sample.subjects) == 1
    info = sample.provenance["sample"]
    assert info["subject_kept"] == sample.subjects[0]
    assert len(info["subjects_in_demo"]) == sample.provenance["config"]["data"]["demo"][
        "n_subjects"] > 1
    assert set(sample.languages) == {"EN", "FR", "ZH"}
    assert "lesion" in sample.categories
    langs = {k[0] for k in sample.group_maps}
    assert langs == set(sample.languages)
    # the demo's conditions but its random draws (lesions, controls) for the kept subject
    kinds = {sample.kind_of(c) for c in sample.conditions}
    assert "intact" in kinds and "random" not in kinds and len(kinds) >= 3
    assert {k[2] for k in sample.group_maps} == set(_sample_data.SAMPLE_GROUP_STATS)
    # group rows of the demo's summary are kept (5 subjects' statistics)
    group = [r for r in sample.summary_rows() if r["subject"] == "group"]
    assert group and all(int(float(r["n_subjects"])) == len(info["subjects_in_demo"])
                         for r in group if r.get("n_subjects") not in ("", None))


@pytest.mark.slow
@pytest.mark.realmodel
def test_the_sample_matches_what_the_demo_computes(demo_output, sample):
    """The shipped folder is the demo's output less the other subjects' maps: same recipe,
    same group maps, categories and maps of the kept subject (float32 files: equal up to
    the BLAS of the machine that ran the demo)."""
    folder, _ = demo_output
    demo = AlignmentResult.load(folder)
    assert sample.provenance["config"] == demo.provenance["config"], \
        "the demo's recipe changed: run scripts/make_sample_result.py on a fresh demo"
    expected = _sample_data.sample_of(demo)
    assert sorted(sample.group_maps) == sorted(expected.group_maps)
    assert sorted(sample.maps) == sorted(expected.maps)
    for key, v in expected.group_maps.items():
        # the machine that made the sample and this one may round the fits' float32 sums
        # differently (another BLAS, other thread counts); a group t at a voxel whose spread
        # across the 5 subjects is tiny magnifies that (measured: 0.012 at one voxel of
        # t = -0.07 between 1 and 2 BLAS threads), so nearly every voxel agrees closely and
        # none far
        got, want = np.asarray(sample.group_maps[key]), np.asarray(v)
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"group map {key}: NaNs"
        close = np.isclose(got, want, rtol=1e-3, atol=1e-3, equal_nan=True)
        assert close.mean() >= 0.999, f"group map {key}: {1 - close.mean():.3%} differ"
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=0.05, equal_nan=True,
                                   err_msg=f"group map {key}")
    for key, v in expected.maps.items():
        np.testing.assert_allclose(sample.maps[key], v, rtol=1e-3, atol=1e-4,
                                   equal_nan=True, err_msg=f"map {key}")
    for name, (labels, legend) in expected.categories.items():
        got, got_legend = sample.categories[name]
        assert got_legend == legend
        agree = np.mean(got == labels)
        assert agree >= 0.995, f"categories {name}: {agree:.2%} of voxels agree"
    assert sample.n_valid == expected.n_valid


def test_make_sample_result_writes_a_loadable_sample(tmp_path):
    """The script's path: a demo-shaped result -> sample_of -> the result writer (a
    consistent manifest), readable by AlignmentResult.load and the plugin's reader."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_sample_result",
        Path(__file__).resolve().parents[1] / "scripts" / "make_sample_result.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    demo_like = make_tiny_result()
    demo_like.provenance = {"config": {"data": {"kind": "demo"}}}
    demo_like.save(tmp_path / "demo")
    assert script.main([str(tmp_path / "demo"), "--out", str(tmp_path / "sample")]) == 0
    got = AlignmentResult.load(tmp_path / "sample")
    full = AlignmentResult.load(tmp_path / "demo")
    assert got.subjects == full.subjects[:1]
    kept = [k for k in full.group_maps if k[2] in _sample_data.SAMPLE_GROUP_STATS
            and full.kind_of(k[1]) != "random"]
    assert kept and sorted(got.group_maps) == sorted(kept)
    for key in kept:
        np.testing.assert_array_equal(got.group_maps[key], full.group_maps[key])
    assert json.loads((tmp_path / "sample" / "result.json").read_text())["sample"][
        "subjects_in_demo"] == full.subjects
    # not a demo output: refused
    make_tiny_result().save(tmp_path / "other")
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "other"), "--out", str(tmp_path / "sample2")])
    assert not (tmp_path / "sample2").exists()


def test_sample_data_opens_the_shipped_result_without_computing(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path))

    def no_run(*args, **kwargs):
        raise AssertionError("the sample must not compute the demo")

    monkeypatch.setattr("napari_lesion_align.core.run.pipeline.run_analysis", no_run)
    layers = _sample_data.demo_result()
    names = [t[1]["name"] for t in layers]
    assert names[0] == "MNI152 template (2 mm)" and "categories lesion" in names
    assert {t[1]["metadata"].get("result_folder") for t in layers[1:]} == {str(SAMPLE)}
    assert list(tmp_path.iterdir()) == []  # nothing computed, nothing cached
    # a computed demo result, once cached, is opened instead
    make_tiny_result(seed=3).save(_sample_data.demo_cache_folder())
    cached = _sample_data.demo_result()
    assert {t[1]["metadata"].get("result_folder") for t in cached[1:]} == {
        str(_sample_data.demo_cache_folder().resolve())}


def test_a_missing_shipped_sample_is_a_clear_error(tmp_path, monkeypatch):
    from napari_lesion_align.core.base.errors import LesionAlignError

    monkeypatch.setattr(_sample_data, "SAMPLE_FOLDER", tmp_path / "sample")
    with pytest.raises(LesionAlignError, match="reinstall napari-lesion-align"):
        _sample_data.shipped_sample()


def _actions(notes, label):
    return [cb for n in notes for name, cb in (n.actions or ()) if name == label]


def test_open_sample_in_napari_offers_the_full_demo_cancellable_and_notified(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """File > Open Sample shows the shipped result at once; its notification's button
    computes the whole demo in a worker; the computing notification's Cancel stops it
    (nothing cached); computed again to the end, its layers arrive with a notification."""
    from napari.utils.notifications import notification_manager

    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path))
    started, finish = threading.Event(), threading.Event()

    def fake_run(config, out_dir, progress=None, cancel=None):
        assert config.lesions is not None
        started.set()
        while not finish.is_set():
            if cancel is not None and cancel():
                raise Cancelled()
            finish.wait(0.05)
        AlignmentResult.load(SAMPLE).save(out_dir)  # (the demo's grid, as a real run's)

    monkeypatch.setattr("napari_lesion_align.core.run.pipeline.run_analysis", fake_run)
    notes = []
    notification_manager.notification_ready.connect(notes.append)
    try:
        viewer = make_napari_viewer()
        viewer.open_sample(PLUGIN, "demo")
        names = [layer.name for layer in viewer.layers]
        assert "categories lesion [sample]" in names and not started.is_set()
        (compute,) = _actions(notes, _sample_data.COMPUTE_ACTION)
        # 1. start, then cancel
        compute()
        qtbot.waitUntil(started.is_set, timeout=10_000)
        (cancel,) = _actions(notes, _sample_data.CANCEL_ACTION)
        cancel()
        qtbot.waitUntil(lambda: any("cancelled" in n.message for n in notes), timeout=20_000)
        assert not _sample_data.demo_cache_folder().exists()
        # 2. start again and let it finish
        started.clear()
        compute()
        qtbot.waitUntil(started.is_set, timeout=10_000)
        finish.set()
        qtbot.waitUntil(lambda: any("demo result is computed" in n.message for n in notes),
                        timeout=20_000)
        assert (_sample_data.demo_cache_folder() / "result.json").is_file()
        folder = str(_sample_data.demo_cache_folder().resolve())
        qtbot.waitUntil(lambda: any(layer.metadata.get("result_folder") == folder
                                    for layer in viewer.layers), timeout=20_000)
    finally:
        finish.set()
        notification_manager.notification_ready.disconnect(notes.append)
