"""The Model & lesion widget's text around the lesion plan: manual / sweep indices typed
into the form, and the lesion sizes (:meth:`~..core.plan.LesionPlan.sizes`, from the
model's anatomy alone) as text. No Qt here (runs in a worker).
"""

from __future__ import annotations

import re

from ..core.errors import LesionAlignError
from ..core.plan import lesionable


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


def describe(anatomy, sizes: list, n_random: int) -> str:
    """Human-readable sizes (``[(label, {block: n}, element)]``): one line per distinct
    lesion size, then per block."""
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
        ctrl = (f" (+ {n_random} random draw{'s' if n_random > 1 else ''} of the same size "
                "each)") if n_random else ""
        lines.append(f"{names}{ctrl}: {total:,} {el} ({100.0 * total / of:.3g} % of {of:,})")
        blocks = " · ".join(f"L{b} {n:,}" for b, n in per)
        lines.append(f"    per layer: {blocks}")
    return "\n".join(lines)
