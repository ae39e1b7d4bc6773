"""How the analysis scales with the number of subjects, before and after a refactor.

Run from the repository root (no network needed)::

    python benchmarks/scale.py                                # full run (see below)
    python benchmarks/scale.py --sizes 1 --versions old       # one subject, old code
    python benchmarks/scale.py --sizes 2 --versions old --runs 3   # quick end-to-end check
    python benchmarks/scale.py --json scale.json              # also save the rows
    # --workers: the fit units cut by the budget alone (base) and for the workers (new),
    # on a local Dask cluster, against the run in the process (see "Dask" below)
    python benchmarks/scale.py --versions new --dask-versions base new --workers 2 \
        --runs 3 --budgets 1024 --small-budget 0 --sizes 2 4 8 16

What it compares: ``run_analysis`` of the *current* tree (``new``: ``src/`` of this
checkout) and of commit ``aa19cb2d`` (``old``: the code before the refactor that fits one
subject, or a bounded group of subjects, at a time; checked out once with ``git worktree
add /tmp/nla-old aa19cb2d...`` when missing, ``--old-tree``). The old code cleans and
keeps every subject's BOLD of a language in memory before fitting; the new one holds one
group of at most ``[encoding] stack_mb`` MiB of stacked BOLD at a time and writes each
subject's maps to disk as it goes. Both run with the
same interpreter (this venv); only ``PYTHONPATH`` differs.

The data (built once into ``--data``, default ``/tmp/nla_scale_data``, and reused; only
missing files are written): an LPP-shaped (Le Petit Prince corpus) synthetic volume study

* the package's 4 mm MNI mask (37 x 46 x 38 grid, 29,384 voxels), one language (EN),
  ``--runs`` runs (9) of ``--volumes`` volumes (300) at TR = 2 s per subject, float32,
  uncompressed ``.nii``, written run by run (each run 78 MB on disk: the whole grid is
  stored, not only the mask; 9 runs x 16 subjects = 11.2 GB);
* word annotations: the package's three English TextGrids (300 s of audio, ~290 s of words
  each) concatenated in pairs -- run 1 = grids 1+2, run 2 = 2+3, run 3 = 3+1, then 1+3,
  2+1, 3+2, 1+1, 2+2, 3+3; the second grid's onsets shifted by 300 s (cut to the run's
  length for other ``--volumes``) -- written as word/onset/offset TSV tables (~1,600 words
  and ~590 s each; the run-length check passes: the last word ends within the run and
  less than ``length_tolerance_trs`` = 10 volumes before its end);
* BOLD: baseline (500 + per-voxel offsets) + AR(1) noise (phi 0.3, sd 1) + in four
  spheres (bilateral superior temporal and inferior frontal, ~10 % of the mask) a planted
  signal: the word presence per volume (a volume with at least one word onset) convolved
  with the SPM HRF (``nilearn.glm.first_level.spm_hrf``), z-scored, times a per-subject
  amplitude (0.4-0.8) and a weight falling from 1 at a sphere's centre to 0.5 at its
  edge. Seeded per subject and run (``--seed``): subject s is the same whatever the
  number of subjects built.

The configs (one per version, budget and N; absolute paths): ``[data] kind = "volume"``,
the mask, the first N subjects; ``[languages.EN]`` the TSVs and ``bold =
"<data>/sub-{subject}/run-{run}.nii"``; ``[model] name =
"builtin:multilingual-e5-small-q4"`` (384-dim features, last layer); ``[encoding] alphas
= {logspace = [0, 12, K]}`` with K = ``--alphas`` (few alphas keep the run time sane; the
paper uses 20) and ``stack_mb`` = each budget of ``--budgets`` / ``--small-budget``; for
``new`` only (the old code refuses unknown sections) ``[compute] feature_store`` =
``<cache>/feature_store``, a content-addressed feature cache shared by its runs. The
other keys keep their defaults: leave-one-run-out outer CV, alpha per voxel by
leave-one-training-run-out inner CV, FIR delays 1-4 (1,536 features), float32, no lesions.

The budgets: the default 1,024 MiB, and a small one that holds exactly one subject. One
subject's cleaned BOLD is T x V x 4 B = 2,700 x 29,384 x 4 B = 303 MiB (317 MB) at the
default shape, so 2 subjects need 605 MiB; the small budget's default is 1.25 x one
subject rounded up to 10 MiB (380 MiB here): room for one subject and some slack, not
for two. (300 MiB would be *below* one subject; the old code still puts one subject in
each group then, as a group always takes its first subject, but a new code that counts
differently might not.) With 1,024 MiB both stack 3 subjects per group.

Each (version, budget, N) runs ``python -m napari_lesion_align.cli run CONFIG --out DIR
--quiet`` in a fresh child process with ``PYTHONPATH`` = that version's ``src``,
``NAPARI_LESION_ALIGN_CACHE`` = ``--cache`` (default ``<data>/cache``; the built-in model
is converted into it once), ``OPENBLAS_NUM_THREADS`` = ``OMP_NUM_THREADS`` =
``MKL_NUM_THREADS`` = ``--threads`` (2). Measured: wall time of the child; its peak
resident memory (``ru_maxrss`` from ``os.wait4``); ``result.json``'s ``timings``
(``features_s``; fit = ``encoding_s``, which includes reading and cleaning the BOLD;
time per subject = fit / N) and ``fits`` (how many groups were fitted). A warm-up run
(1 subject, per version: converts the model, fills the feature store and the page cache)
comes first and is not reported. Versions run interleaved (old, new for each budget and
N) so that drifts in machine load hit both. Output folders are deleted after reading.

Prints one table (version, budget, N, groups fitted, wall s, features s, fit s, fit s
per subject, peak RSS GiB, the child's CPU / wall time -- about ``--threads`` when nothing
else runs -- and the 1-minute load average at its end, its own threads included), then
per version and budget the ratios when N grows (peak, fit time per subject; the
refactor's aim: once N fills the budget, doubling N changes the new code's peak by < 10 %
and its time per subject by < 15 %), then per budget and N the new / old ratios.

Dask: ``--workers N ...`` also runs each version of ``--dask-versions`` (default ``new``)
on a local Dask cluster of N workers x ``--threads / N`` BLAS threads (the same total number
of threads as the run in the process), labelled ``new+Nw``; ``base`` is commit
``956b50a8`` (the fit units cut by the memory budget alone, whatever the executor; a
``git worktree`` or ``git clone --shared`` of it at ``--base-tree``, default
``/tmp/nla-base``, made when missing); ``new1`` is ``new`` with one fit unit per worker
(a copy of its ``src`` in ``/tmp/nla-new1`` with ``stages.UNITS_PER_SLOT = 1``, against
the default 2: fewer, larger units). The last table gives each Dask run's wall and fit
time over the in-process run of ``new`` (or ``base``), and its number of fit units.

Duration (2-core AMD EPYC, idle, 2 threads, old code, one subject, 9 x 300 volumes):
fit 124 s with 5 alphas (87 s with 2: about 63 s + 12 s per alpha), features 24 s, wall
155 s, peak RSS 2.4 GiB. The default run fits 2 versions x 2 budgets x (2 + 4 + 8 + 16)
= 120 subjects: about 4 h with 5 alphas (3 h with 2; no K gets it under an hour without
fewer runs, volumes or subjects), plus ~100 s to write the 16-subject study the first
time. Other work on the machine slows every run a lot (the same one-subject fit took
400-620 s while a test suite ran next to it): run it on an idle machine and check the
``cpu/wall`` and ``load`` columns. The header prints an estimate after the warm-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

OLD_COMMIT = "aa19cb2d0d540f52855ff6dde0a90876b0640149"
OLD_TREE = Path("/tmp/nla-old")
#: ``base``: the fit units cut by the memory budget alone, whatever the executor (the last
#: commit before they were cut for the workers); compared with ``new`` on Dask
BASE_COMMIT = "956b50a8df3ea873a9569d6d491d06fcd350bb3f"
BASE_TREE = Path("/tmp/nla-base")
DEMO = REPO / "src" / "napari_lesion_align" / "data" / "demo"
MASK = DEMO / "mask_mni152_4mm.nii.gz"
GRIDS = [DEMO / f"EN_run-{i}.TextGrid" for i in (1, 2, 3)]
GRID_S = 300.0  # audio length of each TextGrid (its xmax): the shift of the next one
PAIRS = [(1, 2), (2, 3), (3, 1), (1, 3), (2, 1), (3, 2), (1, 1), (2, 2), (3, 3)]
TR = 2.0
BUILTIN = "builtin:multilingual-e5-small-q4"
TINY_HIDDEN = 32  # the tiny model's features: 32 dims x 4 delays = 128 regressors
# (MNI centre mm, radius mm): bilateral superior temporal and inferior frontal spheres
BLOBS = [((-56, -22, 4), 25.0), ((58, -20, 4), 25.0), ((-46, 20, 12), 22.0),
         ((48, 20, 12), 22.0)]  # 2,939 voxels: 10.0 % of the mask
PHI = 0.3  # AR(1) coefficient of the noise
DATA_FORMAT = 1  # bump when the generator changes (a built folder is then refused)
TIMING_KEYS = ("data_s", "model_s", "lesions_s", "features_s", "encoding_s", "analysis_s",
               "total_s")


# --------------------------------------------------------------------------- data
def _mask():
    import nibabel as nib

    img = nib.load(str(MASK))
    return img, np.asarray(img.dataobj) > 0


def blob_weights(img, m) -> np.ndarray:
    """Per mask voxel: the signal weight (0 outside the spheres, 1 -> 0.5 centre -> edge)."""
    ijk = np.argwhere(m)
    xyz = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    w = np.zeros(len(ijk), dtype=np.float32)
    for centre, radius in BLOBS:
        d = np.linalg.norm(xyz - np.asarray(centre, float), axis=1)
        inside = d < radius
        w[inside] = np.maximum(w[inside], 1.0 - 0.5 * (d[inside] / radius) ** 2)
    return w


def run_words(run: int, n_vols: int):
    """The words of run ``run`` (1-based): two (or more) demo TextGrids end to end."""
    from napari_lesion_align.core.data.stimuli import read_words

    a, b = PAIRS[(run - 1) % len(PAIRS)]
    words, on, off = [], [], []
    end = n_vols * TR
    k = 0
    while k * GRID_S < end:
        w = read_words(GRIDS[(a, b)[k % 2] - 1])
        keep = w.offsets + k * GRID_S <= end
        words += [x for x, ok in zip(w.words, keep) if ok]
        on.append(w.onsets[keep] + k * GRID_S)
        off.append(w.offsets[keep] + k * GRID_S)
        k += 1
    return words, np.concatenate(on), np.concatenate(off)


def word_signal(onsets: np.ndarray, n_vols: int) -> np.ndarray:
    """Word presence per volume convolved with the SPM HRF, z-scored (float64)."""
    from nilearn.glm.first_level import spm_hrf

    idx = np.floor(onsets / TR).astype(int)
    rate = (np.bincount(idx[idx < n_vols], minlength=n_vols)[:n_vols] > 0).astype(float)
    s = np.convolve(rate - rate.mean(), spm_hrf(TR, oversampling=1))[:n_vols]
    return (s - s.mean()) / s.std()


def build_data(folder: Path, n_subjects: int, n_runs: int, n_vols: int, seed: int) -> dict:
    """Write what is missing of the study; return its description (manifest)."""
    import nibabel as nib
    import pandas as pd
    from scipy.signal import lfilter

    from napari_lesion_align.core.data.bold import check_run_length
    from napari_lesion_align.core.data.stimuli import read_words

    folder.mkdir(parents=True, exist_ok=True)
    man_path = folder / "manifest.json"
    mask_sha = hashlib.sha256(MASK.read_bytes()).hexdigest()[:16]
    want = {"format": DATA_FORMAT, "volumes": n_vols, "tr": TR, "seed": seed,
            "mask_sha256": mask_sha}
    if man_path.exists():
        have = json.loads(man_path.read_text())
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            raise SystemExit(f"{folder} holds a study built with other settings {diff} "
                             "(have, wanted); use another --data folder or delete it")
    else:
        man_path.write_text(json.dumps(want, indent=1))
    img, m = _mask()
    V = int(m.sum())
    w = blob_weights(img, m)
    run_bytes = int(np.prod(m.shape)) * n_vols * 4 + 352
    todo = [(s, r) for s in range(1, n_subjects + 1) for r in range(1, n_runs + 1)
            if not (folder / f"sub-{s:02d}" / f"run-{r}.nii").exists()]
    need = len(todo) * run_bytes
    free = shutil.disk_usage(folder).free
    if todo and need + 2**30 > free:
        raise SystemExit(f"{folder}: {len(todo)} runs to write need {need / 2**30:.1f} GiB "
                         f"(+1 GiB slack), only {free / 2**30:.1f} GiB free; use --data")

    stim = folder / "stim"
    stim.mkdir(exist_ok=True)
    signals = []
    for r in range(1, n_runs + 1):
        path = stim / f"EN_run-{r}.tsv"
        words, on, off = run_words(r, n_vols)
        if not path.exists():
            tmp = path.with_name(f"EN_run-{r}.tmp.tsv")
            pd.DataFrame({"word": words, "onset": np.round(on, 4),
                          "offset": np.round(off, 4)}).to_csv(tmp, sep="\t", index=False)
            back = read_words(tmp)
            if list(back.words) != [x.strip() for x in words] or len(back) != len(words):
                raise SystemExit(f"{tmp}: the words do not read back as written")
            os.replace(tmp, path)
        back = read_words(path)
        check_run_length(n_vols, float(back.offsets.max()), TR, f"run {r}",
                         audio_end_s=back.audio_end)  # the pipeline's check (tolerance 10)
        signals.append(word_signal(back.onsets, n_vols).astype(np.float32))

    if not (folder / "blobs.nii.gz").exists():
        vol = np.zeros(m.shape, np.float32)
        vol[m] = w
        nib.save(nib.Nifti1Image(vol, img.affine), str(folder / "blobs.nii.gz"))
    t0 = time.perf_counter()
    for i, (s, r) in enumerate(todo):
        sub = folder / f"sub-{s:02d}"
        sub.mkdir(exist_ok=True)
        srng = np.random.default_rng([seed, s])
        amp = np.float32(srng.uniform(0.4, 0.8))
        base = (500.0 + 50.0 * srng.standard_normal(V)).astype(np.float32)
        rng = np.random.default_rng([seed, s, r])
        z = rng.standard_normal((n_vols, V), dtype=np.float32)
        noise = lfilter([math.sqrt(1 - PHI**2)], [1.0, -PHI], z, axis=0).astype(np.float32)
        Y = noise
        Y += base
        Y += (amp * signals[r - 1])[:, None] * w[None, :]
        full = np.zeros(m.shape + (n_vols,), np.float32)
        full[m] = Y.T
        del Y, noise, z
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        out = nib.Nifti1Image(full, img.affine, hdr)
        out.header["pixdim"][4] = TR
        tmp = sub / f"run-{r}.tmp.nii"
        nib.save(out, str(tmp))
        os.replace(tmp, sub / f"run-{r}.nii")
        del full, out
        if (i + 1) % n_runs == 0 or i + 1 == len(todo):
            print(f"  data: wrote {i + 1}/{len(todo)} runs ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return {**want, "voxels": V, "runs": n_runs, "subjects": n_subjects,
            "blob_voxels": int((w > 0).sum()), "run_file_bytes": run_bytes,
            "subject_mib": n_runs * n_vols * V * 4 / 2**20}


def study_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("sub-*/run-*.nii"))


# --------------------------------------------------------------------------- versions
def version_src(version: str, old_tree: Path, new_tree: Path | None = None,
                base_tree: Path = BASE_TREE) -> Path:
    """The ``src`` folder of a version: ``new`` = this checkout (or ``new_tree``, a frozen
    copy, so that editing this checkout during a long run does not change what runs);
    ``old`` / ``base``: a git worktree of :data:`OLD_COMMIT` / :data:`BASE_COMMIT`, made
    when missing."""
    if version == "new":
        return (new_tree or REPO) / "src"
    if version == "new1":
        return one_unit_per_slot((new_tree or REPO) / "src")
    tree, commit, flag = ((old_tree, OLD_COMMIT, "--old-tree") if version == "old"
                          else (base_tree, BASE_COMMIT, "--base-tree"))
    head = None
    if (tree / ".git").exists():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    if head != commit:
        if tree.exists():
            raise SystemExit(f"{tree} exists but is not a checkout of {commit[:8]} "
                             f"(HEAD {head}); remove it or pass {flag}")
        print(f"git worktree add {tree} {commit[:8]}", flush=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                        commit], check=True, capture_output=True)
    return tree / "src"


#: ``new1``: a copy of ``new``'s ``src`` with one fit unit per parallel slot
NEW1_TREE = Path("/tmp/nla-new1")


def one_unit_per_slot(src: Path) -> Path:
    """``new1``: a fresh copy of ``src`` (into :data:`NEW1_TREE`) whose
    ``stages.UNITS_PER_SLOT`` is 1 instead of its value: the fewest units that keep every
    Dask worker busy, each sharing its voxel-independent work among more subjects."""
    dst = NEW1_TREE / "src"
    shutil.rmtree(NEW1_TREE, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    stages = dst / "napari_lesion_align" / "core" / "run" / "stages.py"
    text = stages.read_text()
    line = next(x for x in text.splitlines() if x.startswith("UNITS_PER_SLOT = "))
    stages.write_text(text.replace(line, "UNITS_PER_SLOT = 1"))
    return dst


def model_name(which: str, cache: Path) -> str:
    """``builtin``: the built-in model; ``tiny``: a small random XLM-RoBERTa (2 blocks,
    hidden 32), made once into the cache folder (tests/tiny_models.py)."""
    if which == "builtin":
        return BUILTIN
    folder = cache / f"tiny-xlmr-h{TINY_HIDDEN}"
    if not (folder / "config.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import make_tiny_model

        make_tiny_model(folder, "xlm-roberta", hidden=TINY_HIDDEN)
    return str(folder)


def write_config(path: Path, version: str, data: Path, cache: Path, n_subjects: int,
                 n_runs: int, budget_mb: float, n_alphas: int, model: str,
                 controls: bool = True) -> Path:
    """The TOML config of one run (absolute paths); ``[compute]`` not for ``old``."""
    subjects = [f"{s:02d}" for s in range(1, n_subjects + 1)]
    ann = [str(data / "stim" / f"EN_run-{r}.tsv") for r in range(1, n_runs + 1)]
    text = f"""name = "scale-{version}-{budget_mb:g}MiB-N{n_subjects}"

[data]
kind = "volume"
tr = {TR}
mask = {json.dumps(str(MASK))}
subjects = {json.dumps(subjects)}

[languages.EN]
text_language = "en"
annotations = {json.dumps(ann)}
bold = {json.dumps(str(data) + "/sub-{subject}/run-{run}.nii")}

[model]
name = {json.dumps(model)}
layer = -1

[encoding]
alphas = {{logspace = [0, 12, {n_alphas}]}}
stack_mb = {budget_mb:g}
"""
    if version != "old" and not controls:  # (the old code has no [controls] table)
        text += "\n[controls]\nenabled = false\n"
    if version != "old":
        text += f"""
[compute]
feature_store = {json.dumps(str(cache / "feature_store"))}
"""
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- running
def child_env(src: Path, cache: Path, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env["NAPARI_LESION_ALIGN_CACHE"] = str(cache)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def check_import(src: Path, env: dict, cwd: Path) -> None:
    """The child imports the package from ``src`` (not from the venv's install)."""
    out = subprocess.run([sys.executable, "-c",
                          "import napari_lesion_align as m; print(m.__file__)"],
                         env=env, cwd=cwd, capture_output=True, text=True)
    got = Path(out.stdout.strip() or "?").resolve()
    if not str(got).startswith(str(src.resolve())):
        raise SystemExit(f"PYTHONPATH={src}: the child imports {got} instead\n{out.stderr}")


def _sample_descendants(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Peak RSS of every process below ``pid`` (Dask's worker processes), every 0.2 s."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(0.2):
        try:
            kids = parent.children(recursive=True)
        except psutil.Error:
            return
        for k in kids:
            try:
                peaks[k.pid] = max(peaks.get(k.pid, 0), k.memory_info().rss)
            except psutil.Error:
                pass


def run_cli(config: Path, out: Path, env: dict, cwd: Path, log: Path,
            timeout: float | None, extra: tuple = ()) -> dict:
    """One analysis in a fresh child: wall time, peak RSS (the child's, and of its Dask
    worker processes), result.json's timings and fits."""
    cmd = [sys.executable, "-m", "napari_lesion_align.cli", "run", str(config),
           "--out", str(out), "--quiet", *extra]
    peaks: dict = {}
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_descendants, args=(proc.pid, stop, peaks),
                                   daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"wall_s": wall, "peak_rss_gib": ru.ru_maxrss / 2**20, "rc": proc.returncode,
           "cpu_s": ru.ru_utime + ru.ru_stime, "load": os.getloadavg()[0],
           "peak_worker_gib": max(peaks.values(), default=0) / 2**30}
    res = out / "result.json"
    if proc.returncode != 0 or not res.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        row["error"] = "\n".join(tail) or f"exit status {proc.returncode}"
        return row
    doc = json.loads(res.read_text())
    row["timings"] = {k: float(v) for k, v in doc.get("timings", {}).items()
                      if isinstance(v, (int, float))}
    fits = doc.get("fits", {})
    groups = {tuple(f["fitted_with"]) for f in fits.values()
              if isinstance(f, dict) and "fitted_with" in f}
    row["groups"] = len(groups) if groups else None
    return row


def fit_seconds(t: dict) -> float:
    """The fitting time: ``encoding_s``, else what the other phases leave of the total."""
    if "encoding_s" in t:
        return t["encoding_s"]
    known = sum(t.get(k, 0.0) for k in ("data_s", "model_s", "lesions_s", "features_s",
                                        "analysis_s"))
    return t.get("total_s", float("nan")) - known


def signal_check(out: Path, data: Path) -> str:
    """Mean r of sub-01 inside and outside the planted spheres (is the signal found?)."""
    import nibabel as nib

    maps = sorted(out.glob("sub-01_*intact*stat-r*.nii*"))
    if not maps:
        return "no r map of sub-01 found"
    r = np.asarray(nib.load(str(maps[0])).dataobj)
    w = np.asarray(nib.load(str(data / "blobs.nii.gz")).dataobj)
    _, m = _mask()
    ok = m & np.isfinite(r)
    return (f"sub-01 mean r: {np.mean(r[ok & (w > 0)]):.3f} in the spheres, "
            f"{np.mean(r[ok & (w == 0)]):.3f} elsewhere "
            f"({int((ok & (w > 0)).sum())} / {int((ok & (w == 0)).sum())} voxels)")


# --------------------------------------------------------------------------- report
def machine_info() -> str:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"CPU: {model}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM; Python "
            f"{platform.python_version()}, numpy {np.__version__}")


def print_table(rows: list) -> None:
    order = {v: i for i, v in enumerate(dict.fromkeys(r["version"] for r in rows))}
    rows = sorted(rows, key=lambda r: (order[r["version"]], r["budget_mb"], r["n"]))
    print(f"\n{'version':7s} {'budget MiB':>10s} {'N':>3s} {'groups':>6s} {'wall s':>8s} "
          f"{'features s':>10s} {'fit s':>8s} {'fit s/subj':>10s} {'peak RSS GiB':>12s} "
          f"{'worker GiB':>10s} {'cpu/wall':>8s} {'load':>5s}")
    for r in rows:
        if "error" in r:
            print(f"{r['version']:7s} {r['budget_mb']:10g} {r['n']:3d}  FAILED: "
                  f"{r['error'].splitlines()[-1]}")
            continue
        t = r["timings"]
        g = "?" if r.get("groups") is None else str(r["groups"])
        print(f"{r['version']:7s} {r['budget_mb']:10g} {r['n']:3d} {g:>6s} {r['wall_s']:8.1f} "
              f"{t.get('features_s', float('nan')):10.1f} {r['fit_s']:8.1f} "
              f"{r['fit_s_per_subject']:10.1f} {r['peak_rss_gib']:12.2f} "
              f"{r.get('peak_worker_gib', 0.0):10.2f} {r['cpu_s'] / r['wall_s']:8.2f} "
              f"{r['load']:5.1f}")


def print_ratios(rows: list, subject_mib: float) -> None:
    ok = [r for r in rows if "error" not in r]
    by = {(r["version"], r["budget_mb"], r["n"]): r for r in ok}
    versions = list(dict.fromkeys(r["version"] for r in ok))
    budgets = list(dict.fromkeys(r["budget_mb"] for r in ok))
    sizes = sorted({r["n"] for r in ok})
    if len(sizes) > 1:
        print("\nWhen N grows (x = ratio at N_b over N_a; 'fills' = N_a is at least the "
              f"subjects a budget holds ({subject_mib:.0f} MiB each), so N_a already fills a "
              "group; aim for new once filled: peak < 1.10x, time per subject < 1.15x)")
        print(f"{'version':7s} {'budget MiB':>10s} {'N_a->N_b':>9s} {'fills':>5s} "
              f"{'peak x':>7s} {'t/subj x':>8s} {'aim met':>7s}")
        for v in versions:
            for b in budgets:
                ns = [n for n in sizes if (v, b, n) in by]
                for na, nb in zip(ns, ns[1:]):
                    ra, rb = by[(v, b, na)], by[(v, b, nb)]
                    pk = _ratio(rb["peak_rss_gib"], ra["peak_rss_gib"])
                    tps = _ratio(rb["fit_s_per_subject"], ra["fit_s_per_subject"])
                    fills = na >= max(1, int(b // subject_mib))  # a full group at N_a
                    aim = ("yes" if pk < 1.10 and tps < 1.15 else "no") if fills else "-"
                    print(f"{v:7s} {b:10g} {f'{na}->{nb}':>9s} {'yes' if fills else 'no':>5s} "
                          f"{pk:7.2f} {tps:8.2f} {aim:>7s}")
    if "old" in versions and "new" in versions:
        print("\nnew / old")
        print(f"{'budget MiB':>10s} {'N':>3s} {'wall x':>7s} {'features x':>10s} "
              f"{'fit/subj x':>10s} {'peak x':>7s}")
        for b in budgets:
            for n in sizes:
                o, w = by.get(("old", b, n)), by.get(("new", b, n))
                if not (o and w):
                    continue
                f_o = o["timings"].get("features_s", float("nan"))
                f_n = w["timings"].get("features_s", float("nan"))
                print(f"{b:10g} {n:3d} {_ratio(w['wall_s'], o['wall_s']):7.2f} "
                      f"{_ratio(f_n, f_o):10.2f} "
                      f"{_ratio(w['fit_s_per_subject'], o['fit_s_per_subject']):10.2f} "
                      f"{_ratio(w['peak_rss_gib'], o['peak_rss_gib']):7.2f}")
    dask = [v for v in versions if "+" in v]
    ref = next((v for v in ("new", "base") if v in versions), None)
    if dask and ref:
        print(f"\nDask / in the process ({ref}), the same total number of BLAS threads (aims "
              "for new+2w: wall <= 1.10x at 4 subjects, <= 0.80x at 16); units = fit units; "
              "peak per worker process")
        print(f"{'version':8s} {'budget MiB':>10s} {'N':>3s} {'units':>5s} {'wall x':>7s} "
              f"{'fit/subj x':>10s} {'worker GiB':>10s}")
        for v in dask:
            for b in budgets:
                for n in sizes:
                    d, e = by.get((v, b, n)), by.get((ref, b, n))
                    if d and e:
                        g = "?" if d.get("groups") is None else str(d["groups"])
                        print(f"{v:8s} {b:10g} {n:3d} {g:>5s} "
                              f"{_ratio(d['wall_s'], e['wall_s']):7.2f} "
                              f"{_ratio(d['fit_s_per_subject'], e['fit_s_per_subject']):10.2f} "
                              f"{d['peak_worker_gib']:10.2f}")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16],
                    help="numbers of subjects N (default 2 4 8 16)")
    ap.add_argument("--versions", nargs="+", default=["old", "new"],
                    choices=["old", "new", "base"],
                    help="versions run in the process: old (before units on disk), new (this "
                         "tree), base (fit units cut by the budget alone, commit "
                         f"{BASE_COMMIT[:8]}); default old new")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1024.0],
                    help="stack_mb budgets besides the small one (default 1024)")
    ap.add_argument("--small-budget", type=float, default=None,
                    help="the small stack_mb in MiB (default: 1.25 x one subject's cleaned "
                         "BOLD rounded up to 10 MiB, i.e. room for one subject: 380 at the "
                         "default shape); 0 leaves it out")
    ap.add_argument("--alphas", type=int, default=5,
                    help="K of alphas = logspace(0, 12, K) (default 5)")
    ap.add_argument("--runs", type=int, default=9, help="runs per subject (default 9)")
    ap.add_argument("--volumes", type=int, default=300, help="volumes per run (default 300)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (default 2)")
    ap.add_argument("--model", choices=["tiny", "builtin"], default="tiny",
                    help="tiny: a small random model (128 regressors, the default: the "
                         "scaling with N is what is measured); builtin: the built-in "
                         "multilingual-e5-small (1,536 regressors, ~4x the fit time)")
    ap.add_argument("--controls", choices=["on", "off"], default="on",
                    help="on (default): the package's default controls, fitted next to the "
                         "intact model (6 fits per subject); off: the intact model alone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("/tmp/nla_scale_data"),
                    help="folder of the synthetic study (built once, reused)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="NAPARI_LESION_ALIGN_CACHE of every run (default <data>/cache)")
    ap.add_argument("--old-tree", type=Path, default=OLD_TREE,
                    help=f"worktree of the old commit {OLD_COMMIT[:8]} (made when missing)")
    ap.add_argument("--workers", type=int, nargs="*", default=[],
                    help="also run 'new' on a local Dask cluster of each of these numbers of "
                         "workers (BLAS threads per worker = --threads / workers), to "
                         "measure Dask's overhead against the embedded run")
    ap.add_argument("--dask-versions", nargs="+", default=["new"],
                    choices=["new", "new1", "base"],
                    help="the versions --workers runs (default new; 'base new' compares the "
                         "units cut by the budget alone with the units cut for the workers; "
                         "new1 is new with one unit per worker instead of "
                         "stages.UNITS_PER_SLOT)")
    ap.add_argument("--base-tree", type=Path, default=BASE_TREE,
                    help=f"worktree of the base commit {BASE_COMMIT[:8]} (made when missing)")
    ap.add_argument("--new-tree", type=Path, default=None,
                    help="run 'new' from this checkout instead of this one (e.g. a git "
                         "worktree of the commit to measure)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (none)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    data = args.data.resolve()
    dask_versions = args.dask_versions if args.workers else []
    cache = (args.cache or data / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.sizes))
    print(machine_info())
    print(f"load average at start: {os.getloadavg()} (other processes make timings noisy)")
    t0 = time.perf_counter()
    print(f"data: {data} ({max(sizes)} subjects x {args.runs} runs x {args.volumes} volumes)",
          flush=True)
    man = build_data(data, max(sizes), args.runs, args.volumes, args.seed)
    subj_mib = man["subject_mib"]
    small = args.small_budget
    if small is None:
        small = math.ceil(1.25 * subj_mib / 10) * 10
    budgets = list(dict.fromkeys(([small] if small else []) + list(args.budgets)))
    n_bytes = study_bytes(data)
    print(f"  {man['voxels']} voxels, {man['blob_voxels']} "
          f"({100 * man['blob_voxels'] / man['voxels']:.1f} %) with the planted signal; "
          f"one subject's cleaned BOLD {subj_mib:.0f} MiB; study on disk "
          f"{n_bytes / 2**30:.1f} GiB ({time.perf_counter() - t0:.0f} s)")
    print(f"alphas logspace(0, 12, {args.alphas}); budgets (stack_mb) {budgets} MiB; sizes "
          f"{sizes}; versions {args.versions}; on Dask {dask_versions} x workers "
          f"{args.workers}; {args.threads} BLAS/OpenMP threads; cache "
          f"{cache}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="nla_scale_"))
    every = list(dict.fromkeys(args.versions + dask_versions))
    srcs = {v: version_src(v, args.old_tree, args.new_tree, args.base_tree) for v in every}
    envs = {v: child_env(srcs[v], cache, args.threads) for v in every}
    for v in every:
        check_import(srcs[v], envs[v], work)
        print(f"{v}: PYTHONPATH={srcs[v]}")

    model = model_name(args.model, cache)
    print(f"model: {model}", flush=True)

    def one(version, budget, n, tag, workers=0):
        cfg = write_config(work / f"{tag}.toml", version, data, cache, n, args.runs, budget,
                           args.alphas, model, args.controls == "on")
        out = work / f"{tag}_out"
        extra = (("--workers", str(workers), "--threads", str(max(1, args.threads // workers)))
                 if workers else ())
        row = run_cli(cfg, out, envs[version], work, work / f"{tag}.log", args.timeout, extra)
        row.update(version=f"{version}+{workers}w" if workers else version, budget_mb=budget,
                   n=n)
        if "error" not in row:
            row["fit_s"] = fit_seconds(row["timings"])
            row["fit_s_per_subject"] = row["fit_s"] / n
        return row, out

    estimate = {}
    if args.warmup:
        for v in args.versions:
            row, out = one(v, budgets[0], 1, f"warmup_{v}")
            if "error" in row:
                print(f"{v} warm-up FAILED:\n{row['error']}", flush=True)
            else:
                t = row["timings"]
                print(f"{v} warm-up (1 subject, not reported): wall {row['wall_s']:.1f} s, "
                      f"features {t.get('features_s', float('nan')):.1f} s, fit "
                      f"{row['fit_s']:.1f} s, peak {row['peak_rss_gib']:.2f} GiB; "
                      f"{signal_check(out, data)}", flush=True)
                estimate[v] = row
            shutil.rmtree(out, ignore_errors=True)
    if estimate:
        total = 0.0
        for v in args.versions:
            e = estimate.get(v) or next(iter(estimate.values()))
            fixed = e["wall_s"] - e["fit_s"]
            total += len(budgets) * sum(fixed + n * e["fit_s"] for n in sizes)
        e = estimate.get("new") or next(iter(estimate.values()))
        total += len(budgets) * len(args.workers) * len(dask_versions) * sum(
            e["wall_s"] - e["fit_s"] + n * e["fit_s"] for n in sizes)  # at most
        print(f"estimated duration of the runs below: ~{total / 60:.0f} min (warm-up's fixed "
              "cost per run + its fit time x N)", flush=True)

    rows = []
    for b in budgets:
        for n in sizes:
            runs = [(v, 0) for v in args.versions]
            runs += [(v, w) for w in args.workers for v in dask_versions]
            for v, w in runs:
                row, out = one(v, b, n, f"{v}_{b:g}_{n}" + (f"_w{w}" if w else ""), w)
                shutil.rmtree(out, ignore_errors=True)
                rows.append(row)
                if "error" in row:
                    print(f"{v} budget {b:g} N={n}: FAILED\n{row['error']}", flush=True)
                else:
                    print(f"{row['version']} budget {b:g} MiB N={n}: wall {row['wall_s']:.1f} s, fit "
                          f"{row['fit_s_per_subject']:.1f} s/subject, peak "
                          f"{row['peak_rss_gib']:.2f} GiB, groups {row.get('groups')}",
                          flush=True)
    print_table(rows)
    print_ratios(rows, subj_mib)
    print(f"\nload average at end: {os.getloadavg()}; benchmark {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_info(), "data": {**man, "folder": str(data),
                                                "bytes_on_disk": n_bytes},
            "alphas": args.alphas, "threads": args.threads, "budgets": budgets,
            "sizes": sizes, "srcs": {k: str(p) for k, p in srcs.items()},
            "old_commit": OLD_COMMIT, "warmup": estimate, "rows": rows}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
