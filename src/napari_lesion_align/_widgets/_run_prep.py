"""The work a run does off the GUI thread around :func:`~..core.run.pipeline.run_analysis`:
the run, then the result's layers (:func:`.._view_model.result_tuples`, the same as any
result that opens) made into napari layers there (:func:`._layer_feed.make_layer`)."""

from __future__ import annotations

from .._view_model import result_tuples as tuples
from ..core.run import pipeline  # pipeline.run_analysis: tests replace it
from ._layer_feed import make_layer


def result_tuples(result, with_template: bool = True) -> list:
    """Layer data tuples of a result: the MNI template (optional, bottom), its default map
    and the category overlays; [] for region results."""
    return tuples(result, with_template=with_template)


def run(config, with_template: bool, progress, cancel, out_dir=None):
    """Run the analysis: ``(result, napari layers)`` (the layers are built here, off the GUI
    thread). ``out_dir``: the output folder (a folder of the same analysis resumes)."""
    result = pipeline.run_analysis(config, out_dir, progress=progress, cancel=cancel)
    progress(1.0, "preparing the layers")
    return result, [make_layer(t) for t in result_tuples(result, with_template)]
