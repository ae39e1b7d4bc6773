"""The lesion plan: the one owner of what a lesion *is*.

Everything else (the pipeline, the demo, the category analysis, the Model & lesion widget's
size preview, saving lesions) asks this module instead of restating its rules:

* the vocabulary: :data:`ELEMENTS`, :data:`IMPORTANCE_ELEMENTS`, :data:`UNIT_ELEMENTS`,
  :data:`MODES`, :data:`METHODS`;
* the size formulas: :func:`unit_count` (units of one block), :func:`top_k_count` (the top
  k % of n, at least one), :func:`default_sweep_indices`, :func:`default_selections`;
* the requests of a ``[lesions]`` table, typed: importance-based :class:`Selection` s,
  manual lesions, the layer sweep, saved files;
* the conditions they make (:class:`ConditionSpec`): label, kind, the condition a random
  control is matched to (``control_of``) and the block of a sweep condition (``layer``) as
  typed fields -- never parsed from a label;
* their sizes per block before anything is computed (:meth:`LesionPlan.sizes`), and
  :meth:`LesionPlan.build`, which makes the lesions on a loaded model.

A condition's *kind* is one of :data:`KINDS`: ``intact``, ``selection`` (an
importance-based shared / specific lesion), ``random`` (the size-matched control of
another condition), ``file`` (a saved lesion: a file named ``shared.json`` stays a file
condition), ``manual`` and ``sweep``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..base.errors import LesionAlignError
from ..base.io import read_text
from .vocabulary import (CONTROL_LABELS, DRAW_SEED_STEP, default_selections, default_sweep_indices,
                         importance_per_layer, lesionable, unit_count)
from . import importance as imp
from ..model.anatomy import describe_model
from ..model.loading import parameters_hash
from .masks import Lesion, check_fits, random_like
from .importance import load_lm_head_model
from .scores import store_for

# --------------------------------------------------------------------------- vocabulary



# --------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Selection:
    """An importance-based selection: the shared core, or what is specific to a language."""

    kind: str  # "shared" | "specific"
    language: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Selection":
        if text == "shared":
            return cls("shared")
        if text.startswith("specific:") and text[9:].isalnum():
            return cls("specific", text[9:])
        raise LesionAlignError(f"selection {text!r}: use 'shared' or 'specific:<LANGUAGE>'")

    def __str__(self) -> str:
        return "shared" if self.kind == "shared" else f"specific:{self.language}"

    @property
    def label(self) -> str:
        return "shared" if self.kind == "shared" else f"specific{self.language}"


@dataclass(frozen=True)
class ConditionSpec:
    """One model condition of an analysis, before its lesion is made.

    ``control_of``: for ``random`` conditions, the label of the condition it is matched to;
    ``draw``: which of that condition's random draws (1..K);
    ``layer``: for ``sweep`` conditions (and their controls), the block lesioned;
    ``seed``: the random control's seed.
    """

    label: str
    kind: str
    element: str | None = None
    control_of: str | None = None
    selection: Selection | None = None
    layer: int | None = None
    file: str | None = None
    indices: tuple | None = None  # manual / sweep: ((block, (unit, ...)), ...)
    seed: int | None = None
    draw: int | None = None

    @property
    def is_lesion(self) -> bool:
        return self.kind != "intact"

    def describe(self) -> dict:
        """The typed fields, JSON-ready (``result.json``'s ``conditions``)."""
        return {"label": self.label, "kind": self.kind, "element": self.element,
                "control_of": self.control_of, "draw": self.draw,
                "selection": str(self.selection) if self.selection else None,
                "layer": self.layer, "file": self.file}


INTACT = ConditionSpec("intact", "intact")


@dataclass
class Condition:
    """A condition with its lesion made (``lesion`` is None for the intact model)."""

    spec: ConditionSpec
    lesion: object = None  # lesions.Lesion
    key: str = "intact"  # identifies the lesion's masks (the feature store's key part)
    recorded: dict | None = None  # describe() of a run that made it (units/conditions.json)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def control_of(self) -> str | None:
        return self.spec.control_of

    def describe(self) -> dict:
        les = self.lesion
        if les is None and self.recorded is not None:
            return dict(self.recorded, per_layer={int(k): v for k, v in
                                                  self.recorded.get("per_layer", {}).items()})
        return dict(self.spec.describe(), key=self.key,
                    n_elements=les.n_elements if les is not None else 0,
                    per_layer=les.per_layer() if les is not None else {},
                    spec=les.spec if les is not None else {})


def lesion_key(lesion) -> str:
    """Hash of what a lesion does: element, mode, masks and mean values ("intact" for None).

    A mask is hashed as the bytes of its boolean tensor (one 0/1 byte per entry, row-major),
    built one mask at a time from its indices: the keys are those of the masks as boolean
    tensors, which is what result folders and the demo's cache were made with."""
    if lesion is None:
        return "intact"
    h = hashlib.blake2b(digest_size=12)
    h.update(lesion.element.encode() + b"\x1f" + lesion.mode.encode())
    for k in sorted(lesion.masks):
        h.update(k.encode())
        dense = lesion.masks[k].to_bool().reshape(-1).numpy()  # an IndexMask
        h.update(dense.view(np.uint8))
        del dense
    if lesion.mode == "mean":
        for k in sorted(lesion.means):
            h.update(b"mean:" + k.encode())
            h.update(lesion.means[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_label(path: str) -> str:
    """A saved lesion's condition label: its file name without extension, letters and digits."""
    return "".join(ch for ch in Path(path).stem if ch.isalnum()) or "file"


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class LesionPlan:
    """The conditions a ``[lesions]`` table asks for, on a set of languages.

    Build it with :meth:`from_config`; :meth:`specs` lists the conditions (the sweep's
    depend on the number of blocks), :meth:`sizes` their sizes, :meth:`build` makes them.
    """

    enabled: bool
    element: str
    method: str
    k_percent: float
    selections: tuple  # of Selection
    n_random: int  # random draws per lesion (0: none)
    mode: str
    files: tuple
    manual: tuple  # of (name, element, ((block, (units...)), ...))
    sweep_element: str | None  # None: no sweep
    sweep_indices: tuple
    languages: tuple
    seed: int
    text: tuple = ()  # ((language, file), ...)
    max_tokens: int = 20000
    importance_batch_tokens: int = 0  # tokens per gradient pass (0: automatic)
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_config(cls, lesions, languages: Sequence[str], seed: int = 0) -> "LesionPlan":
        """The plan of a :class:`~.config.LesionConfig` (off when ``enabled`` is false)."""
        langs = tuple(languages)
        if not lesions.enabled:
            return cls(False, lesions.element, lesions.method, lesions.k_percent, (), 0,
                       lesions.mode, (), (), None, (), langs, seed)
        texts = (default_selections(langs) if lesions.selections is None
                 else list(lesions.selections))
        manual = tuple((m.name, m.element, tuple(sorted((int(b), tuple(v))
                                                        for b, v in m.indices.items())))
                       for m in lesions.manual)
        return cls(True, lesions.element, lesions.method, lesions.k_percent,
                   tuple(Selection.parse(s) for s in texts), lesions.n_random,
                   lesions.mode, tuple(lesions.files), manual,
                   lesions.sweep_element if lesions.sweep else None,
                   tuple(lesions.sweep_indices), langs, seed,
                   tuple(sorted((lesions.text or {}).items())), lesions.max_tokens,
                   lesions.importance_batch_tokens)

    @property
    def random_control(self) -> bool:
        """Whether lesions get random controls."""
        return self.n_random > 0

    @staticmethod
    def draw_label(label: str, draw: int) -> str:
        """The label of a lesion's random draw: ``<label>Random`` (the first),
        ``<label>Random<k>`` (the others)."""
        return f"{label}Random" + (str(draw) if draw > 1 else "")

    @classmethod
    def of(cls, config) -> "LesionPlan":
        """The plan of an :class:`~.config.AnalysisConfig` (its lesions, languages, seed)."""
        return cls.from_config(config.lesions, config.languages, config.seed)

    # ------------------------------------------------------------------ conditions
    def specs(self, n_blocks: int) -> list[ConditionSpec]:
        """Every condition, intact first, then the selections, manual lesions, the sweep
        and the files; each lesion followed by its random draws (:meth:`draw_label`;
        seeded from ``seed`` and the lesion's position, the draws of a lesion differ)."""
        out = [INTACT]
        if not self.enabled:
            return out
        position = [1]  # where the lesion's first draw stood when a lesion had one control

        def add(spec: ConditionSpec, control: bool = True) -> None:
            out.append(spec)
            position[0] += 1
            if self.n_random and control:
                for k in range(1, self.n_random + 1):
                    out.append(ConditionSpec(
                        self.draw_label(spec.label, k), "random", spec.element,
                        control_of=spec.label, layer=spec.layer, draw=k,
                        seed=self.seed + position[0] + DRAW_SEED_STEP * (k - 1)))
                position[0] += 1

        for sel in self.selections:
            add(ConditionSpec(sel.label, "selection", self.element, selection=sel))
        for name, element, indices in self.manual:
            add(ConditionSpec(name, "manual", element, indices=indices))
        if self.sweep_element is not None:
            for b in range(n_blocks):
                # a whole block has no size-matched random alternative inside that block
                add(ConditionSpec(f"sweepL{b}", "sweep", self.sweep_element, layer=b,
                                  indices=((b, self.sweep_indices),)),
                    control=self.sweep_element != "layers")
        for f in self.files:
            add(ConditionSpec(file_label(f), "file", None, file=str(f)))

        labels = [s.label for s in out]
        taken = sorted(set(labels) & set(CONTROL_LABELS.values()))
        if taken:
            raise LesionAlignError(
                f"[lesions]: the label(s) {taken} name controls of the analysis ([controls]); "
                "rename the manual lesions or the lesion files")
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise LesionAlignError(
                f"[lesions]: two conditions would share the label(s) {dup} (labels: {labels}); "
                "rename the lesion files or the manual lesions, and do not also list saved "
                "*Random files when random_control = true")
        return out

    def selection_specs(self, specs: Sequence[ConditionSpec]) -> dict:
        """The category analysis' conditions: ``{"lesion": (shared, {L: specific}),
        "random": (shared control, {L: specific control})}`` (labels, None when absent),
        found by kind and ``control_of``, never by label."""
        shared = next((s.label for s in specs if s.kind == "selection"
                       and s.selection.kind == "shared"), None)
        specific = {s.selection.language: s.label for s in specs
                    if s.kind == "selection" and s.selection.kind == "specific"}
        if shared is None and not specific:
            return {}
        control = {s.control_of: s.label for s in specs  # (the first draw)
                   if s.kind == "random" and s.draw in (None, 1)}
        out = {"lesion": (shared, specific)}
        rs = control.get(shared)
        rspec = {L: control[lbl] for L, lbl in specific.items() if lbl in control}
        if rs is not None or rspec:
            out["random"] = (rs, rspec)
        return out

    # ------------------------------------------------------------------ sizes
    def sizes(self, anatomy, files: dict | None = None) -> list[tuple[ConditionSpec, dict, str]]:
        """``[(spec, {block: n}, element)]`` for every lesion (random controls have the size
        of the condition they control and are not listed). ``files``: ``{path: Lesion}`` of
        the saved lesions (loaded when missing). A LAPE specific selection keeps at most
        this many (only the neurons most active in its language qualify)."""
        out = []
        for spec in self.specs(len(anatomy.blocks)):
            if spec.kind == "selection":
                out.append((spec, importance_per_layer(anatomy, spec.element, self.k_percent),
                            spec.element))
            elif spec.kind in ("manual", "sweep"):
                per = {b: 1 if spec.element == "layers" else len(set(idx))
                       for b, idx in unit_indices(anatomy, spec)}
                out.append((spec, dict(sorted(per.items())), spec.element))
            elif spec.kind == "file":
                lesion = (files or {}).get(spec.file) or Lesion.load(spec.file)
                check_fits(lesion, anatomy)
                out.append((spec, lesion.per_layer(), lesion.element))
        return out

    # ------------------------------------------------------------------ build
    def build(self, lm, stimuli: dict, progress=None, cancel=None,
              builder: "LesionBuilder | None" = None) -> list[Condition]:
        """Make every condition's lesion on the loaded model ``lm``.

        ``stimuli``: ``{code: LanguageStimuli}`` (their words are the default importance
        text). ``builder``: shares scores and lesions between plans (the demo's generator
        and the analysis ask for the same lesions).
        """

        builder = builder or LesionBuilder(lm, stimuli)
        anatomy = describe_model(lm.model)
        specs = self.specs(len(anatomy.blocks))
        made: dict[str, Condition] = {}
        out = []
        for spec in specs:
            lesion = builder.lesion(self, spec, made, progress, cancel)
            cond = Condition(spec, lesion, lesion_key(lesion))
            made[spec.label] = cond
            out.append(cond)
        builder.add_means(self, [c.lesion for c in out if c.lesion is not None], cancel)
        for c in out:  # means change what a mean-mode lesion does
            c.key = lesion_key(c.lesion)
        if parameters_hash(lm.model) != lm.weights_hash:
            raise RuntimeError("internal: building lesions changed the model")
        return out


def unit_indices(anatomy, spec: ConditionSpec) -> tuple:
    """``((block, (unit, ...)), ...)`` of a manual or sweep condition, checked against the
    model (a sweep without indices: :func:`default_sweep_indices`)."""
    n_blocks = len(anatomy.blocks)
    size = unit_count(anatomy, spec.element)
    out = []
    for b, idx in spec.indices:
        if spec.element == "layers":
            idx = ()  # the whole block: no unit indices
        elif spec.kind == "sweep" and not idx:
            idx = tuple(default_sweep_indices(anatomy, spec.element))
        if not 0 <= b < n_blocks:
            raise LesionAlignError(f"{spec.kind} lesion {spec.label!r}: block {b} does not "
                                   f"exist (0..{n_blocks - 1})")
        bad = [i for i in idx if not 0 <= i < size]
        if bad:
            raise LesionAlignError(f"{spec.kind} lesion {spec.label!r}: {spec.element} "
                                   f"indices {bad} out of range 0..{size - 1}")
        out.append((b, tuple(idx)))
    return tuple(out)


class LesionBuilder:
    """Makes lesions on one loaded model, remembering importance scores and lesions by what
    defines them, so that two plans asking for the same lesion get it once."""

    def __init__(self, lm, stimuli: dict):
        self.lm = lm
        self.stimuli = stimuli
        self.anatomy = describe_model(lm.model)
        self._scores: dict = {}
        self._lesions: dict = {}
        self._means: dict = {}
        self._auto: str | None = None  # what method = "auto" means for this model
        self._head = None  # the model with its LM head, until gradxweight scores are made

    def _base_spec(self, plan: LesionPlan) -> dict:
        return {"model": self.lm.name, "model_hash": self.lm.weights_hash, "mode": plan.mode,
                "seed": plan.seed}

    def texts(self, plan: LesionPlan) -> dict:
        """{language: [text]}: a text file per language when configured, else the stimulus."""
        files = dict(plan.text)
        out = {}
        for code, stim in self.stimuli.items():
            path = files.get(code)
            if path:
                out[code] = [read_text(path, f"importance text for {code}",
                                       "set [lesions.text] to a UTF-8 text file")]
            else:
                sep = "" if stim.spaceless else " "
                out[code] = [sep.join(w.words) for w in stim.runs]
        return out

    def _recipe(self, plan: LesionPlan, spec: ConditionSpec, made: dict):
        """What defines a lesion (the memo key), whatever its label."""
        if spec.kind == "selection":
            return ("selection", str(spec.selection), spec.element, plan.method, plan.k_percent,
                    plan.mode, plan.text, plan.max_tokens, plan.languages, plan.seed)
        if spec.kind == "random":
            return ("random", made[spec.control_of].key, spec.seed)
        if spec.kind == "file":
            return ("file", spec.file)
        return (spec.kind, spec.element, spec.indices, spec.label, plan.mode)

    def lesion(self, plan: LesionPlan, spec: ConditionSpec, made: dict, progress=None,
               cancel=None):

        if spec.kind == "intact":
            return None
        recipe = self._recipe(plan, spec, made)
        if recipe in self._lesions:
            return self._lesions[recipe]
        base = self._base_spec(plan)
        if spec.kind == "selection":
            lesion = self._select(plan, spec, base, progress, cancel)
        elif spec.kind == "random":
            target = made[spec.control_of].lesion
            lesion = random_like(target, self.anatomy, seed=spec.seed, name=spec.label)
        elif spec.kind == "file":
            lesion = Lesion.load(spec.file)
            h = lesion.spec.get("model_hash")
            if h and h != self.lm.weights_hash:
                raise LesionAlignError(
                    f"{spec.file}: this lesion was made for model weights {h[:12]}..., not "
                    f"for {self.lm.name} ({self.lm.weights_hash[:12]}...); make it again on "
                    "this model")
            check_fits(lesion, self.anatomy)
            lesion.spec.setdefault("name", spec.label)
        else:  # manual, sweep
            lesion = imp.manual(spec.element, {b: list(idx) for b, idx in
                                               unit_indices(self.anatomy, spec)},
                                self.anatomy, name=spec.label)
            lesion.mode = plan.mode
            lesion.spec.update(base, element=spec.element)
            if spec.kind == "sweep":
                lesion.spec.update(sweep="sweep", layer=spec.layer)
        self._lesions[recipe] = lesion
        return lesion

    def _select(self, plan: LesionPlan, spec: ConditionSpec, base: dict, progress, cancel):
        method = self._method(plan)
        # gradient passes: windows per pass bounded by [lesions] importance_batch_tokens or
        # the device's memory (the scores are the mean over windows whatever the batches,
        # to float rounding; the budget is kept in the cache key, which rounding follows)
        batch_tokens = None
        if method == "gradxweight":
            batch_tokens = (plan.importance_batch_tokens
                            or imp.importance_batch_tokens(self.lm.model))
        key = (method, spec.element, plan.text, plan.max_tokens, plan.languages, plan.seed,
               batch_tokens)
        if key not in self._scores:
            texts = self.texts(plan)
            lm = self.lm
            if method == "lape":
                scores = imp.lape_probabilities(lm.model, lm.tokenizer, texts, self.anatomy,
                                                plan.max_tokens, cancel=cancel)
            else:
                # large models: the scores go to disk one tensor at a time as they are made
                # and come back one tensor at a time for each selection (scores.store_for)
                store = store_for(lesionable(self.anatomy, "weights"), len(texts))
                if method == "gradxweight":
                    head, self._head = self._head, None  # loaded by _method, used once
                    scores = imp.gradxweight_scores(lm.source, lm.tokenizer, texts, lm.device,
                                                    plan.max_tokens, plan.seed, progress,
                                                    cancel, head_model=head,
                                                    max_batch_tokens=batch_tokens,
                                                    store=store)
                    del head
                else:
                    scores = imp.wanda_scores(lm.model, lm.tokenizer, texts, self.anatomy,
                                              plan.max_tokens, progress, cancel, store=store)
                if spec.element != "weights":
                    scores = {L: imp.unit_scores(s, spec.element, self.anatomy)
                              for L, s in scores.items()}
                    store.close()  # the unit scores are small; the weights' are not kept
                elif store.on_disk:  # their percentile ranks beside them, not in memory
                    self._scores[key] = (scores, store.beside("ranks"))
            self._scores.setdefault(key, (scores, {}))
        scores, ranks = self._scores[key]
        spec_d = dict(base, element=spec.element, method=method)
        if batch_tokens is not None:
            spec_d["batch_tokens"] = batch_tokens
        if method == "lape":
            lesion = imp.select_lape(scores, str(spec.selection), plan.k_percent, spec.label,
                                     spec_d)
        else:
            lesion = imp.select(scores, str(spec.selection), plan.k_percent, spec.element,
                                spec.label, spec_d, rank_cache=ranks)
        lesion.mode = plan.mode
        return lesion

    def _method(self, plan: LesionPlan) -> str:
        """The importance method; ``auto``: LAPE for neurons, gradient x weight where the
        model loads with a language-modelling head (loaded once, kept until its scores are
        computed), Wanda otherwise."""
        if plan.method != "auto":
            return plan.method
        if plan.element == "neurons":
            return "lape"
        if self._auto is None:
            try:
                self._head = load_lm_head_model(self.lm.source, self.lm.device)
                self._auto = "gradxweight"
            except (LesionAlignError, OSError, ValueError):
                self._auto = "wanda"
        return self._auto

    def add_means(self, plan: LesionPlan, lesions: list, cancel=None) -> None:
        """Mean-ablation: the mean activation of every unit over the importance text."""
        if plan.mode != "mean":
            return
        for element in {les.element for les in lesions} - {"weights", "layers"}:
            key = (element, plan.text, plan.max_tokens)
            if key not in self._means:
                self._means[key] = imp.mean_activations(self.lm.model, self.lm.tokenizer,
                                                        self.texts(plan), element,
                                                        self.anatomy, plan.max_tokens, cancel)
            means = self._means[key]
            for les in lesions:
                if les.element == element and les.mode == "mean":
                    les.means = {k: means[k] for k in les.masks}
