"""Every input a user can give, broken one at a time: one clear line, exit status 2, and the
output folder untouched.

A valid study (one subject, three runs, confounds, a saved lesion; a second one with region
tables) is run once per module into a complete result. Each case breaks ONE input of that
same study in place (the config keeps its paths, so the result folder's analysis identity
still matches where the case does not change the config), copies the complete result into
its ``--out``, runs the command line and checks:

* ``cli.main`` returns 2;
* the error is one line, without a traceback, and names the problem (a distinctive
  substring: the file, the key or the value);
* every file in ``--out`` is byte-identical and none was added or removed (the problem is
  found before the output folder is claimed).

The study is restored (bytes and times) after every case.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_lesion_align import cli
from napari_lesion_align.core.data import demo
from test_pipeline import AFFINE, N_VOLS, SHAPE, write_study
from tiny_models import make_tiny_model

# --------------------------------------------------------------------------- the study


def write_lesion(base: Path, element: str, masks: dict, doc: dict | None = None) -> Path:
    """A saved lesion pair ``base.json`` + ``base.safetensors`` (masks: key -> 0/1 array)."""
    from safetensors.numpy import save_file

    base.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"mask/{k}": np.asarray(v, dtype=np.uint8) for k, v in masks.items()},
              str(base.with_suffix(".safetensors")))
    d = {"format": "napari-lesion-align lesion 1", "element": element, "mode": "zero",
         "spec": {"name": base.name}}
    d.update(doc or {})
    base.with_suffix(".json").write_text(json.dumps(d))
    return base.with_suffix(".json")


def _neurons(block_units: dict, size: int = 64) -> dict:
    out = {}
    for b, idx in block_units.items():
        m = np.zeros(size, dtype=np.uint8)
        m[list(idx)] = 1
        out[f"{b}.neurons"] = m
    return out


def _volume_study(root: Path) -> Path:
    model = make_tiny_model(root / "model", "xlm-roberta", max_positions=130)
    cfg = write_study(root, model, n_subjects=1)
    # run 1's words as a TSV table (the table cases break it), runs 2 and 3 as TextGrids
    from napari_lesion_align.core.data.stimuli import read_words

    w = read_words(root / "stim" / "EN_run-1.TextGrid")
    lines = ["word\tonset\toffset"] + [f"{a}\t{b:.4f}\t{c:.4f}"
                                       for a, b, c in zip(w.words, w.onsets, w.offsets)]
    (root / "stim" / "EN_run-1.tsv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(5)
    for r in (1, 2, 3):
        np.savetxt(root / "sub-01" / f"rp_run-{r}.txt", rng.normal(0, 0.1, (N_VOLS, 6)))
    write_lesion(root / "lesions" / "les", "neurons", _neurons({0: [1, 2, 3]}))
    text = cfg.read_text().replace('"stim/EN_run-1.TextGrid"', '"stim/EN_run-1.tsv"')
    text = text.replace('bold = "sub-{subject}/run-{run}.nii.gz"',
                        'bold = "sub-{subject}/run-{run}.nii.gz"\n'
                        'confounds = "sub-{subject}/rp_run-{run}.txt"')
    text += ('\n[lesions]\nselections = []\nfiles = ["lesions/les.json"]\n'
             'random_control = false\n')
    cfg.write_text(text)
    return cfg


def _region_study(root: Path, model: Path) -> Path:
    from test_pipeline import _word_rate_signal

    root.mkdir(parents=True)
    shutil.copy(demo.DEMO_DIR / "EN_run-1.TextGrid", root / "words.TextGrid")
    sig = _word_rate_signal(root / "words.TextGrid")
    rng = np.random.default_rng(3)
    Y = rng.normal(0, 1, (N_VOLS, 3)) + 50
    Y[:, 0] += 2 * sig
    (root / "rois").mkdir()
    lines = ["LATL\tLPTL\tLIFG"] + ["\t".join(f"{v:.5f}" for v in row) for row in Y]
    (root / "rois" / "sub-01.tsv").write_text("\n".join(lines) + "\n")
    cfg = root / "regions.toml"
    cfg.write_text(f"""
[data]
kind = "regions"
tr = 2.0
subjects = ["01"]
[languages.EN]
annotations = ["words.TextGrid"]
bold = "rois/sub-{{subject}}.tsv"
[model]
name = "{model}"
[encoding]
n_blocks = 4
alphas = [1.0, 100.0, 10000.0]
""")
    return cfg


def _snapshot(root: Path) -> dict:
    """Every file and folder under ``root``: bytes (None for folders) and times."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        snap[p] = (None if p.is_dir() else p.read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
    return snap


def _restore(root: Path, snap: dict) -> None:
    """Put ``root`` back as it was in ``snap`` (removing what a case added or replaced)."""
    for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)):
        kind = None if p.is_symlink() else ("dir" if p.is_dir() else
                                           "file" if p.is_file() else None)
        want = snap.get(p)
        ok = want is not None and ((want[0] is None) == (kind == "dir")) and kind is not None
        if not ok:
            if kind == "dir":
                os.chmod(p, 0o755)
                shutil.rmtree(p)
            else:
                p.unlink()
    for p, (data, _) in snap.items():
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, 0o755)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists() or p.read_bytes() != data:
                p.write_bytes(data)
            os.chmod(p, 0o644)
    for p, (_, times) in sorted(snap.items(), key=lambda kv: -len(kv[0].parts)):
        os.utime(p, ns=times)


def _hashes(out: Path) -> dict:
    if not out.exists():
        return {}
    if out.is_file():
        return {out.name: hashlib.sha256(out.read_bytes()).hexdigest()}
    # every file byte for byte (the lock units/.lock included) and every folder
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(out.rglob("*"))}


class Study:
    """A valid study, its complete result, and a way to break it for one case."""

    def __init__(self, root: Path, cfg: Path, result: Path):
        self.root, self.cfg, self.result = root, cfg, result
        self.snap = _snapshot(root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def config(self, old: str, new: str) -> None:
        """Replace ``old`` by ``new`` in the config text (``old`` must be there)."""
        text = self.cfg.read_text()
        assert old in text, old
        self.cfg.write_text(text.replace(old, new, 1))

    def restore(self) -> None:
        _restore(self.root, self.snap)


@pytest.fixture(scope="module")
def volume_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "study"
    cfg = _volume_study(root)
    result = root.parent / "result"
    assert cli.main(["run", str(cfg), "--out", str(result), "--quiet"]) == 0
    assert (result / "result.json").is_file()
    return Study(root, cfg, result)


@pytest.fixture(scope="module")
def region_study(tmp_path_factory, volume_study):
    root = tmp_path_factory.mktemp("bad-regions") / "study"
    cfg = _region_study(root, volume_study.root / "model")
    result = root.parent / "result"
    assert cli.main(["run", str(cfg), "--out", str(result), "--quiet"]) == 0
    return Study(root, cfg, result)


# --------------------------------------------------------------------------- breakers
def write(rel: str, data) -> callable:
    def f(st: Study):
        p = st.path(rel)
        p.unlink(missing_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return f


def remove(rel: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return f


def fifo(rel: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        p.unlink()
        os.mkfifo(p)
    return f


def link(rel: str, target: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        p.unlink()
        os.symlink(target, p)
    return f


def folder(rel: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        p.unlink()
        p.mkdir()
    return f


def edit(rel: str, old: str, new: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        text = p.read_text()
        assert old in text, old
        p.write_text(text.replace(old, new, 1))
    return f


def config(old: str, new: str) -> callable:
    return lambda st: st.config(old, new)


def both(*fs) -> callable:
    def f(st: Study):
        for g in fs:
            g(st)
    return f


def nifti(rel: str, make) -> callable:
    """Replace a BOLD run by ``make(data) -> image`` of its (x, y, z, t) float32 data."""
    def f(st: Study):
        p = st.path(rel)
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32).copy()
        new = make(data)
        p.unlink()
        nib.save(new, str(p))
    return f


def _nan_volumes(data, n):
    data[..., :n] = np.nan
    return nib.Nifti1Image(data, AFFINE)


def _constant(data):
    return nib.Nifti1Image(np.full_like(data, 100.0), AFFINE)


def _far_away(data):
    aff = AFFINE.copy()
    aff[:3, 3] += 500.0  # 50 cm away: no overlap with the mask
    return nib.Nifti1Image(data, aff)


def _three_d(data):
    return nib.Nifti1Image(data[..., 0], AFFINE)


def _truncated_gz(rel: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        raw = gzip.decompress(p.read_bytes())
        p.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) * 2 // 3])
    return f


def _short(data):
    return nib.Nifti1Image(data[..., :100], AFFINE)


def lesion(element: str, masks: dict, doc: dict | None = None) -> callable:
    def f(st: Study):
        base = st.path("lesions/les")
        write_lesion(base, element, masks, doc)
    return f


def _auto_map(st: Study):
    p = st.path("model/config.json")
    doc = json.loads(p.read_text())
    doc["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    p.write_text(json.dumps(doc))


def _pickled_weights(st: Study):
    """The model's weights as a pytorch_model.bin whose pickle holds more than tensors (an
    object of another class: loading it with weights_only=False would run its code)."""
    import argparse

    import torch
    from safetensors.torch import load_file

    p = st.path("model/model.safetensors")
    tensors = load_file(str(p))
    p.unlink()
    tensors["training_args"] = argparse.Namespace(lr=1e-4)
    torch.save(tensors, str(st.path("model/pytorch_model.bin")))


def _truncate(rel: str) -> callable:
    def f(st: Study):
        p = st.path(rel)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return f


GOOD_TSV = "stim/EN_run-1.tsv"
RUN2 = "sub-01/run-2.nii.gz"
RP2 = "sub-01/rp_run-2.txt"

# (id, breaker, expected substring); the volume study
VOLUME_CASES = [
    # ---- config
    ("config-folder", lambda st: None, "is a folder, not a file (config file)"),
    ("config-empty", lambda st: st.cfg.write_text("  \n"), "the config file is empty"),
    ("config-bad-toml", lambda st: st.cfg.write_text(st.cfg.read_text() + "\n[data\n"),
     "cannot parse the config"),
    ("config-binary", lambda st: st.cfg.write_bytes(b"\xff\xfe\x00garbage\x00"),
     "cannot parse the config"),
    ("config-fifo", lambda st: (st.cfg.unlink(), os.mkfifo(st.cfg)), "named pipe"),
    ("config-tr-string", config("tr = 2.0", 'tr = "2"'), "[data].tr = '2'"),
    ("config-kind", config('kind = "volume"', 'kind = "fmri"'), "[data].kind = 'fmri'"),
    ("config-unknown-language-key", config('text_language = "en"',
                                           'text_language = "en"\nsession = 1'),
     "unknown key(s) ['session']"),
    ("config-unknown-placeholder", config('bold = "sub-{subject}/run-{run}.nii.gz"',
                                          'bold = "sub-{subject}/ses-{session}/run-{run}.nii.gz"'),
     "use the placeholders {subject} and {run}"),
    ("config-annotations-empty", config('annotations = ["stim/EN_run-1.tsv", '
                                        '"stim/EN_run-2.TextGrid", "stim/EN_run-3.TextGrid"]',
                                        "annotations = []"), ".annotations = []"),
    ("config-runs-string", config('text_language = "en"', 'text_language = "en"\nruns = "1,2,3"'),
     "runs = '1,2,3'"),
    ("config-subjects-string", config("subjects = ['01']", 'subjects = "01"'),
     "[data].subjects = '01'"),
    ("config-seed-float", lambda st: st.cfg.write_text("seed = 1.5\n" + st.cfg.read_text()),
     "seed = 1.5"),
    ("config-offline-string", config('layer = -1', 'layer = -1\noffline = "yes"'),
     "[model].offline = 'yes'"),
    ("config-delays-empty", config("[encoding]", "[encoding]\ndelays = []"),
     "[encoding].delays"),
    ("config-score", config("[encoding]", '[encoding]\nscore = "mse"'),
     "[encoding].score = 'mse'"),
    ("config-workers-negative", lambda st: st.cfg.write_text(st.cfg.read_text()
                                                             + "\n[compute]\nworkers = -1\n"),
     "[compute].workers = -1"),
    ("config-lesion-files-string", config('files = ["lesions/les.json"]',
                                          'files = "lesions/les.json"'),
     "[lesions].files = "),
    # ---- annotations
    ("ann-missing", remove(GOOD_TSV), "EN_run-1.tsv: file not found"),
    ("ann-fifo", fifo(GOOD_TSV), "EN_run-1.tsv: is a named pipe"),
    ("ann-folder", folder(GOOD_TSV), "EN_run-1.tsv: is a folder"),
    ("ann-dev-zero", link(GOOD_TSV, "/dev/zero"), "is a character device (a link to '/dev/zero')"),
    ("ann-empty", write(GOOD_TSV, ""), "EN_run-1.tsv: the file is empty"),
    ("ann-no-onset-column", write(GOOD_TSV, "word\tstart_ms\nthe\t0\n"),
     "EN_run-1.tsv: no onset column"),
    ("ann-onset-not-number", edit(GOOD_TSV, "\n", "\nword\tsoon\t3.0\n"),
     "onset 'soon' is not a number"),
    ("ann-decreasing-onsets", lambda st: st.path(GOOD_TSV).write_text(
        "word\tonset\toffset\na\t5.0\t5.5\nb\t1.0\t1.5\n"), "onsets are not in time order"),
    ("ann-ragged-extra", lambda st: st.path(GOOD_TSV).write_text(
        st.path(GOOD_TSV).read_text() + "extra\t300\t301\t9\n"),
     "has 4 fields but the header has 3"),
    ("ann-ragged-missing", lambda st: st.path(GOOD_TSV).write_text(
        st.path(GOOD_TSV).read_text() + "short\t300\n"), "has 2 fields but the header has 3"),
    ("ann-binary", write(GOOD_TSV, bytes(range(256)) * 4), "EN_run-1.tsv"),
    ("ann-latin1", lambda st: st.path(GOOD_TSV).write_bytes(
        st.path(GOOD_TSV).read_bytes().replace(b"\n", "\ncaf\u00e9\t0.5\t0.6\n".encode("latin-1"),
                                               1)), "cannot be decoded as UTF-8"),
    # words without a visible character: named by file, tier / line, interval and time
    ("ann-zero-width-word", edit("stim/EN_run-2.TextGrid", 'text = "thus"', 'text = "\u200b"'),
     "EN_run-2.TextGrid: tier 'TokensAlign', interval [3] (0.5506-0.9806 s): the word "
     "'\\u200b' has no visible character (U+200B ZERO WIDTH SPACE)"),
    ("ann-zero-width-row", lambda st: st.path(GOOD_TSV).write_text(
        st.path(GOOD_TSV).read_text().replace("\n", "\n\ufeff\u200b", 1).replace(
            "\n\ufeff\u200b", "\n\ufeff\u200b\t0\t0.1\n", 1)),
     "EN_run-1.tsv: line 2 (0-0.1 s): the word '\\ufeff\\u200b' has no visible character"),
    ("ann-textgrid-garbage", write("stim/EN_run-2.TextGrid", "File type = \"ooTextFile\"\n"
                                   "Object class = \"TextGrid\"\nxmin = 0\nxmax = \n"),
     "EN_run-2.TextGrid: cannot be parsed as a TextGrid"),
    # ---- BOLD
    ("bold-missing", remove(RUN2), "run-2.nii.gz: file not found"),
    ("bold-fifo", fifo(RUN2), "run-2.nii.gz: is a named pipe"),
    ("bold-dev-zero", link(RUN2, "/dev/zero"), "run-2.nii.gz: is a character device"),
    ("bold-folder", folder(RUN2), "run-2.nii.gz: is a folder"),
    ("bold-not-nifti", write(RUN2, "this is not an image"), "run-2.nii.gz: cannot read as NIfTI"),
    ("bold-truncated-gz", _truncated_gz(RUN2), "run-2.nii.gz: cannot read the image data"),
    ("bold-3d", nifti(RUN2, _three_d), "run-2.nii.gz: a BOLD run must be a 4D image"),
    ("bold-other-space", nifti(RUN2, _far_away), "not in the same space"),
    ("bold-all-nan", nifti(RUN2, lambda d: _nan_volumes(d, d.shape[-1])),
     "run-2.nii.gz: 150 of 150 volumes are NaN"),
    ("bold-mostly-nan", nifti(RUN2, lambda d: _nan_volumes(d, 40)),
     "run-2.nii.gz: 40 of 150 volumes are NaN"),
    ("bold-constant", nifti(RUN2, _constant), "run-2.nii.gz: every voxel/region of the run is "
                                              "constant or NaN"),
    ("bold-too-short", nifti(RUN2, _short), "run 2 (run-2.nii.gz vs EN_run-2.TextGrid)"),
    # ---- mask
    ("mask-missing", remove("mask.nii.gz"), "mask.nii.gz: file not found (brain mask)"),
    ("mask-4d", lambda st: nib.save(nib.Nifti1Image(np.ones(SHAPE + (2,), np.uint8), AFFINE),
                                    str(st.path("mask.nii.gz"))), "the mask must be a 3D image"),
    ("mask-empty", lambda st: nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE),
                                       str(st.path("mask.nii.gz"))), "the mask is empty"),
    # ---- confounds
    ("confounds-missing", remove(RP2), "rp_run-2.txt: file not found (confounds table)"),
    ("confounds-ragged", lambda st: st.path(RP2).write_text(
        st.path(RP2).read_text().replace("\n", "\n1 2 3\n", 1)),
     "rp_run-2.txt: line 2 has 3 whitespace-separated fields but the first row has 6"),
    ("confounds-wrong-length", lambda st: np.savetxt(st.path(RP2), np.zeros((120, 6))),
     "rp_run-2.txt: 120 confound rows"),
    ("confounds-not-numeric", lambda st: st.path(RP2).write_text(
        st.path(RP2).read_text() + "a b c d e f\n"), "'a' is not a number"),
    ("confounds-nan", lambda st: st.path(RP2).write_text(
        "nan " + st.path(RP2).read_text().split(" ", 1)[1]), "confounds must be finite numbers"),
    ("confounds-dev-zero", link(RP2, "/dev/zero"), "rp_run-2.txt: is a character device"),
    # ---- model
    ("model-missing", config('[model]\nname = "', '[model]\nname = "/nonexistent/models/'),
     "does not exist"),
    ("model-is-a-file", lambda st: (shutil.rmtree(st.path("model")),
                                    st.path("model").write_text("x")),
     "is a file, not a model folder"),
    ("model-no-weights", remove("model/model.safetensors"), "the model folder has no weights"),
    ("model-corrupt-weights", _truncate("model/model.safetensors"),
     "model.safetensors: the weights file is damaged"),
    ("model-pickled-weights", _pickled_weights,
     "pytorch_model.bin: pickled weights are refused unless they are plain tensors "
     "(torch.load weights_only=True: nothing in the file was run), and it holds an object of "
     "class argparse.Namespace. Convert the model to safetensors"),
    ("model-weights-fifo", fifo("model/model.safetensors"), "model.safetensors: is a named pipe"),
    ("model-config-garbage", write("model/config.json", "{not json"),
     "config.json: the model's config.json is not valid JSON"),
    ("model-config-no-type", write("model/config.json", "{}"), "names no model_type"),
    ("model-auto-map", _auto_map, "declares code of its own"),
    ("model-no-tokenizer", remove("model/tokenizer.json"),
     "the model folder has no tokenizer"),
    ("model-layer-out-of-range", config("layer = -1", "layer = 7"),
     "[model].layer = 7: the model"),
    # ---- lesion files
    ("lesion-json-missing", remove("lesions/les.json"), "les.json: file not found (lesion file)"),
    ("lesion-masks-missing", remove("lesions/les.safetensors"),
     "les.safetensors: file not found (lesion file)"),
    ("lesion-json-folder", folder("lesions/les.json"), "les.json: is a folder"),
    ("lesion-json-fifo", fifo("lesions/les.json"), "les.json: is a named pipe"),
    ("lesion-json-malformed", write("lesions/les.json", "{\"format\": "),
     "the lesion file is not valid JSON"),
    ("lesion-not-a-lesion", write("lesions/les.json", "{\"a\": 1}"),
     "not a napari-lesion-align lesion file"),
    ("lesion-masks-garbage", write("lesions/les.safetensors", b"\x00" * 64),
     "les.safetensors: cannot read the lesion masks"),
    ("lesion-block-beyond", lesion("neurons", _neurons({5: [1]})),
     "addresses block 5; the model has 2 blocks"),
    ("lesion-wrong-shape", lesion("neurons", {"0.neurons": np.ones(10)}),
     "has shape (10,) but the model needs (64,)"),
    ("lesion-unknown-part", lesion("weights", {"0.zz": np.ones((4, 4))}),
     "the model's blocks have no 'zz'"),
    ("lesion-bad-key", lesion("neurons", {"first.neurons": np.ones(64)}),
     "mask key 'first.neurons' is not '<block>.<part>'"),
    ("lesion-bad-element", lesion("neurons", _neurons({0: [1]}), {"element": "synapses"}),
     "element 'synapses' is not one of"),
    ("lesion-empty", lesion("neurons", _neurons({0: []})), "the lesion ablates nothing"),
    ("lesion-above-layer", both(lesion("neurons", _neurons({1: [1, 2]})),
                                config("layer = -1", "layer = 1")),
     "all at or above the block whose output is the chosen layer"),
    ("lesion-manual-above-layer", both(config("layer = -1", "layer = 1"),
                                       config("random_control = false",
                                              "random_control = false\n[[lesions.manual]]\n"
                                              "name = \"m\"\nelement = \"heads\"\n"
                                              "indices = {1 = [0]}")),
     "[lesions].manual 'm': lesions block(s) [1]"),
    ("lesion-manual-block-beyond", config("random_control = false",
                                          "random_control = false\n[[lesions.manual]]\n"
                                          "name = \"m\"\nelement = \"heads\"\n"
                                          "indices = {4 = [0]}"), "block 4 does not exist"),
    ("lesion-text-fifo", both(lambda st: os.mkfifo(st.path("imp.txt")),
                              config("random_control = false",
                                     'random_control = false\ntext = {EN = "imp.txt"}')),
     "imp.txt: is a named pipe"),
]

REGION_RUN = "rois/sub-01.tsv"

REGION_CASES = [
    ("regions-ragged-row", lambda st: st.path(REGION_RUN).write_text(
        st.path(REGION_RUN).read_text() + "1.0\t2.0\t3.0\t4.0\n"),
     "sub-01.tsv: line 152 has 4 tab-separated fields but the header has 3"),
    ("regions-missing-field", lambda st: st.path(REGION_RUN).write_text(
        st.path(REGION_RUN).read_text().replace("\n", "\n1.0\t2.0\n", 1)),
     "sub-01.tsv: line 2 has 2 tab-separated fields"),
    ("regions-empty-field", lambda st: st.path(REGION_RUN).write_text(
        st.path(REGION_RUN).read_text().replace("\n", "\n1.0\t\t3.0\n", 1)),
     "line 2, column 2: '' is not a number"),
    ("regions-tab-in-name", config('subjects = ["01"]',
                                   'subjects = ["01"]\nroi_names = ["L\\tATL", "LPTL", "LIFG"]'),
     "region name 'L\\tATL' is empty or holds a tab"),
    ("regions-tab-in-csv-header", lambda st: (st.path("rois/sub-01.csv").write_text(
        '"L\tATL",LPTL,LIFG\n' + "\n".join(",".join(line.split("\t")) for line in
                                            st.path(REGION_RUN).read_text().splitlines()[1:])),
        st.config('bold = "rois/sub-{subject}.tsv"', 'bold = "rois/sub-{subject}.csv"')),
     "region name 'L\\tATL'"),
    ("regions-duplicate-names", edit(REGION_RUN, "LATL\tLPTL\tLIFG", "LATL\tLPTL\tLATL"),
     "region name(s) ['LATL'] appear more than once"),
    ("regions-dev-zero", link(REGION_RUN, "/dev/zero"), "sub-01.tsv: is a character device"),
    ("regions-fifo", fifo(REGION_RUN), "sub-01.tsv: is a named pipe"),
    ("regions-not-numeric", edit(REGION_RUN, "\n", "\n1.0\tn/a\t3.0\n"), "'n/a' is not a number"),
    ("regions-all-nan", lambda st: st.path(REGION_RUN).write_text(
        "LATL\tLPTL\tLIFG\n" + "nan\tnan\tnan\n" * N_VOLS), "150 of 150 volumes are NaN"),
    ("regions-names-count", config('subjects = ["01"]',
                                   'subjects = ["01"]\nroi_names = ["A", "B"]'),
     "3 columns but 2 region names"),
]


def _check(study: Study, tmp_path: Path, capsys, breaker, expected: str, out: Path | None = None,
           argv_config: Path | None = None) -> None:
    if out is None:
        out = tmp_path / "out"
        shutil.copytree(study.result, out)
    before = _hashes(out)
    try:
        breaker(study)
        capsys.readouterr()
        code = cli.main(["run", str(argv_config or study.cfg), "--out", str(out), "--quiet"])
        cap = capsys.readouterr()
    finally:
        study.restore()
    text = cap.err + cap.out
    lines = cap.err.strip().splitlines()
    assert code == 2, text
    assert "Traceback" not in text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert expected in lines[0], lines[0]
    assert _hashes(out) == before, "the output folder changed"


@pytest.mark.parametrize("breaker, expected", [c[1:] for c in VOLUME_CASES],
                         ids=[c[0] for c in VOLUME_CASES])
def test_bad_volume_study_input(volume_study, tmp_path, capsys, breaker, expected, request):
    argv = None
    if request.node.callspec.id == "config-folder":
        argv = tmp_path / "config-folder.toml"
        argv.mkdir()
    _check(volume_study, tmp_path, capsys, breaker, expected, argv_config=argv)


@pytest.mark.parametrize("breaker, expected", [c[1:] for c in REGION_CASES],
                         ids=[c[0] for c in REGION_CASES])
def test_bad_region_study_input(region_study, tmp_path, capsys, breaker, expected):
    _check(region_study, tmp_path, capsys, breaker, expected)


# --------------------------------------------------------------------------- output folders
def _out_file(tmp):
    p = tmp / "out.txt"
    p.write_text("my notes")
    return p, "exists and is not a folder"


def _out_foreign(tmp):
    p = tmp / "mine"
    p.mkdir()
    (p / "thesis.tex").write_text("\\section{}")
    return p, "is not empty and holds files of its own"


def _out_unwritable(tmp):
    if os.geteuid() == 0:  # permissions do not stop root: a place nobody can create in
        return Path("/proc/self/napari-lesion-align-out"), "cannot write the output folder"
    p = tmp / "ro"
    p.mkdir()
    os.chmod(p, stat.S_IRUSR | stat.S_IXUSR)
    return p / "out", "cannot write the output folder"


def _out_other_analysis(tmp, study):
    p = tmp / "other"
    shutil.copytree(study.result, p)
    return p, "holds another analysis (differs in encoding.alphas"


def _out_units_of_its_own(tmp):
    p = tmp / "mine"
    (p / "units").mkdir(parents=True)  # a folder of the user's that happens to hold units/
    (p / "units" / "notes.txt").write_text("mine")
    (p / "data.csv").write_text("a,b\n")
    return p, "is not empty and holds files of its own"


def _out_other_analysis_without_lock(tmp, study):
    p, expected = _out_other_analysis(tmp, study)
    (p / "units" / ".lock").unlink()  # e.g. copied without it: no lock file may appear
    return p, expected


@pytest.mark.parametrize("which", ["file", "foreign", "units-of-its-own", "unwritable",
                                   "other-analysis", "other-analysis-no-lock"])
def test_bad_output_folder(volume_study, tmp_path, capsys, which):
    """A refused output folder is left byte-identical, its units/.lock included (no lock
    file or folder appears, none is rewritten)."""
    if which.startswith("other-analysis"):
        out, expected = (_out_other_analysis if which == "other-analysis" else
                         _out_other_analysis_without_lock)(tmp_path, volume_study)
        breaker = config("alphas = {logspace = [0, 6, 7]}", "alphas = {logspace = [0, 5, 6]}")
    else:
        out, expected = {"file": _out_file, "foreign": _out_foreign,
                         "units-of-its-own": _out_units_of_its_own,
                         "unwritable": _out_unwritable}[which](tmp_path)
        breaker = lambda st: None  # noqa: E731 - the inputs are fine; the folder is not
    try:
        _check(volume_study, tmp_path, capsys, breaker, expected, out=out)
    finally:
        if which == "unwritable" and os.geteuid() != 0:
            os.chmod(out.parent, 0o755)
    assert not Path("/proc/self/napari-lesion-align-out").exists()
    if which == "other-analysis-no-lock":
        assert not (out / "units" / ".lock").exists()


def test_a_folder_another_run_writes_into_is_left_as_it_is(volume_study, tmp_path, capsys):
    """Another process holds the folder's lock: the run is refused (naming that process)
    and the lock file keeps its bytes."""
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(volume_study.result, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fh = open(sys.argv[1], 'r+'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
         "fh.seek(0); fh.truncate(); fh.write(str(os.getpid())); fh.flush()\n"
         "print('held', flush=True); time.sleep(120)", str(out / "units" / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _check(volume_study, tmp_path, capsys, lambda st: None,
               f"another run is writing into this folder (process {holder.pid})", out=out)
    finally:
        holder.kill()
        holder.wait()


def test_weights_that_do_not_cover_the_architecture_are_refused(volume_study, tmp_path):
    """transformers fills parameters missing from the weights with random values; the
    package refuses such a folder instead of running a partly random model."""
    from safetensors.numpy import load_file, save_file

    from napari_lesion_align.core.base.errors import LesionAlignError
    from napari_lesion_align.core.model.loading import load_model

    folder = tmp_path / "model"
    shutil.copytree(volume_study.root / "model", folder)
    tensors = load_file(str(folder / "model.safetensors"))
    dropped = sorted(k for k in tensors if "layer.1." in k)
    save_file({k: v for k, v in tensors.items() if k not in dropped},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LesionAlignError, match=r"its weights lack \d+ of the architecture"):
        load_model(str(folder), device="cpu", use_cache=False)


@pytest.mark.parametrize("content", ["object", "garbage"])
def test_pickled_weights_fail_in_one_line_when_loaded(volume_study, tmp_path, content):
    """load_model itself (the one place that reads weights, also without the folder check):
    a pickle that is not plain tensors, or a damaged one, is one line naming the file and
    the fix; nothing in it runs."""
    from napari_lesion_align.core.base.errors import LesionAlignError
    from napari_lesion_align.core.model.loading import load_model

    study = Study(tmp_path / "s", volume_study.cfg, volume_study.result)
    shutil.copytree(volume_study.root / "model", study.path("model"))
    _pickled_weights(study)
    weights = study.path("model/pytorch_model.bin")
    if content == "garbage":
        weights.write_bytes(b"\x80\x02garbage" * 64)
    with pytest.raises(LesionAlignError) as exc:
        load_model(str(study.path("model")), device="cpu", use_cache=False)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{weights}: pickled weights are refused")
    assert msg.endswith("safe_serialization=True), then use that folder.")
    assert ("argparse.Namespace" in msg) == (content == "object")
