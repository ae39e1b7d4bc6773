"""BIDS datasets as they come: non-steady-state volumes, sessions holding different runs, a
subject missing a run, events.tsv annotations, several resolutions -- on miniature
ds003643-style trees written here -- and the record of the cleaning."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_lesion_align import cli
from napari_lesion_align.core.data import bids as bids_mod
from napari_lesion_align.core.run.config import config_from_dict, load_config
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.data import demo
from test_bids import _confounds
from tiny_models import make_tiny_model

TR = 2.0
N_VOLS = 45  # 90 s
SHAPE = (4, 4, 4)
AFFINE = np.array([[4.0, 0, 0, -8], [0, 4.0, 0, -8], [0, 0, 4.0, -8], [0, 0, 0, 1]])
MNI = "MNI152NLin2009cAsym"
TASK = "lppEN"
BRIGHT = 30.0  # the first volume's excess brightness (noise sd 1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path / "cache"))


def _word_list() -> list[str]:
    from napari_lesion_align.core.data.stimuli import read_words

    return list(read_words(demo.DEMO_DIR / "EN_run-1.TextGrid").words)


def events_table(run: int) -> pd.DataFrame:
    """A BIDS events table of one run: a word every 0.5 s from 1.1 s, each lasting 0.3 s
    (shorter than the gaps, as spoken words are), the last ending at 89.9 s, inside the
    90 s of the run; and one "sentence" row every 10 s, interleaved."""
    words = _word_list()
    onsets = np.arange(1.1, 89.7, 0.5)
    rows = [{"onset": t, "duration": 0.3, "trial_type": "word",
             "word": words[(i + 7 * run) % len(words)]} for i, t in enumerate(onsets)]
    rows += [{"onset": t, "duration": 9.5, "trial_type": "sentence", "word": "SENTENCE"}
             for t in np.arange(1.1, 85.0, 10.0)]
    df = pd.DataFrame(rows).sort_values("onset", kind="stable").reset_index(drop=True)
    df["onset"] = df["onset"].round(3)
    return df


def make_tree(root: Path, runs_of: dict, *, seed: int = 0, flag: bool = True,
              derivatives: bool = True, extra_vols: dict | None = None,
              resolutions=(None,), name: str = "Le Petit Prince (mini)") -> Path:
    """A ds003643-style tree of one task: ``runs_of`` = {subject: {session or "": [runs]}};
    raw runs, per-subject events.tsv (words with durations, sentence rows), fMRIPrep-style
    derivatives (MNI runs, brain masks, confounds tables). Every run's first volume is
    ``BRIGHT`` brighter than the rest (a non-steady-state volume); ``flag``: fMRIPrep's
    ``non_steady_state_outlier00`` column marks it. ``extra_vols``: {(subject, run): k}
    runs k volumes longer than their annotations."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.8.0", "DatasetType": "raw"}))
    (root / f"task-{TASK}_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
    prep = root / "derivatives" / "fmriprep"
    if derivatives:
        prep.mkdir(parents=True)
        (prep / "dataset_description.json").write_text(json.dumps(
            {"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    for s, sessions in runs_of.items():
        for ses, runs in sessions.items():
            sub = f"sub-{s}" + (f"/ses-{ses}" if ses else "")
            pre = f"sub-{s}" + (f"_ses-{ses}" if ses else "")
            raw, der = root / sub / "func", prep / sub / "func"
            raw.mkdir(parents=True)
            for r in runs:
                n = N_VOLS + (extra_vols or {}).get((s, r), 0)
                stem = f"{pre}_task-{TASK}_run-{r}"
                events_table(r).to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False)
                data = rng.normal(100, 1, SHAPE + (n,)).astype(np.float32)
                data[..., 0] += BRIGHT
                nib.save(nib.Nifti1Image(data, AFFINE), str(raw / f"{stem}_bold.nii.gz"))
                if not derivatives:
                    continue
                der.mkdir(parents=True, exist_ok=True)
                conf = _confounds(rng, n, 0 if flag else None)
                conf.to_csv(der / f"{stem}_desc-confounds_timeseries.tsv", sep="\t",
                            index=False, na_rep="n/a")
                for res in resolutions:
                    sp = f"_space-{MNI}" + (f"_res-{res}" if res else "")
                    nib.save(nib.Nifti1Image(data, AFFINE),
                             str(der / f"{stem}{sp}_desc-preproc_bold.nii.gz"))
                    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE),
                             str(der / f"{stem}{sp}_desc-brain_mask.nii.gz"))
    return root


def _cfg(root: Path, **data) -> dict:
    return {"data": {"kind": "bids", "root": str(root), **data},
            "languages": {"EN": {"task": TASK, "text_language": "en",
                                 "annotations": str(root / f"sub-01/func/sub-01_task-{TASK}"
                                                    "_run-{run}_events.tsv"),
                                 "events_filter": {"trial_type": "word"}}}}


THREE = {"01": {"": [1, 2, 3]}, "02": {"": [1, 2, 3]}}


# --------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("confounds", [None, False])
def test_non_steady_state_volumes_are_removed_without_confounds(tmp_path, confounds):
    """confounds left out or false: fMRIPrep's flagged first volume is still regressed out
    (planted truth: the cleaned BOLD no longer carries the bright first volume); the
    cleaning record names it."""
    from napari_lesion_align.core.data.bold import CleaningOptions, clean_run
    from napari_lesion_align.core.data.dataset import load_dataset

    root = make_tree(tmp_path / "ds", THREE)
    d = _cfg(root)
    if confounds is not None:
        d["data"]["confounds"] = confounds
    cfg = config_from_dict(d)
    assert cfg.data.confounds == {"strategy": ["non_steady_state"]}
    ds = load_dataset(cfg)
    first = (np.arange(N_VOLS) == 0).astype(float)
    for s in ("01", "02"):
        for run in ds.runs(s, "EN"):
            assert run.confounds.shape == (N_VOLS, 1)
            assert run.cleaning["non_steady_state_volumes"] == [0]
            assert run.cleaning["confound_columns"] == []
            Y = run.load()
            raw = clean_run(Y, TR, CleaningOptions(), None)
            fixed = clean_run(Y, TR, CleaningOptions(), run.confounds)
            assert np.mean([np.corrcoef(raw[:, v], first)[0, 1] for v in range(4)]) > 0.8
            assert max(abs(np.corrcoef(fixed[:, v], first)[0, 1]) for v in range(4)) < 0.2


def test_a_strategy_records_its_columns_and_raw_runs_take_dummy_scans(tmp_path):
    from napari_lesion_align.core.data.dataset import load_dataset

    root = make_tree(tmp_path / "ds", {"01": {"": [1]}})
    ds = load_dataset(config_from_dict(_cfg(root, confounds="simple")))
    rec = ds.runs("01", "EN")[0].cleaning
    assert len(rec["confound_columns"]) == 28 and "trans_x" in rec["confound_columns"]
    assert "global_signal" not in rec["confound_columns"]
    assert rec["non_steady_state_volumes"] == [0] and rec["spike_volumes"] == []
    assert rec["confounds_table"] == f"sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv"
    # raw runs, no fMRIPrep table: nothing detected (said so), unless dummy_scans is given
    raw = make_tree(tmp_path / "raw", {"01": {"": [1]}}, derivatives=False)
    d = _cfg(raw, mask=str(tmp_path / "m.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE), d["data"]["mask"])
    cfg = config_from_dict(d)
    assert cfg.data.confounds is None
    assert any("no non-steady-state volume is detected" in n for n in cfg.data.bids.notes)
    run = load_dataset(cfg).runs("01", "EN")[0]
    assert run.confounds is None and run.cleaning["non_steady_state_volumes"] == []
    d["data"]["dummy_scans"] = 2
    run = load_dataset(config_from_dict(d)).runs("01", "EN")[0]
    assert run.cleaning["non_steady_state_volumes"] == [0, 1]
    assert np.array_equal(run.confounds[:, 0], (np.arange(N_VOLS) == 0).astype(np.float32))
    assert np.array_equal(run.confounds[:, 1], (np.arange(N_VOLS) == 1).astype(np.float32))


def test_an_implausible_intact_map_gets_a_loud_warning():
    """Aligned everywhere, or more outside the language network than inside: a warning
    naming the likely causes; a map in the network (the demo's planted regions): none."""
    from napari_lesion_align.core.data.bold import VolumeSpace
    from napari_lesion_align.core.analysis.plausibility import alignment_warnings, network_mask

    space = VolumeSpace(demo.MASK_FILE)
    xyz = space.coordinates()
    inside = network_mask(xyz)
    assert 0.05 < inside.mean() < 0.5
    everywhere = np.ones(space.n_features, dtype=bool)
    everywhere[:5] = False
    (w,) = alignment_warnings("EN", space, everywhere)
    assert "WARNING the intact model aligns in" in w and "non-steady-state" in w
    # aligned in the occipital lobe only (y < -80 mm): outside the network
    (w,) = alignment_warnings("EN", space, (xyz[:, 1] < -80) & ~inside)
    assert "outside the language network" in w
    # the demo's planted regions (temporal, angular, inferior frontal): no warning
    planted = np.zeros(space.n_features, dtype=bool)
    for _, centre, radius in demo.REGIONS:
        planted |= np.linalg.norm(xyz - np.asarray(centre), axis=1) < radius
    assert planted.sum() > 100
    assert alignment_warnings("EN", space, planted) == []
    assert alignment_warnings("EN", space, np.zeros(space.n_features, bool)) == []


# --------------------------------------------------------------------------- item 2
def test_sessions_with_different_runs_keep_every_run(tmp_path):
    root = make_tree(tmp_path / "ds", {s: {"01": [1, 2], "02": [3]} for s in ("01", "02")})
    text = bids_mod.init_config(root, tmp_path / "c.toml")
    assert "session =" not in text  # no session guess: it would drop run 3
    assert "#   sub-01: ses-01: runs [1, 2]; ses-02: runs [3]" in text
    d = tomllib.loads(text)
    cfg = config_from_dict(d, base=tmp_path)
    en = cfg.data.languages[0]
    assert en.runs == (1, 2, 3) and en.subject_runs is None
    assert Path(en.bold["02"][2]).name == (f"sub-02_ses-02_task-{TASK}_run-3_space-{MNI}"
                                          "_desc-preproc_bold.nii.gz")
    # choosing a session says which runs it leaves out
    d["languages"]["EN"]["session"] = "01"
    d["languages"]["EN"]["annotations"] = d["languages"]["EN"]["annotations"][:2]
    cfg = config_from_dict(d, base=tmp_path)
    assert cfg.data.languages[0].runs == (1, 2)
    assert any("session = '01' uses runs [1, 2]" in n and "session 02 holds runs [3]" in n
               for n in cfg.data.bids.notes)


def test_sessions_that_repeat_runs_need_a_session(tmp_path):
    root = make_tree(tmp_path / "ds", {"01": {"01": [1, 2], "02": [1, 2]}})
    text = bids_mod.init_config(root, tmp_path / "c.toml")
    assert 'session = "01"  # CHECK: the sessions [\'01\', \'02\'] repeat run numbers' in text
    cfg = config_from_dict(tomllib.loads(text), base=tmp_path)
    assert cfg.data.languages[0].runs == (1, 2)
    assert any("session 02 holds runs [1, 2]" in n for n in cfg.data.bids.notes)


def test_a_missing_run_keeps_the_subjects_other_runs(tmp_path):
    runs_of = {"01": {"": [1, 2, 3]}, "02": {"": [1, 2, 3]}, "03": {"": [1, 3]}}
    root = make_tree(tmp_path / "ds", runs_of)
    text = bids_mod.init_config(root, tmp_path / "c.toml")
    assert "#   sub-03: runs [1, 3] (no run [2]: its other runs are used)" in text
    cfg = config_from_dict(tomllib.loads(text), base=tmp_path)
    en = cfg.data.languages[0]
    assert en.runs == (1, 2, 3) and en.subject_runs == {"03": (1, 3)}
    assert [Path(p).name.split("_space")[0] for p in en.bold["03"]] == [
        f"sub-03_task-{TASK}_run-1", f"sub-03_task-{TASK}_run-3"]
    assert f"EN: sub-03 has no run [2] of task '{TASK}'; its runs [1, 3] are used" in \
        cfg.data.bids.notes
    from napari_lesion_align.core.data.dataset import load_dataset

    ds = load_dataset(cfg)
    assert [r.index for r in ds.runs("03", "EN")] == [0, 2]
    assert [r.cleaning["run"] for r in ds.runs("03", "EN")] == [1, 3]
    assert ds.n_vols("EN") == [N_VOLS] * 3
    # a subject without any of the runs is left out of the language, with a note
    d = tomllib.loads(text)
    d["languages"]["EN"]["runs"] = [2]
    cfg = config_from_dict(d, base=tmp_path)
    assert set(cfg.data.languages[0].bold) == {"01", "02"}
    assert "EN: sub-03 has no run [2] of task 'lppEN'; sub-03 is left out of EN" in \
        cfg.data.bids.notes


# --------------------------------------------------------------------------- item 4
def test_events_tsv_onset_duration_and_trial_type(tmp_path):
    """Offsets are onset + duration: the last word ends at 89.9 s, inside the 45 volumes
    of the run (the next-onset rule gave it 90.1 s: "1 volume missing"); the sentence rows
    are left out by trial_type."""
    from napari_lesion_align.core.data.bold import check_run_length
    from napari_lesion_align.core.data.stimuli import read_events, read_words

    path = tmp_path / f"sub-01_task-{TASK}_run-1_events.tsv"
    table = events_table(1)
    table.to_csv(path, sep="\t", index=False)
    w = read_events(path, keep={"trial_type": ["word"]})
    kept = table[table.trial_type == "word"]
    assert list(w.words) == list(kept.word)
    np.testing.assert_allclose(w.onsets, kept.onset)
    np.testing.assert_allclose(w.offsets, kept.onset + 0.3)
    check_run_length(N_VOLS, float(w.offsets.max()), TR, "run 1", tolerance=0)
    # a words table without offsets: the next onset, the last word the median gap (0.5 s)
    kept[["onset", "word"]].to_csv(tmp_path / "words.tsv", sep="\t", index=False)
    old = read_words(tmp_path / "words.tsv")
    with pytest.raises(LesionAlignError, match="1 missing"):
        check_run_length(N_VOLS, float(old.offsets.max()), TR, "run 1", tolerance=0)
    # without the filter, the sentence rows overlap the words: named, with the fix
    with pytest.raises(LesionAlignError, match=r"\('SENTENCE'\) starts at .*events_filter = "
                                               r"\{trial_type = .*trial_type holds "
                                               r"\['sentence', 'word'\]"):
        read_events(path)
    with pytest.raises(LesionAlignError, match=r"events_filter trial_type = \['words'\]: no "
                                               r"row has this value.*\['sentence', 'word'\]"):
        read_events(path, keep={"trial_type": ["words"]})
    # a n/a duration: up to the next word
    table["duration"] = table["duration"].astype(object)
    table.loc[table.trial_type == "word", "duration"] = "n/a"
    table.to_csv(path, sep="\t", index=False)
    w = read_events(path, keep={"trial_type": "word"})
    np.testing.assert_allclose(w.offsets[:-1], w.onsets[1:])


def test_init_config_finds_events_and_the_config_reads_them(tmp_path):
    root = make_tree(tmp_path / "ds", THREE, name="Le Petit Prince (mini)")
    text = bids_mod.init_config(root, tmp_path / "c.toml")
    assert 'name = "Le-Petit-Prince-mini"' in text
    assert (f'annotations = "ds/sub-01/func/sub-01_task-{TASK}_run-{{run}}_events.tsv"  # BIDS '
            "events.tsv (sub-01's, assumed the same for every subject); CHECK") in text
    assert "events_filter = {trial_type = \"word\"}  # CHECK" in text
    cfg = config_from_dict(tomllib.loads(text), base=tmp_path)
    en = cfg.data.languages[0]
    assert en.events_filter == {"trial_type": ("word",)}
    from napari_lesion_align.core.data.dataset import load_stimuli

    stim = load_stimuli(en)
    assert [len(w) for w in stim.runs] == [(events_table(r).trial_type == "word").sum()
                                           for r in (1, 2, 3)]


# --------------------------------------------------------------------------- smaller
def test_resolutions_and_derivative_roots(tmp_path):
    root = make_tree(tmp_path / "ds", {"01": {"": [1]}}, resolutions=("1", "2"))
    text = bids_mod.init_config(root, tmp_path / "c.toml")
    assert "filters = {res = \"1\"}  # CHECK: found resolutions ['1', '2']" in text
    cfg = config_from_dict(tomllib.loads(text), base=tmp_path)
    assert "_res-1_" in cfg.data.languages[0].bold["01"][0]
    d = tomllib.loads(text)
    d["languages"]["EN"]["filters"] = {"resolution": "2"}  # pybids' long name: the same
    assert "_res-2_" in config_from_dict(d, base=tmp_path).data.languages[0].bold["01"][0]
    d["languages"]["EN"]["filters"] = {"resolutoin": "1"}
    with pytest.raises(LesionAlignError, match=r"unknown entities \['resolutoin'\]") as e:
        config_from_dict(d, base=tmp_path)
    assert "a_comp_cor" not in str(e.value) and "'res'" in str(e.value)
    text = bids_mod.init_config(root / "derivatives" / "fmriprep", tmp_path / "d.toml")
    assert "derivatives = false  # the root is a derivatives dataset" in text
    assert "no derivatives found" not in text


# --------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=260)


def test_a_run_on_a_dataset_as_it_comes(tmp_path, tiny_model, capsys, make_napari_viewer,
                                        qtbot):
    """init-config + run on a tree with a missing run, events.tsv annotations, flagged
    first volumes and no confounds key, one run 5 volumes longer than its annotations:
    the subject with a missing run is fitted on its other runs; result.json and the
    console carry the cleaning record."""
    runs_of = {"01": {"": [1, 2, 3]}, "02": {"": [1, 2, 3]}, "03": {"": [1, 3]}}
    root = make_tree(tmp_path / "ds", runs_of, extra_vols={("02", 3): 5})
    out = tmp_path / "lpp.toml"
    assert cli.main(["init-config", str(root), "--out", str(out)]) == 0
    text = out.read_text().replace('confounds = "simple"', "")
    out.write_text(text + f'\n[model]\nname = "{tiny_model}"\n\n[encoding]\n'
                   "alphas = {logspace = [0, 6, 4]}\n\n[controls]\nshifts = 0\n"
                   "shuffled_words = false\nabove_word_rate = false\n")
    capsys.readouterr()
    assert cli.main(["run", str(out), "--out", str(tmp_path / "res")]) == 0
    console = capsys.readouterr().out
    doc = json.loads((tmp_path / "res" / "result.json").read_text())
    assert doc["config"]["data"]["confounds"] == {"strategy": ["non_steady_state"]}
    fits = doc["fits"]
    assert [r["run"] for r in fits["03/EN"]["cleaning"]] == [1, 3]
    assert [r["run"] for r in fits["01/EN"]["cleaning"]] == [1, 2, 3]
    for unit in ("01/EN", "02/EN", "03/EN"):
        assert all(r["non_steady_state_volumes"] == [0] and r["confound_columns"] == []
                   for r in fits[unit]["cleaning"])
    assert [r["volumes_beyond_annotations"] for r in fits["02/EN"]["cleaning"]] == [0, 0, 5]
    c = doc["cleaning"]
    assert c["runs"] == 8 and c["units"] == 3
    assert c["non_steady_state_volumes"][0] == 8
    assert c["volumes_beyond_annotations"] == [5, ["sub-02 EN run 3: 5"]]
    assert any("sub-03 has no run [2]" in w for w in doc["warnings"])
    assert "cleaning: non-steady-state volumes removed: 8" in console
    assert "cleaning: volumes after the annotations' end (kept): 5 (sub-02 EN run 3: 5)" \
        in console
    assert "sub-03 has no run [2] of task 'lppEN'; its runs [1, 3] are used" in console
    r3 = np.asarray(nib.load(str(tmp_path / "res" /
                                 "sub-03_lang-EN_desc-intact_stat-r_statmap.nii.gz")).dataobj)
    assert np.isfinite(r3).all()
    # the Results dock shows the same record when the folder is opened
    from test_widgets import _dock, _wait_task

    viewer = make_napari_viewer()
    results = _dock(viewer, "Results")
    task = results.open_result(tmp_path / "res")
    _wait_task(qtbot, task, 120_000)
    qtbot.waitUntil(lambda: results.cleaning.text() != "", timeout=60_000)
    shown = results.cleaning.text()
    assert shown.startswith("Cleaning: ") and "non-steady-state volumes removed: 8" in shown
    assert "volumes after the annotations' end (kept): 5" in shown


def test_the_network_matches_real_language_rois_and_a_reliable_map(shared_data):
    """Real data (Le Petit Prince derived maps, skipped when absent): the approximate
    network holds most of the voxels of the 7 left language ROIs, and the voxels whose
    BOLD is most reliable across listeners (the top 5 % of the English inter-subject
    reliability map) do not trigger the warning while their mirror image in the back of
    the brain does."""
    from nilearn.maskers import NiftiMasker

    from napari_lesion_align.core.data.bold import VolumeSpace
    from napari_lesion_align.core.analysis.plausibility import alignment_warnings, network_mask

    root = shared_data / "lpp_fmri_derived"
    if not (root / "isc" / "isc_10trials_en.npy").is_file():
        pytest.skip(f"LPP derived maps not found at {root}; set NLA_SHARED_DATA")
    space = VolumeSpace(str(root / "masks_4mm" / "mask_lpp_en.nii.gz"))
    xyz = space.coordinates()
    inside = network_mask(xyz)
    masker = NiftiMasker(space.mask_img).fit()
    rois = sorted((root / "roi_masks_4mm").glob("*.nii.gz"))
    assert len(rois) == 7
    for roi in rois:
        in_roi = np.ravel(masker.transform(str(roi))) > 0.5
        assert inside[in_roi].mean() > 0.5, roi.name
    isc = np.load(root / "isc" / "isc_10trials_en.npy").mean(axis=0)
    top = isc >= np.quantile(isc, 0.95)
    assert alignment_warnings("EN", space, top) == []
    back = np.zeros_like(top)  # the same number of voxels, at the back of the brain
    back[np.argsort(xyz[:, 1])[: int(top.sum())]] = True
    (w,) = alignment_warnings("EN", space, back)
    assert "outside the language network" in w


def test_the_data_check_pairs_a_subjects_runs_with_their_annotations(tmp_path):
    """The data panel's check (Qt-free) pairs sub-03's runs 1 and 3 with the annotations of
    runs 1 and 3: run 3 is 6 volumes shorter than the others, and so are its words."""
    from napari_lesion_align._widgets._datacheck import check_config

    runs_of = {"01": {"": [1, 2, 3]}, "03": {"": [1, 3]}}
    root = make_tree(tmp_path / "ds", runs_of, extra_vols={("01", 3): -6, ("03", 3): -6})
    for s in runs_of:  # run 3: its words end at 77.9 s, in its 39 volumes
        ev = root / f"sub-{s}/func/sub-{s}_task-{TASK}_run-3_events.tsv"
        t = events_table(3)
        t[t.onset < 77.5].to_csv(ev, sep="\t", index=False)
    cfg = config_from_dict(_cfg(root, length_tolerance_trs=2))
    assert cfg.data.languages[0].subject_runs == {"03": (1, 3)}
    rep = check_config(cfg)
    assert not rep.errors, rep.errors
    assert "    sub-03: volumes 45 / 39" in rep.lines
    # the check still finds a run too short for its words (and names the subject)
    events_table(3).to_csv(root / f"sub-01/func/sub-01_task-{TASK}_run-3_events.tsv",
                           sep="\t", index=False)
    rep = check_config(config_from_dict(_cfg(root, length_tolerance_trs=2)))
    assert any(e.startswith("subject 03, language EN, run 3") and "6 missing" in e
               for e in rep.errors), rep.errors


@pytest.mark.slow
def test_the_demo_raises_no_implausibility_warning(demo_output):
    """The demo's intact maps (signal planted in temporal, angular, inferior frontal and
    right temporo-parietal cortex) align mostly inside the network: no warning."""
    from napari_lesion_align.core.data.bold import VolumeSpace
    from napari_lesion_align.core.analysis.plausibility import alignment_warnings, network_mask

    out, _ = demo_output
    space = VolumeSpace(str(out / "mask.nii.gz"))
    inside = network_mask(space.coordinates())
    m = np.asarray(space.mask_img.dataobj).astype(bool)
    for code in demo.LANGUAGES:
        q = np.asarray(nib.load(str(out / f"group_lang-{code}_desc-intact_stat-q_statmap"
                                           ".nii.gz")).dataobj)[m]
        aligned = np.nan_to_num(q, nan=1.0) < 0.05
        assert aligned.sum() > 100 and aligned[inside].mean() > 3 * aligned[~inside].mean()
        assert alignment_warnings(code, space, aligned) == []


def test_runs_without_a_recorded_position_keep_their_own_order():
    """A source whose runs do not record their position among the language's runs (the
    demo, every subject has every run) pairs run k with the annotations of run k: the
    features of run 1 are never fitted to the BOLD of runs 2 and 3."""
    from napari_lesion_align.core.data.dataset import BoldRun
    from napari_lesion_align.core.run.stages import run_indices
    from napari_lesion_align.core.data.demo import N_RUNS
    from napari_lesion_align.core.run.demo_source import DemoDataset

    class Source:
        def runs(self, subject, code):
            return [BoldRun(f"run-{k}", 10, lambda: None) for k in range(3)]

    assert run_indices(Source(), "01", "EN") == [0, 1, 2]
    demo = DemoDataset.__new__(DemoDataset)  # its runs, without synthesising any data
    demo.subjects, demo.seed, demo.truth = ["01"], 0, None
    assert run_indices(demo, "01", "EN") == list(range(N_RUNS))
