"""The lesion vocabulary: elements, methods, modes, condition kinds and the controls'
labels; the size formulas (units per block, the top k %, sweep indices, default
selections)."""

from __future__ import annotations

from typing import Sequence

from ..base.errors import LesionAlignError


#: what a lesion can ablate
ELEMENTS = ("weights", "neurons", "heads", "hidden", "layers")


#: what importance scores rank (shared / specific selections)
IMPORTANCE_ELEMENTS = ("weights", "neurons", "heads")


#: what manual lesions and sweeps address by index
UNIT_ELEMENTS = ("neurons", "heads", "hidden", "layers")


MODES = ("zero", "mean")


METHODS = ("auto", "wanda", "gradxweight", "lape")


KINDS = ("intact", "selection", "random", "file", "manual", "sweep")


#: the mask key part of each unit element (``"<block>.<part>"``)
UNIT_PART = {"neurons": "neurons", "heads": "heads", "hidden": "hidden", "layers": "layer"}


#: a sweep's default indices: every SWEEP_STEP-th unit
SWEEP_STEP = 10


#: random draws per lesion by default ([lesions] random_controls)
DEFAULT_RANDOM_CONTROLS = 5


#: seeds of a lesion's draws 2..K: its first draw's seed + DRAW_SEED_STEP x (k - 1) (the first
#: draw keeps the seed a single control always had)
DRAW_SEED_STEP = 100_003


def unit_count(anatomy, element: str) -> int:
    """Units of one block: FFN neurons, heads, hidden dimensions, or 1 (the block)."""
    try:
        return {"neurons": anatomy.intermediate_size, "heads": anatomy.n_heads,
                "hidden": anatomy.hidden_size, "layers": 1}[element]
    except KeyError:
        raise LesionAlignError(f"{element!r} has no units; units are {UNIT_ELEMENTS}") from None


def top_k_count(n: int, k_percent: float) -> int:
    """How many of ``n`` elements the top ``k_percent`` % are: round(n k / 100), at least one
    when k > 0 and n > 0."""
    if n <= 0:
        return 0
    m = int(round(n * k_percent / 100.0))
    return max(m, 1) if k_percent > 0 else m


def default_sweep_indices(anatomy, element: str) -> list[int]:
    """Every :data:`SWEEP_STEP`-th unit of a block (unused for whole layers)."""
    return list(range(0, unit_count(anatomy, element), SWEEP_STEP))


def default_selections(languages: Sequence[str]) -> list[str]:
    """``shared`` and ``specific:<L>`` for every language (``shared`` alone for one)."""
    return ["shared"] + ([f"specific:{c}" for c in languages] if len(languages) > 1 else [])


def lesionable(anatomy, element: str) -> int:
    """How many elements of this kind the model has (all blocks)."""
    if element == "weights":
        return sum(anatomy.module(b.linears[r]).weight.numel()
                   for b in anatomy.blocks for r in b.linears)
    return unit_count(anatomy, element) * len(anatomy.blocks)


def importance_per_layer(anatomy, element: str, k_percent: float) -> dict[int, int]:
    """Elements per block of an importance-based selection: the top k % of every weight
    tensor (weights) or of every block's units (neurons, heads)."""
    if element not in IMPORTANCE_ELEMENTS:
        raise LesionAlignError(f"importance-based selections choose {IMPORTANCE_ELEMENTS}, "
                               f"not {element!r}; use a manual lesion or a layer sweep")
    out = {}
    for b in anatomy.blocks:
        if element == "weights":
            out[b.index] = sum(top_k_count(anatomy.module(b.linears[r]).weight.numel(),
                                           k_percent) for r in b.linears)
        else:
            out[b.index] = top_k_count(unit_count(anatomy, element), k_percent)
    return out


#: [controls] key -> the label of its maps (``desc-<label>`` in file names)
CONTROL_LABELS = {"shifts": "nullShift", "shuffled_words": "nullShuffled",
                  "word_rate": "wordRate", "above_word_rate": "aboveWordRate"}
