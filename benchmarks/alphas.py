"""The lesions' alphas: searched for every fit, or the intact model's (side by side).

Run from the repository root (no network needed; about 2 x the demo's time)::

    python benchmarks/alphas.py                    # the demo, search then intact
    python benchmarks/alphas.py --repeats 2        # search, intact, intact, search
    python benchmarks/alphas.py --json out.json

Each run is the built-in demo with its lesions (``demo_config(lesions=True)``: 5 subjects,
EN / FR / ZH, the shared lesion, one specific lesion per language, two random draws of
each, the four controls, the noise ceiling), in a fresh output folder and a fresh Python
process, under ``[encoding] condition_alphas = "search"`` (every fit searches its alphas by
inner CV) or ``"intact"`` (the lesions, their draws and the feature nulls refit with the
intact model's per-voxel alphas). The feature store is the user's (warm after the first
run: the feature stage is the same under both). What it reports:

* wall time of each run, its encoding stage, and the ratio intact / search;
* per subject x language x lesion (and draw), the correlation across voxels of the Δr maps
  made under the two modes;
* the category maps' Dice against the demo's planted regions (the cores that
  ``tests/test_demo.py`` scores) under each mode;
* the per-voxel lesion-vs-random test: voxels beyond random in every language (shared
  lesion) and in the lesion's language (specific lesions) under each mode, and their Dice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MODES = ("search", "intact")

_RUN = """
import sys, time
from pathlib import Path
from napari_lesion_align.core.run.config import demo_config
from napari_lesion_align.core.run.executor import executor_for
from napari_lesion_align.core.run.pipeline import run_analysis
config = demo_config(seed=0, lesions=True, encoding={"condition_alphas": sys.argv[1]})
ex = executor_for(config.compute)
t0 = time.perf_counter()
try:
    run_analysis(config, Path(sys.argv[2]), force=True, executor=ex)
finally:
    ex.close()
print("WALL", time.perf_counter() - t0)
"""


def run(mode: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-c", _RUN, mode, str(out)], env=env,
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{mode} run failed:\n{p.stderr[-3000:]}")
    wall = float(p.stdout.split("WALL")[-1])
    timings = json.loads((out / "result.json").read_text())["timings"]
    return {"mode": mode, "wall_s": wall, **timings}


def compare(folders: dict) -> dict:
    from napari_lesion_align.core.analysis.statistics import dice
    from napari_lesion_align.core.data import demo
    from napari_lesion_align.core.results.result import AlignmentResult

    res = {m: AlignmentResult.load(f) for m, f in folders.items()}
    a, b = res["search"], res["intact"]
    amp = demo.planted_truth(a.space)["amplitude"]
    cores = {c: amp[c] >= 0.5 * demo.AMPLITUDE for c in demo.CATEGORIES}
    out: dict = {"deltar_corr": {}, "dice_truth": {}, "beyond": {}}
    for key in a.maps:
        s, lang, cond, stat = key
        if stat == "deltar" and key in b.maps:
            x, y = a.maps[key], b.maps[key]
            ok = np.isfinite(x) & np.isfinite(y)
            out["deltar_corr"][f"{s}/{lang}/{cond}"] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    for m, r in res.items():
        labels, legend = r.categories["lesion"]
        d = {}
        for lab, info in legend.items():
            if int(lab):
                cat = "shared" if info["name"] == "shared" else info["name"].split(":")[1]
                d[info["name"]] = dice(labels == int(lab), cores[cat])
        out["dice_truth"][m] = d
    for lesion in ["shared"] + [f"specific{L}" for L in demo.LANGUAGES]:
        langs = demo.LANGUAGES if lesion == "shared" else [lesion[-2:]]
        masks = {}
        for m, r in res.items():
            k = np.ones(r.space.n_features, dtype=bool)
            for lang in langs:
                k &= r.group_maps[(lang, lesion, "beyondrandom")] > 0.5
            masks[m] = k
        out["beyond"][lesion] = {"search": int(masks["search"].sum()),
                                 "intact": int(masks["intact"].sum()),
                                 "dice": dice(masks["search"], masks["intact"])}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1,
                    help="pairs of runs (the second pair in the other order)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="nla-bench-alphas-"))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows, folders = [], {}
    t0 = time.perf_counter()
    for i in range(args.repeats):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            out = tmp / f"{mode}-{i}"
            rows.append(run(mode, out))
            folders.setdefault(mode, out)
            r = rows[-1]
            print(f"{mode:7s} wall {r['wall_s']:7.1f} s  encoding {r['encoding_s']:7.1f} s  "
                  f"lesions {r['lesions_s']:6.1f} s  ceiling {r.get('ceiling_s', 0):5.1f} s",
                  flush=True)
    med = {m: {k: float(np.median([r[k] for r in rows if r["mode"] == m]))
               for k in ("wall_s", "encoding_s")} for m in MODES}
    print(f"\nintact / search: wall {med['intact']['wall_s'] / med['search']['wall_s']:.2f}x, "
          f"encoding {med['intact']['encoding_s'] / med['search']['encoding_s']:.2f}x")
    cmp = compare(folders)
    c = np.array(list(cmp["deltar_corr"].values()))
    print(f"Δr maps, search vs intact alphas (correlation across voxels, "
          f"{len(c)} maps): median {np.median(c):.3f}, min {c.min():.3f}")
    print("category Dice with the planted regions:")
    for m in MODES:
        print(f"  {m:7s} " + ", ".join(f"{k} {v:.3f}" for k, v in cmp["dice_truth"][m].items()))
    print("beyond random (voxels; Dice search vs intact):")
    for lesion, d in cmp["beyond"].items():
        print(f"  {lesion:10s} search {d['search']:5d}  intact {d['intact']:5d}  "
              f"Dice {d['dice']:.3f}")
    print(f"load average at end: {os.getloadavg()}; benchmark {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "median": med, **cmp}, indent=1))


if __name__ == "__main__":
    main()
