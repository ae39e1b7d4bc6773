"""A Dataset: a data source of the analysis -- stimuli per language, BOLD runs per subject.

:func:`load_dataset` indexes what a config points to (TextGrid / CSV / TSV annotations,
NIfTI runs + mask or region tables) and checks run lengths against the annotations before
any model is loaded, so a mistake in the data costs seconds, not an hour. NIfTI runs are
read only when a fit unit needs them. :func:`open_source` gives the source of any config:
this one for files, :class:`~napari_lesion_align.core.run.demo_source.DemoDataset` for the demo.

What the stages ask of a source: ``stimuli``, ``space``, ``tr``, ``subjects_of(code)``,
``runs(subject, code)``, ``n_vols(code)``, ``inputs(subject, code)`` (what identifies a
subject's data, for resuming), ``condition_sets(config)`` (model conditions the source
itself needs features of) and ``prepare(engine)`` (called before the first fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..base.errors import Cancelled, LesionAlignError
from ..base.io import check_label, file_identity, regular_file
from .bold import (RegionSpace, VolumeSpace, check_run_length, check_subject_runs,
                   expected_volumes, read_confounds, read_region_series, spike_regressors)
from .options import LanguageData
from .stimuli import Words, read_words
from .stimuli import is_events_file, read_events
from .stimuli import list_runs


@dataclass
class LanguageStimuli:
    code: str
    runs: list  # list[Words]
    run_labels: list
    spaceless: bool = False
    bold_start_s: float = 0.0

    def describe(self) -> str:
        n = sum(len(w) for w in self.runs)
        return f"{self.code}: {len(self.runs)} runs, {n} words"


@dataclass
class BoldRun:
    """One run of one subject: its length is known up front, its data is read on demand."""

    source: str
    n_vols: int
    loader: Callable[[], np.ndarray]
    confounds: np.ndarray | None = None  # (n_vols, k), read and checked up front
    confounds_source: str | None = None
    #: the run's position among its language's runs (a subject may lack some runs); None:
    #: the run's position in its subject's list (a source whose subjects have every run)
    index: int | None = None
    #: what the cleaning of this run removes (:func:`cleaning_record`), filled by
    #: :func:`load_dataset`
    cleaning: dict = field(default_factory=dict)

    def load(self) -> np.ndarray:
        Y = self.loader()
        if Y.shape[0] != self.n_vols:
            raise LesionAlignError(f"{self.source}: expected {self.n_vols} volumes, read {Y.shape[0]}")
        return Y


@dataclass
class Dataset:
    space: object  # VolumeSpace | RegionSpace
    tr: float
    stimuli: dict  # code -> LanguageStimuli
    bold: dict = field(default_factory=dict)  # (subject, code) -> list[BoldRun]
    truth: dict | None = None  # demo only: the planted ground truth
    #: what was decided about the data that changes what is fitted (a subject's missing
    #: runs, runs of a session left out...): one line each, "<language>: ..." or "BIDS: ..."
    notes: list = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.bold))

    def n_vols(self, code: str) -> list[int]:
        """Volumes per run of a language (the largest over the subjects that have it)."""
        n = len(self.stimuli[code].runs) if code in self.stimuli else 0
        out = [0] * n
        for (s, c), runs in self.bold.items():
            if c == code:
                for i, r in enumerate(runs):
                    j = i if r.index is None else r.index
                    out[j] = max(out[j], int(r.n_vols))
        return out if any(out) else []

    def cleaning(self, subject: str, code: str) -> list[dict]:
        """What the cleaning removes from each of a subject's runs (:attr:`BoldRun.cleaning`),
        one record per run, for the fit's record and ``result.json``."""
        return [dict(r.cleaning) for r in self.bold[(subject, code)]]

    def subjects_of(self, code: str) -> list[str]:
        """The subjects with BOLD in language ``code``, in config order."""
        return [s for (s, c) in self.bold if c == code]

    def runs(self, subject: str, code: str) -> list:
        return self.bold[(subject, code)]

    def inputs(self, subject: str, code: str) -> dict:
        """The files a subject's fit reads, with their sizes and times (a changed file
        makes its unit run again)."""
        out = {"bold": [file_identity(r.source) for r in self.bold[(subject, code)]]}
        conf = [r.confounds_source for r in self.bold[(subject, code)] if r.confounds_source]
        if conf:
            out["confounds"] = [file_identity(p) for p in conf]
        return out

    def condition_sets(self, config) -> list:
        """Model conditions this source needs features of itself (none for files)."""
        return []

    def prepare(self, engine) -> None:
        """Nothing to prepare for files."""

    def provenance(self) -> dict:
        """Nothing beyond the config (its files are named there)."""
        return {}


def load_stimuli(lang: LanguageData) -> LanguageStimuli:
    check_label(lang.code, "language")

    runs = []
    for path, run in zip(lang.annotations, lang.runs):
        kw = {}
        if is_events_file(path):  # BIDS events: onset + duration, rows filtered
            runs.append(read_events(path, keep=lang.events_filter, word_col=lang.word_column))
            continue
        if Path(path).suffix.lower() in (".csv", ".tsv", ".txt"):
            if len(list_runs(path)) > 0:
                kw["run"] = run
        elif lang.tier:
            kw["tier"] = lang.tier
        runs.append(read_words(path, **kw))
    return LanguageStimuli(lang.code, runs, list(lang.runs), lang.spaceless, lang.bold_start_s)


def check_lengths(ds: Dataset, tolerance: int) -> None:
    """Every run covers its annotations and ends at most ``tolerance`` volumes after them;
    the volumes beyond the annotations' end are recorded in the run's cleaning record."""
    for (s, code), runs in ds.bold.items():
        stim = ds.stimuli[code]
        if len(runs) > len(stim.runs) or any((i if r.index is None else r.index)
                                             >= len(stim.runs) for i, r in enumerate(runs)):
            raise LesionAlignError(
                f"subject {s}, language {code}: {len(runs)} BOLD runs for {len(stim.runs)} "
                "annotation files"
            )
        for pos, run in enumerate(runs):
            i = pos if run.index is None else run.index
            words = stim.runs[i]
            where = (f"subject {s}, language {code}, run {stim.run_labels[i]} "
                     f"({Path(run.source).name} vs {Path(words.source).name})")
            audio_end = getattr(words, "audio_end", None)
            check_run_length(run.n_vols, float(words.offsets.max()), ds.tr, where,
                             start_s=stim.bold_start_s, tolerance=tolerance,
                             audio_end_s=audio_end)
            end = max(audio_end or 0.0, float(words.offsets.max()))
            run.cleaning["volumes_beyond_annotations"] = max(
                0, int(run.n_vols) - expected_volumes(end, ds.tr, stim.bold_start_s))


def nifti_volumes(path: str) -> int:
    """Volumes of a 4D NIfTI BOLD run (header only), with a clear error for anything else."""
    return int(_nifti_header(path).shape[3])


def _nifti_header(path: str):
    """A 4D NIfTI BOLD run, its header read and checked (exists, a regular file, 4D, not
    truncated); its data is not read."""
    import nibabel as nib

    regular_file(path, "BOLD run", "give one 4D NIfTI image per run")
    try:
        img = nib.load(path)
        shape = img.shape
    except Exception as err:
        raise LesionAlignError(f"{path}: cannot read as NIfTI ({err})") from err
    if len(shape) != 4 or min(shape) < 1:
        raise LesionAlignError(f"{path}: a BOLD run must be a 4D image (x, y, z, time), got "
                               f"shape {shape}")
    if not path.endswith(".gz"):  # an uncompressed file's size is known from its header
        hdr = img.header
        need = int(hdr.get_data_offset()) + int(np.prod(shape)) * hdr.get_data_dtype().itemsize
        size = Path(path).stat().st_size
        if size < need:
            raise LesionAlignError(f"{path}: the file is truncated ({size} bytes, its header "
                                   f"describes {need}); copy or export it again")
    return img


def _nifti_run(space: VolumeSpace, path: str) -> BoldRun:
    img = _nifti_header(path)
    space.check_grid(img, path)  # header only: the run covers the mask
    return BoldRun(path, int(img.shape[3]), lambda: space.load_run(path))


def load_dataset(config, progress: Callable | None = None,
                 cancel: Callable | None = None, subjects=None) -> Dataset:
    """Index every file of a file-based config (kind 'volume' or 'regions') and check lengths
    (``config``: an analysis config; its ``data``, a :class:`.options.DataConfig`, is read).

    NIfTI data is read later, one subject and language at a time; region tables are small
    and read now. ``subjects``: index only these (a cluster worker fitting a few).
    """
    data = config.data
    if data.kind == "demo":
        raise LesionAlignError("load_dataset reads files; the demo is run.demo_source.DemoDataset")
    space = VolumeSpace(data.mask) if data.kind == "volume" else None
    stimuli = {lang.code: load_stimuli(lang) for lang in data.languages}
    ds = Dataset(space=space, tr=data.tr, stimuli=stimuli,
                 notes=list(data.bids.notes) if data.bids is not None else [])
    total = sum(len(paths) for lang in data.languages for paths in lang.bold.values())
    done = 0
    for lang in data.languages:
        for s, paths in lang.bold.items():
            if subjects is not None and s not in subjects:
                continue
            runs = []
            have = lang.runs_of(s)
            if len(have) != len(paths):
                raise LesionAlignError(
                    f"[languages.{lang.code}].bold.{s}: {len(paths)} files for the runs "
                    f"{list(have)}; give one per run")
            for i, path in enumerate(paths):
                if cancel is not None and cancel():
                    raise Cancelled()
                if data.kind == "volume":
                    run = _nifti_run(space, path)
                else:
                    Y, names = read_region_series(path, data.roi_names,
                                                  skip_rows=data.bold_skip_rows)
                    if ds.space is None:
                        ds.space = RegionSpace(names)
                    elif list(names) != list(ds.space.names):
                        raise LesionAlignError(
                            f"{path}: regions {names} differ from {ds.space.names} in other files"
                        )
                    run = BoldRun(path, Y.shape[0], (lambda Y=Y: Y))
                if lang.confounds and s in lang.confounds:
                    run.confounds_source = lang.confounds[s][i]  # read after the lengths
                run.index = list(lang.runs).index(have[i])
                run.cleaning = {"run": have[i], "bold": Path(path).name}
                runs.append(run)
                done += 1
                if progress is not None:
                    progress(done / max(total, 1), f"indexing BOLD {Path(path).name}")
            if data.kind != "volume":  # the NaN-volume rule, checked now (in memory)
                check_subject_runs([r.load() for r in runs], [r.source for r in runs])
            ds.bold[(s, lang.code)] = runs
    check_lengths(ds, data.length_tolerance_trs)
    for runs in ds.bold.values():  # a run's length is checked before its confounds'
        for run in runs:
            _read_run_confounds(run, data)
    return ds


def _read_run_confounds(run: BoldRun, data) -> None:
    """A run's confounds (its table's, and a spike regressor per non-steady-state volume:
    fMRIPrep's and ``[data].dummy_scans``), and what they are in its cleaning record."""
    rec = run.cleaning
    info: dict = {}
    if run.confounds_source is not None:
        run.confounds = read_confounds(run.confounds_source, run.n_vols,
                                       data.confounds_skip_rows, strategy=data.confounds,
                                       record=info)
        rec["confounds_table"] = Path(run.confounds_source).name
    rec["confound_columns"] = info.get("columns", [])
    steady = sorted(set(info.get("non_steady_state", [])))
    dummies = [v for v in range(min(data.dummy_scans, run.n_vols)) if v not in steady]
    if dummies:
        spikes = spike_regressors(run.n_vols, dummies)
        run.confounds = spikes if run.confounds is None else np.column_stack(
            [run.confounds, spikes]).astype(np.float32)
    rec["non_steady_state_volumes"] = sorted(steady + dummies)
    rec["spike_volumes"] = sorted(info.get("spikes", []))
    if run.confounds_source is None and not data.dummy_scans:
        rec["note"] = "no confounds table: non-steady-state volumes not detected"



def describe_words(words: Words) -> str:
    return f"{len(words)} words, {words.offsets.max():.1f} s"
