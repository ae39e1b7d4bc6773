"""The pieces of a fit unit (:func:`.stages.run_fit_job`): the job's subjects' cleaned BOLD
side by side in one array (:class:`StackedBold`), the fits of one feature set for every
subject of the job (:class:`Fitter`), and the maps and records written at the end."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis import statistics as an
from ..analysis.display import SUBJECT_STATS
from ..data.bold import check_subject_runs, clean_run, cleaning_regressors, valid_columns
from ..encoding import cross_validation as ridge  # ridge.cross_validated_r: tests replace it
from ..results.names import map_file
from ..results.result import write_values
from ..base.io import atomic_write_text
from .store import as_recorded

#: under an output folder's ``units/``: what a run keeps between its units and deletes once
#: used (:func:`spill_folder`)
SCRATCH = "scratch"


def spill_folder(out, code: str) -> Path:
    """Where the fit units of language ``code`` leave their subjects' cleaned BOLD for its
    noise ceiling (:meth:`StackedBold.spill`); deleted once the ceiling is written."""
    return out.units / SCRATCH / f"ceiling-{code}"


@dataclass
class StackedBold:
    """The cleaned BOLD of a fit unit's subjects, side by side in one preallocated array.

    ``Y`` is time (every run, one after the other: ``starts``) x columns; subject ``s``
    owns the columns ``first[s]:first[s] + width[s]`` (its valid voxels / regions,
    ``valid[s]`` over the mask); ``kept[s]`` are its runs' kept (not censored) volumes.
    With one run, ``nuisance[s]`` are its cleaning regressors (for the outer folds);
    ``cleaning[(s, run)]`` too when aboveWordRate needs them.
    """

    Y: np.ndarray | None
    starts: np.ndarray
    lengths: list
    valid: dict = field(default_factory=dict)
    width: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)
    kept: dict = field(default_factory=dict)
    nuisance: dict = field(default_factory=dict)
    cleaning: dict = field(default_factory=dict)
    col: int = 0  # the columns in use

    @classmethod
    def load(cls, eng, job, progress, need_cleaning: bool,
             spill: bool = False) -> "StackedBold":
        """Load and clean the runs of every subject of ``job``, one subject at a time (the
        memory is the stacked array plus one subject's raw runs); ``spill``: also write each
        subject's cleaned series for the noise ceiling (:meth:`spill`)."""
        cfg, src, code = eng.config, eng.source, job.language
        lengths = [r.n_vols for r in src.runs(job.subjects[0], code)]
        bold = cls(None, np.r_[0, np.cumsum(lengths)], lengths)
        V = src.space.n_features if src.space is not None else None
        for s in job.subjects:
            eng.progress.check()
            progress(0.0, f"subject {s}, {code}: loading and cleaning")
            runs = src.runs(s, code)
            raw = [run.load() for run in runs]
            # the NaN-volume rule (bold.censored_volumes): mostly-NaN volumes are censored, a
            # mostly-NaN run, or a run without signal next to runs with data, is an error
            bold.kept[s] = check_subject_runs(raw, [run.source for run in runs])
            ok = valid_columns([R[k] for R, k in zip(raw, bold.kept[s])])  # NaN / constant
            bold.valid[s] = ok
            bold.width[s] = int(ok.sum())
            bold.first[s] = bold.col
            if bold.Y is None:
                V = V or ok.size
                bold.Y = np.empty((int(bold.starts[-1]), V * len(job.subjects)),
                                  dtype=np.float32)
            for i, (run, R) in enumerate(zip(runs, raw)):
                if bold.width[s]:
                    bold._put(s, i, run, R, src.tr, cfg.cleaning, len(runs), need_cleaning)
                raw[i] = None
                eng.progress.check()
            del raw
            if spill:  # an optimisation: a spill that cannot be written is left out
                spill = bold.spill(eng, s, code) is not None
            bold.col += bold.width[s]
        return bold

    def spill(self, eng, s: str, code: str) -> Path:
        """Write subject ``s``'s cleaned series as the fits hold them (float32, time x every
        column of the mask: 0 where censored or invalid, as :func:`cleaned_series` gives
        them) to :func:`spill_folder`, with a sidecar naming its data inputs (written
        last: a spill without it is not used). The noise ceiling of the language then reads
        it instead of loading and cleaning the subject's runs again (twice per voxel
        chunk). Returns the file, or None when it cannot be written (a full disk, a file
        size limit: the ceiling then cleans the runs itself; nothing half-written stays)."""
        folder = spill_folder(eng.out, code)
        path = folder / f"sub-{s}.npy"
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"  # a kill's leftover: store.py removes
        valid = self.valid[s]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"sub-{s}.json").unlink(missing_ok=True)
            # plain writes, not a writable memmap: a full disk is an OSError, not a SIGBUS
            T, cols = len(self.Y), slice(self.first[s], self.first[s] + self.width[s])
            buf = np.zeros((min(T, 64), valid.size), dtype=np.float32)
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {
                    "descr": np.lib.format.dtype_to_descr(buf.dtype), "fortran_order": False,
                    "shape": (T, int(valid.size))})
                for a in range(0, T, len(buf)):
                    rows = buf[:min(len(buf), T - a)]
                    if self.width[s]:
                        rows[:, valid] = self.Y[a:a + len(rows), cols]
                    fh.write(memoryview(rows))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            atomic_write_text(folder / f"sub-{s}.json", json.dumps(
                {"subject": s, "language": code, "shape": [len(self.Y), int(valid.size)],
                 "inputs": as_recorded(eng.source.inputs(s, code))}))
        except OSError:  # WriteFailed included
            for p in (tmp, path):
                p.unlink(missing_ok=True)
            return None
        return path

    def _put(self, s, i, run, R, tr, options, n_runs: int, need_cleaning: bool) -> None:
        """Run ``i`` of subject ``s``, cleaned, into its block (censored rows: 0, left out
        of this subject's fit)."""
        ok, keep = self.valid[s], self.kept[s][i]
        cleaned = clean_run(R[:, ok], tr, options, run.confounds, keep=keep)
        block = self.Y[self.starts[i]:self.starts[i + 1],
                       self.first[s]:self.first[s] + self.width[s]]
        if keep.all():
            block[:] = cleaned
        else:
            block[:] = 0.0
            block[keep] = cleaned
        if n_runs == 1 or need_cleaning:
            self.cleaning[(s, i)] = cleaning_regressors(len(R), tr, options, run.confounds,
                                                        keep=keep)
        if n_runs == 1:
            self.nuisance[s] = self.cleaning[(s, i)]

    def groups(self, subjects) -> dict:
        """Subjects fitted together share their kept volumes (usually all: one group)."""
        out: dict = {}
        for s in subjects:
            if self.width[s]:
                key = b"".join(np.packbits(k).tobytes() for k in self.kept[s])
                out.setdefault(key, []).append(s)
        return out

    def columns(self, members: list, n_groups: int) -> np.ndarray:
        """The kept rows and the columns of ``members`` (a view when that is all of Y)."""
        keep = self.kept[members[0]]
        if n_groups == 1 and all(k.all() for k in keep):
            return self.Y[:, :self.col]
        rows = np.concatenate([np.flatnonzero(k) + self.starts[i] for i, k in enumerate(keep)])
        cols = np.concatenate([np.arange(self.first[s], self.first[s] + self.width[s])
                               for s in members])
        return self.Y[np.ix_(rows, cols)]

    def nuisance_of(self, members: list) -> list | None:
        """One run: the outer folds' nuisance regressors, per span of the members' columns
        (the confounds are each subject's; equal neighbours share one span)."""
        if len(self.lengths) != 1:
            return None
        nuis, a = [], 0
        for s in members:
            if nuis and np.array_equal(nuis[-1][2], self.nuisance[s]):  # no confounds
                nuis[-1] = (nuis[-1][0], a + self.width[s], nuis[-1][2])
            else:
                nuis.append((a, a + self.width[s], self.nuisance[s]))
            a += self.width[s]
        return nuis

    def r_map(self, s: str, r: np.ndarray | None) -> np.ndarray:
        """Subject ``s``'s r over its valid columns, as a map over the mask (NaN: excluded)."""
        out = np.full(self.valid[s].size, np.nan, dtype=np.float32)
        if self.width[s]:
            out[self.valid[s]] = r
        return out


#: the fits that may take the intact model's alphas (``[encoding] condition_alphas =
#: "intact"``): every lesion condition (a lesion and its random draws: the same model, some
#: units zeroed) and the null controls made of the model's own features (shifted in time,
#: words shuffled: the same dimensions and scale). The word rate (one feature) and the model
#: above the word rate (other BOLD) always search their own.
REUSES_INTACT_ALPHAS = frozenset({"selection", "random", "file", "manual", "sweep",
                                  "shift", "shuffled"})


class Fitter:
    """The fits of a job: one feature set at a time for every subject (the groups of
    :meth:`StackedBold.groups`), with the progress of all the job's fits.

    The intact model's fit keeps its per-voxel alphas (per group and outer fold); with
    ``[encoding] condition_alphas = "intact"`` the fits of a kind in
    :data:`REUSES_INTACT_ALPHAS` made after it refit with them instead of searching.
    """

    def __init__(self, eng, job, bold: StackedBold, idx: list, n_fits: int, progress):
        self.eng, self.job, self.bold, self.idx = eng, job, bold, idx
        self.groups = bold.groups(job.subjects)
        self.n_fits, self.progress = n_fits, progress
        self.cv = None
        self.done = 0
        self.spent: dict = {}  # label -> seconds of its fits (all the job's subjects)
        self.intact_alphas: dict = {}  # group index -> (outer folds, columns) alphas

    def __call__(self, label: str, X_all: list, kind: str = "intact") -> dict:
        """Fit one feature set (a condition or control of ``kind``) for every subject of the
        job: {subject: r over valid}."""
        enc = self.eng.config.encoding
        reuse = enc.condition_alphas == "intact" and kind in REUSES_INTACT_ALPHAS
        delays = [int(d) for d in enc.delays]
        pad = max(delays)
        bold, code = self.bold, self.job.language
        res_of: dict = {}
        t_fit = time.perf_counter()
        for gi, members in enumerate(self.groups.values()):
            keep = bold.kept[members[0]]
            censored = not all(k.all() for k in keep)
            Yv = bold.columns(members, len(self.groups))
            X_runs = [X_all[i][: pad + n] for i, n in zip(self.idx, bold.lengths)]
            who = (f"subject {members[0]}" if len(members) == 1
                   else f"subjects {members[0]}-{members[-1]}")
            frac0 = (self.done + gi / len(self.groups)) / self.n_fits
            step = 1 / (self.n_fits * len(self.groups))
            res = ridge.cross_validated_r(
                X_runs, Yv, delays, enc.alphas, pad_before=pad, n_blocks=enc.n_blocks,
                score=enc.score, dtype=np.dtype(enc.dtype), backend=enc.backend,
                run_lengths=[int(k.sum()) for k in keep],
                keep=keep if censored else None, nuisance=bold.nuisance_of(members),
                fold_alphas=self.intact_alphas.get(gi) if reuse else None,
                progress=lambda f, m, who=who, frac0=frac0, step=step: self.progress(
                    frac0 + step * f, f"{who}, {code}, {label}: {m}"),
                cancel=self.eng.cancel)
            self.cv = res.folds
            if kind == "intact":
                self.intact_alphas[gi] = res.best_alpha
            a = 0
            for s in members:
                res_of[s] = res.r[a:a + bold.width[s]]
                a += bold.width[s]
            del Yv
        self.done += 1
        self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t_fit
        return res_of


def cleaned_series(eng, s: str, code: str, cols: np.ndarray | None = None) -> np.ndarray:
    """One subject's cleaned BOLD, its runs one after the other (time x ``cols``, default
    every column of the mask), float64, cleaned as the fits clean it
    (:func:`.bold.clean_run`); censored volumes and columns that are constant or NaN in its
    runs are 0; rounded to float32 like the fits' copy (:meth:`StackedBold.spill`). For the
    noise ceiling (:func:`.stages.run_ceiling_job`) when no spill is there
    (:func:`spilled_series`): the memory is the subject's raw runs plus the columns asked
    for."""
    src = eng.source
    runs = src.runs(s, code)
    raw = [run.load() for run in runs]
    kept = check_subject_runs(raw, [run.source for run in runs])
    ok = valid_columns([R[k] for R, k in zip(raw, kept)])
    cols = np.arange(ok.size) if cols is None else np.asarray(cols)
    okc = ok[cols]
    out = np.zeros((sum(len(R) for R in raw), cols.size))
    a = 0
    for i, (run, R) in enumerate(zip(runs, raw)):
        n = len(R)
        if okc.any():
            cleaned = clean_run(R[:, cols[okc]], src.tr, eng.config.cleaning, run.confounds,
                                keep=kept[i])
            # float32, as the fits hold it (:meth:`StackedBold.spill`: the same values)
            block = np.zeros((n, int(okc.sum())), dtype=np.float32)
            block[kept[i]] = cleaned
            out[a:a + n, okc] = block
        raw[i] = None
        a += n
    return out


def spilled_series(eng, s: str, code: str, cols: np.ndarray, n_times: int) -> np.ndarray | None:
    """Subject ``s``'s cleaned series (time x ``cols``, float64) from the spill a fit unit
    wrote (:meth:`StackedBold.spill`), or None when there is none for these data inputs
    and shape (the ceiling then cleans the runs again: :func:`cleaned_series`)."""
    folder = spill_folder(eng.out, code)
    try:
        meta = json.loads((folder / f"sub-{s}.json").read_text())
        mm = np.load(folder / f"sub-{s}.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    V = eng.source.space.n_features if eng.source.space is not None else mm.shape[1]
    if (not isinstance(meta, dict) or mm.shape != (n_times, V)
            or meta.get("inputs") != as_recorded(eng.source.inputs(s, code))):
        return None
    cols = np.asarray(cols)
    if cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        part = mm[:, cols[0]:cols[0] + cols.size]  # a chunk: a plain slice of the file
    else:
        part = mm[:, cols]
    return np.array(part, dtype=np.float64)


def subject_maps(r_maps: dict, labels: list, lesions: set) -> dict:
    """A subject's maps: r of every condition and control, Δr of every lesion."""
    out = {}
    for label in labels:
        out[(label, SUBJECT_STATS[0])] = r_maps[label]
        if label in lesions:
            out[(label, SUBJECT_STATS[1])] = an.delta(r_maps["intact"], r_maps[label])[0]
    return out


def write_maps(eng, s: str, code: str, maps: dict) -> list[str]:
    """Write a subject's maps (:func:`subject_maps`) into the output folder; their names."""
    files = []
    for (label, stat), v in maps.items():
        name = map_file(eng.source.space, s, code, label, stat)
        write_values(eng.source.space, eng.out.root / name, v)
        files.append(name)
    return files


def cleaning_record(runs: list, kept: list) -> list:
    """The data's cleaning record of a subject's runs with the volumes censored at the fit
    (the NaN-volume rule, 0-based)."""
    return [{**r, "censored_volumes": [int(i) for i in np.flatnonzero(~k)]}
            for r, k in zip(runs, kept)]
