"""``[encoding] condition_alphas``: the lesions, their random draws and the null controls made
of the model's own features refit with the intact model's alphas instead of searching.

Ground truths: the fits that take the intact model's alphas get exactly the intact fit's
per-fold, per-voxel alphas (the word-rate baseline and the model above it, with other
features or other BOLD, search their own); the intact maps do not change; and on region
time series that carry the word rate, every condition finds the same regions either way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_lesion_align.core.encoding import cross_validation
from napari_lesion_align.core.run.config import load_config
from napari_lesion_align.core.run.executor import usable_cores
from napari_lesion_align.core.run.fits import REUSES_INTACT_ALPHAS
from napari_lesion_align.core.run.pipeline import run_analysis
from test_controls import N_RATE, tiny_model, write_regions_study  # noqa: F401 (fixture)

LESIONS = ('[lesions]\nmethod = "wanda"\nselections = ["shared"]\nrandom_controls = 2\n'
           'correction = "none"\n')


def _run(tmp_path, model, monkeypatch, how: str):
    """Run the regions study with lesions and every control; every fit's alphas in order."""
    calls = []
    real = cross_validation.cross_validated_r

    def spy(*args, **kw):
        res = real(*args, **kw)
        calls.append((kw.get("fold_alphas"), res.best_alpha))
        return res

    monkeypatch.setattr(cross_validation, "cross_validated_r", spy)
    cfg = load_config(write_regions_study(
        tmp_path / how, model, n_runs=3, n_subjects=3,
        extra=f'condition_alphas = "{how}"\n' + LESIONS))
    return run_analysis(cfg, tmp_path / f"out-{how}"), calls, tmp_path / f"out-{how}"


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_model):  # noqa: F811 (the fixture)
    tmp = tmp_path_factory.mktemp("alphas")
    out = {}
    for how in ("search", "intact"):
        with pytest.MonkeyPatch.context() as mp:  # one spy per run
            out[how] = _run(tmp, tiny_model, mp, how)
    return out


def test_the_intact_model_s_alphas_go_to_the_lesions_draws_and_feature_nulls(both):
    res, calls, out = both["intact"]
    # one fit unit (3 subjects with the same runs): intact, the lesion, its two draws, the
    # two shifts, shuffled words, word rate, the model above the word rate
    assert len(calls) == 9
    given, intact_alphas = calls[0]
    assert given is None
    for i in (1, 2, 3, 4, 5, 6):
        assert calls[i][0] is intact_alphas
        np.testing.assert_array_equal(calls[i][1], intact_alphas)
    assert calls[7][0] is None and calls[8][0] is None  # word rate, above the word rate
    doc = json.loads((out / "result.json").read_text())
    assert doc["config"]["encoding"]["condition_alphas"] == "intact"
    # the threads it ran with (one process, every usable core)
    assert doc["threads"] == {"processes": 1, "threads_per_process": usable_cores(),
                              "cores": usable_cores()}
    assert {"selection", "random", "shift", "shuffled"} <= REUSES_INTACT_ALPHAS
    assert not {"intact", "wordrate", "above"} & REUSES_INTACT_ALPHAS


def test_searching_every_fit_gives_nothing_away(both):
    _, calls, _ = both["search"]
    assert len(calls) == 9 and all(given is None for given, _ in calls)


def test_either_way_the_intact_maps_are_the_same_and_the_conditions_find_the_regions(both):
    a, b = both["search"][0], both["intact"][0]
    for s in a.subjects:
        np.testing.assert_array_equal(a.get(s, "EN", "intact"), b.get(s, "EN", "intact"))
        for label in ("shared", "sharedRandom", "sharedRandom2"):
            ra, rb = a.get(s, "EN", label), b.get(s, "EN", label)
            # the word-rate regions align under both, the noise regions under neither
            for r in (ra, rb):
                assert np.nanmean(r[:N_RATE]) > 0.3
                assert abs(np.nanmean(r[N_RATE:])) < 0.05
            assert np.corrcoef(ra, rb)[0, 1] > 0.9
