"""npe2 sample data: the MNI152 template and the demo's result.

``demo_result`` opens at once: the package ships the demo's result, precomputed
(``data/sample/``: the group maps, the category maps and the first subject's maps of
``napari-lesion-align demo``; made by ``scripts/make_sample_result.py``, and a test checks
that it matches what the demo computes). Computing the whole demo here (the built-in
offline model, 5 simulated subjects, 3 languages; several minutes) is the user's choice:
in napari the notification that the shipped result was opened offers it
(:func:`compute_demo_in_background`); outside napari :func:`ensure_demo_result` does it.

A computed demo result is cached in
``<cache>/demo-result-<package version>-g<demo.GENERATOR_REVISION>/`` where ``<cache>`` is
``$NAPARI_LESION_ALIGN_CACHE`` or ``~/.cache/napari-lesion-align`` (the same root as the
built-in model); once there, File > Open Sample opens it instead of the shipped one.
Delete that folder to go back to the shipped result.

In napari the computation never runs in the GUI thread: it goes on in a worker with its
progress in napari's activity dock (bottom right) and a notification whose button
cancels it; its layers are added, with a notification, when it is done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__
from ._layers import template_layer
from ._view_model import result_layers
from ._widgets._state import session_for, unwrap
from ._widgets._viewer import attach, attach_current, current_viewer, without_duplicate_template
from .core.base.errors import LesionAlignError
from .core.data.demo import GENERATOR_REVISION
from .core.model.e5_offline import _default_cache_dir
from .core.results.result import check_manifest
from .core.run import pipeline  # pipeline.run_analysis: tests replace it
from .core.run.config import demo_config
from .core.run.sources import SHIPPED_DEMO_RESULT

log = logging.getLogger(__name__)


def mni_template() -> list[tuple]:
    """nilearn's MNI152 template (2 mm) as a grey image layer; in napari it goes beneath
    the maps, and is not added twice."""
    attach_current()  # beneath the maps; a second copy is dropped (napari needs a layer)
    return [template_layer(2)]


#: the shipped demo result (package data; scripts/make_sample_result.py writes it): the demo
#: source's shipped result in the registry of sources
SAMPLE_FOLDER = SHIPPED_DEMO_RESULT


def shipped_sample() -> Path:
    """The shipped demo result folder; a clear error when the installed package lacks it."""
    if not (SAMPLE_FOLDER / "result.json").is_file():
        raise LesionAlignError(
            f"{SAMPLE_FOLDER}: the shipped demo result is missing from this installation; "
            "reinstall napari-lesion-align (pip install --force-reinstall "
            "napari-lesion-align), or compute the demo: napari-lesion-align demo --out DIR")
    return SAMPLE_FOLDER


#: what the shipped sample keeps of the demo (a few MB: every map is a float volume)
SAMPLE_GROUP_STATS = ("t", "ceiling")  # the group tests and the noise ceiling per language
SAMPLE_SUBJECT_STATS = ("r",)


def sample_of(result):
    """The shipped sample of a demo result (an AlignmentResult): its category maps,
    summary and provenance, the group t maps, the noise ceiling and the first subject's r maps of
    every condition but the random draws (the rest is what makes the full result large).
    ``scripts/make_sample_result.py`` saves it into :data:`SAMPLE_FOLDER`."""
    import dataclasses

    keep = result.subjects[0]
    shown = [c for c in result.conditions if result.kind_of(c) != "random"]
    summary = None
    if result.summary is not None:
        summary = [r for r in result.summary if r["subject"] in ("group", keep)]
    prov = dict(result.provenance)
    prov["sample"] = {
        "what": "napari-lesion-align's shipped demo result: the category maps and summary "
                "of the demo, its group t maps, its noise ceiling and one subject's r "
                "maps (random draws left out)",
        "subject_kept": keep, "subjects_in_demo": result.subjects}
    return dataclasses.replace(
        result, maps={k: v for k, v in result.maps.items()
                      if k[0] == keep and k[2] in shown and k[3] in SAMPLE_SUBJECT_STATS},
        group_maps={k: v for k, v in result.group_maps.items()
                    if k[1] in shown and k[2] in SAMPLE_GROUP_STATS},
        n_valid={k: v for k, v in result.n_valid.items() if k[0] == keep},
        provenance=prov, summary=summary, truth=None)


def demo_cache_folder(cache_root=None) -> Path:
    """``<cache>/demo-result-<version>-g<generator revision>``: where the demo's result is
    cached (a new revision of the demo's generator computes it again)."""
    root = Path(cache_root) if cache_root is not None else _default_cache_dir()
    return root / f"demo-result-{__version__}-g{GENERATOR_REVISION}"


def cached_demo_result(cache_root=None) -> Path | None:
    """The cached demo result folder when it is complete and intact, else None."""
    final = demo_cache_folder(cache_root)
    if (final / "result.json").is_file():
        try:
            check_manifest(final, json.loads((final / "result.json").read_text()))
            return final
        except (LesionAlignError, ValueError, OSError) as err:
            log.warning("the cached demo result cannot be used (%s); computing it again", err)
    return None


def ensure_demo_result(cache_root=None, progress=None, cancel=None) -> Path:
    """The cached demo result folder, computed first when missing (atomically: the run
    writes into a temporary folder next to it, renamed when finished)."""
    cached = cached_demo_result(cache_root)
    if cached is not None:
        return cached
    final = demo_cache_folder(cache_root)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise LesionAlignError(
            f"cannot write the demo cache in {final.parent} ({err}); set "
            "NAPARI_LESION_ALIGN_CACHE to a writable folder") from err
    log.warning("computing the demo result once (several minutes) into %s", final)
    try:
        kwargs = {"cancel": cancel} if cancel is not None else {}
        pipeline.run_analysis(demo_config(lesions=True), out_dir=tmp,
                     progress=progress or _log_progress, **kwargs)
        if final.exists():  # an incomplete folder from elsewhere (no result.json)
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        if not (final / "result.json").is_file():  # not a concurrent run that won
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _log_progress(fraction: float, message: str) -> None:
    log.info("demo result: %3.0f%% %s", 100 * fraction, message)


def demo_layers(folder) -> list[tuple]:
    """The MNI template, then the layers of the demo result in ``folder``."""
    return result_layers(folder, template=True)


def demo_result() -> list[tuple]:
    """The MNI template, then the demo result's layers: a computed demo result when one is
    cached (see above), else the shipped one, at once. In napari, opening the shipped
    result offers (in a notification) to compute the whole demo."""
    folder = cached_demo_result()
    shipped = folder is None
    if shipped:
        folder = shipped_sample()
    attach_current()
    layers = without_duplicate_template(demo_layers(folder))
    viewer = current_viewer()
    if shipped and viewer is not None:
        offer_full_demo(viewer)
    return layers


#: what the notification of an opened shipped result says (and its button)
SHIPPED_NOTE = ("Opened the demo's shipped result (precomputed: group maps, categories, "
                "one subject's maps). Computing the whole demo here takes several minutes.")
COMPUTE_ACTION = "Compute the demo"
CANCEL_ACTION = "Cancel"


def offer_full_demo(viewer, cache_root=None) -> None:
    """A notification that the shipped result is open, with a button that computes the
    whole demo (:func:`compute_demo_in_background`)."""
    # napari: this module loads headless
    from napari.utils.notifications import Notification, notification_manager

    notification_manager.dispatch(Notification(
        SHIPPED_NOTE, severity="info",
        actions=[(COMPUTE_ACTION,
                  lambda *_: compute_demo_in_background(viewer, cache_root))]))


def compute_demo_in_background(viewer, cache_root=None):
    """Compute the demo result in a worker, with its progress in napari's activity dock
    (``napari.utils.progress``) and a notification; its layers are added to ``viewer``
    when done. Returns the task (None when one is running already)."""
    # napari: this module loads headless
    from napari.utils import progress as napari_progress
    from napari.utils.notifications import show_error, show_info  # (see above)

    # Qt: the workers and the layer feeder load in napari only (this module loads headless)
    from ._widgets._layer_feed import LayerFeeder, make_layer  # (see above)
    from ._widgets._tasks import start_task  # (see above)

    viewer = unwrap(viewer)
    attach(viewer)
    session = session_for(viewer)
    running = session._demo_task
    if running is not None and running.running:
        show_info("the demo result is being computed (see the activity dock)")
        return None
    # napari: this module loads headless
    from napari.utils.notifications import Notification, notification_manager

    bar = napari_progress(total=1000, desc="demo result")
    task: list = []

    def fn(progress, cancel):
        from ._widgets._tasks import import_model_libraries  # Qt (see above)

        import_model_libraries()
        folder = ensure_demo_result(cache_root, progress=progress, cancel=cancel)
        return [make_layer(t) for t in demo_layers(folder)]

    def on_progress(fraction, message):
        bar.set_description(f"demo result: {message}"[:80])
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        bar.refresh()

    def done(outcome):
        bar.close()
        if outcome.kind == "ok":
            have_template = any(layer.metadata.get("stat") == "template"
                                for layer in viewer.layers)
            layers = [layer for layer in outcome.value
                      if not (have_template and layer.metadata.get("stat") == "template")]
            session._demo_feeder = LayerFeeder(viewer, layers).start()
            show_info(f"The demo result is computed ({len(layers)} layers added); "
                      "File > Open Sample opens it from now on.")
        elif outcome.kind == "cancelled":
            show_info("Computing the demo result was cancelled; File > Open Sample opens "
                      "the shipped result.")
        elif outcome.kind == "error":
            show_error(outcome.message)

    session._demo_task = start_task(fn, on_done=done, on_progress=on_progress,
                                    name="demo result")
    task.append(session._demo_task)
    notification_manager.dispatch(Notification(
        "Computing the demo result (several minutes; the command line "
        "'napari-lesion-align demo' does the same). Progress: the activity dock "
        "(bottom right). napari stays usable; its layers appear when it is done.",
        severity="info", actions=[(CANCEL_ACTION, lambda *_: task[0].cancel())]))
    return session._demo_task
