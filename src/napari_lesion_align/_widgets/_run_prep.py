"""The work a run does off the GUI thread around :func:`~..core.pipeline.run_analysis`:
build a manual lesion on the model, then the result's layer data tuples. No Qt here."""

from __future__ import annotations

from pathlib import Path


def stimuli_of(config) -> dict:
    """``{code: LanguageStimuli}`` of a config (the demo's shipped annotations for the demo)."""
    from ..core.dataset import load_stimuli

    if config.data.kind == "demo":
        from ..data import demo

        langs = demo.demo_language_data()
    else:
        langs = config.data.languages
    return {lang.code: load_stimuli(lang) for lang in langs}


def build_manual(lm, manual: dict):
    """The manual lesion ``{"element", "indices", "mode"}`` on a loaded model."""
    from ..core.anatomy import describe_model
    from ..core.importance import manual as make_manual

    lesion = make_manual(manual["element"], manual["indices"], describe_model(lm.model),
                         name="manual")
    lesion.mode = manual.get("mode", "zero")
    lesion.spec.update(model=lm.name, model_hash=lm.weights_hash, element=lesion.element,
                       mode=lesion.mode)
    return lesion


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


def run(config, manual: dict | None, manual_path: Path | None, with_template: bool,
        progress, cancel, out_dir=None):
    """Run the analysis: ``(result, napari layers)`` (the layers are built here, off the GUI
    thread)."""
    from ..core.pipeline import run_analysis

    if manual is not None:
        from ..core.model import load_model

        m = config.model
        progress(0.0, f"loading model {m.name}")
        lm = load_model(m.name, offline=m.offline, device=m.device)
        build_manual(lm, manual).save(manual_path)
    result = run_analysis(config, out_dir, progress=progress, cancel=cancel)
    progress(1.0, "preparing the layers")
    from ._show import run_layers

    return result, run_layers(result, with_template)
