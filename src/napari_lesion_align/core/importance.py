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

from .anatomy import Anatomy, describe_model
from .errors import Cancelled, LesionAlignError
from .lesions import Lesion, percentile_rank, top_k_mask
from .plan import UNIT_ELEMENTS, UNIT_PART, top_k_count, unit_count


# --------------------------------------------------------------------------- text batches
def text_batches(tokenizer, texts: Sequence[str], capacity: int, max_tokens: int = 20000,
                 batch_size: int = 8):
    """Token windows of a language's text: lists of equal-length id lists (no padding)."""
    from .features import special_tokens

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
    from .features import model_capacity

    return min(model_capacity(model, tokenizer), 510)


def _feed(model, tokenizer, texts, capacity: int, max_tokens: int, hooks: list,
          cancel=None) -> int:
    """Run ``texts`` through ``model`` (no gradients) while ``hooks`` observe it; the hooks
    are removed afterwards, also on error or cancel. Returns the tokens fed."""
    import torch

    fed = 0
    try:
        with torch.inference_mode():
            for batch in text_batches(tokenizer, texts, capacity, max_tokens):
                if cancel is not None and cancel():
                    raise Cancelled()
                ids = torch.tensor(batch, device=next(model.parameters()).device)
                model(input_ids=ids)
                fed += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return fed


# --------------------------------------------------------------------------- scores
def wanda_scores(model, tokenizer, texts_by_language: dict, anatomy: Anatomy | None = None,
                 max_tokens: int = 20000, progress=None, cancel=None) -> dict:
    """{language: {"<block>.<role>": |W| * rms input}} for every lesionable weight."""
    import torch

    anatomy = anatomy or describe_model(model)
    targets = {f"{b.index}.{r}": anatomy.module(n) for b in anatomy.blocks
               for r, n in b.linears.items()}
    cap = _capacity(model, tokenizer)
    out = {}
    for li, (lang, texts) in enumerate(texts_by_language.items()):
        sumsq = {k: torch.zeros(m.in_features, dtype=torch.float64) for k, m in targets.items()}

        def make_hook(key):
            def hook(module, args):
                x = args[0].detach().to(torch.float64)
                sumsq[key] += (x * x).reshape(-1, x.shape[-1]).sum(0).cpu()
            return hook

        hooks = [m.register_forward_pre_hook(make_hook(k)) for k, m in targets.items()]
        count = _feed(model, tokenizer, texts, cap, max_tokens, hooks, cancel)
        rms = {k: torch.sqrt(v / max(count, 1)).float() for k, v in sumsq.items()}
        out[lang] = {k: targets[k].weight.detach().abs().float().cpu() * rms[k][None, :]
                     for k in targets}
        if progress is not None:
            progress((li + 1) / len(texts_by_language), f"importance (wanda): {lang}")
    return out


def load_lm_head_model(source: str, device: str = "cpu"):
    """The same weights with a language-modelling head: causal LM, else masked LM.

    Raises a clear error when the model has neither (e.g. an embedding model such as the
    built-in multilingual-e5-small): use the gradient-free ``wanda`` method instead.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from .model import refuse_remote_code

    if Path(source).is_dir():
        refuse_remote_code(source)
    cfg = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    for cls, tag in ((AutoModelForCausalLM, "CausalLM"), (AutoModelForMaskedLM, "MaskedLM")):
        if tag not in archs and not (tag == "MaskedLM" and "ForPreTraining" in archs):
            continue
        try:
            m, info = cls.from_pretrained(source, local_files_only=True, trust_remote_code=False,
                                          output_loading_info=True)
        except (ValueError, OSError):
            continue
        missing = [k for k in info.get("missing_keys", []) if "head" in k or "lm_head" in k]
        if missing:
            continue
        return m.to(device), ("causal" if tag == "CausalLM" else "masked")
    raise LesionAlignError(
        f"model {source!r} has no language-modelling head (architectures: {archs or 'unknown'}), "
        "so gradient x weight importance has no loss to differentiate; use method = 'wanda' "
        "(gradient-free) or a model saved with its LM head"
    )


def gradxweight_scores(source: str, tokenizer, texts_by_language: dict, device: str = "cpu",
                       max_tokens: int = 20000, seed: int = 0, progress=None,
                       cancel=None, head_model=None) -> dict:
    """{language: {"<block>.<role>": (mean over batches of dLoss/dW) * W}} (signed).

    ``head_model``: ``(model, kind)`` from :func:`load_lm_head_model` when already loaded.
    """
    import torch

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
    out = {}
    for li, (lang, texts) in enumerate(texts_by_language.items()):
        model.zero_grad(set_to_none=True)
        n_batches = 0
        for batch in text_batches(tokenizer, texts, cap, max_tokens):
            if cancel is not None and cancel():
                raise Cancelled()
            ids = torch.tensor(batch, device=device)
            if kind == "causal":
                loss = model(input_ids=ids, labels=ids).loss
            else:
                labels = ids.clone()
                chosen = torch.rand(ids.shape, generator=gen) < 0.15
                chosen[:, 0] = False
                chosen[:, -1] = False
                labels[~chosen.to(device)] = -100
                masked = ids.clone()
                masked[chosen.to(device)] = mask_id
                loss = model(input_ids=masked, labels=labels).loss
            loss.backward()
            n_batches += 1
        out[lang] = {k: (m.weight.grad.detach().float().cpu() / max(n_batches, 1))
                     * m.weight.detach().float().cpu() for k, m in targets.items()}
        if progress is not None:
            progress((li + 1) / len(texts_by_language), f"importance (gradient x weight): {lang}")
    del model
    return out


def lape_probabilities(model, tokenizer, texts_by_language: dict, anatomy: Anatomy | None = None,
                       max_tokens: int = 20000, cancel=None) -> dict:
    """{language: {"<block>.neurons": P(activation > 0)}} per FFN intermediate unit."""
    import torch

    anatomy = anatomy or describe_model(model)
    cap = _capacity(model, tokenizer)
    out = {}
    for lang, texts in texts_by_language.items():
        pos = {b.index: torch.zeros(anatomy.intermediate_size, dtype=torch.float64)
               for b in anatomy.blocks}
        n = [0]

        def make_hook(i):
            def hook(module, args):
                x = args[0].detach()
                pos[i] += (x > 0).reshape(-1, x.shape[-1]).sum(0).double().cpu()
                if i == 0:
                    n[0] += x.reshape(-1, x.shape[-1]).shape[0]
            return hook

        hooks = [anatomy.module(b.linears["ffn_down"]).register_forward_pre_hook(make_hook(b.index))
                 for b in anatomy.blocks]
        _feed(model, tokenizer, texts, cap, max_tokens, hooks, cancel)
        out[lang] = {f"{i}.neurons": (p / max(n[0], 1)).float() for i, p in pos.items()}
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
    heads: the head's rows of q and its columns of the attention output projection.
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
            q = S["q"].sum(1).view(b.n_heads, hd).sum(1)
            o = S["o"].sum(0).view(b.n_heads, hd).sum(1)
            out[f"{b.index}.heads"] = q + o
        else:
            raise LesionAlignError(f"importance scores do not define {element!r} units; "
                                   "use a manual or random selection")
    return out


# --------------------------------------------------------------------------- selections
def select(scores: dict, selection: str, k_percent: float, element: str = "weights",
           name: str | None = None, spec: dict | None = None,
           rank_cache: dict | None = None) -> Lesion:
    """Build a lesion from per-language scores ``{language: {key: tensor}}``.

    ``selection``: ``"shared"`` or ``"specific:<L>"``; top ``k_percent`` % per tensor / layer.
    ``rank_cache``: a dict shared by several calls on the same scores (percentile ranks are
    computed once per language and tensor).
    """
    import torch

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
            if (lang, k) not in ranks:
                ranks[(lang, k)] = percentile_rank(scores[lang][k].abs())
            return ranks[(lang, k)]

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
    import torch

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
        m = torch.zeros(score.numel(), dtype=torch.bool)
        if n > 0:
            m[torch.topk(score, n).indices] = True
        masks[key] = m
    sp = dict(spec or {})
    sp.update(selection=selection, method="lape", k_percent=float(k_percent), languages=langs,
              name=name or selection.replace(":", "-"))
    return Lesion("neurons", masks, sp)


def manual(element: str, indices: dict, anatomy: Anatomy, name: str = "manual") -> Lesion:
    """A lesion from explicit indices: ``{block: [unit indices]}`` (``[]`` for layers)."""
    import torch

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
