"""The nulls and baselines fitted next to the intact model ([controls]), the random-lesion
null distribution (random_controls = K) and the run's closing summary.

Ground truths: region time series made of the word rate at the FIR delays (the word-rate
baseline must find them, the model above word rate must not), pure noise (every control
centres on 0, with one run as with three), and synthetic group maps where a lesion's drop
is, or is not, beyond its random draws'.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lesion_align.core.analysis import controls as ctl
from napari_lesion_align.core.run.config import LesionConfig, load_config
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.lesions.vocabulary import DRAW_SEED_STEP
from napari_lesion_align.core.lesions.plan import LesionPlan
from napari_lesion_align.core.data.stimuli import read_words
from napari_lesion_align.core.data import demo
from tiny_models import make_tiny_model

TR = 2.0
N_VOLS = 150
DELAYS = (1, 2, 3, 4)
N_RATE, N_NOISE = 8, 40


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


# --------------------------------------------------------------------------- the inputs
def test_word_rate_counts_words_per_volume():
    rng = np.random.default_rng(0)
    onsets = np.sort(rng.uniform(-3, 2 * 40 + 5, 200))  # some before / after the run
    pad = 4
    got = ctl.word_rate(onsets, 40, TR, start_s=0.0, pad_before=pad)
    assert got.shape == (pad + 40, 1)
    expected = np.zeros(pad + 40)
    for t in onsets:
        v = int(np.floor(t / TR)) + pad
        if 0 <= v < pad + 40:
            expected[v] += 1
    np.testing.assert_array_equal(got[:, 0], expected)
    # a later start shifts the binning by whole volumes
    later = ctl.word_rate(onsets + 2 * TR, 40, TR, start_s=2 * TR, pad_before=pad)
    np.testing.assert_array_equal(later, got)


def test_circular_shift_rotates_the_run_and_clears_the_history():
    X = np.arange(2 * 12, dtype=float).reshape(12, 2) + 1
    out = ctl.circular_shift(X, 3, pad_before=2)
    np.testing.assert_array_equal(out[2:], np.roll(X[2:], 3, axis=0))
    assert (out[:2] == 0).all()
    assert ctl.shift_amounts(100, 3) == [20, 50, 80]


def test_shuffled_words_keep_the_vectors_and_follow_the_seed():
    W = np.random.default_rng(1).normal(size=(50, 4))
    a, b, c = (ctl.shuffled_words(W, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, W)
    assert sorted(map(tuple, a)) == sorted(map(tuple, W))  # the same vectors


def test_word_rate_regressors_remove_the_word_rate_and_keep_the_cleaning():
    rng = np.random.default_rng(2)
    onsets = np.sort(rng.uniform(0, 2 * 60, 150))
    pad = max(DELAYS)
    rate = ctl.word_rate(onsets, 60, TR, pad_before=pad)
    from napari_lesion_align.core.data.bold import cleaning_regressors
    from napari_lesion_align.core.features.extraction import fir_delays

    D = cleaning_regressors(60, TR)
    Q = ctl.word_rate_regressors(rate, DELAYS, pad, D)
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-10)
    np.testing.assert_allclose(D.T @ Q, 0.0, atol=1e-8)
    # a signal made of the word rate at the delays (cleaned like a run) is removed whole
    s = fir_delays(rate, DELAYS, pad) @ np.array([0.5, 1.0, 0.8, 0.3])
    s = s - D @ np.linalg.lstsq(D, s, rcond=None)[0]
    left = ctl.project_out(s[:, None], Q)
    assert np.abs(left).max() < 1e-8 * np.abs(s).max()


# --------------------------------------------------------------------------- a study
def _rate(textgrid: Path, n_vols: int) -> np.ndarray:
    from napari_lesion_align.core.features.extraction import fir_delays

    w = read_words(textgrid)
    pad = max(DELAYS)
    x = fir_delays(ctl.word_rate(w.onsets, n_vols, TR, pad_before=pad), DELAYS, pad)
    s = x @ np.array([0.5, 1.0, 0.8, 0.3])
    return (s - s.mean()) / s.std()


def write_regions_study(root: Path, model: Path, n_runs=3, n_subjects=3, seed=0,
                        extra: str = "") -> Path:
    """Regions R0..R7 carry the word rate at the FIR delays (plus noise), N0.. noise only."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    runs = list(range(1, n_runs + 1))
    for r in runs:
        shutil.copy(demo.DEMO_DIR / f"EN_run-{r}.TextGrid", root / f"EN_run-{r}.TextGrid")
    names = [f"R{i}" for i in range(N_RATE)] + [f"N{i}" for i in range(N_NOISE)]
    bold = {}
    for s in range(1, n_subjects + 1):
        files = []
        for r in runs:
            Y = rng.normal(0, 1, (N_VOLS, len(names)))
            Y[:, :N_RATE] += 1.5 * _rate(root / f"EN_run-{r}.TextGrid", N_VOLS)[:, None]
            np.savetxt(root / f"s{s}_run{r}.txt", Y + 50)
            files.append(f"s{s}_run{r}.txt")
        bold[f"s{s}"] = files
    bold_toml = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in bold.items())
    ann = [f"EN_run-{r}.TextGrid" for r in runs]
    (root / "c.toml").write_text(f"""
[data]
kind = "regions"
tr = {TR}
roi_names = {names!r}
[languages.EN]
annotations = {ann!r}
bold = {{ {bold_toml} }}
[model]
name = "{model}"
[encoding]
n_blocks = 4
alphas = [1.0, 100.0, 10000.0]
{extra}
""".replace("'", '"'))
    return root / "c.toml"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_model):
    from napari_lesion_align.core.run.pipeline import run_analysis

    root = tmp_path_factory.mktemp("controls")
    cfg = load_config(write_regions_study(root / "study", tiny_model))
    res = run_analysis(cfg, root / "out")
    return cfg, res, root / "out"


def _group_r(res, label):
    return np.nanmean([res.get(s, "EN", label) for s in res.subjects], axis=0)


def test_controls_have_maps_tables_and_group_tests(three_runs):
    cfg, res, out = three_runs
    labels = list(ctl.CONTROL_LABELS.values())
    assert list(res.baselines) == labels
    for s in res.subjects:
        for c in labels:
            assert (out / f"sub-{s}_lang-EN_desc-{c}_stat-r_statmap.tsv").is_file()
    for c in ["intact", *labels]:
        for t in "tpq":
            assert (out / f"group_lang-EN_desc-{c}_stat-{t}_statmap.tsv").is_file()
    table = pd.read_csv(out / "controls.tsv", sep="\t")
    assert set(table["condition"]) == {"intact", *labels}
    assert set(table["region"]) == set(res.space.names)
    above = table[table["condition"] == "aboveWordRate"]
    assert set(above["test"]) == {"r > 0"}
    assert set(table[table["condition"] == "nullShift"]["test"]) == {"model > control"}
    summary = pd.read_csv(out / "summary.tsv", sep="\t", dtype={"subject": str})
    kinds = summary[summary["subject"] == "group"].set_index("condition")["kind"]
    assert kinds["intact"] == "intact" and (kinds[labels] == "control").all()
    from napari_lesion_align._widgets._show import stats_for

    for c in labels:  # the Results widget can show "model above the control"
        assert {"r", "t", "q", "p"} <= set(stats_for(res, "group", c))
    from napari_lesion_align.core.results.figures import bar_values

    values, hatched = bar_values(res, 0)  # the Inspector's bars at region R0
    assert list(values) == ["intact", *labels] and hatched == set(labels)
    np.testing.assert_allclose(values["wordRate"]["EN"][0],
                               np.mean([res.get(s, "EN", "wordRate")[0] for s in res.subjects]))
    # the closing summary names every control, per language
    text = "\n".join(res.closing_summary())
    assert all(c in text for c in labels) and text.startswith("EN: intact model mean r")


def test_word_rate_regions_are_found_by_the_word_rate_and_not_above_it(three_runs):
    cfg, res, out = three_runs
    rate, noise = slice(0, N_RATE), slice(N_RATE, None)
    wr, above = _group_r(res, "wordRate"), _group_r(res, "aboveWordRate")
    intact, shift = _group_r(res, "intact"), _group_r(res, "nullShift")
    assert wr[rate].min() > 0.5  # one feature at four delays: the truth
    assert abs(above[rate].mean()) < 0.1  # the word rate regressed out: nothing left
    assert intact[rate].mean() > 0.3 > abs(shift[rate].mean())  # timing matters
    for m in (wr, above, intact, shift, _group_r(res, "nullShuffled")):
        assert abs(np.nanmean(m[noise])) < 0.06
    # the group tests: the model above its shifted null in the word-rate regions
    table = pd.read_csv(out / "controls.tsv", sep="\t").set_index(["condition", "region"])
    p = np.array([table.loc[("nullShift", f"R{i}"), "p"] for i in range(N_RATE)])
    assert (p < 0.05).mean() >= 0.75


@pytest.mark.parametrize("n_runs", [1, 3])
def test_on_pure_noise_every_control_centres_on_zero(tmp_path, tiny_model, n_runs):
    """With one run the cleaning regressors and the word rate are projected out of each
    outer fold's training rows: no coupling of the folds, as with several runs."""
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg_path = write_regions_study(tmp_path / "s", tiny_model, n_runs=n_runs, n_subjects=2,
                                   seed=5)
    # pure noise: drop the word-rate regions' signal by using the noise regions only
    res = run_analysis(load_config(cfg_path), tmp_path / "out")
    vals = {c: np.concatenate([res.get(s, "EN", c)[N_RATE:] for s in res.subjects])
            for c in ["intact", *ctl.CONTROL_LABELS.values()]}
    for c, v in vals.items():
        se = v.std() / np.sqrt(len(v))
        assert abs(v.mean()) < max(4 * se, 0.02), (c, v.mean(), se)


def test_control_features_come_from_the_right_inputs(three_runs):
    """The shift null's features are the model's, rotated; shuffled words keep the onsets;
    the word rate counts words per volume."""
    from napari_lesion_align.core.run.engine import Progress
    from napari_lesion_align.core.run.stages import (_TRFeatures, control_specs, make_engine,
                                                     stage_conditions)
    from napari_lesion_align.core.run.store import OutputFolder, identity

    cfg, res, out = three_runs
    folder = OutputFolder.open(out, identity(cfg))
    try:
        eng = make_engine(cfg, out, Progress(None, None))
        stage_conditions(eng)
        trf = _TRFeatures(eng)
        specs = {c.kind: c for c in control_specs(eng)}
        pad = max(cfg.encoding.delays)
        intact = trf.get("EN", "intact")
        for k in range(specs["shift"].n_shifts):
            shifted = trf.control("EN", specs["shift"], k)
            for X, S in zip(intact, shifted):
                n = len(X) - pad
                amount = ctl.shift_amounts(n, specs["shift"].n_shifts)[k]
                assert 0 < amount < n
                np.testing.assert_array_equal(S[pad:], np.roll(X[pad:], amount, axis=0))
        shuffled = trf.control("EN", specs["shuffled"])
        for X, S in zip(intact, shuffled):
            has_words = np.abs(X).sum(1) > 0
            np.testing.assert_array_equal(np.abs(S).sum(1) > 0, has_words)  # same onsets
            assert not np.allclose(X[has_words], S[has_words])  # other words' vectors
        again = _TRFeatures(eng).control("EN", specs["shuffled"])
        for a, b in zip(shuffled, again):
            np.testing.assert_array_equal(a, b)  # seeded
        rate = trf.control("EN", specs["wordrate"])
        stim = eng.source.stimuli["EN"]
        for X, words in zip(rate, stim.runs):
            assert X.shape[1] == 1
            assert X.sum() == np.sum((words.onsets >= 0) & (words.onsets < TR * (len(X) - pad)))
        assert trf.control("EN", specs["above"]) is intact  # the model's own features
    finally:
        folder.close()


def test_controls_can_be_switched_off(tmp_path, tiny_model):
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg = load_config(write_regions_study(tmp_path / "s", tiny_model, n_runs=2, n_subjects=2,
                                          extra="[controls]\nshifts = 0\nword_rate = false\n"
                                                "above_word_rate = false\n"))
    assert [c.label for c in ctl.control_specs(cfg.controls)] == ["nullShuffled"]
    res = run_analysis(cfg, tmp_path / "out")
    assert list(res.baselines) == ["nullShuffled"]
    off = cfg.model_copy(update={"controls": cfg.controls.replace(enabled=False)})
    assert ctl.control_specs(off.controls) == []


def test_a_lesion_may_not_take_a_control_label(tmp_path):
    les = LesionConfig(enabled=True, selections=[], manual=[
        {"name": "wordRate", "element": "heads", "indices": {0: [1]}}])
    plan = LesionPlan.from_config(les, ["EN"])
    with pytest.raises(LesionAlignError, match="wordRate.*controls"):
        plan.specs(2)


# --------------------------------------------------------------------------- random draws
def test_random_draws_are_labelled_seeded_and_the_first_keeps_its_seed():
    plan = LesionPlan.from_config(LesionConfig(enabled=True, random_controls=3),
                                  ["EN", "FR"], seed=10)
    specs = plan.specs(4)
    draws = [s for s in specs if s.kind == "random"]
    assert [s.label for s in draws[:3]] == ["sharedRandom", "sharedRandom2", "sharedRandom3"]
    assert [s.draw for s in draws[:3]] == [1, 2, 3]
    assert {s.control_of for s in draws[:3]} == {"shared"}
    assert len({s.seed for s in draws}) == len(draws)  # every draw its own seed
    # the first draw keeps the seed a single control had (the position after its lesion)
    one = LesionPlan.from_config(LesionConfig(enabled=True, random_controls=1), ["EN", "FR"],
                                 seed=10).specs(4)
    firsts = {s.control_of: s.seed for s in one if s.kind == "random"}
    assert {s.control_of: s.seed for s in draws if s.draw == 1} == firsts
    assert draws[1].seed == draws[0].seed + DRAW_SEED_STEP
    # random_control = false (older configs) means none; a contradiction is an error
    assert LesionConfig(enabled=True, random_control=False).n_random == 0
    with pytest.raises(LesionAlignError, match="contradicts"):
        LesionConfig(enabled=True, random_control=False, random_controls=3)
    assert plan.selection_specs(specs)["random"][0] == "sharedRandom"


def test_random_draws_differ_and_are_reproducible(tiny_model):
    from napari_lesion_align.core.model.loading import load_model

    lm = load_model(str(tiny_model), offline=True, device="cpu")
    stim = _stimuli()

    def keys(seed):
        plan = LesionPlan.from_config(LesionConfig(enabled=True, method="wanda",
                                                   random_controls=3, max_tokens=300), ["EN", "FR"], seed)
        return {c.label: c.key for c in plan.build(lm, stim)}

    a, b, c = keys(0), keys(0), keys(1)
    assert a == b  # reproducible from the seed
    draws = [a[f"sharedRandom{k}" if k > 1 else "sharedRandom"] for k in (1, 2, 3)]
    assert len(set(draws)) == 3  # the draws differ
    assert c["sharedRandom"] != a["sharedRandom"]


def _stimuli():
    from napari_lesion_align.core.data.dataset import load_stimuli
    from napari_lesion_align.core.data.demo import demo_language_data

    langs = {d.code: d for d in demo_language_data()}
    return {code: load_stimuli(langs[code]) for code in ("EN", "FR")}


# --------------------------------------------------------------------------- beyond random
def test_beyond_random_needs_a_drop_beyond_every_draw_and_consistent_across_subjects():
    from napari_lesion_align.core.run.stages import _beyond_random

    rng = np.random.default_rng(0)
    n, V, K = 8, 300, 5
    intact = 0.3 + 0.02 * rng.standard_normal((n, V))
    # every draw lowers r by 0.05 everywhere (a random lesion's broad effect)
    draws = [intact - 0.05 + 0.01 * rng.standard_normal((n, V)) for _ in range(K)]
    lesion = intact - 0.05 + 0.01 * rng.standard_normal((n, V))
    lesion[:, :50] -= 0.15  # planted: far beyond the draws in voxels 0..49
    held = {"r": lesion, "sum": np.sum(draws, axis=0), "means": [d.mean(0) for d in draws]}
    written = {}
    les = LesionConfig(enabled=True)
    beyond = _beyond_random("EN", "shared", held, np.ones(V, bool), les,
                            lambda code, label, stat, v: written.setdefault(stat, v))
    truth = np.zeros(V, bool)
    truth[:50] = True
    from napari_lesion_align.core.analysis.statistics import dice

    assert dice(beyond, truth) > 0.95
    assert set(written) == {"tvsrandom", "pvsrandom", "qvsrandom", "beyondrandom"}
    # a drop as large as a random lesion's is not beyond random (even if significant)
    assert beyond[50:].mean() < 0.05


def test_categories_use_the_comparison_with_the_random_draws():
    from napari_lesion_align.core.analysis import statistics as an

    V = 6
    sig = an.PairedTest(np.ones(V), np.zeros(V), np.zeros(V), 5, np.ones(V))
    beyond = np.array([1, 1, 0, 0, 1, 0], bool)
    with_draws = an.PairedTest(sig.t, sig.p, sig.q, 5, sig.rel_drop, beyond=beyond)
    labels, legend = an.categories({"EN": with_draws, "FR": with_draws}, {}, ["EN", "FR"])
    np.testing.assert_array_equal(labels == 1, beyond)
    assert "beyond the lesion's random draws" in legend[1]["meaning"]
    labels, _ = an.categories({"EN": sig, "FR": sig}, {}, ["EN", "FR"])
    assert (labels == 1).all()


def test_lesion_rows_and_closing_summary_carry_the_draws(tmp_path, tiny_model):
    from napari_lesion_align.core.run.pipeline import run_analysis

    cfg = load_config(write_regions_study(
        tmp_path / "s", tiny_model, n_runs=2, n_subjects=3,
        extra="[lesions]\nmethod = \"wanda\"\nselections = [\"shared\"]\nrandom_controls = 2\n"
              "correction = \"none\"\n[controls]\nenabled = false\n"))
    res = run_analysis(cfg, tmp_path / "out")
    assert res.draws_of("shared") == ["sharedRandom", "sharedRandom2"]
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t", dtype={"subject": str})
    row = summary[(summary["subject"] == "group") & (summary["condition"] == "shared")].iloc[0]
    assert row["random_draws"] == 2 and np.isfinite(row["control_rel_drop_sd"])
    subj = summary[(summary["subject"] != "group") & (summary["condition"] == "shared")]
    s0 = subj.iloc[0]["subject"]
    m0 = np.nanmean(res.get(s0, "EN", "intact"))
    rels = [(m0 - np.nanmean(res.get(s0, "EN", d))) / m0 for d in res.draws_of("shared")]
    np.testing.assert_allclose(subj.iloc[0]["control_rel_drop"], np.mean(rels), atol=2e-6)
    assert (tmp_path / "out" / "group_lang-EN_desc-shared_stat-beyondrandom_statmap.tsv"
            ).is_file()
    assert np.isfinite(float(row["n_beyond_random"]))
    text = "\n".join(res.closing_summary())
    assert "lesion shared" in text and "vs its 2 random draws" in text
    # read back from the folder, the summary keeps its counts
    from napari_lesion_align.core.results.result import AlignmentResult

    back = AlignmentResult.load(tmp_path / "out")
    assert "\n".join(back.closing_summary()) == text
    # the Results widget's statistics for the lesion (what it can show): beyond random
    from napari_lesion_align._layers import DIVERGING, SEQUENTIAL
    from napari_lesion_align._widgets._show import stats_for

    stats = stats_for(back, "group", "shared")
    assert {"beyondrandom", "tvsrandom", "qvsrandom", "pvsrandom"} <= set(stats)
    assert {"beyondrandom", "tvsrandom"} <= set(DIVERGING)
    assert {"qvsrandom", "pvsrandom"} <= set(SEQUENTIAL)
    # a result without its summary rows (made in memory) computes the same rows from its maps
    import dataclasses

    bare = dataclasses.replace(back, summary=None)
    got = {(r["subject"], r["condition"]): r for r in bare.summary_rows()}
    for r in back.summary_rows():
        g = got[(r["subject"], r["condition"])]
        assert g["kind"] == r["kind"] and g["random_draws"] == r["random_draws"]
        for k in ("mean_r", "rel_drop", "control_rel_drop"):
            np.testing.assert_allclose(g[k], r[k], atol=2e-6, equal_nan=True)

    # the Inspector's bars at one region: the lesion, then its two draws as one bar whose
    # error bar is the spread across the draws; no control ([controls] enabled = false)
    from napari_lesion_align.core.results.figures import bar_groups, bar_values

    assert bar_groups(back) == [("intact", ("intact",)), ("shared", ("shared",)),
                                ("shared random (2)", ("sharedRandom", "sharedRandom2"))]
    values, _ = bar_values(back, 0)
    per_draw = [np.mean([back.get(s, "EN", d)[0] for s in back.subjects])
                for d in ("sharedRandom", "sharedRandom2")]
    np.testing.assert_allclose(values["shared random (2)"]["EN"],
                               (np.mean(per_draw), np.std(per_draw, ddof=1)), atol=1e-6)
