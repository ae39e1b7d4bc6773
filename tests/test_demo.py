"""The built-in demo, end to end from the CLI, against its planted ground truth."""

from __future__ import annotations


import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_lesion_align.data import demo

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]


@pytest.fixture(scope="module")
def demo_run(demo_output):
    from napari_lesion_align.core.result import AlignmentResult

    out, seconds = demo_output
    return AlignmentResult.load(out), out, seconds


def test_demo_writes_maps_for_three_languages(demo_run):
    res, out, seconds = demo_run
    assert res.languages == ["EN", "FR", "ZH"] and res.subjects == ["01", "02", "03", "04", "05"]
    for s in res.subjects:
        for lang in res.languages:
            assert (out / f"sub-{s}_lang-{lang}_desc-intact_stat-r_statmap.nii.gz").exists()
    assert res.provenance["model"]["name"] == "builtin:multilingual-e5-small-q4"
    if seconds is not None:
        print(f"demo took {seconds:.0f} s")


def test_intact_r_map_separates_planted_signal_from_noise(demo_run):
    res, _, _ = demo_run
    truth = demo.planted_truth(res.space)
    for lang in demo.LANGUAGES:
        noise = demo.noise_mask(truth, lang)
        # group-mean map, every voxel with at least a quarter of the peak amplitude
        sig = demo.signal_mask(truth, lang, 0.25)
        sel = sig | noise
        group = np.nanmean([res.get(s, lang) for s in res.subjects], axis=0)
        auc = roc_auc_score(sig[sel], np.nan_to_num(group[sel]))
        assert auc >= 0.9, (lang, auc)
        # every subject, voxels with at least half the peak amplitude
        sig = demo.signal_mask(truth, lang, 0.5)
        sel = sig | noise
        for s in res.subjects:
            auc = roc_auc_score(sig[sel], np.nan_to_num(res.get(s, lang)[sel]))
            assert auc >= 0.9, (lang, s, auc)


def test_specific_regions_respond_only_in_their_language(demo_run):
    res, _, _ = demo_run
    truth = demo.planted_truth(res.space)
    amp = truth["amplitude"]
    for region_lang in demo.LANGUAGES:
        core = amp[region_lang] >= 0.5 * demo.AMPLITUDE
        for lang in demo.LANGUAGES:
            mean_r = np.nanmean([res.get(s, lang)[core] for s in res.subjects])
            if lang == region_lang:
                assert mean_r > 0.2, (region_lang, lang, mean_r)
            else:
                assert abs(mean_r) < 0.05, (region_lang, lang, mean_r)
    shared = amp["shared"] >= 0.5 * demo.AMPLITUDE
    for lang in demo.LANGUAGES:
        assert np.nanmean([res.get(s, lang)[shared] for s in res.subjects]) > 0.2
