"""npe2 sample data: the MNI152 template and the demo's result.

``demo_result`` needs the demo's output folder. The first use **computes it** (the demo
with lesions: the built-in offline model, 5 simulated subjects, 3 languages; several
minutes) and caches it in
``<cache>/demo-result-<package version>-g<demo.GENERATOR_REVISION>/`` where ``<cache>`` is
``$NAPARI_LESION_ALIGN_CACHE`` or ``~/.cache/napari-lesion-align`` (the same root as the
built-in model). Later uses read the cached folder (seconds). Delete that folder to
recompute it.

In napari the computation never runs in the GUI thread: File > Open Sample returns at
once with a notification, the run goes on in a worker with its progress in napari's
activity dock (bottom right), and its layers are added when it is done. Outside napari
(scripts, tests) the function computes and returns the layers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def mni_template() -> list[tuple]:
    """nilearn's MNI152 template (2 mm) as a grey image layer; in napari it goes beneath
    the maps, and is not added twice."""
    from ._layers import template_layer
    from ._widgets._viewer import attach_current

    attach_current()  # beneath the maps; a second copy is dropped (napari needs a layer)
    return [template_layer(2)]


def demo_cache_folder(cache_root=None) -> Path:
    """``<cache>/demo-result-<version>-g<generator revision>``: where the demo's result is
    cached (a new revision of the demo's generator computes it again)."""
    from . import __version__
    from .core.e5_offline import _default_cache_dir
    from .data.demo import GENERATOR_REVISION

    root = Path(cache_root) if cache_root is not None else _default_cache_dir()
    return root / f"demo-result-{__version__}-g{GENERATOR_REVISION}"


def cached_demo_result(cache_root=None) -> Path | None:
    """The cached demo result folder when it is complete and intact, else None."""
    from .core.errors import LesionAlignError
    from .core.result import check_manifest

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
    from .core.config import demo_config
    from .core.errors import LesionAlignError
    from .core.pipeline import run_analysis

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
        run_analysis(demo_config(lesions=True), out_dir=tmp,
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
    from ._layers import result_layers

    return result_layers(folder, template=True)


def demo_result() -> list[tuple]:
    """The MNI template, then the demo result's layers (computed once, see above).

    In napari, with no cached result: the template at once (napari needs a layer), the
    computation in a worker (:func:`compute_demo_in_background`)."""
    from ._widgets._viewer import attach_current, current_viewer, without_duplicate_template

    cached = cached_demo_result()
    if cached is not None:
        attach_current()
        return without_duplicate_template(demo_layers(cached))
    viewer = current_viewer()
    if viewer is None:
        return demo_layers(ensure_demo_result())
    from ._layers import template_layer

    compute_demo_in_background(viewer)
    return [template_layer(2)]


def compute_demo_in_background(viewer, cache_root=None):
    """Compute the demo result in a worker, with its progress in napari's activity dock
    (``napari.utils.progress``) and a notification; its layers are added to ``viewer``
    when done. Returns the task (None when one is running already)."""
    from napari.utils import progress as napari_progress
    from napari.utils.notifications import show_error, show_info

    from ._widgets._state import session_for, unwrap
    from ._widgets._tasks import LayerFeeder, make_layer, start_task
    from ._widgets._viewer import attach

    viewer = unwrap(viewer)
    attach(viewer)
    session = session_for(viewer)
    running = getattr(session, "_demo_task", None)
    if running is not None and running.running:
        show_info("the demo result is being computed (see the activity dock)")
        return None
    show_info("Computing the demo result once (several minutes; the command line "
              "'napari-lesion-align demo' does the same). Progress: the activity dock "
              "(bottom right). napari stays usable; its layers appear when it is done.")
    bar = napari_progress(total=1000, desc="demo result")

    def fn(progress, cancel):
        from ._widgets._tasks import import_model_libraries

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
        elif outcome.kind == "error":
            show_error(outcome.message)

    session._demo_task = start_task(fn, on_done=done, on_progress=on_progress,
                                    name="demo result")
    return session._demo_task
