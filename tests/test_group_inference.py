"""[statistics] through the run path: the noise ceiling as a unit of its own (planted
signal-to-noise, skip rules, resume) and group inference by sign-flip permutations next
to the parametric tests (which stay as they were)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align.core.analysis import display, statistics as an
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.results.figures import ceiling_lines
from napari_lesion_align.core.results.result import AlignmentResult
from napari_lesion_align.core.run.config import config_from_dict, demo_config, load_config
from napari_lesion_align.core.run.pipeline import run_analysis
from napari_lesion_align.core.run import stages
from napari_lesion_align.core.run.stages import ceiling_chunk, ceiling_layout
from napari_lesion_align.core.run.store import identity
from test_pipeline import AFFINE, SHAPE, write_study
from tiny_models import make_tiny_model

#: the planted study's subjects (enough for a sign-flip test at 0.05: 2^-6 < 0.05)
N_SUBJECTS = 6
NO_CONTROLS = "\n[controls]\nenabled = false\n"
#: the word rate alone as a control: a group test of the intact model, at little cost
WORD_RATE_ONLY = "\n[controls]\nshifts = 0\nshuffled_words = false\nabove_word_rate = false\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


def _amplitudes() -> np.ndarray:
    """The planted amplitude of the shared signal per voxel of the grid (every voxel is in
    the planted study's mask): 0 (noise) in the first third, then rising (signal-to-noise
    a^2 : 1)."""
    n = int(np.prod(SHAPE))
    return np.r_[np.zeros(n // 3), np.linspace(0.15, 1.5, n - n // 3)].reshape(SHAPE)


#: a voxel whose BOLD is constant in every subject (no ceiling can be estimated there)
CONSTANT = (2, 2, 1)


def planted_study(root: Path, model: Path, n_subjects: int = N_SUBJECTS,
                  longer: str | None = None, extra: str = NO_CONTROLS) -> Path:
    """write_study's layout with a stimulus-locked signal shared by every subject (the
    same per run, amplitude :func:`_amplitudes`) plus independent unit noise: the true
    reliability of a voxel is a^2 / (a^2 + 1), its ceiling the square root. ``longer``: a
    subject whose third run has 6 more volumes than the others'."""
    cfg = write_study(root, model, n_subjects=n_subjects)
    nib.save(nib.Nifti1Image(np.ones(SHAPE, dtype=np.uint8), AFFINE), str(root / "mask.nii.gz"))
    amp = _amplitudes()
    shared = np.random.default_rng(123)
    signals = []
    for _ in range(3):  # one signal per run, heard by everyone: smoothed, unit variance
        s = np.convolve(shared.normal(size=160), np.ones(3) / 3, mode="same")[:150]
        signals.append((s - s.mean()) / s.std())
    rng = np.random.default_rng(7)
    for k in range(1, n_subjects + 1):
        for r in (1, 2, 3):
            data = 100.0 + rng.normal(0, 1, SHAPE + (150,)) + amp[..., None] * signals[r - 1]
            data[CONSTANT] = 7.0
            if longer == f"{k:02d}" and r == 3:  # the scanner ran on for 6 volumes
                data = np.concatenate([data, 100.0 + rng.normal(0, 1, SHAPE + (6,))], axis=-1)
            nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE),
                     str(root / f"sub-{k:02d}" / f"run-{r}.nii.gz"))
    cfg.write_text(cfg.read_text() + extra)
    return cfg


def _truth_ceiling() -> np.ndarray:
    a = _amplitudes()
    return np.sqrt(a ** 2 / (a ** 2 + 1))


# --------------------------------------------------------------------------- config
def _cfg(statistics: dict, kind: str = "demo"):
    return demo_config(n_subjects=6, statistics=statistics)


@pytest.mark.parametrize("table, words", [
    ({"inference": "bayesian"}, "[statistics].inference = 'bayesian'"),
    ({"inference": "permutation", "method": "fdr"}, "[statistics].method = 'fdr'"),
    ({"inference": "permutation", "n_perm": 10}, "[statistics].n_perm = 10"),
    ({"inference": "permutation", "n_perm": "5000"}, "[statistics].n_perm = '5000'"),
    ({"method": "tfce"}, "set inference = 'permutation'"),
    ({"inference": "permutation", "cluster_forming_p": 0.5},
     "[statistics].cluster_forming_p = 0.5"),
    ({"ceiling": "yes"}, "[statistics].ceiling = 'yes'"),
    ({"n_perms": 100}, "[statistics].n_perms: unknown key"),
])
def test_bad_statistics_tables_are_refused_with_the_key_and_value(table, words):
    with pytest.raises(LesionAlignError) as err:
        _cfg(table)
    assert words in str(err.value)


def test_tfce_and_cluster_need_voxels(tmp_path):
    """Regions have no neighbours: TFCE / cluster inference is refused when the config is
    read; max-t is fine."""
    d = {"data": {"kind": "regions", "tr": 2.0, "subjects": ["01"]},
         "statistics": {"inference": "permutation", "method": "tfce"}}
    with pytest.raises(LesionAlignError, match="kind = 'regions'.*method = 'max-t'"):
        config_from_dict(d, tmp_path)


def test_the_statistics_table_is_group_level_identity():
    """Changing the inference or switching the ceiling off changes the group stage's
    identity only (the fits are resumed, not refused); the defaults are parametric with a
    ceiling."""
    base = _cfg({})
    assert (base.statistics.inference, base.statistics.ceiling) == ("parametric", True)
    perm = _cfg({"inference": "permutation", "n_perm": 200, "seed": 3, "ceiling": False})
    a, b = identity(base), identity(perm)
    assert a["fits"] == b["fits"] and a["group"] != b["group"]
    assert b["config"]["statistics"]["n_perm"] == 200


def test_the_ceiling_unit_chunks_its_voxels_within_the_budget():
    assert ceiling_chunk(100, 50, 10**9) == 50  # everything fits
    n = ceiling_chunk(1000, 10**6, 2**20)  # 1 MiB: 3 float64 arrays of 1000 volumes
    assert n == 2**20 // (1000 * 8 * 3) and n * 1000 * 8 * 3 <= 2**20
    assert ceiling_chunk(10**6, 10, 1) == 1  # at least one voxel
    # the subjects' series kept for the second pass count too
    assert ceiling_chunk(1000, 10**6, 2**20, held=5) == 2**20 // (1000 * 8 * 8)


@pytest.mark.parametrize("n_voxels, n_subjects, budget, chunk, hold", [
    (50, 6, 10**9, 50, True),  # everything fits with the series held: read once
    (1000, 4, 1000 * 100 * 8 * 7, 1000, True),  # held: one chunk against two reads
    (1000, 4, 1000 * 100 * 8 * 3, 1000, False),  # only the running arrays fit
    (1000, 10, 600 * 100 * 8 * 3, 600, False),  # 2 chunks x 2 passes < 5 held chunks
    (1000, 2, 600 * 100 * 8 * 3, 360, True),  # 3 held chunks < 2 chunks x 2 passes
])
def test_the_ceiling_layout_reads_each_subject_the_fewest_times(n_voxels, n_subjects,
                                                                 budget, chunk, hold):
    """Hold the chunk's cleaned series from the sum pass to the leave-one-out pass only
    where that reads and cleans each subject fewer times within the budget (100 volumes)."""
    assert ceiling_layout(100, n_voxels, n_subjects, budget) == (chunk, hold)


# --------------------------------------------------------------------------- ceiling
@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model):
    """A planted study run once (parametric, ceiling on; the budget forces 3 voxel
    chunks)."""
    root = tmp_path_factory.mktemp("planted")
    cfg = planted_study(root / "study", tiny_model, extra=WORD_RATE_ONLY)
    # 3 arrays x 450 volumes x 8 bytes x 40 voxels: the 120 voxels of the mask in 3 chunks
    mb = 40 * 3 * 450 * 8 / 2**20
    cfg.write_text(cfg.read_text().replace("[encoding]\n", f"[encoding]\nstack_mb = {mb!r}\n"))
    config = load_config(cfg)
    out = root / "out"
    return config, out, run_analysis(config, out)


def test_holding_the_series_reads_each_subject_once_for_the_same_ceiling(planted, tmp_path,
                                                                          monkeypatch):
    """The ceiling unit with the fixture's budget (3 chunks, streamed: each subject read
    and cleaned 6 times) and with the default budget (one chunk, the series held: read
    once) writes the same maps."""
    config, out, res = planted
    reads = []
    real = stages.cleaned_series
    monkeypatch.setattr(stages, "cleaned_series",
                        lambda eng, s, code, cols=None: reads.append(s) or real(eng, s, code,
                                                                                  cols))
    job = stages.CeilingJob("EN", tuple(res.subjects))
    maps = {}
    for name, mb in (("streamed", config.encoding.stack_mb), ("held", 1024.0)):
        cfg = config.replace(encoding=config.encoding.replace(stack_mb=mb))
        (tmp_path / name).mkdir()
        eng = stages.make_engine(cfg, tmp_path / name)
        reads.clear()
        assert stages.run_ceiling_job(eng, job, lambda f, text: None) == ["lang-EN"]
        rec = eng.out.read_record("ceiling", "lang-EN")
        assert (rec["voxel_chunks"], rec["held"]) == ((3, False) if name == "streamed"
                                                      else (1, True))
        assert sorted(reads) == sorted(list(res.subjects) * (6 if name == "streamed" else 1))
        maps[name] = {f: np.asarray(nib.load(str(tmp_path / name / f)).dataobj)
                      for f in rec["files"]}
    assert maps["held"].keys() == maps["streamed"].keys()
    # the run itself read the series its fits left (no run loaded again), then removed them:
    # the same maps as the ceiling cleaning the runs
    assert json.loads((out / "units" / "ceiling" / "lang-EN.json").read_text())["from_fits"]
    assert not (out / "units" / "scratch").exists()
    for f in maps["held"]:
        np.testing.assert_allclose(maps["held"][f], maps["streamed"][f], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / f)).dataobj),
                                      maps["streamed"][f])


def test_the_fits_leave_their_series_for_the_ceiling_while_the_disk_has_room(
        planted, tmp_path, monkeypatch):
    """The spills (float32, volumes x mask columns per subject) are made when they take
    at most half the free disk, for the languages with a ceiling and fits to do."""
    import collections

    config, _, res = planted
    eng = stages.make_engine(config, tmp_path)
    src = eng.source
    T = sum(r.n_vols for r in src.runs(res.subjects[0], "EN"))
    need = len(res.subjects) * T * src.space.n_features * 4
    ceil = [stages.CeilingJob("EN", tuple(res.subjects))]
    fits = [stages.FitJob("EN", tuple(res.subjects), tuple(res.subjects))]
    usage = collections.namedtuple("usage", "total used free")
    for free, want in ((2 * need, {"EN"}), (2 * need - 1, set())):
        monkeypatch.setattr(stages.shutil, "disk_usage", lambda p, f=free: usage(0, 0, f))
        assert stages.ceiling_spills(eng, ceil, fits) == want
    assert stages.ceiling_spills(eng, ceil, []) == set()  # no fit to do: nothing to leave
    assert stages.ceiling_spills(eng, [], fits) == set()  # no ceiling


def test_the_ceiling_tracks_the_planted_signal_to_noise(planted):
    """Ground truth: the ceiling map correlates with the generator's sqrt(a^2 / (a^2 + 1)),
    sits near zero in the noise voxels and is called reliable only where a signal is
    planted; the constant voxel has no ceiling."""
    config, out, res = planted
    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
    read = {s: np.asarray(nib.load(str(out / f"group_lang-EN_desc-intact_stat-{s}"
                                                 "_statmap.nii.gz")).dataobj)
            for s in display.CEILING_STATS}
    truth = _truth_ceiling()
    const = np.zeros(SHAPE, dtype=bool)
    const[CONSTANT] = True
    signal = mask & (truth > 0) & ~const
    noise = mask & (truth == 0) & ~const
    assert np.corrcoef(read["ceiling"][signal], truth[signal])[0, 1] > 0.95
    assert np.abs(read["ceiling"][signal] - truth[signal]).max() < 0.15
    # noise voxels: rho = ceiling^2 within 4 null SDs of 0 (the mean of 15 pairs' r over
    # 450 volumes: SD 1 / sqrt(450 x 15)); sqrt inflates small values, so the median too
    null_sd = 1.0 / np.sqrt(450 * N_SUBJECTS * (N_SUBJECTS - 1) / 2)
    assert (read["ceiling"][noise] ** 2).max() < 4 * null_sd
    assert np.median(read["ceiling"][noise]) < 0.1
    reliable = read["qceiling"] < 0.05
    # FDR: the noise voxels among those called reliable stay near the level
    assert reliable[noise].sum() / reliable.sum() <= 0.1
    assert reliable[signal & (truth > 0.4)].all()
    assert read["ceiling"][const] == 0 and not reliable[const]
    # the leave-one-out ISC sits below the ceiling where the signal is weak (few subjects)
    weak = signal & (truth < 0.5)
    assert (read["isc"][weak] < read["ceiling"][weak]).mean() > 0.8
    # NaN outside the mask, like every map
    assert np.isnan(read["ceiling"][~mask]).all()
    rec = json.loads((out / "units" / "ceiling" / "lang-EN.json").read_text())
    assert rec["voxel_chunks"] == 3 and rec["n_subjects"] == N_SUBJECTS


def test_normalised_alignment_is_r_over_the_ceiling_where_it_is_reliable(planted):
    """r / ceiling = the group mean r divided by the ceiling in reliable voxels, NaN
    elsewhere; summary.tsv, controls.tsv and the closing summary carry its medians."""
    config, out, res = planted
    ceiling = np.asarray(res.group_maps[("EN", "intact", "ceiling")])
    q = np.asarray(res.group_maps[("EN", "intact", "qceiling")])
    normr = np.asarray(res.group_maps[("EN", "intact", "normr")])
    r = np.stack([res.maps[(s, "EN", "intact", "r")] for s in res.subjects])
    mean_r = np.where(np.isfinite(r).any(0), np.nanmean(np.where(np.isfinite(r), r, 0), 0), np.nan)
    reliable = (q < config.lesions.alpha) & (ceiling > 0)
    assert reliable.any() and not reliable.all()
    np.testing.assert_allclose(normr[reliable], mean_r[reliable] / ceiling[reliable],
                               rtol=1e-5)
    assert np.isnan(normr[~reliable]).all()
    loaded = AlignmentResult.load(out)
    row = next(r for r in loaded.summary_rows()
               if r["subject"] == "group" and r["condition"] == "intact")
    assert row["n_reliable"] == int(reliable.sum())
    assert row["ceiling_median"] == pytest.approx(float(np.median(ceiling[reliable])), abs=1e-5)
    assert row["norm_r_median"] == pytest.approx(float(np.median(normr[reliable])), abs=1e-5)
    assert row["inference"] == "parametric t, FDR q < 0.05"
    line = next(x for x in loaded.closing_summary() if "noise ceiling" in x)
    assert f"in {int(reliable.sum())} reliable voxels" in line
    assert loaded.closing_summary()[-1] == "group inference: parametric t, FDR q < 0.05"
    # the Results dock lists the maps under the intact model, in the table's labels
    assert {"ceiling", "isc", "qceiling", "normr"} <= {
        s for (_, c, s) in loaded.group_maps if c == "intact"}
    # the Inspector's words at a reliable voxel and at an unreliable one
    i, j = int(np.flatnonzero(reliable)[0]), int(np.flatnonzero(~reliable)[0])
    assert ceiling_lines(loaded, i) == [f"noise ceiling: EN {ceiling[i]:.2f} (intact r / "
                                        f"ceiling {normr[i]:.2f})"]
    assert ceiling_lines(loaded, j) == [f"noise ceiling: EN {ceiling[j]:.2f} (not reliable "
                                        "here)"]


def test_a_rerun_reuses_the_ceiling_unit_and_switching_it_off_drops_its_maps(planted):
    config, out, res = planted
    again = run_analysis(config, out)
    assert again.provenance["units"]["ceilings"] == {"computed": [], "reused": ["lang-EN"]}
    np.testing.assert_array_equal(again.group_maps[("EN", "intact", "ceiling")],
                                  res.group_maps[("EN", "intact", "ceiling")])
    off = run_analysis(config.replace(statistics=config.statistics.replace(ceiling=False)),
                       out)
    assert off.provenance["units"]["fits"]["computed"] == []  # a group-level change
    assert not list(out.glob("*stat-ceiling*")) and not list(out.glob("*stat-normr*"))
    assert not any("noise ceiling" in x for x in off.closing_summary())
    AlignmentResult.load(out)  # the manifest matches the folder


@pytest.mark.parametrize("case", ["one subject", "runs differ"])
def test_the_ceiling_is_skipped_with_one_warning(tmp_path, tiny_model, case):
    n, longer = (1, None) if case == "one subject" else (3, "02")
    cfg = load_config(planted_study(tmp_path / "study", tiny_model, n_subjects=n,
                                    longer=longer))
    res = run_analysis(cfg, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    warned = [w for w in doc["warnings"] if "noise ceiling skipped" in w]
    assert len(warned) == 1
    assert ("1 subject" in warned[0]) if n == 1 else (
        "runs differ" in warned[0] and "sub-02: runs 1, 2, 3 (150, 150, 156 volumes)"
        in warned[0])
    assert any("noise ceiling  skipped" in x for x in res.closing_summary())
    assert not list((tmp_path / "out").glob("*stat-ceiling*"))
    assert doc["units"]["ceilings"] == {"computed": [], "reused": []}


# --------------------------------------------------------------------------- inference
def test_the_parametric_path_is_the_parametric_test(planted):
    """inference = "parametric" (the default): the group maps are statistics.alignment_test
    of the subjects' maps, bit for bit, and no permutation map is written."""
    config, out, res = planted
    r = np.stack([res.maps[(s, "EN", "intact", "r")] for s in res.subjects])
    ok = np.isfinite(r).any(1)
    ref = an.alignment_test(r[ok])
    for stat in display.GROUP_TEST:
        np.testing.assert_array_equal(np.asarray(res.group_maps[("EN", "intact", stat)]),
                                      np.where(np.isnan(res.group_maps[("EN", "intact", stat)]),
                                               np.nan, getattr(ref, stat)))
    assert not list(out.glob("*stat-pfwe*"))


@pytest.mark.parametrize("method", ["max-t", "tfce"])
def test_permutation_inference_end_to_end(tmp_path, tiny_model, method):
    """inference = "permutation": the intact model, its lesion and the lesion against its
    random draws are tested by sign flips (t and FWE p maps, no FDR q), labelled so in
    summary.tsv, result.json, the closing summary and the display's words; the planted
    voxels pass, the noise voxels do not."""
    extra = ('\n[lesions]\nelement = "neurons"\nmethod = "wanda"\nk_percent = 10.0\n'
             'selections = ["shared"]\nrandom_controls = 1\n'
             f'[statistics]\ninference = "permutation"\nmethod = "{method}"\nn_perm = 100\n'
             'ceiling = false\n' + NO_CONTROLS)
    cfg = write_study(tmp_path / "study", tiny_model, n_subjects=N_SUBJECTS)
    cfg.write_text(cfg.read_text() + extra)
    out = tmp_path / "out"
    res = run_analysis(load_config(cfg), out)
    stats = {s for (_, c, s) in res.group_maps}
    assert {"t", "pfwe", "tvsrandom", "pfwevsrandom"} <= stats
    assert not stats & {"p", "q", "pvsrandom", "qvsrandom"}
    label = f"permutation {method}, FWE p < 0.05, 100 sign flips"
    doc = json.loads((out / "result.json").read_text())
    assert doc["inference"]["label"] == label and doc["inference"]["method"] == method
    loaded = AlignmentResult.load(out)
    assert loaded.closing_summary()[-1] == f"group inference: {label}"
    rows = [r for r in loaded.summary_rows() if r["subject"] == "group"
            and r["condition"] in ("intact", "shared")]
    assert [r["inference"] for r in rows] == [label, label]
    th = display.default_threshold(loaded, "t", "EN", "intact")
    assert "FWE (permutation)" in th.text
    # ground truth: write_study plants the word rate in the voxels with x < 0 (the model
    # finds it there), noise elsewhere
    p = np.asarray(nib.load(str(out / "group_lang-EN_desc-intact_stat-pfwe_statmap.nii.gz")
                            ).dataobj)
    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
    xs = np.indices(SHAPE)[0] * 4.0 - 10
    assert np.nanmin(p[mask]) >= 1.0 / 64 - 1e-6  # 6 subjects: 64 distinct flips at most
    assert (p[mask & (xs < 0)] < 0.05).mean() > 0.8
    assert (p[mask & (xs > 0)] < 0.05).sum() <= 1


def test_too_few_subjects_for_a_permutation_test_are_refused_before_any_work(tmp_path,
                                                                             tiny_model):
    extra = '\n[statistics]\ninference = "permutation"\nn_perm = 100\n' + NO_CONTROLS
    cfg = load_config(planted_study(tmp_path / "study", tiny_model, n_subjects=3,
                                    extra=extra))
    with pytest.raises(LesionAlignError, match=r"language EN.*3 subjects cannot reach "
                                               r"p < 0.05.*inference = 'parametric'"):
        run_analysis(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failing_ceiling_unit_is_named_and_only_it_runs_again(tmp_path, tiny_model,
                                                                 monkeypatch):
    """The ceiling unit fails like a fit unit: one error naming it, the fits saved; the
    rerun computes the ceiling only."""
    from napari_lesion_align.core.run import stages

    cfg = load_config(planted_study(tmp_path / "study", tiny_model, n_subjects=3))
    real = stages._ceiling.IscAccumulator.add

    def broken(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(stages._ceiling.IscAccumulator, "add", broken)
    out = tmp_path / "out"
    with pytest.raises(LesionAlignError, match=r"1 of 1 noise-ceiling units failed: "
                                               r"lang-EN.*MemoryError: no room"):
        run_analysis(cfg, out)
    assert not (out / "result.json").exists() and not list(out.glob("*stat-ceiling*"))
    # the fits' cleaned series stay for the rerun's ceiling
    assert sorted(p.name for p in (out / "units" / "scratch" / "ceiling-EN").iterdir()) == [
        f"sub-{s}.{ext}" for s in ("01", "02", "03") for ext in ("json", "npy")]
    monkeypatch.setattr(stages._ceiling.IscAccumulator, "add", real)
    reads = []
    monkeypatch.setattr(stages, "cleaned_series", lambda *a, **k: reads.append(a) or 1 / 0)
    res = run_analysis(cfg, out)
    assert res.provenance["units"]["fits"]["computed"] == []
    assert res.provenance["units"]["ceilings"]["computed"] == ["lang-EN"]
    rec = json.loads((out / "units" / "ceiling" / "lang-EN.json").read_text())
    assert reads == [] and rec["from_fits"] is True
    assert not (out / "units" / "scratch").exists()
