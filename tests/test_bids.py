"""BIDS datasets as input (``[data] kind = "bids"``) and ``init-config``, on a miniature
BIDS tree laid out like Le Petit Prince (OpenNeuro ds003643), written here."""

from __future__ import annotations

import json
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
from tiny_models import make_tiny_model

TR = 2.0
N_VOLS = 50  # 100 s; the annotations are the first 90 s of the demo's LPP runs
SHAPE = (4, 4, 4)
AFFINE = np.array([[4.0, 0, 0, -8], [0, 4.0, 0, -8], [0, 0, 4.0, -8], [0, 0, 0, 1]])
MNI = "MNI152NLin2009cAsym"
SUBJECTS = ("01", "02")
TASKS = {"EN": "lppEN", "FR": "lppFR"}
RUNS = (1, 2)
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
#: the voxel of each subject's MNI mask that is outside the brain (the intersection lacks both)
MASK_HOLE = {"01": (0, 0, 0), "02": (3, 3, 3)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """The intersected masks go into a test cache, never the user's."""
    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path / "cache"))


def _words(code: str, run: int) -> pd.DataFrame:
    """The real LPP words of the demo's run ``run`` (CC0), the first 90 s."""
    from napari_lesion_align.core.data.stimuli import read_words

    w = read_words(demo.DEMO_DIR / f"{code}_run-{run}.TextGrid")
    keep = w.offsets <= 90.0
    return pd.DataFrame({"onset": w.onsets[keep], "offset": w.offsets[keep],
                         "word": np.asarray(w.words)[keep]})


def _confounds(rng, n: int, outlier: int | None = None) -> pd.DataFrame:
    """An fMRIPrep confounds table: motion (24 columns), WM / CSF, global signal, cosines,
    framewise displacement, and a non-steady-state outlier column when ``outlier``."""
    cols = {}
    for m in MOTION:
        x = np.cumsum(rng.normal(0, 0.05, n))
        cols[m] = x
        d = np.r_[np.nan, np.diff(x)]
        cols[f"{m}_derivative1"] = d
        cols[f"{m}_power2"] = x ** 2
        cols[f"{m}_derivative1_power2"] = d ** 2
    for c in ("white_matter", "csf", "global_signal"):
        cols[c] = rng.normal(0, 1, n)
    cols["framewise_displacement"] = np.r_[np.nan, np.abs(rng.normal(0, 0.1, n - 1))]
    t = np.arange(n)
    for k in range(2):
        cols[f"cosine{k:02d}"] = np.cos(np.pi * (t + 0.5) * (k + 1) / n)
    if outlier is not None:
        cols["non_steady_state_outlier00"] = (t == outlier).astype(float)
    return pd.DataFrame(cols)


def make_lpp_bids(root: Path, seed: int = 0, annotations: bool = True) -> Path:
    """A miniature ds003643: raw runs, fMRIPrep derivatives in two spaces with brain masks
    and confound tables, word annotations in ``annotation/EN`` (LPP's layout, one
    TextGrid-like table per section) and ``stimuli/`` (BIDS-style names) for FR.

    In every MNI run, voxel (1, 1, 1) is 5 x trans_x plus noise (a planted motion artefact);
    sub-02's first EN run has a non-steady-state first volume.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "Le Petit Prince mini", "BIDSVersion": "1.8.0", "DatasetType": "raw"}))
    for task in TASKS.values():  # top-level sidecar, inherited by every run
        (root / f"task-{task}_bold.json").write_text(json.dumps(
            {"RepetitionTime": TR, "TaskName": task}))
    fmriprep = root / "derivatives" / "fmriprep"
    fmriprep.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep outputs", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    t1w_shape = {"01": (4, 4, 4), "02": (5, 4, 4)}  # subject spaces differ
    for s in SUBJECTS:
        raw, der = root / f"sub-{s}" / "func", fmriprep / f"sub-{s}" / "func"
        raw.mkdir(parents=True)
        der.mkdir(parents=True)
        mni_mask = np.ones(SHAPE, dtype=np.uint8)
        mni_mask[MASK_HOLE[s]] = 0
        for code, task in TASKS.items():
            for r in RUNS:
                stem = f"sub-{s}_task-{task}_run-{r}"
                noise = rng.normal(100, 1, SHAPE + (N_VOLS,)).astype(np.float32)
                nib.save(nib.Nifti1Image(noise, AFFINE), str(raw / f"{stem}_bold.nii.gz"))
                conf = _confounds(rng, N_VOLS, 0 if (s, code, r) == ("02", "EN", 1) else None)
                conf.to_csv(der / f"{stem}_desc-confounds_timeseries.tsv", sep="\t",
                            index=False, na_rep="n/a")
                (der / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
                mni = rng.normal(100, 1, SHAPE + (N_VOLS,)).astype(np.float32)
                mni[1, 1, 1] += 5 * conf["trans_x"].to_numpy(np.float32) / conf["trans_x"].std()
                nib.save(nib.Nifti1Image(mni, AFFINE),
                         str(der / f"{stem}_space-{MNI}_desc-preproc_bold.nii.gz"))
                nib.save(nib.Nifti1Image(mni_mask, AFFINE),
                         str(der / f"{stem}_space-{MNI}_desc-brain_mask.nii.gz"))
                t1 = rng.normal(100, 1, t1w_shape[s] + (N_VOLS,)).astype(np.float32)
                nib.save(nib.Nifti1Image(t1, AFFINE),
                         str(der / f"{stem}_space-T1w_desc-preproc_bold.nii.gz"))
                nib.save(nib.Nifti1Image(np.ones(t1w_shape[s], np.uint8), AFFINE),
                         str(der / f"{stem}_space-T1w_desc-brain_mask.nii.gz"))
    if annotations:
        en = root / "annotation" / "EN"
        en.mkdir(parents=True)
        fr = root / "stimuli"
        fr.mkdir()
        for r in RUNS:
            _words("EN", r).to_csv(en / f"lppEN_section{r}.tsv", sep="\t", index=False)
            _words("FR", r).to_csv(fr / f"task-lppFR_run-{r:02d}_words.tsv", sep="\t",
                                   index=False)
        # an LPP-style extra table without a run number: ignored
        _words("EN", 1).to_csv(en / "lppEN_word_information.csv", index=False)
    return root


@pytest.fixture(scope="module")
def lpp(tmp_path_factory) -> Path:
    return make_lpp_bids(tmp_path_factory.mktemp("bids") / "ds003643")


def _config(root: Path, **data) -> dict:
    return {"data": {"kind": "bids", "root": str(root), "confounds": "simple", **data},
            "languages": {
                "EN": {"task": "lppEN", "space": MNI, "text_language": "en",
                       "annotations": str(root / "annotation/EN/lppEN_section{run}.tsv")},
                "FR": {"task": "lppFR", "space": MNI, "text_language": "fr",
                       "annotations": str(root / "stimuli")}}}


# --------------------------------------------------------------------------- discovery
def test_subjects_runs_confounds_annotations_and_mask_are_found(lpp):
    cfg = config_from_dict(_config(lpp))
    data = cfg.data
    assert data.kind == "volume" and data.tr == TR  # the runs' RepetitionTime (inherited)
    assert data.subjects == SUBJECTS
    assert data.bids.root == str(lpp) and data.bids.derivatives == (
        str(lpp / "derivatives" / "fmriprep"),)
    assert data.confounds == {"denoise_strategy": "simple"}
    der = lpp / "derivatives" / "fmriprep"
    for lang in data.languages:
        task = TASKS[lang.code]
        assert lang.runs == RUNS and lang.bids == {"task": task, "space": MNI}
        assert set(lang.bold) == set(SUBJECTS)
        for s in SUBJECTS:
            assert lang.bold[s] == tuple(
                str(der / f"sub-{s}/func/sub-{s}_task-{task}_run-{r}_space-{MNI}"
                         "_desc-preproc_bold.nii.gz") for r in RUNS)
            assert lang.confounds[s] == tuple(
                str(der / f"sub-{s}/func/sub-{s}_task-{task}_run-{r}"
                         "_desc-confounds_timeseries.tsv") for r in RUNS)
    en, fr = data.languages
    assert [Path(a).name for a in en.annotations] == ["lppEN_section1.tsv",
                                                      "lppEN_section2.tsv"]
    # a folder: files matched by their run number (zero-padded here)
    assert [Path(a).name for a in fr.annotations] == ["task-lppFR_run-01_words.tsv",
                                                      "task-lppFR_run-02_words.tsv"]
    # the mask: the intersection of the subjects' MNI brain masks (each lacks one voxel)
    mask = np.asarray(nib.load(data.mask).dataobj)
    expect = np.ones(SHAPE, dtype=bool)
    for v in MASK_HOLE.values():
        expect[v] = False
    assert mask.shape == SHAPE and np.array_equal(mask > 0, expect)
    np.testing.assert_allclose(nib.load(data.mask).affine, AFFINE)
    assert data.bids.mask == f"the intersection of {len(SUBJECTS) * 4} desc-brain masks"
    # the config is the same that a hand-written volume config gives
    again = config_from_dict(_config(lpp))
    assert again.data.mask == data.mask and again.to_dict() == cfg.to_dict()


def test_listed_subjects_and_runs_restrict_and_raw_runs_without_derivatives(lpp):
    d = _config(lpp, subjects=["02"])
    d["languages"]["EN"]["runs"] = [2]
    d["languages"]["EN"]["annotations"] = str(lpp / "annotation/EN")
    cfg = config_from_dict(d)
    en = cfg.data.languages[0]
    assert cfg.data.subjects == ("02",) and set(en.bold) == {"02"} and en.runs == (2,)
    assert Path(en.annotations[0]).name == "lppEN_section2.tsv"
    # derivatives = false: the raw runs, no space; a mask must then be given
    d = _config(lpp, derivatives=False)
    del d["data"]["confounds"]
    for ld in d["languages"].values():
        del ld["space"]
    with pytest.raises(LesionAlignError, match=r"no brain mask .*set \[data\]\.mask"):
        config_from_dict(d)
    d["data"]["mask"] = str(demo.MASK_FILE)
    cfg = config_from_dict(d)
    assert cfg.data.mask == str(demo.MASK_FILE) and cfg.data.bids.mask == "[data].mask"
    assert cfg.data.languages[0].bold["01"][0] == str(
        lpp / "sub-01/func/sub-01_task-lppEN_run-1_bold.nii.gz")
    assert cfg.data.languages[0].confounds is None


def test_confounds_by_strategy_remove_a_planted_motion_artefact(lpp):
    """nilearn's "simple" strategy picks 24 motion + WM + CSF + cosine columns (not the
    global signal, not FD); a non-steady-state volume becomes a spike regressor; cleaning
    with them removes the motion planted in voxel (1, 1, 1)."""
    from napari_lesion_align.core.data.bold import CleaningOptions, clean_run, read_confounds
    from napari_lesion_align.core.data.dataset import load_dataset

    cfg = config_from_dict(_config(lpp))
    ds = load_dataset(cfg)
    run = ds.runs("01", "EN")[0]
    table = pd.read_csv(run.confounds_source, sep="\t")
    assert run.confounds.shape == (N_VOLS, 24 + 2 + 2)
    # the columns are nilearn's choice: trans_x is one of them, the global signal is not
    tx = table["trans_x"].to_numpy()
    assert max(abs(np.corrcoef(c, tx)[0, 1]) for c in run.confounds.T) > 0.999
    gs = table["global_signal"].to_numpy()
    assert max(abs(np.corrcoef(c, gs)[0, 1]) for c in run.confounds.T) < 0.9
    spiked = ds.runs("02", "EN")[0].confounds
    assert spiked.shape == (N_VOLS, 29)
    assert np.array_equal(spiked[:, -1], (np.arange(N_VOLS) == 0).astype(float))
    # planted truth: the artefact dominates the raw voxel and is gone after cleaning
    Y = run.load()
    coords = np.argwhere(np.asarray(ds.space.mask_img.dataobj) > 0)
    v = int(np.flatnonzero((coords == (1, 1, 1)).all(axis=1))[0])
    assert abs(np.corrcoef(Y[:, v], tx)[0, 1]) > 0.9
    opts = CleaningOptions()
    cleaned = clean_run(Y, TR, opts, run.confounds)
    assert abs(np.corrcoef(cleaned[:, v], tx)[0, 1]) < 0.05
    without = clean_run(Y, TR, opts, None)
    assert abs(np.corrcoef(without[:, v], tx)[0, 1]) > 0.5
    # the same table without a strategy: every column, and the n/a of the derivatives refused
    with pytest.raises(LesionAlignError, match=r"'n/a' is not a number.*fMRIPrep confounds "
                                               r"table: .*\[data\]\.confounds = \"simple\""):
        read_confounds(run.confounds_source, N_VOLS)
    # a table of load_confounds arguments
    basic = read_confounds(run.confounds_source, N_VOLS,
                           strategy={"strategy": ["motion"], "motion": "basic"})
    assert basic.shape == (N_VOLS, 6)


def test_the_same_languages_as_a_hand_written_volume_config(lpp):
    """What kind = "bids" finds is what a volume config listing the files gives: the same
    LanguageData (but the record of the BIDS entities) and the same confounds."""
    from napari_lesion_align.core.data.dataset import load_dataset

    found = config_from_dict(_config(lpp))
    der = lpp / "derivatives" / "fmriprep"
    stem = "sub-{subject}/func/sub-{subject}_task-%s_run-{run}"
    by_hand = {"data": {"kind": "volume", "tr": TR, "mask": found.data.mask,
                        "confounds": "simple"},
               "languages": {code: {
                   "text_language": code.lower(), "runs": list(RUNS),
                   "annotations": list(lang.annotations),
                   "bold": str(der / (stem % task)) + f"_space-{MNI}_desc-preproc_bold.nii.gz",
                   "confounds": str(der / (stem % task)) + "_desc-confounds_timeseries.tsv"}
                   for (code, task), lang in zip(TASKS.items(), found.data.languages)}}
    hand = config_from_dict({**by_hand, "data": {**by_hand["data"],
                                                  "subjects": list(SUBJECTS)}})
    assert [lang.replace(bids=None) for lang in found.data.languages] == \
        list(hand.data.languages)
    a, b = load_dataset(found), load_dataset(hand)
    for key, runs in a.bold.items():
        for ra, rb in zip(runs, b.bold[key]):
            assert ra.source == rb.source and np.array_equal(ra.confounds, rb.confounds)


# --------------------------------------------------------------------------- errors
def test_ambiguous_space_names_the_files_and_the_key(lpp):
    d = _config(lpp)
    del d["languages"]["EN"]["space"]
    with pytest.raises(LesionAlignError) as e:
        config_from_dict(d)
    msg = str(e.value)
    assert msg.startswith(f"sub-01 task-lppEN run 1: 2 BOLD files match (space-{MNI}, "
                          "space-T1w): set [languages.EN].space")
    assert "sub-01_task-lppEN_run-1_space-T1w_desc-preproc_bold.nii.gz" in msg


def test_subject_spaces_are_refused_for_the_intersected_mask(lpp):
    d = _config(lpp)
    d["languages"]["EN"]["space"] = d["languages"]["FR"]["space"] = "T1w"
    with pytest.raises(LesionAlignError, match=r"brain masks are on different grids.*"
                                               r"space-T1w.*set \[data\]\.mask"):
        config_from_dict(d)


def test_missing_files_are_named_with_what_was_found(tmp_path):
    root = make_lpp_bids(tmp_path / "ds", seed=1)
    der = root / "derivatives" / "fmriprep" / "sub-02" / "func"
    d = _config(root)
    # an unknown task lists the tasks
    d["languages"]["EN"]["task"] = "lppCN"
    with pytest.raises(LesionAlignError, match=r"task = 'lppCN': no such task.*"
                                               r"\['lppEN', 'lppFR'\]"):
        config_from_dict(d)
    d["languages"]["EN"]["task"] = "lppEN"
    # a space that does not exist lists the spaces
    d["languages"]["EN"]["space"] = "MNI152NLin6Asym"
    with pytest.raises(LesionAlignError, match=rf"no BOLD run of task 'lppEN' matches .*"
                                               rf"'space': \['{MNI}', 'T1w'\]"):
        config_from_dict(d)
    d["languages"]["EN"]["space"] = MNI
    # a confounds table missing
    (der / "sub-02_task-lppFR_run-2_desc-confounds_timeseries.tsv").unlink()
    with pytest.raises(LesionAlignError, match=r"sub-02 task-lppFR run 2: no confounds table "
                                               r"found; .*\[data\]\.confounds"):
        config_from_dict(d)
    # a run missing in one subject: the subject keeps its other run, with a note
    (der / f"sub-02_task-lppFR_run-2_space-{MNI}_desc-preproc_bold.nii.gz").unlink()
    cfg = config_from_dict(d)
    fr = cfg.data.languages[1]
    assert fr.runs == (1, 2) and fr.subject_runs == {"02": (1,)}
    assert len(fr.bold["02"]) == 1 and len(fr.bold["01"]) == 2
    assert "FR: sub-02 has no run [2] of task 'lppFR'; its runs [1] are used" in \
        cfg.data.bids.notes
    d["languages"]["FR"]["runs"] = [1]
    d["languages"]["FR"]["annotations"] = str(root / "stimuli/task-lppFR_run-{run:02d}_words.tsv")
    assert config_from_dict(d).data.languages[1].runs == (1,)
    # an annotation missing: the folder's files by run number
    (root / "annotation" / "EN" / "lppEN_section2.tsv").unlink()
    d["languages"]["EN"]["annotations"] = str(root / "annotation" / "EN")
    with pytest.raises(LesionAlignError, match=r"\[languages\.EN\]\.annotations: folder .*: no "
                                               r"file for run 2; files by run number: "
                                               r"\{1: \['lppEN_section1\.tsv'\]\}"):
        config_from_dict(d)
    d["languages"]["EN"]["annotations"] = str(root / "annotation/EN/lppEN_section{run}.tsv")
    with pytest.raises(LesionAlignError, match=r"run 2: .*lppEN_section2\.tsv' not found; the "
                                               r"folder holds \['lppEN_section1\.tsv', "
                                               r"'lppEN_word_information\.csv'\]"):
        config_from_dict(d)
    # a TR that contradicts the sidecars; a strategy nilearn does not know
    d["languages"]["EN"]["runs"] = [1]
    assert config_from_dict(d).data.tr == TR
    with pytest.raises(LesionAlignError, match=r"\[data\]\.tr = 1\.5 but the runs' "
                                               r"RepetitionTime is 2\.0 s"):
        config_from_dict({**d, "data": {**d["data"], "tr": 1.5}})
    with pytest.raises(LesionAlignError, match=r"denoise_strategy 'aggressive' is not one of"):
        config_from_dict({**d, "data": {**d["data"], "confounds": "aggressive"}})
    # keys of a volume config are refused with the reason
    d["languages"]["EN"]["bold"] = "x"
    with pytest.raises(LesionAlignError, match=r"unknown key\(s\) \['bold'\] for kind = 'bids'"):
        config_from_dict(d)


def test_a_strategy_whose_columns_are_missing_names_the_table(tmp_path):
    root = make_lpp_bids(tmp_path / "ds", seed=2)
    table = (root / "derivatives/fmriprep/sub-01/func/"
             "sub-01_task-lppEN_run-1_desc-confounds_timeseries.tsv")
    df = pd.read_csv(table, sep="\t").drop(columns=["white_matter", "csf"])
    df.to_csv(table, sep="\t", index=False, na_rep="n/a")
    from napari_lesion_align.core.data.dataset import load_dataset

    cfg = config_from_dict(_config(root))
    with pytest.raises(LesionAlignError, match=r"sub-01_task-lppEN_run-1_desc-confounds_"
                                               r"timeseries\.tsv: nilearn's load_confounds "
                                               r"could not apply"):
        load_dataset(cfg)


# --------------------------------------------------------------------------- init-config
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-xlmr", "xlm-roberta",
                           max_positions=130)


def test_init_config_writes_a_config_that_loads_and_runs(tmp_path, lpp, tiny_model, capsys):
    from napari_lesion_align.core.run.pipeline import run_analysis
    from napari_lesion_align.core.results.result import AlignmentResult

    out = tmp_path / "study" / "lpp.toml"
    assert cli.main(["init-config", str(lpp), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    assert 'kind = "bids"' in text and 'confounds = "simple"' in text
    assert f'space = "{MNI}"  # CHECK: also found [\'T1w\']' in text
    # the annotations found next to the data, as templates with {run}
    assert '/ds003643/annotation/EN/lppEN_section{run}.tsv"  # found next to the data' in text
    assert '/ds003643/stimuli/task-lppFR_run-{run:02d}_words.tsv"  # found' in text
    cfg = load_config(out)  # loads as written
    assert [lang.code for lang in cfg.data.languages] == ["EN", "FR"]
    assert [lang.language_tag for lang in cfg.data.languages] == ["en", "fr"]
    assert cfg.data.subjects == SUBJECTS and cfg.data.tr == TR
    # refuses to overwrite
    assert cli.main(["init-config", str(lpp), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    # ... and runs, with a tiny model and small settings
    with out.open("a") as f:
        f.write(f'\n[model]\nname = "{tiny_model}"\n\n[encoding]\n'
                "alphas = {logspace = [0, 6, 7]}\n")
    cfg = load_config(out)
    res = run_analysis(cfg, tmp_path / "out")
    maps = sorted(p.name for p in (tmp_path / "out").glob("sub-*_desc-intact_stat-r_*"))
    assert maps == [f"sub-{s}_lang-{c}_desc-intact_stat-r_statmap.nii.gz"
                    for s in SUBJECTS for c in ("EN", "FR")]
    r = np.asarray(nib.load(str(tmp_path / "out" / maps[0])).dataobj)
    mask = np.asarray(nib.load(cfg.data.mask).dataobj) > 0
    assert mask.sum() == np.prod(SHAPE) - 2
    assert np.isnan(r[~mask]).all() and np.isfinite(r[mask]).all()
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["config"]["data"]["bids"]["root"] == str(lpp)
    assert doc["config"]["data"]["confounds"] == {"denoise_strategy": "simple"}
    again = AlignmentResult.load(tmp_path / "out")
    np.testing.assert_allclose(again.get("01", "EN"), r[mask])
    np.testing.assert_allclose(res.get("01", "EN"), r[mask])
    # the noise ceiling ([statistics] ceiling, on by default) of a BIDS input: the subjects
    # heard the same runs, so each language has its ceiling maps and r / ceiling beside r
    # (NaN where the ceiling is not reliably above 0: here noise, so nearly everywhere)
    for c in ("EN", "FR"):
        for stat in ("ceiling", "isc", "qceiling", "normr"):
            f = tmp_path / "out" / f"group_lang-{c}_desc-intact_stat-{stat}_statmap.nii.gz"
            assert f.is_file(), f.name
        ceiling = np.asarray(nib.load(str(tmp_path / "out" / f"group_lang-{c}_desc-intact_"
                                                              "stat-ceiling_statmap.nii.gz")).dataobj)
        assert np.isfinite(ceiling[mask]).all() and np.isnan(ceiling[~mask]).all()
    assert not any("noise ceiling skipped" in w for w in doc.get("warnings", []))


def test_init_config_without_annotations_marks_what_to_fill_in(tmp_path):
    root = make_lpp_bids(tmp_path / "ds", seed=3, annotations=False)
    out = tmp_path / "cfg.toml"
    bids_mod.write_init_config(root, out)
    text = out.read_text()
    assert text.count('annotations = ""  # FILL IN') == 2
    with pytest.raises(LesionAlignError, match=r"\[languages\.EN\]\.annotations: the word "
                                               r"annotations of task 'lppEN' \(runs \[1, 2\]\) "
                                               r"are not set"):
        load_config(out)
    # filled in by hand: a folder for EN, a template for FR
    ann = tmp_path / "words"
    ann.mkdir()
    for r in RUNS:
        _words("EN", r).to_csv(ann / f"EN_{r}.tsv", sep="\t", index=False)
        _words("FR", r).to_csv(ann / f"french-run{r}.tsv", sep="\t", index=False)
    lines = text.splitlines()
    en = next(i for i, ln in enumerate(lines) if ln.startswith("annotations"))
    lines[en] = 'annotations = "words/EN_{run}.tsv"'
    fr = next(i for i, ln in enumerate(lines) if ln.startswith("annotations") and i != en)
    lines[fr] = 'annotations = "words/french-run{run}.tsv"'
    out.write_text("\n".join(lines))
    cfg = load_config(out)
    assert [Path(a).name for a in cfg.data.languages[1].annotations] == ["french-run1.tsv",
                                                                         "french-run2.tsv"]


def test_init_config_on_a_derivatives_root(tmp_path, lpp):
    """The root may be the derivatives folder itself; its annotations are looked for next
    to the raw dataset it belongs to."""
    out = tmp_path / "d.toml"
    text = bids_mod.init_config(lpp / "derivatives" / "fmriprep", out)
    assert "derivatives = false" in text
    # no sidecar with RepetitionTime in the derivatives: the TR is to be filled in
    assert "tr = 2.0  # FILL IN" in text
    cfg = config_from_dict(__import__("tomllib").loads(text), base=tmp_path)
    assert cfg.data.languages[0].bold["01"][0].startswith(str(lpp / "derivatives" / "fmriprep"))
    assert cfg.data.languages[0].confounds is not None
