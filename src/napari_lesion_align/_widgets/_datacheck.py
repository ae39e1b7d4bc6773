"""What the Data widget shows before a run: what was found (runs, volumes, words) and every
mismatch, computed with the core's readers and checks. No Qt here (runs in a worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.base.errors import Cancelled, LesionAlignError
from ..core.data import demo
from ..core.data.bold import VolumeSpace, check_run_length, read_region_series
from ..core.data.dataset import load_dataset, load_stimuli, nifti_volumes


@dataclass
class DataReport:
    lines: list = field(default_factory=list)  # what was found, one line each
    errors: list = field(default_factory=list)  # every problem (LesionAlignError messages)
    languages: list = field(default_factory=list)
    subjects: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        out = list(self.lines)
        if self.errors:
            out.append("")
            out.append(f"{len(self.errors)} problem(s):")
            out.extend(f"  - {e}" for e in self.errors)
        else:
            out.append("")
            out.append("OK: every run covers its annotations.")
        return "\n".join(out)


def _words_line(code, stim) -> str:
    counts = " / ".join(str(len(w)) for w in stim.runs)
    ends = " / ".join(f"{w.duration:.0f}" for w in stim.runs)
    return (f"{code}: {len(stim.runs)} run(s) {list(stim.run_labels)}; words {counts}; "
            f"last word at {ends} s")


def check_demo(n_subjects: int, progress=None, cancel=None) -> DataReport:
    """The built-in demo: shipped annotations, synthesised BOLD."""
    rep = DataReport(languages=list(demo.LANGUAGES),
                     subjects=[f"{i + 1:02d}" for i in range(n_subjects)])
    space = demo.demo_space()
    rep.lines.append(f"Demo (built-in): {len(demo.LANGUAGES)} languages, {n_subjects} synthetic "
                     f"subject(s), TR {demo.TR} s, {space.n_features:,} voxels "
                     "(MNI152 mask, 4 mm)")
    for i, lang in enumerate(demo.demo_language_data()):
        if cancel is not None and cancel():
            raise Cancelled()
        stim = load_stimuli(lang)
        rep.lines.append("  " + _words_line(lang.code, stim))
        if progress is not None:
            progress((i + 1) / len(demo.LANGUAGES), f"read {lang.code} annotations")
    rep.lines.append(f"BOLD: synthesised at run time, {demo.N_RUNS} runs x {demo.RUN_TRS} "
                     "volumes per subject and language, planted shared and language-specific "
                     "regions")
    return rep


#: the checks of the built-in sources (the registry's kinds that bring their own data), by
#: ``[data] kind``: ``check(n_subjects, progress, cancel)``
BUILTIN_CHECKS = {"demo": check_demo}


def _n_vols(kind: str, path: str, data_cfg) -> int:
    if kind == "volume":
        return nifti_volumes(path)

    Y, _ = read_region_series(path, data_cfg.roi_names, skip_rows=data_cfg.bold_skip_rows)
    return int(Y.shape[0])


def check_config(config, progress=None, cancel=None) -> DataReport:
    """Every annotation file and BOLD run of a file-based config, and every length check."""
    data = config.data
    rep = DataReport(languages=[lang.code for lang in data.languages],
                     subjects=list(data.subjects))
    kind = "NIfTI volumes" if data.kind == "volume" else "region time series"
    head = f"{kind}, TR {data.tr} s, subjects {', '.join(data.subjects) or '-'}"
    if data.kind == "volume":
        try:
            space = VolumeSpace(data.mask)
            head += f"; mask {Path(data.mask).name}: {space.n_features:,} voxels"
        except LesionAlignError as err:
            rep.errors.append(str(err))
    rep.lines.append(head)
    total = sum(len(lang.bold) * len(lang.runs) for lang in data.languages) or 1
    done = 0
    for lang in data.languages:
        try:
            stim = load_stimuli(lang)
        except LesionAlignError as err:
            rep.errors.append(str(err))
            rep.lines.append(f"  {lang.code}: annotations not readable")
            continue
        rep.lines.append("  " + _words_line(lang.code, stim))
        for s, paths in lang.bold.items():
            lens = []
            for i, path in enumerate(paths):
                if cancel is not None and cancel():
                    raise Cancelled()
                done += 1
                try:
                    n = _n_vols(data.kind, path, data)
                except LesionAlignError as err:
                    rep.errors.append(str(err))
                    lens.append("?")
                    continue
                lens.append(str(n))
                have = lang.runs_of(s)  # a subject may lack some of the runs
                i = list(lang.runs).index(have[i]) if i < len(have) else i
                if i < len(stim.runs):
                    words = stim.runs[i]
                    where = (f"subject {s}, language {lang.code}, run {stim.run_labels[i]} "
                             f"({Path(path).name} vs {Path(words.source).name})")
                    try:
                        check_run_length(n, words.duration, data.tr, where,
                                         start_s=stim.bold_start_s,
                                         tolerance=data.length_tolerance_trs,
                                         audio_end_s=words.audio_end)
                    except LesionAlignError as err:
                        rep.errors.append(str(err))
                if progress is not None:
                    progress(done / total, f"indexing {Path(path).name}")
            if len(paths) != len(lang.runs_of(s)):
                rep.errors.append(f"subject {s}, language {lang.code}: {len(paths)} BOLD runs "
                                  f"for {len(stim.runs)} annotation files")
            rep.lines.append(f"    sub-{s}: volumes {' / '.join(lens)}")
    if not rep.errors:
        # the core's complete check (confounds, region names, labels...) as the run does it
        try:
            load_dataset(config, cancel=cancel)
        except LesionAlignError as err:
            rep.errors.append(str(err))
    return rep
