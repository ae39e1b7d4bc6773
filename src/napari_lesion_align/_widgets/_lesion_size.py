"""Lesion sizes before a run, from the model's anatomy alone (no importance scores needed).

Importance-based selections keep the top ``k`` % of every tensor (weights) or of every
block's units (neurons, heads) -- :func:`~..core.lesions.top_k_mask`, at least one
element each -- so their size per block follows from the shapes; manual lesions and layer
sweeps are their indices. No Qt here (runs in a worker).
"""

from __future__ import annotations

import re

from ..core.errors import LesionAlignError

UNIT_ELEMENTS = ("neurons", "heads", "hidden", "layers")
IMPORTANCE_ELEMENTS = ("weights", "neurons", "heads")


def parse_indices(text: str, element: str) -> dict[int, list[int]]:
    """Manual lesion indices: ``"0: 1-10, 15; 3: 5"`` -> ``{0: [1..10, 15], 3: [5]}``.

    For ``layers`` only the blocks are given: ``"0, 3"`` (or ``"0; 3"``).
    """
    text = (text or "").strip()
    if not text:
        raise LesionAlignError("manual lesion: give the units, e.g. '0: 1-10, 15; 3: 5' "
                               "(block: unit indices), or the blocks for layers ('0, 3')")
    out: dict[int, list[int]] = {}
    if element == "layers":
        for tok in re.split(r"[;,\s]+", text):
            if tok:
                out[_int(tok, text)] = []
        return out
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise LesionAlignError(f"manual lesion: {part!r} needs 'block: indices', "
                                   "e.g. '0: 1-10, 15'")
        block, idx = part.split(":", 1)
        out.setdefault(_int(block, text), []).extend(parse_list(idx))
    return out


def parse_list(text: str) -> list[int]:
    """``"1-4, 9"`` -> ``[1, 2, 3, 4, 9]``."""
    out: list[int] = []
    for tok in re.split(r"[,\s]+", (text or "").strip()):
        if not tok:
            continue
        if "-" in tok[1:]:
            a, b = tok.split("-", 1) if not tok.startswith("-") else (tok, "")
            lo, hi = _int(a, text), _int(b, text)
            if hi < lo:
                raise LesionAlignError(f"indices: range {tok!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            out.append(_int(tok, text))
    return out


def _int(tok, where) -> int:
    try:
        return int(str(tok).strip())
    except ValueError:
        raise LesionAlignError(f"indices: {tok!r} in {where!r} is not a whole number") from None


def unit_count(anatomy, element: str) -> int:
    """Units of one block: FFN neurons, heads, hidden dimensions, or 1 (the block)."""
    return {"neurons": anatomy.intermediate_size, "heads": anatomy.n_heads,
            "hidden": anatomy.hidden_size, "layers": 1}[element]


def lesionable(anatomy, element: str) -> int:
    """How many elements of this kind the model has (all blocks)."""
    if element == "weights":
        return sum(anatomy.module(b.linears[r]).weight.numel()
                   for b in anatomy.blocks for r in b.linears)
    return unit_count(anatomy, element) * len(anatomy.blocks)


def _top_k(n: int, k_percent: float) -> int:
    return max(1, int(round(n * k_percent / 100.0))) if n else 0


def importance_per_layer(anatomy, element: str, k_percent: float) -> dict[int, int]:
    """Elements per block of an importance-based selection (top k % per tensor / block)."""
    out = {}
    for b in anatomy.blocks:
        if element == "weights":
            out[b.index] = sum(_top_k(anatomy.module(b.linears[r]).weight.numel(), k_percent)
                               for r in b.linears)
        elif element in ("neurons", "heads"):
            out[b.index] = _top_k(unit_count(anatomy, element), k_percent)
        else:
            raise LesionAlignError(f"importance-based selections choose weights, neurons or "
                                   f"heads, not {element!r}; use manual or layer sweep")
    return out


def estimate(anatomy, lesions: dict, manual: dict | None, languages: list,
             files: list | None = None, importance: bool = True) -> list[tuple[str, dict, str]]:
    """``[(label, {block: n}, element)]`` of every lesion a run would make (random controls
    have the same sizes and are not listed). ``importance``: whether the run makes
    importance-based selections (shared / specific)."""
    out = []
    if not lesions:
        return out
    element = lesions.get("element", "weights")
    sels = list(lesions.get("selections") or ())
    if importance and element in IMPORTANCE_ELEMENTS:
        if not sels:
            sels = ["shared"] + ([f"specific:{c}" for c in languages]
                                 if len(languages) > 1 else [])
        per = importance_per_layer(anatomy, element, float(lesions.get("k_percent", 1.0)))
        for s in sels:
            out.append((s.replace("specific:", "specific"), per, element))
    if manual is not None:
        el = manual["element"]
        n_blocks = len(anatomy.blocks)
        per = {}
        for b, idx in sorted(manual["indices"].items()):
            if not 0 <= b < n_blocks:
                raise LesionAlignError(f"manual lesion: block {b} does not exist "
                                       f"(0..{n_blocks - 1})")
            size = unit_count(anatomy, el)
            bad = [i for i in idx if not 0 <= i < size]
            if bad:
                raise LesionAlignError(f"manual lesion: {el} indices {bad} out of range "
                                       f"0..{size - 1}")
            per[b] = 1 if el == "layers" else len(set(idx))
        out.append(("manual", per, el))
    if lesions.get("sweep"):
        el = lesions.get("sweep_element", "hidden")
        idx = list(lesions.get("sweep_indices") or range(0, unit_count(anatomy, el), 10))
        n = 1 if el == "layers" else len(set(idx))
        for b in anatomy.blocks:
            out.append((f"sweepL{b.index}", {b.index: n}, el))
    for lesion in files or ():
        out.append((lesion.name, lesion.per_layer(), lesion.element))
    return out


def describe(anatomy, sizes: list, random_control: bool) -> str:
    """Human-readable sizes: one line per distinct lesion size, then per block."""
    if not sizes:
        return "No lesion: the intact model only."
    lines = []
    groups: dict = {}
    for label, per, el in sizes:
        groups.setdefault((tuple(sorted(per.items())), el), []).append(label)
    for (per, el), labels in groups.items():
        total = sum(n for _, n in per)
        of = lesionable(anatomy, el)
        names = ", ".join(labels) if len(labels) <= 4 else f"{labels[0]} … {labels[-1]} " \
                                                            f"({len(labels)} lesions)"
        ctrl = " (+ random control of the same size)" if random_control else ""
        lines.append(f"{names}{ctrl}: {total:,} {el} ({100.0 * total / of:.3g} % of {of:,})")
        blocks = " · ".join(f"L{b} {n:,}" for b, n in per)
        lines.append(f"    per layer: {blocks}")
    return "\n".join(lines)
