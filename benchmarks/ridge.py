"""Benchmark of the cross-validated ridge solver against scikit-learn and himalaya.

Usage::

    python benchmarks/ridge.py                      # V = 20,000 and 100,000 voxels
    python benchmarks/ridge.py --voxels 20000       # one size
    python benchmarks/ridge.py --quick              # V = 5,000 (smoke run, ~2 min)

Problem (the same for every solver): T = 2,800 training + 300 test TRs, 3,072 delayed
features (768 random features x FIR delays 1-4, z-scored), V voxels of which every 5th
carries a planted signal ``X w`` of varying strength (so that the best alpha varies across
voxels); 10 alphas log-spaced over 1e1 .. 1e7 chosen per voxel by 5 contiguous inner folds
of the training rows (560 validation / 2,240 training rows each), inner score R^2 for
every solver, float32, ``fit_intercept=True``; refit on the 2,800 training rows with each
voxel's alpha and Pearson r of the test predictions.

Solvers: this package's ``ridge_cv`` (numpy backend); a scikit-learn loop (one ``Ridge``
per alpha and inner fold, then one refit per chosen alpha), timed on two subsets of
voxels and extrapolated linearly to V; himalaya ``RidgeCV`` and ``KernelRidgeCV`` (numpy
backend, float32, ``cv`` = the same folds, ``score_func=r2_score``).

Each solver runs in its own child process that builds the data itself (fixed seed);
peak memory is the child's ``ru_maxrss``, reported as is and minus that of a child that
only builds the data (and imports the same libraries). Wall times are measured in the
same run, one solver after the other; the machine's float32 matmul peak is measured at the
start (square sgemm, best of a few) in a child with the same environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

N_TRAIN, N_TEST = 2800, 300
N_EMB, DELAYS = 768, (1, 2, 3, 4)
N_FOLDS = 5
ALPHAS = np.logspace(1, 7, 10)
SIGNAL_EVERY = 5
SEED = 1234
SKLEARN_SUBSETS = (500, 2000)
HIMALAYA_BATCH = 2000  # n_targets_batch (CV) of himalaya
HIMALAYA_BATCH_REFIT = 500  # RidgeCV's n_targets_batch_refit: its refit holds (n_alpha, p, batch)
HIMALAYA_KERNEL_BATCH_REFIT = 1000  # KernelRidgeCV's: (n_alpha, n_train, batch)


# --------------------------------------------------------------------------- data
def make_data(V: int):
    """X (n, 3072) float32, Y (n, V) float32, train/test rows and inner folds.

    Y is generated in chunks of 4,000 columns, each from its own seed: the first ``V``
    columns are the same whatever ``V`` (a subset run gets the first voxels of the full one).
    """
    from napari_lesion_align.core.encoding import contiguous_blocks
    from napari_lesion_align.core.features.extraction import fir_delays

    n = N_TRAIN + N_TEST
    rng = np.random.default_rng(SEED)
    pad = max(DELAYS)
    E = rng.standard_normal((n + pad, N_EMB), dtype=np.float32)
    X = fir_delays(E, DELAYS, pad_before=pad)
    X -= X.mean(0)
    X /= X.std(0)
    p = X.shape[1]
    # planted signal: w in a random 32-dimensional subspace, SNR varying over voxels
    U = rng.standard_normal((p, 32), dtype=np.float32) / np.sqrt(p * 32, dtype=np.float32)
    XU = X @ U
    Y = np.empty((n, V), dtype=np.float32)
    chunk = 4000  # a multiple of SIGNAL_EVERY
    for c0 in range(0, V, chunk):  # column chunks: no temporary of the size of Y
        c1 = min(V, c0 + chunk)
        crng = np.random.default_rng([SEED, c0])
        Y[:, c0:c1] = crng.standard_normal((n, chunk), dtype=np.float32)[:, : c1 - c0]
        n_sig = len(range(0, chunk, SIGNAL_EVERY))
        C = crng.standard_normal((32, n_sig), dtype=np.float32)
        C *= np.float32(3.0) * crng.random(n_sig, dtype=np.float32) ** 2
        sig = np.arange(c0, c1, SIGNAL_EVERY)  # every 5th voxel (c0 is a multiple of 5)
        Y[:, sig] += XU @ C[:, : len(sig)]
    train, test = np.arange(N_TRAIN), np.arange(N_TRAIN, n)
    folds = contiguous_blocks(train, N_FOLDS)
    return X, Y, train, test, folds


def pearson_cols(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, 0.0)


# --------------------------------------------------------------------------- solvers
def solve_ours(X, Y, train, test, folds):
    from napari_lesion_align.core.encoding import ridge_cv

    res = ridge_cv(X, Y, train, test, folds, ALPHAS, score="r2", fit_intercept=True,
                   dtype=np.float32, backend="numpy")
    return res.test_r, res.best_alpha, {k: v for k, v in res.timings.items()}


def solve_sklearn(X, Y, train, test, folds):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    V = Y.shape[1]
    scores = np.zeros((len(ALPHAS), V))
    for f in folds:
        for i, a in enumerate(ALPHAS):
            m = Ridge(alpha=a, fit_intercept=True).fit(X[f.train], Y[f.train])
            scores[i] += r2_score(Y[f.test], m.predict(X[f.test]), multioutput="raw_values")
    best = np.argmax(scores, axis=0)
    pred = np.empty((len(test), V), dtype=np.float32)
    for i in np.unique(best):
        cols = np.flatnonzero(best == i)
        m = Ridge(alpha=ALPHAS[i], fit_intercept=True).fit(X[train], Y[train][:, cols])
        pred[:, cols] = m.predict(X[test]).reshape(len(test), len(cols))
    return pearson_cols(pred, Y[test]), ALPHAS[best], {}


def _himalaya_common():
    from himalaya.backend import set_backend
    from himalaya.scoring import r2_score

    set_backend("numpy")
    return r2_score


def solve_himalaya_ridge(X, Y, train, test, folds):
    r2_score = _himalaya_common()
    from himalaya.ridge import RidgeCV

    cv = [(f.train, f.test) for f in folds]
    Xtr, Ytr = X[train[0] : train[-1] + 1], Y[train[0] : train[-1] + 1]  # views (rows 0..)
    assert len(Xtr) == len(train)
    model = RidgeCV(alphas=ALPHAS.astype(np.float32), fit_intercept=True, cv=cv,
                    solver_params=dict(score_func=r2_score, n_targets_batch=HIMALAYA_BATCH,
                                       n_targets_batch_refit=HIMALAYA_BATCH_REFIT, warn=False))
    model.fit(Xtr, Ytr)
    pred = model.predict(X[test])
    return pearson_cols(pred, Y[test]), np.asarray(model.best_alphas_, np.float64), {}


def solve_himalaya_kernel(X, Y, train, test, folds):
    r2_score = _himalaya_common()
    from himalaya.kernel_ridge import KernelRidgeCV

    cv = [(f.train, f.test) for f in folds]
    Xtr, Ytr = X[train[0] : train[-1] + 1], Y[train[0] : train[-1] + 1]
    params = dict(score_func=r2_score, n_targets_batch=HIMALAYA_BATCH,
                  n_targets_batch_refit=HIMALAYA_KERNEL_BATCH_REFIT)
    model = KernelRidgeCV(alphas=ALPHAS.astype(np.float32), kernel="linear", fit_intercept=True,
                          cv=cv, solver_params=params)
    model.fit(Xtr, Ytr)
    pred = model.predict(X[test])
    return pearson_cols(pred, Y[test]), np.asarray(model.best_alphas_, np.float64), {}


SOLVERS = {
    "ours": solve_ours,
    "sklearn": solve_sklearn,
    "himalaya_RidgeCV": solve_himalaya_ridge,
    "himalaya_KernelRidgeCV": solve_himalaya_kernel,
}


# --------------------------------------------------------------------------- children
def _import_all():
    """Import every library a solver may use (so that the data-only baseline has them)."""
    import himalaya.kernel_ridge  # noqa: F401
    import himalaya.ridge  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import napari_lesion_align.core.encoding.cross_validation


def child_main(args):
    _import_all()
    out = {}
    if args.child == "peak":
        out["peak_gflops"] = measure_peak()
    else:
        X, Y, train, test, folds = make_data(args.subset or args.n_voxels)
        out["rss_data_mb"] = _rss_now_mb()
        if args.child != "baseline":
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            r, alpha, extra = SOLVERS[args.child](X, Y, train, test, folds)
            out["wall_s"] = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            out["cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            out["extra"] = extra
            np.savez(args.out, r=r, alpha=alpha)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["loadavg"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(out), flush=True)


def _rss_now_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_peak(sizes=(4096, 6144), repeats=4) -> float:
    """Best float32 GEMM rate (GFLOP/s) over square products."""
    best = 0.0
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty_like(a)
        np.matmul(a, b, out=c)
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def run_child(kind, n_voxels, env, subset=0, out=None, timeout=7200):
    cmd = [sys.executable, __file__, "--child", kind, "--n-voxels", str(n_voxels)]
    if subset:
        cmd += ["--subset", str(subset)]
    if out:
        cmd += ["--out", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- report
def machine_info(env):
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    code = ("import numpy, threadpoolctl, json; print(json.dumps(["
            "(i['internal_api'], i.get('version'), i.get('architecture'), i['num_threads'])"
            " for i in threadpoolctl.threadpool_info()]))")
    blas = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True).stdout.strip()
    import himalaya
    import scipy
    import sklearn

    return (f"CPU: {model}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn "
            f"{sklearn.__version__}, himalaya {himalaya.__version__}; BLAS (children): {blas}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--quick", action="store_true", help="V = 5,000 only (smoke run)")
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--keep-openblas-coretype", action="store_true",
                    help="keep OPENBLAS_CORETYPE from the environment (default: unset it)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n-voxels", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--subset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)

    voxels = [5000] if args.quick else args.voxels
    env = dict(os.environ)
    coretype = env.get("OPENBLAS_CORETYPE")
    if coretype is not None and not args.keep_openblas_coretype:
        del env["OPENBLAS_CORETYPE"]
        print(f"NOTE: OPENBLAS_CORETYPE={coretype!r} was set in the environment; it is UNSET "
              "for this benchmark's child processes (OpenBLAS picks its kernels itself). "
              "Use --keep-openblas-coretype to keep it.")
    elif coretype is not None:
        print(f"NOTE: OPENBLAS_CORETYPE={coretype!r} is kept for the child processes.")
    else:
        print("NOTE: OPENBLAS_CORETYPE is not set (OpenBLAS picks its kernels itself).")
    print(machine_info(env))
    print(f"load average at start: {os.getloadavg()} (other processes make timings noisy)")
    peak = run_child("peak", 0, env)["peak_gflops"]
    print(f"measured float32 matmul peak: {peak:.1f} GFLOP/s (square sgemm 4096/6144, best of 4)")
    print(f"problem: {N_TRAIN} train + {N_TEST} test TRs, {N_EMB * len(DELAYS)} features, "
          f"{len(ALPHAS)} alphas {ALPHAS[0]:g}..{ALPHAS[-1]:g}, {N_FOLDS} contiguous inner "
          "folds, inner score R^2, float32, fit_intercept=True")
    n_val = N_TRAIN // N_FOLDS
    n_tr = N_TRAIN - n_val
    report = {"peak_gflops": peak, "coretype_env": coretype,
              "coretype_unset": coretype is not None and not args.keep_openblas_coretype,
              "sizes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="ridge_bench_"))
    for V in voxels:
        print(f"\n=== V = {V:,} voxels ===", flush=True)
        base = run_child("baseline", V, env)
        print(f"data-only child: peak RSS {base['maxrss_mb']:.0f} MiB "
              f"(data + imports {base['rss_data_mb']:.0f} MiB)", flush=True)
        rows = {}
        results = {}
        for name in args.solvers:
            if name == "sklearn":
                subs = [s for s in SKLEARN_SUBSETS if s < V] or [V]
                runs = []
                for s in subs:
                    o = str(tmp / f"{name}_{V}_{s}.npz")
                    r = run_child(name, V, env, subset=s, out=o)
                    r["extra_mb"] = r["maxrss_mb"] - run_child("baseline", V, env,
                                                               subset=s)["maxrss_mb"]
                    runs.append((s, r, o))
                    print(f"  {name} on {s} voxels: {r['wall_s']:.1f} s, "
                          f"{r['extra_mb']:.0f} MiB above its data", flush=True)
                (s1, r1, _), (s2, r2, o2) = runs[0], runs[-1]
                if s2 > s1:  # affine extrapolation: fixed cost + cost per voxel
                    slope = (r2["wall_s"] - r1["wall_s"]) / (s2 - s1)
                    wall = r1["wall_s"] + slope * (V - s1)
                    mslope = (r2["extra_mb"] - r1["extra_mb"]) / (s2 - s1)
                    rss = base["maxrss_mb"] + r1["extra_mb"] + mslope * (V - s1)
                    est = (f"time and memory estimated: linear fit of {s1}- and {s2}-voxel "
                           "runs")
                else:
                    wall, rss, est = r2["wall_s"], base["maxrss_mb"] + r2["extra_mb"], ""
                rows[name] = dict(wall_s=wall, maxrss_mb=rss, est=est,
                                  cpu_per_wall=r2["cpu_s"] / r2["wall_s"],
                                  loadavg=r2["loadavg"], subset=s2)
                results[name] = (np.load(o2), s2)
            else:
                o = str(tmp / f"{name}_{V}.npz")
                r = run_child(name, V, env, out=o)
                rows[name] = dict(wall_s=r["wall_s"], maxrss_mb=r["maxrss_mb"], est="",
                                  cpu_per_wall=r["cpu_s"] / r["wall_s"], loadavg=r["loadavg"],
                                  extra=r.get("extra", {}))
                results[name] = (np.load(o), V)
            print(f"  {name}: {rows[name]['wall_s']:.1f} s, peak RSS "
                  f"{rows[name]['maxrss_mb']:.0f} MiB", flush=True)
        # agreement with ours
        if "ours" in results:
            ours = results["ours"][0]
            for name, (res, nv) in results.items():
                if name == "ours":
                    continue
                dr = np.abs(res["r"] - ours["r"][:nv])
                rows[name]["p999_dr"] = float(np.percentile(dr, 99.9))
                rows[name]["equal_alpha"] = float(np.mean(
                    np.isclose(res["alpha"], ours["alpha"][:nv], rtol=1e-5)))
                rows[name]["agree_on"] = nv
        flops = N_FOLDS * 2 * len(ALPHAS) * n_val * n_tr * V + 2 * N_TEST * N_TRAIN * V
        print("\n(load: 1-minute load average at the end of the solver's child, its own 2 "
              "threads included: about 2 means no other work on the machine)")
        print(f"{'solver':24s} {'wall s':>9s} {'x ours':>7s} {'peak RSS MiB':>13s} "
              f"{'- data MiB':>11s} {'x ours':>7s} {'cpu/wall':>8s} {'p99.9|dr|':>10s} "
              f"{'=alpha':>7s}  notes")
        ref = rows.get("ours")
        for name, row in rows.items():
            row["extra_mb"] = row["maxrss_mb"] - base["maxrss_mb"]
            tr = row["wall_s"] / ref["wall_s"] if ref else float("nan")
            mr = row["extra_mb"] / ref["extra_mb"] if ref else float("nan")
            notes = []
            if row["est"]:
                notes.append(row["est"])
            if "agree_on" in row and row["agree_on"] != V:
                notes.append(f"agreement on the first {row['agree_on']} voxels")
            notes.append(f"load {row['loadavg']:.1f}")  # its own 2 threads included
            print(f"{name:24s} {row['wall_s']:9.1f} {tr:7.2f} {row['maxrss_mb']:13.0f} "
                  f"{row['extra_mb']:11.0f} {mr:7.2f} {row['cpu_per_wall']:8.2f} "
                  f"{row.get('p999_dr', float('nan')):10.2e} "
                  f"{row.get('equal_alpha', float('nan')):7.3f}  {'; '.join(notes)}")
        if ref:
            gf = flops / ref["wall_s"] / 1e9
            ex = ref.get("extra", {})
            print(f"\nours: {flops / 1e12:.2f} TFLOP counted (inner products "
                  f"{N_FOLDS} x 2 x {len(ALPHAS)} x {n_val} x {n_tr} x V + refit 2 x {N_TEST} x "
                  f"{N_TRAIN} x V) in {ref['wall_s']:.1f} s = {gf:.1f} GFLOP/s = "
                  f"{100 * gf / peak:.0f} % of the measured peak {peak:.1f} GFLOP/s; "
                  f"decompositions and operators: {ex.get('decompose_s', float('nan')):.1f} s, "
                  f"voxel batch {ex.get('voxel_batch')}")
            for name in ("himalaya_RidgeCV", "himalaya_KernelRidgeCV", "sklearn"):
                if name in rows:
                    r = rows[name]
                    print(f"  vs {name}: {r['wall_s'] / ref['wall_s']:.2f}x faster, "
                          f"{ref['extra_mb'] / r['extra_mb']:.2f} of its memory (above data)")
        report["sizes"][str(V)] = {"baseline_maxrss_mb": base["maxrss_mb"],
                                   "flops": flops, "rows": rows}
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return report


if __name__ == "__main__":
    main()
