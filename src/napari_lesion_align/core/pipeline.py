"""One function runs an analysis from a config: :func:`run_analysis`.

The GUI, the CLI and the cluster runner all call it. It is a short sequence of stage calls
(:mod:`.stages`) over units whose inputs and outputs are on disk: running the same config
into the same output folder again resumes (finished units are skipped), a different
analysis in that folder is refused. It reports progress through a callback
``progress(fraction, message)`` and stops at the next check when ``cancel()`` returns True
(raising :class:`~napari_lesion_align.core.errors.Cancelled`).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from typing import Callable

from .. import __version__
from .config import AnalysisConfig
from .stages import (ConditionSet, Engine, Progress, ProgressFn, fit_jobs, stage_conditions,
                     stage_features, stage_fits, stage_group)

__all__ = ["run_analysis", "Progress", "ProgressFn"]


def run_analysis(config: AnalysisConfig, out_dir=None, *, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None, model=None,
                 force: bool = False):
    """Run the analysis a config describes into ``out_dir``.

    Parameters
    ----------
    config : AnalysisConfig
    out_dir : the output folder (see docs/outputs.md). Units land there as they finish and
        ``result.json`` is written last; the same config run again into the same folder
        computes only what is missing. ``None``: a temporary folder, removed at the end
        (the result is then returned fully in memory).
    progress : callable(fraction, message)
    cancel : callable() -> bool, checked between steps.
    model : an already loaded :class:`~.model.LoadedModel` (skips loading ``config.model``).
    force : when ``out_dir`` holds another analysis, delete its files and start again
        (instead of refusing).

    Returns
    -------
    AlignmentResult
        Its maps are read from ``out_dir`` when first used.
    """
    from .dataset import open_source
    from .plan import LesionPlan
    from .result import AlignmentResult
    from .store import FeatureStore, OutputFolder, identity

    t_start = time.perf_counter()
    timings: dict = {}
    P = Progress(progress, cancel)
    plan = LesionPlan.of(config)
    tmp = None
    if out_dir is None:
        tmp = out_dir = tempfile.mkdtemp(prefix="napari-lesion-align-")
    try:
        # 1. data (files are checked before the model is loaded, and before the folder is
        # claimed)
        t = time.perf_counter()
        P.phase(0.0, 0.04)
        source = open_source(config, progress=P, cancel=cancel)
        out = OutputFolder.open(out_dir, identity(config), force=force)
        timings["data_s"] = time.perf_counter() - t
        eng = Engine(config, source, FeatureStore(config.compute.feature_store), out, P,
                     model=model)
        eng.sets = [ConditionSet("analysis", plan, config.model.layer)]
        eng.sets += source.condition_sets(config)

        # 2. conditions: the lesions (or the record of a previous run)
        t = time.perf_counter()
        P.phase(0.04, 0.15)
        P(0.0, "choosing lesions" if config.lesions.enabled else "intact model")
        stage_conditions(eng)
        timings["lesions_s"] = time.perf_counter() - t

        # 3. features and fits, for the units not done yet
        jobs, reused = fit_jobs(eng)
        t = time.perf_counter()
        if jobs:
            P.phase(0.15, 0.45)
            stage_features(eng)
            source.prepare(eng)
        timings["features_s"] = time.perf_counter() - t
        t = time.perf_counter()
        P.phase(0.45, 0.97)
        stage_fits(eng, jobs, reused)
        timings["encoding_s"] = time.perf_counter() - t

        # 4. group statistics, tables, result.json (last)
        t = time.perf_counter()
        P.phase(0.97, 1.0)
        P(0.0, "group statistics" if len(plan.specs(eng.info.n_layers)) > 1 else "summary")
        result = stage_group(eng)
        timings["analysis_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        result.provenance = _provenance(config, eng, result, timings)
        P(0.5, "writing results")
        result.write_tables(out.root)
        if tmp is not None:
            result = AlignmentResult.load(out.root, lazy=False)
            result.truth = getattr(source, "truth", None)
        if progress is not None:
            progress(1.0, "done")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _provenance(config, eng: Engine, result, timings: dict) -> dict:
    info = eng.info
    prov = {
        "package": "napari-lesion-align",
        "version": __version__,
        "config": config.to_dict(),
        "model": {"name": config.model.name, "source": info.source,
                  "weights_hash": info.weights_hash, "tokenizer_hash": info.tokenizer_hash,
                  "layer": config.model.layer, "n_layers": info.n_layers},
        "seed": config.seed,
        "conditions": result.provenance["conditions"],
        "timings": timings,
        # no fit to do: no feature was needed (nor looked up)
        "units": {"features": eng.counts.get("features", {"computed": 0, "reused": 0}),
                  "fits": eng.counts.get("fits")},
        "fits": result.provenance["fits"],
        "warnings": result.provenance["warnings"],
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    truth = getattr(eng.source, "truth", None)
    if truth is not None:
        from ..data.demo import REGIONS

        prov["demo_truth"] = {"regions": [[c, list(x), r] for c, x, r in REGIONS],
                              "categories": truth["categories"]}
    return prov
