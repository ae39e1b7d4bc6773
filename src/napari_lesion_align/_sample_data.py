"""npe2 sample data: the MNI152 template and the demo's result.

``demo_result`` needs the demo's output folder. The first use **computes it** (the demo
with lesions: the built-in offline model, 5 simulated subjects, 3 languages; several
minutes, napari waits meanwhile) and caches it in
``<cache>/demo-result-<package version>-g<demo.GENERATOR_REVISION>/`` where ``<cache>`` is
``$NAPARI_LESION_ALIGN_CACHE`` or ``~/.cache/napari-lesion-align`` (the same root as the
built-in model). Later uses read the cached folder (seconds). Delete that folder to
recompute it.
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
    """nilearn's MNI152 template (2 mm) as a grey image layer."""
    from ._layers import template_layer

    return [template_layer(2)]


def demo_cache_folder(cache_root=None) -> Path:
    """``<cache>/demo-result-<version>-g<generator revision>``: where the demo's result is
    cached (a new revision of the demo's generator computes it again)."""
    from . import __version__
    from .core.e5_offline import _default_cache_dir
    from .data.demo import GENERATOR_REVISION

    root = Path(cache_root) if cache_root is not None else _default_cache_dir()
    return root / f"demo-result-{__version__}-g{GENERATOR_REVISION}"


def ensure_demo_result(cache_root=None, progress=None) -> Path:
    """The cached demo result folder, computed first when missing (atomically: the run
    writes into a temporary folder next to it, renamed when finished)."""
    from .core.config import demo_config
    from .core.errors import LesionAlignError
    from .core.pipeline import run_analysis
    from .core.result import check_manifest

    final = demo_cache_folder(cache_root)
    if (final / "result.json").is_file():
        try:
            check_manifest(final, json.loads((final / "result.json").read_text()))
            return final
        except (LesionAlignError, ValueError, OSError) as err:
            log.warning("the cached demo result cannot be used (%s); computing it again", err)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise LesionAlignError(
            f"cannot write the demo cache in {final.parent} ({err}); set "
            "NAPARI_LESION_ALIGN_CACHE to a writable folder") from err
    log.warning("computing the demo result once (several minutes) into %s", final)
    try:
        run_analysis(demo_config(lesions=True), out_dir=tmp,
                     progress=progress or _log_progress)
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


def demo_result() -> list[tuple]:
    """The MNI template, then the demo result's layers (computed once, see above)."""
    from ._layers import result_layers, template_layer

    return [template_layer(2)] + result_layers(ensure_demo_result())
