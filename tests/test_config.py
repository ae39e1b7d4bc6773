"""Config files: parsing, defaults, path templates and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesion_align.core.run.config import config_from_dict, demo_config, load_config
from napari_lesion_align.core.base.errors import LesionAlignError

MINIMAL = """
name = "t"
[data]
kind = "volume"
tr = 2.0
mask = "mask.nii.gz"
subjects = ["01", "02"]

[languages.EN]
text_language = "en"
annotations = ["stim/EN_run-1.TextGrid", "stim/EN_run-2.TextGrid"]
bold = "sub-{subject}/run-{run}.nii.gz"
"""


def test_minimal_config_defaults_and_paths(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text(MINIMAL)
    cfg = load_config(p)
    assert cfg.model.name == "builtin:multilingual-e5-small-q4" and cfg.model.layer == -1
    np.testing.assert_allclose(cfg.encoding.alphas, np.logspace(0, 19, 20))
    assert cfg.encoding.delays == (1, 2, 3, 4) and cfg.encoding.downsample == "floor"
    assert cfg.features.max_context_tokens == 500
    (en,) = cfg.data.languages
    assert en.runs == (1, 2)
    assert en.annotations[0] == str(tmp_path / "stim/EN_run-1.TextGrid")
    assert en.bold["02"] == (str(tmp_path / "sub-02/run-1.nii.gz"),
                             str(tmp_path / "sub-02/run-2.nii.gz"))
    assert cfg.data.mask == str(tmp_path / "mask.nii.gz")
    assert cfg.languages == ["EN"] and not en.spaceless
    assert cfg.to_dict()["data"]["tr"] == 2.0


def test_tables_logspace_and_multirun_table(tmp_path):
    d = {
        "data": {"kind": "regions", "tr": 2.0},
        "encoding": {"alphas": {"logspace": [0, 3, 4]}, "score": "r"},
        "languages": {"ZH": {"text_language": "zh", "annotations": "zh.tsv", "runs": [1, 2],
                              "bold": {"s1": ["a.txt", "b.txt"]}}},
    }
    cfg = config_from_dict(d, base=tmp_path)
    assert cfg.encoding.alphas == (1.0, 10.0, 100.0, 1000.0)
    (zh,) = cfg.data.languages
    assert zh.spaceless and zh.annotations == (str(tmp_path / "zh.tsv"),) * 2
    assert cfg.data.subjects == ("s1",)


def test_glob_template_must_match_one_file(tmp_path):
    (tmp_path / "s18-rp_a.txt").write_text("0")
    d = {"data": {"kind": "regions", "tr": 2.0, "subjects": ["18"]},
         "languages": {"EN": {"annotations": ["x.TextGrid"], "bold": "s{subject}.txt",
                              "confounds": "s{subject}-rp_*.txt"}}}
    cfg = config_from_dict(d, base=tmp_path)
    assert cfg.data.languages[0].confounds["18"] == (str(tmp_path / "s18-rp_a.txt"),)
    (tmp_path / "s18-rp_b.txt").write_text("0")
    with pytest.raises(LesionAlignError, match="matches 2 files"):
        config_from_dict(d, base=tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["model"].update(layr=3), r"\[model\]\.layr: unknown key; allowed: \["),
    (lambda d: d["encoding"].update(downsample="cubic"),
     r"\[encoding\]\.downsample = 'cubic': Input should be 'floor' or 'lanczos'"),
    (lambda d: d["data"].pop("mask"), "mask is required"),
    (lambda d: d["data"].update(tr=0), r"\[data\]\.tr = 0: Input should be greater than 0"),
    (lambda d: d["languages"]["EN"].update(bold={"01": ["only-one.nii"]}), "1 files for 2 runs"),
    (lambda d: d.update(extra={}), "unknown section"),
    (lambda d: d["encoding"].update(alphas=[1, -2]), r"\[encoding\]\.alphas\[1\] = -2"),
    (lambda d: d["languages"]["EN"].update(bold="sub-{subj}.nii"), "placeholders"),
    (lambda d: d.update(lesions={"sweep": True, "sweep_element": "weights"}),
     r"\[lesions\]\.sweep_element = 'weights': Input should be 'neurons', 'heads', 'hidden' "
     r"or 'layers'"),
    (lambda d: d.update(lesions={"alpha": 5}), r"\[lesions\]\.alpha = 5"),
    (lambda d: d.update(lesions={"min_relative_drop": 1.5}), r"min_relative_drop = 1.5"),
    (lambda d: d["encoding"].update(stack_mb=-1), r"\[encoding\]\.stack_mb = -1"),
    # wrong types are refused when the file is read, naming the key, the value, the fix
    (lambda d: d.update(lesions={"random_control": "no"}),
     r"\[lesions\]\.random_control = 'no': .*valid boolean.*true or false"),
    (lambda d: d.update(lesions={"selections": "shared"}),
     r"\[lesions\]\.selections = 'shared': .*list"),
    (lambda d: d.update(lesions={"selections": ["shred"]}),
     r"\[lesions\]\.selections\[0\] = 'shred': use 'shared' or 'specific:<LANGUAGE>'"),
    (lambda d: d["model"].update(layer="last"), r"\[model\]\.layer = 'last': .*whole number"),
    (lambda d: d["model"].update(layer=1.5), r"\[model\]\.layer = 1.5"),
    (lambda d: d["model"].update(device="gpu"), r"\[model\]\.device = 'gpu': use 'auto'"),
    (lambda d: d["encoding"].update(backend="cuda"),
     r"\[encoding\]\.backend = 'cuda': Input should be 'auto', 'numpy' or 'torch'"),
    (lambda d: d["encoding"].update(delays="1,2"), r"\[encoding\]\.delays = '1,2'"),
    (lambda d: d["encoding"].update(n_blocks="5"), r"\[encoding\]\.n_blocks = '5'"),
    (lambda d: d.update(cleaning={"detrend": 1}), r"\[cleaning\]\.detrend = 1"),
    (lambda d: d.update(features={"stride_tokens": "128"}),
     r"\[features\]\.stride_tokens = '128'"),
    (lambda d: d.update(lesions={"k_percent": "1%"}), r"\[lesions\]\.k_percent = '1%'"),
    (lambda d: d.update(lesions={"element": "hidden"}),
     r"\[lesions\]\.element = 'hidden': .*\[\[lesions\.manual\]\]"),
    (lambda d: d.update(lesions={"method": "lape"}), "element = 'neurons'"),
    (lambda d: d.update(lesions={"selections": ["specific:FR"]}), "names no configured language"),
    (lambda d: d.update(lesions={"selections": ["specific:EN"]}), "at least two languages"),
    (lambda d: d.update(lesions={"selections": []}), "makes no lesion"),
    (lambda d: d.update(lesions={"manual": [{"element": "hidden", "indices": {}}]}),
     r"\[lesions\]\.manual\[0\].*at least one block"),
    (lambda d: d.update(lesions={"manual": [{"element": "layers", "indices": {"0": [1]}}]}),
     "lists stay empty"),
    (lambda d: d.update(lesions={"manual": [{"element": "weights", "indices": {"0": [1]}}]}),
     r"\[lesions\]\.manual\[0\]\.element = 'weights'"),
    (lambda d: d["data"].update(subjects=["0_1"]), "letters and digits"),
    (lambda d: d["languages"]["EN"].update(text_language="klingonish"),
     r"\[languages\.EN\]\.text_language.*klingonish"),
    (lambda d: d["languages"]["EN"].update(bold_start_s="20"),
     r"\[languages\.EN\]\.bold_start_s = '20'"),
])
def test_bad_values_give_one_clear_error(mutate, message):
    d = {"data": {"kind": "volume", "tr": 2.0, "mask": "m.nii.gz", "subjects": ["01"]},
         "model": {}, "encoding": {},
         "languages": {"EN": {"annotations": ["a.TextGrid", "b.TextGrid"],
                              "bold": "sub-{subject}_run-{run}.nii.gz"}}}
    mutate(d)
    with pytest.raises(LesionAlignError, match=message):
        config_from_dict(d)


def test_unparseable_file_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[data\nkind=")
    with pytest.raises(LesionAlignError, match="broken.toml: cannot parse"):
        load_config(p)
    with pytest.raises(LesionAlignError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_demo_config():
    cfg = demo_config(n_subjects=3, seed=4)
    assert cfg.data.kind == "demo" and cfg.data.demo.n_subjects == 3 and cfg.seed == 4
    assert cfg.languages == ["EN", "FR", "ZH"]


def test_a_demo_config_file_runs_the_demo_command_analysis(tmp_path):
    """One source for the demo's recipe: the demo command's config and a file with
    kind = "demo" are the same analysis (features, alphas, lesions, category rule)."""
    from napari_lesion_align.core.run.store import identity
    from napari_lesion_align.core.data.demo import RECIPE

    p = tmp_path / "demo.toml"
    p.write_text('name = "demo"\n[data]\nkind = "demo"\n[lesions]\nenabled = true\n')
    from_file = load_config(p)
    command = demo_config(lesions=True)
    assert identity(from_file)["fits"] == identity(command)["fits"]
    assert from_file.lesions == command.lesions
    assert from_file.features.stride_tokens == RECIPE["features"]["stride_tokens"] == 256
    assert len(from_file.encoding.alphas) == 9
    assert from_file.lesions.min_relative_drop == RECIPE["lesions"]["min_relative_drop"]
    # the file's own keys win over the recipe, key by key
    p.write_text('[data]\nkind = "demo"\n[encoding]\nalphas = [1.0, 10.0]\n')
    own = load_config(p)
    assert own.encoding.alphas == (1.0, 10.0) and own.features.stride_tokens == 256
    assert not own.lesions.enabled


def test_config_errors_name_the_file(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text('[data]\nkind = "demo"\n[lesions]\nrandom_control = "no"\n')
    with pytest.raises(LesionAlignError, match=r"study\.toml: \[lesions\]\.random_control"):
        load_config(p)


def test_manual_lesions_and_sweeps_are_config_keys():
    cfg = demo_config(lesions={"selections": [], "sweep": True, "sweep_element": "heads",
                               "manual": [{"name": "mine", "element": "hidden",
                                           "indices": {"0": [1, 2], "3": [5]}},
                                          {"name": "blocks", "element": "layers",
                                           "indices": {"1": []}}]})
    (m, b) = cfg.lesions.manual
    assert (m.name, m.element, m.indices) == ("mine", "hidden", {0: (1, 2), 3: (5,)})
    assert b.indices == {1: ()} and cfg.lesions.selections == ()
    assert cfg.lesions.sweep and cfg.lesions.sweep_element == "heads"


@pytest.mark.parametrize("tag", ["zh", "zh-CN", "zh-Hans", "cmn", "Chinese", "ja", "jpn",
                                 "tha"])
def test_one_rule_for_spaceless_text(tag):
    d = {"data": {"kind": "regions", "tr": 2.0},
         "languages": {"CN": {"text_language": tag, "annotations": ["a.tsv"],
                              "bold": {"s1": ["b.txt"]}}}}
    (lang,) = config_from_dict(d).data.languages
    assert lang.spaceless


def test_language_code_without_text_language_must_be_known():
    d = {"data": {"kind": "regions", "tr": 2.0},
         "languages": {"CN": {"annotations": ["a.tsv"], "bold": {"s1": ["b.txt"]}}}}
    with pytest.raises(LesionAlignError, match=r"\[languages\.CN\]\.text_language.*'CN'.*zh"):
        config_from_dict(d)
    d["languages"]["CN"]["text_language"] = "zh"
    assert config_from_dict(d).data.languages[0].spaceless


def test_demo_config_lesions_dict_replaces_the_recipe_key_by_key():
    from napari_lesion_align.core.data.demo import DEMO_MIN_RELATIVE_DROP

    les = demo_config(lesions=True).lesions
    assert les.enabled and les.k_percent == 1.0 and les.min_relative_drop == DEMO_MIN_RELATIVE_DROP
    les = demo_config(lesions={"k_percent": 2.5, "element": "heads"}).lesions
    assert (les.k_percent, les.element, les.method) == (2.5, "heads", "wanda")
    assert les.min_relative_drop == DEMO_MIN_RELATIVE_DROP
    assert not demo_config().lesions.enabled


def test_widget_demo_config_uses_the_demo_category_rule():
    from napari_lesion_align._widgets._state import Session
    from napari_lesion_align.core.data.demo import DEMO_MIN_RELATIVE_DROP

    s = Session()
    assert s.build_config().lesions.min_relative_drop == DEMO_MIN_RELATIVE_DROP
    s.set_model(s.model, dict(s.lesions, min_relative_drop=0.3))
    assert s.build_config().lesions.min_relative_drop == 0.3


def test_the_demo_recipe_names_its_files_not_where_the_package_lies(tmp_path, monkeypatch):
    """A demo result's recorded config (and the identity a resume compares) names the demo's
    annotation files by file name: the same demo, installed elsewhere, is the same analysis;
    the files read are still the package's own."""
    import json

    import shutil
    from pathlib import Path

    from napari_lesion_align.core.run.store import identity
    from napari_lesion_align.core.data import demo as demo_mod

    cfg = demo_config()
    text = json.dumps(cfg.to_dict())
    assert str(demo_mod.DEMO_DIR) not in text
    langs = cfg.to_dict()["data"]["languages"]
    assert [a for lang in langs for a in lang["annotations"]][:2] == [
        "demo:EN_run-1.TextGrid", "demo:EN_run-2.TextGrid"]
    assert Path(cfg.data.languages[0].annotations[0]).is_file()
    # a user's files keep their full paths
    user = cfg.data.model_copy(update={"kind": "volume"})
    assert str(demo_mod.DEMO_DIR) in json.dumps(user.model_dump(mode="json"))
    # the package installed in another place: another path, the same analysis
    moved = tmp_path / "site-packages" / "demo"
    shutil.copytree(demo_mod.DEMO_DIR, moved)
    monkeypatch.setattr(demo_mod, "DEMO_DIR", moved)
    elsewhere = demo_config()
    assert elsewhere.data.languages[0].annotations[0].startswith(str(moved))
    assert identity(elsewhere)["fits"] == identity(cfg)["fits"]
