"""The demo as a data source: the shipped stimuli, the demo mask and BOLD synthesised from
the model's features under the generator's conditions."""

from __future__ import annotations

from ..data.demo import (GENERATOR_LAYER, GENERATOR_LESIONS, GENERATOR_REVISION, LANGUAGES,
                         N_RUNS, REGIONS, RUN_TRS, TR, demo_space, planted_drivers,
                         planted_truth, synthesize_run)
from ..data.dataset import BoldRun, load_stimuli
from ..features.extraction import words_to_trs
from ..lesions.plan import LesionPlan
from .config import LesionConfig
from .engine import ConditionSet, word_features


def generator_plan(seed: int):
    """The generator's lesion plan (:data:`GENERATOR_LESIONS`: shared, one specific lesion
    per language, a random control for each); its lesions are the analysis' own when the
    analysis runs the demo's recipe (the pipeline makes them once)."""

    return LesionPlan.from_config(LesionConfig(enabled=True, random_controls=1,
                                               **GENERATOR_LESIONS), LANGUAGES, seed)


def generator_features(conditions: list, features_of) -> dict:
    """``planted_drivers``' input from the generator's conditions (found by kind, never by
    label): ``features_of(code, label)`` gives one condition's per-run features."""
    specs = [c.spec for c in conditions]
    shared = next(s.label for s in specs if s.kind == "selection"
                  and s.selection.kind == "shared")
    specific = {s.selection.language: s.label for s in specs
                if s.kind == "selection" and s.selection.kind == "specific"}
    controls = [s.label for s in specs if s.kind == "random"]
    return {code: {"intact": features_of(code, "intact"), "shared": features_of(code, shared),
                   "specific": features_of(code, specific[code]),
                   "controls": [features_of(code, lbl) for lbl in controls]}
            for code in LANGUAGES}


class DemoDataset:
    """The demo as a data source: shipped stimuli, the demo mask, synthesised BOLD.

    Its BOLD needs the demo model's features under the generator's conditions
    (:func:`condition_sets`); :meth:`prepare` turns them into the planted drivers before
    the first subject is fitted. Each subject's runs are synthesised when its fit loads
    them.
    """

    kind = "demo"

    def __init__(self, config):
        demo = config.data.demo
        self.n_subjects = demo.n_subjects if demo else 5
        self.seed = demo.seed if demo else 0
        self.analysis_seed = config.seed
        self.stimuli = {lang.code: load_stimuli(lang) for lang in config.data.languages}
        self.space = demo_space()
        self.tr = TR
        self.truth = planted_truth(self.space)
        self.drivers: dict | None = None
        self.subjects = [f"{i + 1:02d}" for i in range(self.n_subjects)]

    @classmethod
    def open(cls, config, progress=None, cancel=None, subjects=None) -> "DemoDataset":
        """The demo of a config (every subject: its BOLD is made, not read)."""
        return cls(config)

    def provenance(self) -> dict:
        """The planted truth: the regions and the categories of the demo's voxels."""
        return {"demo_truth": {"regions": [[c, list(x), r] for c, x, r in REGIONS],
                               "categories": self.truth["categories"]}}

    def subjects_of(self, code: str) -> list[str]:
        return list(self.subjects)

    def n_vols(self, code: str) -> list[int]:
        return [RUN_TRS] * N_RUNS

    def runs(self, subject: str, code: str) -> list:
        si = self.subjects.index(subject)
        return [BoldRun(f"demo:sub-{subject}_lang-{code}_run-{r + 1}", RUN_TRS,
                        (lambda r=r: synthesize_run(self._drivers(code, r), self.truth, code,
                                                    si, r, self.seed)), index=r)
                for r in range(N_RUNS)]

    def inputs(self, subject: str, code: str) -> dict:
        return {"demo": GENERATOR_REVISION, "seed": self.seed,
                "subject_index": self.subjects.index(subject)}

    def condition_sets(self, config) -> list:
        return [ConditionSet("demo", generator_plan(config.seed), GENERATOR_LAYER)]

    def prepare(self, engine) -> None:
        """The planted drivers, from the generator's features in the feature store."""

        cs = next(c for c in engine.sets if c.name == "demo")

        def features_of(code, label):
            stim = self.stimuli[code]
            return [words_to_trs(wf, w.onsets, RUN_TRS, TR, "floor", 0.0, 0)
                    for wf, w in zip(word_features(engine, cs, code, label), stim.runs)]

        self.drivers = planted_drivers(generator_features(cs.conditions, features_of))

    def _drivers(self, code: str, run: int) -> dict:
        if self.drivers is None:
            raise RuntimeError("internal: the demo's BOLD is read before prepare()")
        return {cat: self.drivers[(cat, lang)][run] for (cat, lang) in self.drivers
                if lang == code}
