"""Importance of model elements per language, and the selections built from it.

Scores (per language, from text in that language):

* :func:`wanda_scores` -- ``|W_ij| * ||x_j||`` with ``||x_j||`` the root-mean-square input
  activation of input feature ``j`` over the language's tokens (gradient-free; works for
  any model, including encoders without a language-modelling head; the default);
* :func:`gradxweight_scores` -- ``(sum over samples of dLoss/dW) * W`` (the paper), with a
  causal-LM loss for decoders or a masked-LM loss where the model has an MLM head;
* :func:`lape_probabilities` -- per FFN neuron, the probability that its activation is
  positive (LAPE, Tang et al. 2024).

All weight scores are keyed ``"<block>.<role>"`` like lesion masks, so scores computed on a
model with a language-modelling head apply to the same model loaded without it.

Selections (:func:`select`): ``shared`` (sum over languages of ``|I_L|``, top k % per
tensor), ``specific:<L>`` (the paper's rank method: percentile rank of ``|I_L|`` within
the tensor minus the largest percentile rank among the other languages, top k % per
tensor), ``random`` (see :func:`.lesions.random_like`) and ``manual`` (explicit indices; a
layer sweep is one manual lesion per block, :class:`.plan.LesionPlan`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..base.errors import Cancelled, LesionAlignError
from ..model.anatomy import Anatomy, BlockForwards, describe_model
from .masks import IndexMask, Lesion, percentile_rank, top_k_mask
from .scores import ScoreStore
from .vocabulary import UNIT_ELEMENTS, UNIT_PART, top_k_count, unit_count
from ..features.extraction import model_capacity, special_tokens
from ..model.loading import load_options_of, loading_kwargs, refuse_remote_code
from ..model.loading import resolve_dtype


# --------------------------------------------------------------------------- text batches
def text_batches(tokenizer, texts: Sequence[str], capacity: int, max_tokens: int = 20000,
                 batch_size: int = 8):
    """Token windows of a language's text: lists of equal-length id lists (no padding)."""
    pre, post = special_tokens(tokenizer)
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if not ids:
        raise LesionAlignError("no text to score importance on: give text in every language")
    wins = [pre + ids[i : i + capacity] + post for i in range(0, len(ids), capacity)]
    full = [w for w in wins if len(w) == len(wins[0])]
    rest = [w for w in wins if len(w) != len(wins[0])]
    for i in range(0, len(full), batch_size):
        yield full[i : i + batch_size]
    for w in rest:
        yield [w]


def _capacity(model, tokenizer) -> int:
    return min(model_capacity(model, tokenizer), 510)


def _feed(model, tokenizer, texts, capacity: int, max_tokens: int, hooks: list,
          cancel=None) -> int:
    """Run ``texts`` through ``model`` (no gradients) while ``hooks`` observe it; the hooks
    are removed afterwards, also on error or cancel. Returns the tokens fed."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    fed = 0
    try:
        with torch.inference_mode():
            for batch in text_batches(tokenizer, texts, capacity, max_tokens):
                if cancel is not None and cancel():
                    raise Cancelled()
                ids = torch.tensor(batch, device=model.get_input_embeddings().weight.device)
                model(input_ids=ids)
                fed += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return fed


# --------------------------------------------------------------------------- scores
def wanda_scores(model, tokenizer, texts_by_language: dict, anatomy: Anatomy | None = None,
                 max_tokens: int = 20000, progress=None, cancel=None,
                 store: ScoreStore | None = None):
    """{language: {"<block>.<role>": |W| * rms input}} for every lesionable weight.

    ``store``: a :class:`.scores.ScoreStore` that receives each tensor's scores as soon as
    they are made (and is returned); on disk, no language's scores are held whole."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    anatomy = anatomy or describe_model(model)
    targets = {f"{b.index}.{r}": anatomy.module(n) for b in anatomy.blocks
               for r, n in b.linears.items()}
    cap = _capacity(model, tokenizer)
    sink = store if store is not None else ScoreStore()  # in memory unless the caller's
    for li, (lang, texts) in enumerate(texts_by_language.items()):
        sumsq = {k: torch.zeros(m.in_features, dtype=_sum_dtype(m.weight.device),
                                device=m.weight.device) for k, m in targets.items()}

        def make_hook(key):
            def hook(module, args):  # a running sum: no activation is kept
                x = args[0].detach().to(sumsq[key].dtype)
                sumsq[key] += (x * x).reshape(-1, x.shape[-1]).sum(0)
            return hook

        hooks = [m.register_forward_pre_hook(make_hook(k)) for k, m in targets.items()]
        count = _feed(model, tokenizer, texts, cap, max_tokens, hooks, cancel)
        rms = {k: torch.sqrt(v.cpu().double() / max(count, 1)).float()
               for k, v in sumsq.items()}
        for k in targets:
            sink.put(lang, k, targets[k].weight.detach().abs().float().cpu() * rms[k][None, :])
        del rms
        if progress is not None:
            progress((li + 1) / len(texts_by_language), f"importance (wanda): {lang}")
    return _scores_out(sink, store)


def _scores_out(sink: ScoreStore, store: ScoreStore | None):
    """What a score function returns: the caller's store, or ``{language: {key: tensor}}``
    from the in-memory store it used."""
    return store if store is not None else {lang: dict(sink[lang]) for lang in sink}


def _sum_dtype(device):
    """float64 running sums where the device has them (not on Apple's MPS)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    return torch.float32 if getattr(device, "type", str(device)) == "mps" else torch.float64


def load_lm_head_model(source: str, device: str = "cpu", dtype=None, device_map=None,
                       share: bool = True):
    """The same weights with a language-modelling head: causal LM, else masked LM.

    ``dtype`` / ``device_map``: as the feature model of ``source`` on ``device`` was loaded
    by :func:`.model.load_model` when not given (float32 on one device otherwise).
    ``share``: when that feature model is loaded (same dtype, one device), the head model
    is built around it (its blocks are the feature model's, only the head's own weights
    are read from the folder): no second copy of the model; else the whole model is
    loaded again.
    Raises a clear error when the model has neither head (e.g. an embedding model such as
    the built-in multilingual-e5-small): use the gradient-free ``wanda`` method instead.
    """
    # reason: transformers loads where a model is loaded (start-up without it)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    opts = load_options_of(source, device)
    if dtype is not None:
        opts["dtype"] = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    if device_map is not None:
        opts["device_map"] = device_map or None
    kw = loading_kwargs(opts["dtype"], device, opts["device_map"], opts["low_cpu_mem_usage"])
    base = opts["model"]
    if (not share or base is None or opts["device_map"] or not Path(source).is_dir()
            or base.get_input_embeddings().weight.dtype != opts["dtype"]):
        base = None

    if Path(source).is_dir():
        refuse_remote_code(source)
    cfg = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    for cls, tag in ((AutoModelForCausalLM, "CausalLM"), (AutoModelForMaskedLM, "MaskedLM")):
        if tag not in archs and not (tag == "MaskedLM" and "ForPreTraining" in archs):
            continue
        kind = "causal" if tag == "CausalLM" else "masked"
        if base is not None:
            head = _head_around(cls, cfg, base, Path(source), opts["dtype"])
            if head is not None:
                return head, kind
        try:
            m, info = cls.from_pretrained(source, local_files_only=True, trust_remote_code=False,
                                          output_loading_info=True, **kw)
        except (ValueError, OSError):
            continue
        missing = [k for k in info.get("missing_keys", []) if "head" in k or "lm_head" in k]
        if missing:
            continue
        if "device_map" not in kw:
            m = m.to(device)
        return m, kind
    raise LesionAlignError(
        f"model {source!r} has no language-modelling head (architectures: {archs or 'unknown'}), "
        "so gradient x weight importance has no loss to differentiate; use method = 'wanda' "
        "(gradient-free) or a model saved with its LM head"
    )


def _head_around(cls, cfg, base, folder: Path, dtype):
    """``cls`` (a ``*ForCausalLM`` / ``*ForMaskedLM``) built on the meta device with the
    loaded ``base`` model as its body; the head's own tensors read from the folder's
    safetensors (tied ones tied). None when the folder's weights do not name every head
    tensor, or the architecture does not hold its body as ``base_model_prefix``."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            head = cls.from_config(cfg, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - any failure: load the whole model instead
        return None
    prefix = getattr(head, "base_model_prefix", "")
    if not prefix or type(getattr(head, prefix, None)) is not type(base):
        return None
    setattr(head, prefix, base)
    if getattr(cfg, "tie_word_embeddings", False):
        head.tie_weights()
    todo = [(n, t, True) for n, t in head.named_parameters() if t.is_meta]
    todo += [(n, t, False) for n, t in head.named_buffers() if t.is_meta]
    where = _safetensors_index(folder)
    if where is None or any(n not in where for n, _, _ in todo):
        return None
    device = base.get_input_embeddings().weight.device
    for name, old, is_param in todo:
        with safe_open(str(folder / where[name]), "pt") as f:
            t = f.get_tensor(name)
        if t.is_floating_point():
            t = t.to(dtype)
        mod_name, _, attr = name.rpartition(".")
        mod = head.get_submodule(mod_name)
        if is_param:
            mod._parameters[attr] = torch.nn.Parameter(t.to(device), requires_grad=True)
        else:
            mod._buffers[attr] = t.to(device)
    if getattr(cfg, "tie_word_embeddings", False):
        head.tie_weights()
    if any(t.is_meta for t in list(head.parameters()) + list(head.buffers())):
        return None
    return head.eval()


def _safetensors_index(folder: Path) -> dict | None:
    """{tensor name: file} of a folder's safetensors weights (one file or an index)."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text()).get("weight_map", {}))
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {k: single.name for k in f.keys()}


#: windows per gradient pass at most (the batches of :func:`text_batches`)
GRAD_BATCH_WINDOWS = 8
#: the share of the device's memory (what is left of it after the model and the
#: accumulators) that one gradient pass' activations may take
GRAD_MEMORY_SHARE = 0.25
#: the most one gradient pass' activations may take, as a share of the model's own size:
#: with the model and one float32 accumulator per weight, the peak stays within
#: 2 x the model + the accumulators (the memory aim of docs/benchmarks.md)
GRAD_MODEL_SHARE = 0.5
#: bytes of float32 logits (and their gradient) computed at once by the causal-LM loss
LOSS_CHUNK_BYTES = 64 * 2**20


def grad_bytes_per_token(model, anatomy: Anatomy | None = None) -> int:
    """Bytes a token of a gradient pass holds (the estimate of
    :func:`importance_batch_tokens`)."""
    anatomy = anatomy or describe_model(model)
    hidden, ffn = anatomy.hidden_size, anatomy.intermediate_size
    size = model.get_input_embeddings().weight.element_size()
    return int((len(anatomy.blocks) * hidden
                + 4 * (4 * hidden + 3 * ffn + anatomy.n_heads * 512)) * max(size, 4))


def importance_batch_tokens(model, accumulate_on: str = "auto") -> int:
    """Tokens per gradient pass (the windows of one batch, padding included) when none is
    given: the one owner of this default.

    A gradient pass (blocks recomputed, see :func:`gradxweight_scores`) keeps every
    block's input and one block's activations and their gradients: about
    ``(blocks x hidden + 4 x (4 x hidden + 3 x FFN + heads x 512)) x max(bytes per value,
    4)`` per token (one block's: the estimate of :func:`.features.default_batch_tokens`;
    the factor 4 from Qwen2-0.5B in float32 on the CPU, which took 0.46 MB per further
    token of a pass, ``benchmarks/models.py``). The budget is the smaller of
    :data:`GRAD_MEMORY_SHARE` of the device's *total* memory (GPU memory, or the machine's
    RAM on the CPU) less the model and the float32 accumulators held there (where
    :func:`_accumulator_devices` would put them), and :data:`GRAD_MODEL_SHARE` of the
    model's own size (so the peak stays within 2 x the model + the accumulators); at least
    one window, at most :data:`GRAD_BATCH_WINDOWS` windows of the model's window length.
    (The scores are the mean over windows whatever the batches: budgets change the
    memory and the speed, the scores only to float rounding.)
    """
    import os

    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    p = model.get_input_embeddings().weight
    cfg = model.config
    anatomy = describe_model(model)
    per_token = grad_bytes_per_token(model, anatomy)
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    lesionable = sum(anatomy.module(n).weight.numel() for b in anatomy.blocks
                     for n in b.linears.values())
    if p.device.type == "cuda":
        total = torch.cuda.get_device_properties(p.device).total_memory
        # where _accumulator_devices puts them, judged on the total memory
        on_device = accumulate_on == "device" or (
            accumulate_on == "auto" and 4 * lesionable <= 0.5 * (total - params))
        acc = 4 * lesionable if on_device else 0
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        acc = 4 * lesionable
    window = min(int(getattr(cfg, "max_position_embeddings", 512) or 512), 512)
    budget = int(min(GRAD_MEMORY_SHARE * max(total - params - acc, 0),
                     GRAD_MODEL_SHARE * params) // per_token)
    return int(min(max(budget, window), GRAD_BATCH_WINDOWS * window))


def gradxweight_scores(source: str, tokenizer, texts_by_language: dict, device: str = "cpu",
                       max_tokens: int = 20000, seed: int = 0, progress=None,
                       cancel=None, head_model=None, accumulate_on: str = "auto",
                       batch_size: int = GRAD_BATCH_WINDOWS,
                       max_batch_tokens: int | None = None, recompute: bool = True,
                       store: ScoreStore | None = None):
    """{language: {"<block>.<role>": (mean over windows of dLoss/dW) * W}} (signed).

    ``head_model``: ``(model, kind)`` from :func:`load_lm_head_model` when already loaded.
    ``batch_size`` windows and at most ``max_batch_tokens`` tokens per gradient pass
    (``None``: :func:`importance_batch_tokens`; one window always makes a pass).
    ``recompute``: keep only each block's input for the backward pass and run the block
    forward again when its gradient is computed (activation checkpointing, one block at a
    time): the activations of a pass shrink from every block's to one block's, for one
    more forward pass; the gradients are the same (the same operations on the same
    values).

    A causal-LM loss is computed on the hidden states of the last block in chunks of
    tokens (:data:`LOSS_CHUNK_BYTES` of float32 logits at a time, never the logits of a
    whole window over the vocabulary); its gradient reaches the blocks in one backward
    pass. It equals the model's own loss (the mean next-token cross-entropy) up to float
    rounding; models whose logits are not the LM head of the last hidden state (e.g.
    soft-capped or scaled logits) use the model's own loss.

    Streamed: only the lesionable weights require gradients, and each one's gradient is
    folded into a float32 accumulator (the sum over batches) by a hook that runs as soon
    as it is computed during the backward pass (``register_post_accumulate_grad_hook``),
    which then frees the gradient; so the memory is the model, the activations of one
    batch (with ``recompute``: the blocks' inputs and one block's activations) and one
    accumulator per lesionable weight (``accumulate_on``: ``"auto"`` = on the weight's
    device when the accumulators fit in half of the free GPU memory, else in CPU memory;
    or ``"cpu"`` / ``"device"``), never a full set of gradients. The scores equal the
    gradient summed by autograd over the batches (each batch's mean loss times its
    windows), divided by the number of windows, times the weight (in float32 bit for bit,
    or to rounding where the loss is computed in chunks of tokens: the same additions, in
    another order). The windows have equal lengths (:func:`text_batches`; the last, shorter
    one makes a batch alone), so the score is the mean over windows whatever the batches
    (the token budget): machines with other budgets agree to float rounding.

    ``store``: a :class:`.scores.ScoreStore` that receives each tensor's scores as soon as
    its accumulator is turned into them (and is returned): on disk, a language's scores
    are never held whole in host memory (one tensor at a time).
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    model, kind = head_model or load_lm_head_model(source, device)
    model.eval()
    anatomy = describe_model(model)
    targets = {f"{b.index}.{r}": anatomy.module(n) for b in anatomy.blocks
               for r, n in b.linears.items()}
    cap = _capacity(model, tokenizer)
    gen = torch.Generator().manual_seed(seed)
    mask_id = tokenizer.mask_token_id
    if kind == "masked" and mask_id is None:
        raise LesionAlignError("masked-LM importance needs a tokenizer with a mask token")
    in_device = model.get_input_embeddings().weight.device
    acc_dev = _accumulator_devices(targets, accumulate_on)
    if max_batch_tokens is None:
        max_batch_tokens = importance_batch_tokens(model, accumulate_on)
    windows = max(1, min(int(batch_size), int(max_batch_tokens) // (cap + 2)))
    split = _loss_parts(model) if kind == "causal" else None
    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    wanted = {id(m.weight) for m in targets.values()}
    sink = store if store is not None else ScoreStore()  # in memory unless the caller's
    acc: dict = {}
    hooks = []
    replay = _Recompute(anatomy) if recompute else None
    try:
        for p in params:  # gradients of the weights scored only (not embeddings, head, norms)
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        for k, m in targets.items():
            hooks.append(m.weight.register_post_accumulate_grad_hook(_folder(acc, k)))
        if replay is not None:
            replay.__enter__()
        for li, (lang, texts) in enumerate(texts_by_language.items()):
            acc.clear()
            acc.update({k: torch.zeros(m.weight.shape, dtype=torch.float32, device=acc_dev[k])
                        for k, m in targets.items()})
            n_windows = 0
            for batch in text_batches(tokenizer, texts, cap, max_tokens, windows):
                if cancel is not None and cancel():
                    raise Cancelled()
                ids = torch.tensor(batch, device=in_device)
                # a batch's mean loss weighs as many windows as it holds: the sum over the
                # batches is the sum over windows, whatever the batches (the token budget)
                n_windows += len(batch)
                if split is not None:
                    _causal_backward_in_chunks(split, ids, weight=len(batch))
                    continue
                if kind == "causal":
                    loss = model(input_ids=ids, labels=ids).loss
                else:
                    labels = ids.clone()
                    chosen = torch.rand(ids.shape, generator=gen) < 0.15
                    chosen[:, 0] = False
                    chosen[:, -1] = False
                    labels[~chosen.to(in_device)] = -100
                    masked = ids.clone()
                    masked[chosen.to(in_device)] = mask_id
                    loss = model(input_ids=masked, labels=labels).loss
                (loss * len(batch)).backward()
                del loss
            for k in list(acc):
                W = targets[k].weight.detach()
                g = acc.pop(k).cpu()  # in place: the accumulator becomes the scores
                sink.put(lang, k, g.div_(max(n_windows, 1)).mul_(W.float().cpu()))
                del g
            if progress is not None:
                progress((li + 1) / len(texts_by_language),
                         f"importance (gradient x weight): {lang}")
    finally:
        if replay is not None:
            replay.__exit__(None, None, None)
        for h in hooks:
            h.remove()
        for p, r in zip(params, was):
            p.grad = None
            p.requires_grad_(r)
        acc.clear()
    del model
    return _scores_out(sink, store)


class _Recompute(BlockForwards):
    """Activation checkpointing of every block while active: each block's ``forward`` is
    replaced on the instance by one that runs it under :func:`torch.utils.checkpoint.checkpoint`
    (non-reentrant: keyword arguments pass through; hooks still run around it); restored on
    exit."""

    def __init__(self, anatomy: Anatomy):
        super().__init__()
        self.blocks = [anatomy.module(b.name) for b in anatomy.blocks]

    def __enter__(self):
        # reason: torch loads where a model or tensor is used (CLI start-up without it)
        from torch.utils.checkpoint import checkpoint

        for blk in self.blocks:
            def forward(*args, _orig=blk.forward, **kwargs):
                return checkpoint(_orig, *args, use_reentrant=False, **kwargs)

            self.replace(blk, forward)
        return self


#: config keys of models whose logits are not the plain LM head of the last hidden state
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                  "output_multiplier_scale")


def _loss_parts(model):
    """``(body, head)`` of a causal LM whose logits are ``head(body(ids)[0])``, or None
    (then the model's own loss is used)."""
    body = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None
    cfg = model.config
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _SCALED_LOGITS):
        return None
    return body, head


def _causal_backward_in_chunks(split, ids, weight: float = 1.0) -> None:
    """Backward of ``weight`` x the mean next-token cross-entropy of ``ids`` (the loss of
    ``model(input_ids=ids, labels=ids)``), its logits computed a chunk of tokens at a time:
    the blocks run forward once and backward once."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)
    import torch.nn.functional as F  # (see above)

    body, head = split
    hidden = body(input_ids=ids, use_cache=False)[0]
    B, L, H = hidden.shape
    if L < 2:
        return
    inner = hidden[:, :-1]  # position t predicts token t + 1
    h = inner.detach().reshape(-1, H).requires_grad_(True)
    target = ids[:, 1:].reshape(-1)
    n = target.numel()
    vocab = int(head.weight.shape[0])
    chunk = max(1, LOSS_CHUNK_BYTES // (4 * vocab))
    for s in range(0, n, chunk):
        logits = head(h[s: s + chunk]).float()
        loss = F.cross_entropy(logits, target[s: s + chunk].to(logits.device),
                               reduction="sum") * (weight / n)
        loss.backward()
        del logits, loss
    torch.autograd.backward(inner, h.grad.view(B, L - 1, H))
    del hidden, inner, h


def _folder(acc: dict, key: str):
    """The hook that adds a weight's fresh gradient into its accumulator and frees it."""
    def hook(p):
        g = p.grad
        a = acc[key]
        a.add_(g.to(device=a.device, dtype=a.dtype) if (g.dtype != a.dtype
                                                        or g.device != a.device) else g)
        p.grad = None
    return hook


def _accumulator_devices(targets: dict, accumulate_on: str) -> dict:
    """Where each weight's float32 accumulator lives (see :func:`gradxweight_scores`)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    if accumulate_on not in ("auto", "cpu", "device"):
        raise LesionAlignError(f"accumulate_on = {accumulate_on!r}; use 'auto', 'cpu' or "
                               "'device'")
    devs = {k: m.weight.device for k, m in targets.items()}
    if accumulate_on == "cpu":
        return {k: torch.device("cpu") for k in devs}
    if accumulate_on == "device":
        return devs
    need: dict = {}
    for k, m in targets.items():
        if devs[k].type == "cuda":
            need[devs[k]] = need.get(devs[k], 0) + 4 * m.weight.numel()
    fits = {d: torch.cuda.mem_get_info(d)[0] * 0.5 >= n for d, n in need.items()}
    return {k: d if d.type != "cuda" or fits[d] else torch.device("cpu")
            for k, d in devs.items()}


def lape_probabilities(model, tokenizer, texts_by_language: dict, anatomy: Anatomy | None = None,
                       max_tokens: int = 20000, cancel=None) -> dict:
    """{language: {"<block>.neurons": P(activation > 0)}} per FFN intermediate unit."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    anatomy = anatomy or describe_model(model)
    cap = _capacity(model, tokenizer)
    out = {}
    for lang, texts in texts_by_language.items():
        devs = {b.index: anatomy.module(b.linears["ffn_down"]).weight.device
                for b in anatomy.blocks}
        pos = {i: torch.zeros(anatomy.intermediate_size, dtype=_sum_dtype(d), device=d)
               for i, d in devs.items()}
        n = [0]

        def make_hook(i):
            def hook(module, args):  # running counts: no activation is kept
                x = args[0].detach()
                pos[i] += (x > 0).reshape(-1, x.shape[-1]).sum(0).to(pos[i])
                if i == 0:
                    n[0] += x.reshape(-1, x.shape[-1]).shape[0]
            return hook

        hooks = [anatomy.module(b.linears["ffn_down"]).register_forward_pre_hook(make_hook(b.index))
                 for b in anatomy.blocks]
        _feed(model, tokenizer, texts, cap, max_tokens, hooks, cancel)
        out[lang] = {f"{i}.neurons": (p.cpu().double() / max(n[0], 1)).float()
                     for i, p in pos.items()}
    return out


def mean_activations(model, tokenizer, texts_by_language: dict, element: str,
                     anatomy: Anatomy | None = None, max_tokens: int = 20000,
                     cancel=None) -> dict:
    """Mean activation of every unit over the text of all languages (for mean-ablation).

    neurons: the FFN intermediate activations (input of the FFN output projection); heads:
    the per-head attention outputs (input of the attention output projection); hidden: the
    block outputs. Keyed like lesion masks (``"<block>.neurons"`` ...).
    """
    anatomy = anatomy or describe_model(model)
    if element not in ("neurons", "heads", "hidden"):
        raise LesionAlignError(f"mean-ablation of {element!r} is not defined; use mode = 'zero'")
    sums: dict = {}
    count = {"n": 0}

    def add(key, x):
        x = x.detach().reshape(-1, x.shape[-1]).double()
        sums[key] = sums.get(key, 0) + x.sum(0).cpu()
        if key.startswith("0."):
            count["n"] += x.shape[0]

    hooks = []
    for b in anatomy.blocks:
        if element == "hidden":
            key = f"{b.index}.hidden"
            hooks.append(anatomy.module(b.name).register_forward_hook(
                lambda m, a, out, key=key: add(key, out[0] if isinstance(out, tuple) else out)))
        else:
            part = "neurons" if element == "neurons" else "heads"
            target = anatomy.module(b.linears["ffn_down" if part == "neurons" else "o"])
            key = f"{b.index}.{part}"
            hooks.append(target.register_forward_pre_hook(lambda m, a, key=key: add(key, a[0])))
    cap = _capacity(model, tokenizer)
    try:
        for texts in texts_by_language.values():
            _feed(model, tokenizer, texts, cap, max_tokens, [], cancel)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v / max(count["n"], 1)).float() for k, v in sums.items()}


# --------------------------------------------------------------------------- unit scores
def unit_scores(weight_scores: dict, element: str, anatomy: Anatomy) -> dict:
    """Aggregate per-weight scores of one language into unit scores.

    neurons: |scores| of the unit's FFN-output column plus its FFN-input row(s);
    heads: the head's rows of q (of a fused qkv grouped by head: its q, k and v rows) and
    its columns of the attention output projection.
    """
    out = {}
    for b in anatomy.blocks:
        S = {r: weight_scores[f"{b.index}.{r}"].abs() for r in b.linears}
        if element == "neurons":
            s = S["ffn_down"].sum(0) + S["ffn_up"].sum(1)
            if "ffn_gate" in S:
                s = s + S["ffn_gate"].sum(1)
            out[f"{b.index}.neurons"] = s
        elif element == "heads":
            hd = b.head_dim
            if "qkv" in S and not b.qkv_per_head:
                raise LesionAlignError(
                    f"block {b.index}: its fused query-key-value projection does not group "
                    "its rows by head, so heads have no importance scores; lesion weights, "
                    "neurons, or heads with a manual lesion")
            q = (S["qkv"].sum(1).view(b.n_heads, 3 * hd).sum(1) if "qkv" in S
                 else S["q"].sum(1).view(b.n_heads, hd).sum(1))
            o = S["o"].sum(0).view(b.n_heads, hd).sum(1)
            out[f"{b.index}.heads"] = q + o
        else:
            raise LesionAlignError(f"importance scores do not define {element!r} units; "
                                   "use a manual or random selection")
    return out


# --------------------------------------------------------------------------- selections
#: bytes of percentile ranks a ``rank_cache`` keeps (float32, one per weight and language):
#: past this (7B models: 26 GB per language) ranks are computed again for each selection
RANK_CACHE_BYTES = 2 * 2**30
_RANK_BYTES = ("__bytes__",)

def select(scores: dict, selection: str, k_percent: float, element: str = "weights",
           name: str | None = None, spec: dict | None = None,
           rank_cache: dict | None = None) -> Lesion:
    """Build a lesion from per-language scores ``{language: {key: tensor}}``.

    ``selection``: ``"shared"`` or ``"specific:<L>"``; top ``k_percent`` % per tensor / layer.
    ``rank_cache``: a dict shared by several calls on the same scores (percentile ranks are
    computed once per language and tensor; up to :data:`RANK_CACHE_BYTES`), or a
    :class:`.scores.ScoreStore` (scores on disk: every rank kept there, none in memory).
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    langs = list(scores)
    if not langs:
        raise LesionAlignError("no importance scores: give text in at least one language")
    keys = list(scores[langs[0]])
    masks = {}
    if selection == "shared":
        for k in keys:
            total = sum(scores[lang][k].abs() for lang in langs)
            masks[k] = top_k_mask(total, k_percent)
    elif selection.startswith("specific:"):
        target = selection.split(":", 1)[1]
        if target not in scores:
            raise LesionAlignError(f"selection {selection!r}: no scores for language {target!r}; "
                                   f"languages are {langs}")
        others = [lang for lang in langs if lang != target]
        if not others:
            raise LesionAlignError("a language-specific selection needs at least two languages")
        ranks = rank_cache if rank_cache is not None else {}

        def rank_of(lang, k):
            if isinstance(ranks, ScoreStore):  # scores on disk: their ranks on disk too
                if lang in ranks and k in ranks[lang]:
                    return ranks.get(lang, k)
                r = percentile_rank(scores[lang][k].abs())
                ranks.put(lang, k, r)
                return r
            if (lang, k) in ranks:
                return ranks[(lang, k)]
            r = percentile_rank(scores[lang][k].abs())
            held = ranks.get(_RANK_BYTES, 0) + r.numel() * r.element_size()
            if held <= RANK_CACHE_BYTES:  # large models: ranks computed again when needed
                ranks[(lang, k)] = r
                ranks[_RANK_BYTES] = held
            return r

        for k in keys:
            other = None
            for lang in others:
                r = rank_of(lang, k)
                other = r if other is None else torch.maximum(other, r)
            masks[k] = top_k_mask(rank_of(target, k) - other, k_percent)
    else:
        raise LesionAlignError(f"unknown selection {selection!r}; use 'shared', 'specific:<L>', "
                               "'random' or 'manual'")
    sp = dict(spec or {})
    sp.update(selection=selection, k_percent=float(k_percent), languages=langs,
              name=name or selection.replace(":", "-"))
    return Lesion(element, masks, sp)


def select_lape(probs: dict, selection: str, k_percent: float, name: str | None = None,
                spec: dict | None = None) -> Lesion:
    """Neurons by activation probability: ``specific:<L>`` = lowest entropy across languages
    among the neurons most active in ``L``; ``shared`` = highest minimum probability."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    langs = list(probs)
    masks = {}
    for key in probs[langs[0]]:
        P = torch.stack([probs[lang][key] for lang in langs])  # (n_lang, n_units)
        if selection == "shared":
            masks[key] = top_k_mask(P.min(0).values, k_percent)
            continue
        target = selection.split(":", 1)[1] if selection.startswith("specific:") else None
        if target not in langs:
            raise LesionAlignError(f"selection {selection!r}: languages are {langs}")
        if len(langs) < 2:
            raise LesionAlignError("a language-specific selection needs at least two languages")
        Q = P / P.sum(0, keepdim=True).clamp_min(1e-12)
        entropy = -(Q * torch.log(Q.clamp_min(1e-12))).sum(0)
        own = P.argmax(0) == langs.index(target)
        score = torch.where(own & (P.sum(0) > 0), -entropy, torch.tensor(-np.inf))
        n = min(top_k_count(score.numel(), k_percent), int(own.sum()))
        idx = torch.topk(score, n).indices if n > 0 else torch.empty(0, dtype=torch.int64)
        masks[key] = IndexMask.from_indices(idx, tuple(score.shape))
    sp = dict(spec or {})
    sp.update(selection=selection, method="lape", k_percent=float(k_percent), languages=langs,
              name=name or selection.replace(":", "-"))
    return Lesion("neurons", masks, sp)


def manual(element: str, indices: dict, anatomy: Anatomy, name: str = "manual") -> Lesion:
    """A lesion from explicit indices: ``{block: [unit indices]}`` (``[]`` for layers)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    if element not in UNIT_ELEMENTS:
        raise LesionAlignError(f"manual lesions address units {UNIT_ELEMENTS}, not {element!r}")
    size = unit_count(anatomy, element)
    masks = {}
    for b, idx in indices.items():
        b = int(b)
        if not 0 <= b < len(anatomy.blocks):
            raise LesionAlignError(f"manual lesion: block {b} does not exist "
                                   f"(0..{len(anatomy.blocks) - 1})")
        m = torch.zeros(size, dtype=torch.bool)
        if element == "layers":
            m[0] = True
        else:
            idx = [int(i) for i in idx]
            bad = [i for i in idx if not 0 <= i < size]
            if bad:
                raise LesionAlignError(f"manual lesion: {element} indices {bad} out of range "
                                       f"0..{size - 1}")
            m[idx] = True
        masks[f"{b}.{UNIT_PART[element]}"] = m
    return Lesion(element, masks, {"selection": "manual", "name": name,
                                   "indices": {str(k): list(map(int, v)) if element != "layers"
                                               else [] for k, v in indices.items()}})
