"""What the stages share: the progress of a run over its phases, the model's identity,
the condition sets and the engine (config, data source, stores, model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..base.errors import Cancelled, LesionAlignError
from ..lesions.plan import LesionPlan
from .store import model_identity
from ..model import loading as _loading


ProgressFn = Callable[[float, str], None]


#: the share of the progress bar each phase of a run takes (``Progress.phase``; the
#: executors and :func:`time_left` ask it): data, lesions, features, fits, group
PHASES = {"data": (0.0, 0.04), "lesions": (0.04, 0.15), "features": (0.15, 0.45),
          "fits": (0.45, 0.97), "group": (0.97, 1.0)}


#: seconds a phase must have run before its own rate predicts the rest
PHASE_RATE_MIN_S = 5.0


def time_left(history) -> float | None:
    """Seconds a run has left, from its progress ``history`` ``[(elapsed s, fraction),
    ...]`` (in order): the current phase's rate (:data:`PHASES`), once the phase has run
    :data:`PHASE_RATE_MIN_S`, applied to all that is left; before that the whole run's
    mean rate. (Phases differ: with stored features the features phase takes seconds and
    the fits minutes, which the run's mean rate would not see.) ``None`` before 2 % or
    when done."""
    if not history:
        return None
    t, f = history[-1]
    if not 0.02 < f < 1.0:
        return None
    lo = max(a for a, _ in PHASES.values() if a <= f)
    t0, f0 = next((ti, fi) for ti, fi in history if fi >= lo)
    if t - t0 >= PHASE_RATE_MIN_S and f > f0:
        return (1.0 - f) * (t - t0) / (f - f0)
    return t * (1.0 - f) / f


class Progress:
    """Maps the progress of consecutive phases onto one 0..1 scale."""

    def __init__(self, callback: ProgressFn | None, cancel: Callable[[], bool] | None):
        self.callback = callback
        self.cancel_fn = cancel
        self.lo, self.hi = 0.0, 1.0

    def phase(self, lo: float, hi: float) -> "Progress":
        self.lo, self.hi = lo, hi
        self(0.0, "")
        return self

    def __call__(self, frac: float, msg: str) -> None:
        if self.callback is not None:
            self.callback(self.lo + (self.hi - self.lo) * min(max(frac, 0.0), 1.0), msg)

    def sub(self, lo: float, hi: float) -> ProgressFn:
        """A callback for a part [lo, hi] of the current phase."""
        def f(frac, msg):
            self(lo + (hi - lo) * frac, msg)
        return f

    def check(self) -> None:
        if self.cancel_fn is not None and self.cancel_fn():
            raise Cancelled()


@dataclass
class ModelInfo:
    """What the units need to know of the model without loading it."""

    name: str
    source: str
    weights_hash: str
    tokenizer_hash: str
    n_layers: int

    @property
    def identity(self) -> str:
        return model_identity(self.weights_hash, self.tokenizer_hash)

    @classmethod
    def of(cls, lm) -> "ModelInfo":
        return cls(lm.name, lm.source, lm.weights_hash, lm.tokenizer_hash, lm.n_layers)


@dataclass
class ConditionSet:
    """Conditions that need features at one layer: the analysis', or a data source's own
    (the demo's generator)."""

    name: str
    plan: LesionPlan
    layer: int
    conditions: list = field(default_factory=list)  # of Condition


@dataclass
class Engine:
    """What the stages share: the config, the data source, the stores, the model."""

    config: object
    source: object  # a sources.DataSource: files or the demo
    store: object  # store.FeatureStore
    out: object  # store.OutputFolder
    progress: Progress
    model: object = None  # a LoadedModel, loaded on first need
    info: ModelInfo | None = None
    sets: list = field(default_factory=list)  # of ConditionSet
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    #: the device and dtype the model ran on when a Dask worker loaded it (provenance)
    compute: dict | None = None
    #: a Dask worker's own (executor): its features reader, whether the source is prepared
    trf: object = None
    prepared: bool = False

    @property
    def cancel(self):
        return self.progress.cancel_fn

    def lm(self):
        """The model, loaded once (the cache of :func:`.model.load_model` is per process)."""
        if self.model is None:
            m = self.config.model
            self.progress(0.0, f"loading model {m.name}")
            self.model = _loading.load_model(m.name, **m.load_options(),
                                    progress=lambda msg: self.progress(0.5, msg))
            self.progress.check()
        if self.info is not None and self.info.identity != ModelInfo.of(self.model).identity:
            raise LesionAlignError(
                f"{self.out.root}: its units were computed with other weights of "
                f"{self.config.model.name!r} (the model changed since); rerun with --force")
        return self.model

    @property
    def analysis(self) -> ConditionSet:
        return self.sets[0]


def word_features(eng: Engine, cs: ConditionSet, code: str, label: str) -> list:
    """Per run, the stored word features of one condition of a set."""
    stim = eng.source.stimuli[code]
    c = next(c for c in cs.conditions if c.label == label)
    opts = eng.config.features.content()
    return [eng.store.load(eng.store.key(eng.info.identity, c.key, cs.layer, opts,
                                         stim.spaceless, w)) for w in stim.runs]
