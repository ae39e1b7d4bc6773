"""Model conditions of an analysis: the intact model, each lesion and its random control.

:func:`build_conditions` turns the ``[lesions]`` config into :class:`Condition` objects:
importance per language from text in that language (the stimulus words by default),
selections (shared, specific per language), a size-matched random control per lesion,
saved lesion files, and the layer sweep.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import LesionAlignError
from .lesions import Lesion, random_like


@dataclass
class Condition:
    """One model condition; ``label`` goes into file names (letters and digits)."""

    label: str
    lesion: Lesion | None = None
    kind: str = "intact"  # intact | lesion | random | file | sweep
    control_of: str | None = None  # random controls: the label of the matched lesion

    @property
    def key(self) -> str:
        """Identifies the lesion's masks (the feature cache key)."""
        if self.lesion is None:
            return "intact"
        h = hashlib.blake2b(digest_size=12)
        h.update(self.lesion.element.encode() + self.lesion.mode.encode())
        for k in sorted(self.lesion.masks):
            h.update(k.encode())
            h.update(self.lesion.masks[k].to(dtype=__import__("torch").uint8).numpy().tobytes())
        return h.hexdigest()


def selection_label(selection: str) -> str:
    if selection == "shared":
        return "shared"
    if selection.startswith("specific:"):
        return "specific" + selection.split(":", 1)[1]
    raise LesionAlignError(f"unknown selection {selection!r}")


def importance_texts(config, stimuli) -> dict:
    """{language: [text]} -- a text file per language when configured, else the stimulus."""
    les = config.lesions
    out = {}
    for code, stim in stimuli.items():
        path = (les.text or {}).get(code)
        if path:
            p = Path(path)
            if not p.exists():
                raise LesionAlignError(f"{p}: importance text for {code} not found")
            try:
                out[code] = [p.read_text(encoding="utf-8")]
            except UnicodeDecodeError as err:
                raise LesionAlignError(f"{p}: importance text must be UTF-8 ({err})") from err
        else:
            sep = "" if stim.spaceless else " "
            out[code] = [sep.join(w.words) for w in stim.runs]
    return out


def _method(config, lm) -> tuple[str, tuple | None]:
    """The importance method and, for ``auto`` resolving to gradxweight, the model with its
    language-modelling head already loaded (so that it is loaded once)."""
    m = config.lesions.method
    if m != "auto":
        return m, None
    if config.lesions.element == "neurons":
        return "lape", None
    try:
        from .importance import load_lm_head_model

        return "gradxweight", load_lm_head_model(lm.source, lm.device)
    except (LesionAlignError, OSError, ValueError):
        return "wanda", None


def build_conditions(config, lm, stimuli, progress=None, cancel=None) -> list[Condition]:
    """The intact condition followed by every lesion of the config (and their controls)."""
    from . import importance as imp
    from .anatomy import describe_model
    from .model import parameters_hash

    conds = [Condition("intact")]
    les = config.lesions
    if not les.enabled:
        return conds
    anatomy = describe_model(lm.model)
    langs = list(stimuli)
    base_spec = {"model": lm.name, "model_hash": lm.weights_hash, "element": les.element,
                 "mode": les.mode, "seed": config.seed}
    selections = list(les.selections) or (["shared"] + [f"specific:{c}" for c in langs]
                                         if len(langs) > 1 else ["shared"])
    made: list[Lesion] = []
    if selections and les.element in ("weights", "neurons", "heads"):
        method, head_model = _method(config, lm)
        texts = importance_texts(config, stimuli)
        if method == "lape":
            probs = imp.lape_probabilities(lm.model, lm.tokenizer, texts, anatomy,
                                           les.max_tokens, cancel=cancel)
            for sel in selections:
                made.append(imp.select_lape(probs, sel, les.k_percent, selection_label(sel),
                                            dict(base_spec, method="lape")))
        else:
            if method == "gradxweight":
                scores = imp.gradxweight_scores(lm.source, lm.tokenizer, texts, lm.device,
                                                les.max_tokens, config.seed, progress, cancel,
                                                head_model=head_model)
                del head_model
            else:
                scores = imp.wanda_scores(lm.model, lm.tokenizer, texts, anatomy, les.max_tokens,
                                          progress, cancel)
            if les.element != "weights":
                scores = {L: imp.unit_scores(s, les.element, anatomy) for L, s in scores.items()}
            ranks: dict = {}
            for sel in selections:
                made.append(imp.select(scores, sel, les.k_percent, les.element,
                                       selection_label(sel), dict(base_spec, method=method),
                                       rank_cache=ranks))
            del scores, ranks
    elif les.selections:
        raise LesionAlignError(
            f"[lesions]: importance-based selections choose weights, neurons or heads, not "
            f"{les.element!r}; use sweep = true or saved lesion files for {les.element}"
        )
    for lesion in made:
        lesion.mode = les.mode
        conds.append(Condition(lesion.name, lesion, "lesion"))
        if les.random_control:
            rnd = random_like(lesion, anatomy, seed=config.seed + len(conds),
                              name=f"{lesion.name}Random")
            conds.append(Condition(rnd.name, rnd, "random", control_of=lesion.name))
    for f in les.files:
        lesion = Lesion.load(f)
        h = lesion.spec.get("model_hash")
        if h and h != lm.weights_hash:
            raise LesionAlignError(
                f"{f}: this lesion was made for model weights {h[:12]}..., not for "
                f"{lm.name} ({lm.weights_hash[:12]}...); make it again on this model"
            )
        label = "".join(ch for ch in Path(f).stem if ch.isalnum()) or "file"
        lesion.spec.setdefault("name", label)
        conds.append(Condition(label, lesion, "file"))
        if les.random_control:
            rnd = random_like(lesion, anatomy, seed=config.seed + len(conds), name=f"{label}Random")
            conds.append(Condition(rnd.name, rnd, "random", control_of=label))
    if les.sweep:
        size = {"neurons": anatomy.intermediate_size, "heads": anatomy.n_heads,
                "hidden": anatomy.hidden_size, "layers": 1}[les.sweep_element]
        idx = list(les.sweep_indices) or list(range(0, size, 10))
        for lesion in imp.layer_sweep(les.sweep_element, idx, anatomy, name="sweep"):
            lesion.mode = les.mode
            lesion.spec.update(base_spec, element=les.sweep_element)
            label = f"sweepL{lesion.spec['layer']}"
            lesion.spec["name"] = label
            conds.append(Condition(label, lesion, "sweep"))
            # a whole block has no size-matched random alternative inside that block
            if les.random_control and les.sweep_element != "layers":
                rnd = random_like(lesion, anatomy, seed=config.seed + len(conds),
                                  name=f"{label}Random")
                conds.append(Condition(rnd.name, rnd, "random", control_of=label))
    if les.mode == "mean":
        units = {c.lesion.element for c in conds if c.lesion is not None} - {"weights", "layers"}
        if units:
            texts = importance_texts(config, stimuli)
            for element in units:
                means = imp.mean_activations(lm.model, lm.tokenizer, texts, element, anatomy,
                                             les.max_tokens, cancel)
                for c in conds:
                    if c.lesion is not None and c.lesion.element == element:
                        c.lesion.means = {k: means[k] for k in c.lesion.masks}
    if len(conds) == 1:  # [lesions] is on, but nothing in it makes a lesion
        raise LesionAlignError(
            f"[lesions]: element = {les.element!r} makes no lesion by itself (shared / specific "
            "selections rank weights, neurons or heads); set sweep = true, give saved lesion "
            "files, choose element = 'weights', 'neurons' or 'heads', or remove [lesions] to "
            "run the intact model only")
    labels = [c.label for c in conds]
    if len(set(labels)) != len(labels):
        raise LesionAlignError(f"two conditions share a label: {labels}; rename the lesion files")
    # the model must be untouched by all this
    if parameters_hash(lm.model) != lm.weights_hash:
        raise RuntimeError("internal: building lesions changed the model")
    return conds
