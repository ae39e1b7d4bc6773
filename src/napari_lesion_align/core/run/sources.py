"""The data sources of an analysis: what the stages ask of one (:class:`DataSource`) and
the registry of the kinds of source (:data:`SOURCES`: files, the demo), looked up by a
config's ``[data] kind``; the stages and the pipeline never ask which kind they have."""

from __future__ import annotations

from typing import Callable, Protocol

from ..data.dataset import load_dataset
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
