"""The work a run does off the GUI thread around :func:`~..core.pipeline.run_analysis`:
the run, then the result's layer data tuples. No Qt here."""

from __future__ import annotations


def result_tuples(result, with_template: bool = True) -> list:
    """Layer data tuples of a result: the MNI template (optional, bottom), the group maps and
    the category overlays (``_layers.result_layers``); [] for region results."""
    from .. import _layers
    from ..core.errors import LesionAlignError

    if getattr(result.space, "kind", None) != "volume":
        return []
    out = [_layers.template_layer(2)] if with_template else []
    try:
        out.extend(_layers.result_layers(result))
    except LesionAlignError:
        return out
    return out


def run(config, with_template: bool, progress, cancel, out_dir=None):
    """Run the analysis: ``(result, napari layers)`` (the layers are built here, off the GUI
    thread). ``out_dir``: the output folder (a folder of the same analysis resumes)."""
    from ..core.pipeline import run_analysis

    result = run_analysis(config, out_dir, progress=progress, cancel=cancel)
    progress(1.0, "preparing the layers")
    from ._show import run_layers

    return result, run_layers(result, with_template)
