"""Find the transformer blocks of a model and the parts a lesion can address.

Models are described by their *structure*, not by one family's parameter names: the blocks
are the ``ModuleList`` with one entry per hidden layer; inside a block, linear layers are
classified by their shapes (hidden -> intermediate is the feed-forward input, intermediate
-> hidden its output; the rest, inside the attention module, are the query / key / value /
output projections), and names only break ties (which hidden -> hidden projection is the
query, which feed-forward input is the gate). This covers BERT / RoBERTa / XLM-R encoders,
Llama / Qwen2 / Mistral / Gemma-style decoders (gated FFN, grouped-query attention) and XGLM.
Models with one fused query-key-value projection (BLOOM) have one part ``qkv`` in place of
``q`` / ``k`` / ``v`` (weight lesions address it like any linear layer); where its output
rows are grouped by head (BLOOM, GPT-NeoX: head ``h`` owns rows ``h x 3 x head_dim`` to
``(h + 1) x 3 x head_dim``, its query, key and value) heads are scored on those rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..base.errors import LesionAlignError

ROLES = ("q", "k", "v", "qkv", "o", "ffn_gate", "ffn_up", "ffn_down")
#: model types whose fused query-key-value rows are grouped by head (q, k, v of head 0, ...)
QKV_PER_HEAD = ("bloom", "gpt_neox")
_NAME_HINTS = {
    "q": re.compile(r"(^|[._])(q|query|q_proj|wq|q_lin)$"),
    "k": re.compile(r"(^|[._])(k|key|k_proj|wk|k_lin)$"),
    "v": re.compile(r"(^|[._])(v|value|v_proj|wv|v_lin)$"),
    "o": re.compile(r"(o_proj|out_proj|wo|out_lin|output\.dense|attention\.dense|\bdense)$"),
    "ffn_gate": re.compile(r"(gate|w1)(_proj)?$"),
}

_ATTENTION = re.compile(r"(^|[._])(self_)?(attn|attention)([._]|$)")


@dataclass
class Block:
    """One transformer block and its lesionable linear layers (qualified names)."""

    index: int
    name: str  # qualified module name of the block
    linears: dict  # role -> qualified module name (ffn_gate absent for non-gated FFNs)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_per_head: bool = False  # a fused qkv whose rows are grouped by head (see module doc)


@dataclass
class Anatomy:
    """The blocks of a model and its sizes."""

    blocks: list
    hidden_size: int
    intermediate_size: int
    n_heads: int
    is_decoder: bool
    layers_attr: str  # qualified name of the ModuleList of blocks
    modules: dict = field(default_factory=dict, repr=False)  # name -> module

    def module(self, name: str):
        return self.modules[name]

    def weight_names(self, roles=ROLES) -> list[str]:
        """Qualified parameter names of the lesionable weights (``<linear>.weight``)."""
        return [f"{b.linears[r]}.weight" for b in self.blocks for r in roles if r in b.linears]

    def describe(self) -> str:
        b = self.blocks[0]
        kinds = ", ".join(f"{r}={b.linears[r].split('.')[-1]}" for r in ROLES if r in b.linears)
        return (f"{len(self.blocks)} blocks at {self.layers_attr}, hidden {self.hidden_size}, "
                f"FFN {self.intermediate_size}, {self.n_heads} heads ({kinds})")


def _find_layers(model, n_layers: int):
    # reason: torch loads where a model or tensor is used (CLI start-up without it)
    import torch.nn as nn

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            if best is None or name.count(".") < best[0].count("."):
                best = (name, mod)
    if best is None:
        raise LesionAlignError(
            f"cannot find the {n_layers} transformer blocks of {type(model).__name__}: no "
            "module list with one entry per layer; lesions support BERT/XLM-R-style encoders "
            "and Llama/Qwen/Mistral-style decoders"
        )
    return best


def describe_model(model) -> Anatomy:
    """Locate the blocks and classify each block's linear layers by shape (see module doc)."""
    # reason: torch loads where a model or tensor is used (CLI start-up without it)
    import torch.nn as nn

    cfg = model.config
    n_layers = int(cfg.num_hidden_layers)
    H = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "ffn_dim", 0)  # XGLM
                or getattr(cfg, "n_inner", 0) or 4 * H)
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or H // n_heads)
    layers_name, layers = _find_layers(model, n_layers)
    modules = dict(model.named_modules())
    blocks = []
    for i, block in enumerate(layers):
        prefix = f"{layers_name}.{i}"
        lin = {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        roles: dict[str, str] = {}
        ffn_in = [n for n, m in lin.items() if m.in_features == H and m.out_features == inter]
        ffn_out = [n for n, m in lin.items() if m.in_features == inter and m.out_features == H]
        if len(ffn_out) > 1 or len(ffn_in) > 2:  # attention sizes equal to the FFN's (Gemma)
            ffn_in = [n for n in ffn_in if not _ATTENTION.search(n)]
            ffn_out = [n for n in ffn_out if not _ATTENTION.search(n)]
        if len(ffn_out) != 1 or len(ffn_in) not in (1, 2):
            raise LesionAlignError(
                f"block {i} of {type(model).__name__}: expected a feed-forward network "
                f"{H} -> {inter} -> {H}, found inputs {ffn_in} and outputs {ffn_out}"
            )
        roles["ffn_down"] = ffn_out[0]
        if len(ffn_in) == 2:
            gate = [n for n in ffn_in if _NAME_HINTS["ffn_gate"].search(n)]
            if len(gate) != 1:
                raise LesionAlignError(f"block {i}: cannot tell the gate among {ffn_in}")
            roles["ffn_gate"] = gate[0]
            roles["ffn_up"] = [n for n in ffn_in if n != gate[0]][0]
        else:
            roles["ffn_up"] = ffn_in[0]
        attn = {n: m for n, m in lin.items() if n not in roles.values()}
        q_out, kv_out = n_heads * head_dim, n_kv * head_dim
        fused = [n for n, m in attn.items() if m.in_features == H
                 and m.out_features == q_out + 2 * kv_out]
        separate = any(_NAME_HINTS["q"].search(n) for n in attn)
        if fused and not separate:
            if len(fused) != 1:
                raise LesionAlignError(f"block {i}: cannot tell the fused query-key-value "
                                       f"projection among {fused}")
            roles["qkv"] = fused[0]
        for role in (() if "qkv" in roles else ("q", "k", "v")):
            want = q_out if role == "q" else kv_out
            cands = [n for n, m in attn.items() if m.in_features == H and m.out_features == want
                     and _NAME_HINTS[role].search(n)]
            if len(cands) != 1:
                raise LesionAlignError(
                    f"block {i}: cannot find the attention {role} projection ({H} -> {want}) "
                    f"among {sorted(attn)}"
                )
            roles[role] = cands[0]
        rest = [n for n, m in attn.items() if n not in roles.values()
                and m.in_features == q_out and m.out_features == H]
        if len(rest) != 1:
            rest = [n for n in rest if _NAME_HINTS["o"].search(n)]
        if len(rest) != 1:
            raise LesionAlignError(f"block {i}: cannot find the attention output projection")
        roles["o"] = rest[0]
        blocks.append(Block(i, prefix, roles, n_heads, n_kv, head_dim,
                            "qkv" in roles and getattr(cfg, "model_type", "") in QKV_PER_HEAD))
    is_decoder = bool(getattr(cfg, "is_decoder", False)) or "ForCausalLM" in type(model).__name__ \
        or any(a.endswith("ForCausalLM") for a in (getattr(cfg, "architectures", None) or []))
    return Anatomy(blocks, H, inter, n_heads, is_decoder, layers_name, modules)


class BlockForwards:
    """A context manager that replaces blocks' ``forward`` on the instances (hooks still
    run around it) and restores them on exit, also on error: the base of the feature
    passes' block replay and the importance passes' recomputation. Subclasses call
    :meth:`replace` in ``__enter__``."""

    def __init__(self):
        self._saved: list = []

    def replace(self, blk, forward) -> None:
        """Give ``blk`` the ``forward`` until exit."""
        self._saved.append((blk, blk.__dict__.get("forward")))
        blk.forward = forward

    def __exit__(self, *exc):
        for blk, own in reversed(self._saved):
            if own is None:
                del blk.forward
            else:
                blk.forward = own
        self._saved = []
        return False
