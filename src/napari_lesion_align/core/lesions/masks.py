"""Lesions: which model elements to ablate, applied reversibly and exactly.

A :class:`Lesion` holds masks keyed by block and part, independent of one model's
parameter names (``"3.q"`` is the query projection of block 3, see
:mod:`.anatomy`). In memory every mask is an :class:`IndexMask`: the sorted flat indices of
its ablated entries (int32 below 2**31 entries) and its shape, so a lesion of a fraction
``f`` of a model's P weights takes ``4 f P`` bytes (a 1 % lesion of a 7B model: ~0.26 GB,
not the 6.5 GB of one boolean per weight); boolean tensors given to :class:`Lesion` are
converted:

* ``weights``: ``"<block>.<role>"`` -> mask of the weight matrix (roles q, k, v, o,
  ffn_gate, ffn_up, ffn_down, or qkv where one projection holds the three; never
  embeddings, norms or the LM head);
* ``neurons``: ``"<block>.neurons"`` -> mask of the FFN intermediate units;
* ``heads``: ``"<block>.heads"`` -> mask of the attention heads;
* ``hidden``: ``"<block>.hidden"`` -> mask of the block's output dimensions;
* ``layers``: ``"<block>.layer"`` -> a one-element mask: the whole block is skipped (its
  output is its input: the residual stream passes through).

:func:`apply_lesion` is a context manager: on entry it zeroes the elements (or sets them to
their mean), on exit -- normal, exception or cancel -- it restores the model bit for bit.
Weight edits save the original values of exactly the edited entries; unit lesions use
forward hooks that are removed on exit.

A lesion is an artefact users share: :meth:`Lesion.save` writes ``<name>.safetensors``
(the masks) and ``<name>.json`` (the spec: model hash, element, method, k, languages,
seed, ...). Masks are stored compactly, per mask whichever is smaller: its bits packed
eight to a byte (``bits/<key>``, :func:`numpy.packbits`, little bit order) or the flat
indices of its ablated entries (``idx/<key>``, int32, int64 past 2**31 entries), with
its shape (``shape/<key>``). A lesion of a model with P weights takes at most P/8 bytes
plus a header. Files of the first format (one uint8 per entry, ``mask/<key>``) still
load.

Applying a weight lesion keeps only the original values of the zeroed entries (never a
copy of a whole tensor or of a boolean mask on the model's device); restoring writes them
back bit for bit, whatever the dtype (float32, bfloat16, float16).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError
from ..base.io import read_text, regular_file
from ..model.anatomy import Anatomy, describe_model
from .vocabulary import ELEMENTS, MODES, UNIT_PART, top_k_count, unit_count
from ..base import io as _io
from ..base.io import atomic_write_text


FORMAT_V1 = "napari-lesion-align lesion 1"
FORMAT = "napari-lesion-align lesion 2"


def _index_dtype(n: int):
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    return torch.int32 if n < 2**31 else torch.int64


class IndexMask:
    """A boolean mask held as the sorted, unique flat indices of its ``True`` entries
    (row-major, as ``mask.reshape(-1)``) and its shape.

    What the lesion code asks of a mask: :attr:`shape`, :meth:`numel`, :meth:`sum` (the
    number of entries set, an int), :meth:`any`, :meth:`to_bool` (the boolean tensor, for
    small masks or one tensor at a time), ``==`` (same shape, same entries), ``&`` / ``|``
    (intersection / union, on the indices), :attr:`nbytes` (what it holds in memory).
    """

    __slots__ = ("indices", "shape")

    def __init__(self, indices, shape):
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        self.shape = tuple(int(d) for d in shape)
        idx = torch.as_tensor(indices).reshape(-1)
        self.indices = idx.to(_index_dtype(self.numel()))

    @classmethod
    def of(cls, mask) -> "IndexMask":
        """``mask`` as an IndexMask (a boolean tensor / array is converted, an IndexMask
        returned as is)."""
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        if isinstance(mask, IndexMask):
            return mask
        m = torch.as_tensor(mask).detach()
        if m.dtype != torch.bool:
            m = m != 0
        flat = m.reshape(-1).cpu().numpy()
        return cls(torch.from_numpy(np.flatnonzero(flat)), tuple(m.shape))

    @classmethod
    def from_indices(cls, indices, shape) -> "IndexMask":
        """From flat indices in any order, repeats allowed (sorted and made unique)."""
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        idx = torch.as_tensor(indices).reshape(-1).to(torch.int64)
        if idx.numel() > 1:
            idx = torch.unique(idx, sorted=True)
        return cls(idx, shape)

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.indices.numel() * self.indices.element_size())

    def sum(self) -> int:
        return int(self.indices.numel())

    def any(self) -> bool:
        return self.indices.numel() > 0

    def to_bool(self):
        """The boolean tensor of this shape (one byte per entry)."""
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        flat = torch.zeros(self.numel(), dtype=torch.bool)
        flat[self.indices.to(torch.int64)] = True
        return flat.view(self.shape)

    def flat_indices(self, device=None):
        """The indices as int64 (what ``index_select`` / ``index_copy_`` take), on
        ``device``."""
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        return self.indices.to(device=device, dtype=torch.int64)

    def _same_shape(self, other: "IndexMask") -> None:
        if self.shape != other.shape:
            raise LesionAlignError(f"masks of shapes {self.shape} and {other.shape} cannot "
                                   "be combined")

    def __and__(self, other) -> "IndexMask":
        other = IndexMask.of(other)
        self._same_shape(other)
        both = np.intersect1d(self.indices.numpy(), other.indices.numpy(), assume_unique=True)
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        return IndexMask(torch.from_numpy(both), self.shape)

    def __or__(self, other) -> "IndexMask":
        other = IndexMask.of(other)
        self._same_shape(other)
        either = np.union1d(self.indices.numpy(), other.indices.numpy())
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        return IndexMask(torch.from_numpy(either), self.shape)

    def __eq__(self, other) -> bool:
        if not isinstance(other, IndexMask):
            return NotImplemented
        return self.shape == other.shape and bool(
            self.indices.numel() == other.indices.numel()
            and (self.indices.numel() == 0
                 or bool((self.indices.to(other.indices.dtype) == other.indices).all())))

    __hash__ = None

    def __repr__(self) -> str:
        return f"IndexMask({self.sum()} of {self.numel()} entries, shape {self.shape})"


def pack_mask(mask) -> tuple[str, "object"]:
    """``("bits", uint8 tensor)`` or ``("idx", int32/int64 tensor)`` of a mask (an
    :class:`IndexMask` or a boolean tensor), whichever is smaller (see the module
    docstring)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    m = IndexMask.of(mask)
    n, count = m.numel(), m.sum()
    idx_size = 4 if n < 2**31 else 8
    if count * idx_size < (n + 7) // 8:
        return "idx", m.indices.to(torch.int32 if idx_size == 4 else torch.int64)
    bits = np.packbits(m.to_bool().reshape(-1).numpy(), bitorder="little")
    return "bits", torch.from_numpy(bits)


def unpack_mask(kind: str, data, shape: tuple, where="lesion") -> IndexMask:
    """The :class:`IndexMask` of shape ``shape`` from :func:`pack_mask`'s ``(kind, data)``."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    n = int(np.prod(shape, dtype=np.int64))
    if kind == "bits":
        arr = data.numpy().astype(np.uint8, copy=False)
        if arr.ndim != 1 or arr.size != (n + 7) // 8:
            raise LesionAlignError(f"{where}: packed mask of {arr.size} bytes does not hold "
                                   f"shape {shape}; save the lesion again")
        flat = np.unpackbits(arr, count=n, bitorder="little")
        return IndexMask(torch.from_numpy(np.flatnonzero(flat)), shape)
    idx = data.to(torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise LesionAlignError(f"{where}: mask indices outside shape {shape}; save the lesion "
                               "again")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        return IndexMask.from_indices(idx, shape)
    return IndexMask(idx, shape)


@dataclass
class Lesion:
    """Masks of the elements to ablate, and how they were chosen."""

    element: str
    masks: dict  # key -> IndexMask (boolean tensors given are converted; see module docstring)
    spec: dict = field(default_factory=dict)
    mode: str = "zero"
    means: dict = field(default_factory=dict)  # key -> tensor of replacement values (mean mode)

    def __post_init__(self):
        self.masks = {k: IndexMask.of(m) for k, m in self.masks.items()}
        if self.element not in ELEMENTS:
            raise LesionAlignError(f"unknown lesion element {self.element!r}; use one of {ELEMENTS}")
        if self.mode not in MODES:
            raise LesionAlignError(f"unknown ablation mode {self.mode!r}; use 'zero' or 'mean'")

    @property
    def name(self) -> str:
        return self.spec.get("name", "lesion")

    @property
    def n_elements(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def per_layer(self) -> dict[int, int]:
        """Number of ablated elements per block."""
        out: dict[int, int] = {}
        for key, m in self.masks.items():
            b = int(key.split(".")[0])
            out[b] = out.get(b, 0) + int(m.sum())
        return dict(sorted(out.items()))

    @property
    def nbytes(self) -> int:
        """Bytes the masks hold in memory (the indices of the ablated entries)."""
        return sum(m.nbytes for m in self.masks.values())

    @property
    def first_layer(self) -> int:
        """The lowest block the lesion touches: hidden states below it are unchanged."""
        touched = [b for b, n in self.per_layer().items() if n > 0]
        return min(touched) if touched else 10**9

    # ------------------------------------------------------------------ io
    def save(self, path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` (masks, and means in mean mode) and ``path.json``
        (the folder is created when missing)."""
        from safetensors.torch import save_file

        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        import torch

        tensors = {}
        for k, m in self.masks.items():
            kind, data = pack_mask(m)
            tensors[f"{kind}/{k}"] = data.contiguous()
            tensors[f"shape/{k}"] = torch.tensor([int(d) for d in m.shape], dtype=torch.int64)
        tensors.update({f"mean/{k}": v.detach().cpu().contiguous()
                        for k, v in self.means.items()})
        st = base.with_name(base.name + ".safetensors")
        js = base.with_name(base.name + ".json")
        tmp = st.with_name("." + st.name + ".tmp")
        save_file(tensors, str(tmp))
        try:
            _io.atomic_write_bytes(st, tmp.read_bytes())
        finally:
            tmp.unlink(missing_ok=True)
        doc = {"format": FORMAT, "element": self.element,
               "mode": self.mode, "n_elements": self.n_elements,
               "per_layer": {str(k): v for k, v in self.per_layer().items()}, "spec": self.spec}
        atomic_write_text(js, json.dumps(doc, indent=2))
        return st, js

    @classmethod
    def load(cls, path) -> "Lesion":
        from safetensors import safe_open

        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        js = base.with_name(base.name + ".json")
        st = base.with_name(base.name + ".safetensors")

        fix = "a lesion is a .json + .safetensors pair written by Lesion.save"
        text = read_text(js, "lesion file", fix)
        regular_file(st, "lesion file", fix)
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise LesionAlignError(f"{js}: the lesion file is not valid JSON ({err}); "
                                   "save the lesion again") from err
        if not isinstance(doc, dict) or doc.get("format") not in (FORMAT_V1, FORMAT):
            raise LesionAlignError(f"{js}: not a napari-lesion-align lesion file (no "
                                   f"'format': '{FORMAT}')")
        try:
            with safe_open(str(st), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - any failure: a damaged file
            raise LesionAlignError(f"{st}: cannot read the lesion masks ({err}); save the "
                                   "lesion again") from err
        element, mode, spec = doc.get("element"), doc.get("mode", "zero"), doc.get("spec", {})
        if element not in ELEMENTS:
            raise LesionAlignError(f"{js}: element {element!r} is not one of {ELEMENTS}")
        if mode not in MODES:
            raise LesionAlignError(f"{js}: mode {mode!r} is not one of {MODES}")
        if not isinstance(spec, dict):
            raise LesionAlignError(f"{js}: 'spec' must be a JSON object")
        masks = {k[5:]: v.bool() for k, v in tensors.items() if k.startswith("mask/")}
        for name, v in tensors.items():
            kind, _, key = name.partition("/")
            if kind not in ("bits", "idx"):
                continue
            shape = tensors.get(f"shape/{key}")
            if shape is None or shape.dim() != 1 or bool((shape < 0).any()):
                raise LesionAlignError(f"{st}: mask {key!r} has no valid shape "
                                       f"('shape/{key}'); save the lesion again")
            shape = tuple(int(d) for d in shape.tolist())
            masks[key] = unpack_mask(kind, v, shape, str(st))
        means = {k[5:]: v for k, v in tensors.items() if k.startswith("mean/")}
        unknown = sorted(k for k in tensors
                         if not k.startswith(("mask/", "mean/", "bits/", "idx/", "shape/")))
        if unknown or not masks:
            raise LesionAlignError(f"{st}: not lesion masks (tensors {sorted(tensors)[:5]}; "
                                   "a lesion holds 'mask/<block>.<part>' tensors)")
        for k in masks:
            _parse_key(k, st)
        return cls(element, masks, spec, mode, means)


# --------------------------------------------------------------------------- apply
def _parse_key(key: str, where="lesion") -> tuple[int, str]:
    b, _, part = key.partition(".")
    if not b.isdigit() or not part:
        raise LesionAlignError(f"{where}: mask key {key!r} is not '<block>.<part>' (e.g. "
                               "'3.q', '0.neurons')")
    return int(b), part


def check_fits(lesion: Lesion, anatomy: Anatomy) -> None:
    """Raise a clear error when the lesion's masks do not fit the model."""
    n = len(anatomy.blocks)
    for key, m in lesion.masks.items():
        b, part = _parse_key(key)
        if not 0 <= b < n:
            raise LesionAlignError(f"lesion {lesion.name!r} addresses block {b}; the model "
                                   f"has {n} blocks (0..{n - 1}): the lesion was made for "
                                   "another model")
        blk = anatomy.blocks[b]
        if lesion.element == "weights":
            if part not in blk.linears:
                raise LesionAlignError(f"lesion key {key!r}: the model's blocks have no {part!r}")
            shape = tuple(anatomy.module(blk.linears[part]).weight.shape)
        else:
            element = {v: k for k, v in UNIT_PART.items()}.get(part)
            if element is None or element != lesion.element:
                raise LesionAlignError(f"lesion key {key!r}: not a {lesion.element} mask")
            shape = (blk.n_heads,) if element == "heads" else (unit_count(anatomy, element),)
        if tuple(m.shape) != shape:
            raise LesionAlignError(
                f"lesion key {key!r} has shape {tuple(m.shape)} but the model needs {shape}: "
                "the lesion was made for another model"
            )


@contextmanager
def apply_lesion(model, lesion: Lesion | None, anatomy: Anatomy | None = None):
    """Ablate ``lesion`` inside the ``with`` block; restore the model exactly on exit.

    ``lesion=None`` is the intact model (a no-op), so callers can treat all conditions alike.
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    if lesion is None:
        yield model
        return
    anatomy = anatomy or describe_model(model)
    check_fits(lesion, anatomy)
    saved = []  # (parameter, mask, original values of the masked entries)
    hooks = []
    try:
        with torch.no_grad():
            for key, mask in lesion.masks.items():  # IndexMasks (Lesion converts its masks)
                if not mask.any():
                    continue
                b, part = _parse_key(key)
                blk = anatomy.blocks[b]
                if lesion.element == "weights":
                    W = anatomy.module(blk.linears[part]).weight
                    flat, idx = _flat_entries(W, mask)
                    orig = flat.index_select(0, idx)  # a copy of the masked entries only
                    saved.append((W, mask, orig))
                    if lesion.mode == "mean":
                        value = (W.mean() if key not in lesion.means
                                 else lesion.means[key].to(W))
                        if value.numel() == idx.numel() and value.dim() > 0:
                            flat.index_copy_(0, idx, value.reshape(-1))
                        else:
                            flat.index_fill_(0, idx, value.reshape(()))
                    else:
                        flat.index_fill_(0, idx, 0)
                    del flat, idx
                elif lesion.element in ("neurons", "heads"):
                    target = anatomy.module(blk.linears["ffn_down" if part == "neurons" else "o"])
                    cols = mask.to_bool().to(target.weight.device)
                    if part == "heads":
                        cols = cols.repeat_interleave(blk.head_dim)
                    value = _mean_for(lesion, key)
                    hooks.append(target.register_forward_pre_hook(_input_hook(cols, value)))
                elif lesion.element == "hidden":
                    value = _mean_for(lesion, key)
                    block = anatomy.module(blk.name)
                    # prepend: run before transformers' own output-capturing hooks, so that
                    # output_hidden_states reports the lesioned output
                    hooks.append(block.register_forward_hook(_output_hook(mask.to_bool(), value),
                                                             prepend=True))
                elif lesion.element == "layers":
                    block = anatomy.module(blk.name)
                    hooks.append(block.register_forward_hook(_skip_hook(), with_kwargs=True,
                                                             prepend=True))
        yield model
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for W, mask, orig in reversed(saved):
                flat, idx = _flat_entries(W, mask)
                flat.index_copy_(0, idx, orig)


def _flat_entries(W, mask):
    """``(W viewed flat, flat int64 indices of the IndexMask's entries on W's device)``:
    the entries are addressed by index, one tensor at a time (no boolean copy)."""
    if not W.is_contiguous():  # never for a Linear weight
        raise LesionAlignError("internal: lesioned weights must be contiguous tensors")
    return W.data.view(-1), mask.flat_indices(W.device)


def _mean_for(lesion: Lesion, key: str):
    """The replacement values of a unit lesion: None (zero) or the mean activations."""
    if lesion.mode != "mean":
        return None
    if key not in lesion.means:
        raise LesionAlignError(
            f"lesion {lesion.name!r} is a mean-ablation but has no mean activations for "
            f"{key!r}; compute them with importance.mean_activations (the pipeline does this "
            "from the importance text)"
        )
    return lesion.means[key]


def _replace(x, mask, value):
    x = x.clone()
    m = mask.to(x.device)
    if value is None:
        x[..., m] = 0
    else:
        x[..., m] = value.to(x)[m] if value.shape == m.shape else value.to(x)
    return x


def _input_hook(mask, value):
    def hook(module, args):
        return (_replace(args[0], mask, value),) + tuple(args[1:])
    return hook


def _output_hook(mask, value):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (_replace(output[0], mask, value),) + tuple(output[1:])
        return _replace(output, mask, value)
    return hook


def _skip_hook():
    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(output, tuple):
            return (x,) + tuple(output[1:])
        return x
    return hook


def random_like(lesion: Lesion, anatomy: Anatomy, seed: int, name: str | None = None) -> Lesion:
    """The size-matched random control: the same number of elements per mask, drawn at random
    (per mask, in key order, the first n of a seeded ``torch.randperm`` of its entries)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    g = torch.Generator().manual_seed(int(seed))
    masks = {}
    for key, m in lesion.masks.items():
        n = m.sum()
        idx = torch.empty(0, dtype=torch.int64)
        if n:
            idx = torch.sort(torch.randperm(m.numel(), generator=g)[:n]).values
        masks[key] = IndexMask(idx, m.shape)
    spec = dict(lesion.spec)
    spec.update(selection="random", matched_to=lesion.name, seed=int(seed),
                name=name or f"{lesion.name}-random")
    return Lesion(lesion.element, masks, spec, lesion.mode, dict(lesion.means))


def top_k_mask(scores, k_percent: float) -> IndexMask:
    """The top ``k_percent`` % entries of ``scores`` (at least one if k > 0), as an
    :class:`IndexMask`."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    flat = scores.reshape(-1)
    n = top_k_count(flat.numel(), k_percent)
    idx = torch.empty(0, dtype=torch.int64)
    if n:
        idx = torch.sort(torch.topk(flat.float(), n, sorted=False).indices).values
    return IndexMask(idx, tuple(scores.shape))


def percentile_rank(x):
    """Percentile rank (0..1] of every entry within its tensor (ties share the mean rank)."""
    from scipy.stats import rankdata

    arr = np.asarray(x.detach().float().cpu().numpy()).reshape(-1)
    r = rankdata(arr, method="average") / arr.size
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    return torch.from_numpy(r.astype(np.float32)).view(x.shape)
