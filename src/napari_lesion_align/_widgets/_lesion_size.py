"""The Model & lesion widget's text around the lesion plan: manual / sweep indices typed
into the form, and the lesion sizes (:meth:`~..core.lesions.plan.LesionPlan.sizes`, from the
model's anatomy alone) as text. No Qt here (runs in a worker).
"""

from __future__ import annotations

import re

from ..core.base.errors import LesionAlignError
from ..core.lesions.vocabulary import lesionable


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


#: how the form's importance methods read (``auto``: what the core picks)
METHOD_WORDS = {"auto": "importance (auto: LAPE for neurons, gradient x weight where the "
                        "model has a language-modelling head, else Wanda)",
                "wanda": "importance (Wanda: |weight| x input norm)",
                "gradxweight": "importance (gradient x weight)",
                "lape": "importance (LAPE: language-specific activation probability)"}


def describe_run(plan) -> str:
    """What a run of ``plan`` (a :class:`~..core.lesions.plan.LesionPlan`) will do, and why each
    step runs, in a sentence or two for the Run widget (no model needed)."""
    if not plan.enabled:
        return ("Runs the intact model and its controls only (the Lesion box is "
                "unticked): no importance scores, no lesions.")
    parts = []
    if plan.selections:
        names = ", ".join(s.label for s in plan.selections)
        parts.append(f"{METHOD_WORDS.get(plan.method, plan.method)} ranks the "
                     f"{plan.element} to choose the top {plan.k_percent:g} % for the "
                     f"lesions {names}")
    if plan.manual:
        parts.append("manual lesion(s) " + ", ".join(m[0] for m in plan.manual))
    if plan.sweep_element is not None:
        parts.append(f"a layer sweep of {plan.sweep_element}")
    if plan.files:
        parts.append(f"{len(plan.files)} lesion file(s)")
    if not parts:
        return "Runs the intact model and its controls only: the form asks for no lesion."
    draws = (f"; each lesion also gets {plan.n_random} random lesion(s) of the same size"
             if plan.n_random else "")
    return ("Runs the intact model, its controls, then " + "; ".join(parts) + draws
            + ". Every lesion means a feature extraction and a fit of its own.")
