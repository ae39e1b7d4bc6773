"""Loading models: code shipped with a model folder never runs; hub ids from the local
Hugging Face cache load offline; folders and ids that are neither give a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.model.loading import load_model
from tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "xlm-roberta",
                           max_positions=64)


def _custom_code_folder(root: Path, tiny: Path, marker: Path) -> Path:
    """A model folder whose config declares code of its own; running that code would
    create ``marker``."""
    folder = root / "custom"
    shutil.copytree(tiny, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                       "AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import XLMRobertaConfig as EvilConfig, XLMRobertaModel as EvilModel\n")
    return folder


def test_a_model_folder_with_code_of_its_own_is_refused_and_its_code_never_runs(tmp_path,
                                                                              tiny):
    marker = tmp_path / "the-code-ran"
    folder = _custom_code_folder(tmp_path, tiny, marker)
    with pytest.raises(LesionAlignError, match=r"declares code of its own.*never runs code"):
        load_model(str(folder), device="cpu", use_cache=False)
    assert not marker.exists()
    # also from the command line with a terminal on standard input (transformers would ask
    # there whether to run the code): refused without a question, the code never runs
    import pty

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nkind = "demo"\n[model]\nname = {json.dumps(str(folder))}\n')
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-m", "napari_lesion_align.cli", "run", str(cfg),
                           "--out", str(tmp_path / "out"), "--quiet"], stdin=slave,
                          capture_output=True, text=True, env=env, timeout=300)
    os.close(master)
    os.close(slave)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "declares code of its own" in lines[0]
    assert not marker.exists()


def _hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face hub cache holding ``folder`` as ``repo_id`` (its on-disk layout)."""
    cache = root / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    snap = repo / "snapshots" / rev
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return cache


def test_a_hub_id_in_the_local_cache_loads_offline(tmp_path, tiny, monkeypatch):
    from huggingface_hub import constants

    cache = _hub_cache(tmp_path, "somelab/tiny-xlmr", tiny)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lm = load_model("somelab/tiny-xlmr", offline=True, device="cpu", use_cache=False)
    assert lm.source == "somelab/tiny-xlmr" and lm.n_layers == 2
    direct = load_model(str(tiny), offline=True, device="cpu", use_cache=False)
    assert lm.weights_hash == direct.weights_hash
    # an id that is not in the cache: one message that says both what was tried and the fix
    with pytest.raises(LesionAlignError, match=r"not a local folder, nor in the local "
                                               r"Hugging Face cache.*offline"):
        load_model("somelab/not-there", offline=True, device="cpu", use_cache=False)


def test_folders_that_are_not_models_say_so(tmp_path):
    with pytest.raises(LesionAlignError, match="does not exist"):
        load_model(str(tmp_path / "nope"), device="cpu", use_cache=False)
    with pytest.raises(LesionAlignError, match="does not exist"):
        load_model("./models/nope", device="cpu", use_cache=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LesionAlignError, match="not a complete Hugging Face model"):
        load_model(str(empty), device="cpu", use_cache=False)


def test_labels_must_match_in_full():
    from napari_lesion_align.core.base.io import check_label

    assert check_label("01", "subject") == "01"
    for bad in ("01\n", "0 1", "01/..", ""):
        with pytest.raises(LesionAlignError, match="letters and digits"):
            check_label(bad, "subject")
