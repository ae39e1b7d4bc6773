"""The data sources of an analysis: what the stages ask of one (:class:`DataSource`) and
the registry of the kinds of source (:data:`SOURCES`: files, the demo), looked up by a
config's ``[data] kind``; the stages and the pipeline never ask which kind they have. What a
front end asks of a kind (its label, its languages, its shipped result, its own config)
is :data:`KINDS` (:class:`SourceKind`): the widgets never ask for the demo by name."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

from ..data import demo as demo_data
from ..data.dataset import load_dataset
from ..data.options import DemoConfig
from .config import AnalysisConfig, demo_config
from .demo_source import DemoDataset


class DataSource(Protocol):
    """A source of stimuli and BOLD runs: a config's files (:class:`.data.dataset.Dataset`)
    or the demo (:class:`.demo_source.DemoDataset`)."""

    tr: float
    space: object  # VolumeSpace | RegionSpace
    stimuli: dict  # language -> LanguageStimuli

    @property
    def subjects(self) -> list[str]: ...

    def subjects_of(self, code: str) -> list[str]:
        """The subjects with BOLD in language ``code``."""

    def n_vols(self, code: str) -> list[int]:
        """Volumes per run of a language."""

    def runs(self, subject: str, code: str) -> list:
        """A subject's :class:`.data.dataset.BoldRun` of a language (data read on demand)."""

    def inputs(self, subject: str, code: str) -> dict:
        """What identifies a subject's inputs (a change makes its fit run again)."""

    def condition_sets(self, config) -> list:
        """Model conditions the source needs features of itself (the demo's generator)."""

    def prepare(self, engine) -> None:
        """Made ready from the engine's features before the first subject is fitted."""

    def provenance(self) -> dict:
        """What result.json records of the source, beyond the config."""


def _files(config, progress: Callable | None = None, cancel: Callable | None = None,
           subjects=None) -> DataSource:
    return load_dataset(config, progress=progress, cancel=cancel, subjects=subjects)


#: ``[data] kind`` (as read: a BIDS config is a volume config) -> what opens its source
#: (``opener(config, progress=, cancel=, subjects=)``)
SOURCES: dict[str, Callable] = {"volume": _files, "regions": _files, "demo": DemoDataset.open}


def open_source(config, progress: Callable | None = None, cancel: Callable | None = None,
                subjects=None) -> DataSource:
    """The data source of a config (``subjects``: only these, where a source reads files)."""
    return SOURCES[config.data.kind](config, progress=progress, cancel=cancel,
                                     subjects=subjects)


# --------------------------------------------------------------------------- front ends
#: the demo's result as the package ships it, precomputed (``data/sample/``: what File >
#: Open Sample opens at once; ``scripts/make_sample_result.py`` writes it)
SHIPPED_DEMO_RESULT = Path(__file__).resolve().parents[2] / "data" / "sample"


def _demo_config(tables: dict, *, seed: int = 0, lesions: dict | None = None,
                 **overrides) -> AnalysisConfig:
    """The demo's config from a front end's ``{"data": {"kind": "demo", "demo": {...}}}``
    tables: its recipe as defaults (:func:`.config.demo_config`), the ``[data.demo]``
    seed defaulting to ``seed``, ``lesions`` over the recipe's (none when empty)."""
    options = DemoConfig.parse({"seed": seed, **tables.get("data", {}).get("demo", {})})
    return demo_config(n_subjects=options.n_subjects, seed=options.seed,
                       lesions=lesions or False, **overrides)


@dataclass(frozen=True)
class SourceKind:
    """What a front end (the widgets) asks of a kind of source, beside opening it
    (:data:`SOURCES`): never its name.

    ``languages``: the languages a built-in source brings (empty: the config names them);
    ``mask``: its analysis mask when it brings one; ``shipped_result``: its result shipped
    precomputed with the package (or None); ``config(tables, seed=, lesions=,
    **overrides)``: its own config with its defaults (None: the config is read from the
    tables as a file's); ``tables``: the ``[data]`` tables a front end starts from;
    ``lesions``: the ``[lesions]`` table a front end starts from."""

    name: str
    label: str
    languages: tuple = ()
    mask: Path | None = None
    shipped_result: Path | None = None
    config: Callable | None = None
    tables: Mapping = field(default_factory=dict)
    lesions: Mapping = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """Whether the source brings its own data (nothing for the user to point at)."""
        return bool(self.languages)

    def start_tables(self) -> dict:
        """A fresh copy of :attr:`tables`."""
        return copy.deepcopy(dict(self.tables))


#: the kinds a front end offers, by ``[data] kind``; :data:`DEFAULT_KIND` is where it starts
KINDS: dict[str, SourceKind] = {k.name: k for k in (
    SourceKind("demo", "Demo (built-in)", languages=tuple(demo_data.LANGUAGES),
               mask=demo_data.MASK_FILE, shipped_result=SHIPPED_DEMO_RESULT,
               config=_demo_config,
               tables={"data": {"kind": "demo", "demo": DemoConfig().model_dump()}},
               lesions=dict(demo_data.GENERATOR_LESIONS, enabled=True,
                            random_controls=demo_data.DEMO_RANDOM_CONTROLS)),
    SourceKind("volume", "NIfTI volumes"),
    SourceKind("regions", "region time series"))}
DEFAULT_KIND = KINDS["demo"]


def source_kind(tables: dict) -> SourceKind | None:
    """The kind of a front end's ``{"data": {"kind": ...}}`` tables (None when unknown:
    the config reader names the kinds)."""
    return KINDS.get((tables.get("data") or {}).get("kind", "volume"))
