"""The data sources of an analysis: a config's files or the demo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..data.dataset import load_dataset

if TYPE_CHECKING:
    from .config import AnalysisConfig


def open_source(config: AnalysisConfig, progress: Callable | None = None,
                cancel: Callable | None = None, subjects=None):
    """The data source of a config: its files (:func:`load_dataset`; ``subjects``: only
    these) or the demo."""
    if config.data.kind == "demo":
        from .demo_source import DemoDataset

        return DemoDataset(config)
    return load_dataset(config, progress=progress, cancel=cancel, subjects=subjects)
