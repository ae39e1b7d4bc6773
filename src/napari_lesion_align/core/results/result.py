"""AlignmentResult: maps + space + provenance, saved under stable, documented names.

Files written into the output folder (all atomically: a temporary file in the same folder,
then ``os.replace``, so an interrupted run never leaves a half-written file under a final
name):

* ``sub-<S>_lang-<L>_desc-<condition>_stat-<stat>_statmap.nii.gz`` (float32, the mask's
  affine, MNI) -- or ``.tsv`` (one row per region) for region input;
* ``mask.nii.gz`` (volume input) -- the analysis mask;
* ``summary.tsv`` -- per subject, language and condition (and per group): n_voxels, mean_r,
  median_r, the relative drops of a lesion and of its random draws, the group tests' counts;
* ``controls.tsv`` -- the intact model and its controls (nulls, baselines) with their group
  tests, per region or over the whole brain;
* ``result.json`` -- provenance, the list of maps and the *manifest*, written last.

The manifest lists every file of the result with its size and BLAKE2b hash.
:meth:`AlignmentResult.load` (and so the napari reader, the widgets and the QC figure)
refuses a folder whose files do not match it: a folder is either one complete result or
refused with a message, never a mix of two runs. Maps hold NaN outside the mask (and in
excluded voxels), so no outside tool mistakes the background for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError
from ..base.io import _umask, atomic_save_nifti, atomic_write_text, json_default
from .names import (CEILING_CONDITION, OWN_FILE_PATTERNS, OWN_FOLDERS, category_file,
                    group_file, map_file)
from ..data.bold import RegionSpace, VolumeSpace

SUMMARY_COLUMNS = ["subject", "language", "condition", "kind", "n_voxels", "n_excluded",
                   "mean_r", "median_r", "rel_drop", "control_rel_drop", "control_rel_drop_sd",
                   "random_draws", "n_significant", "n_beyond_random", "inference",
                   "n_reliable", "ceiling_median", "norm_r_median", "note"]
#: controls.tsv: the intact model and its controls, per language and region (regions) or
#: over the whole brain (volumes), with the group test of each
CONTROL_COLUMNS = ["language", "region", "condition", "test", "mean_r", "sd_r", "t", "p", "q",
                   "n_subjects", "p_fwe", "ceiling_median", "norm_r_median"]
SWEEP_COLUMNS = ["layer", "language", "rel_change", "rel_change_sd", "control_rel_change",
                 "control_sd", "n_subjects"]
#: the key of result.json that lists every file of the result with its size and hash
MANIFEST = "manifest"



# --------------------------------------------------------------------------- atomic io



def file_digest(path: Path) -> str:
    """BLAKE2b (160 bits) of a file's bytes."""
    import hashlib

    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_manifest(folder: Path, names) -> list[dict]:
    """``[{"file", "bytes", "blake2b"}]`` of the files ``names`` in ``folder``."""
    return [{"file": n, "bytes": (folder / n).stat().st_size,
             "blake2b": file_digest(folder / n)} for n in sorted(set(names))]


def check_manifest(folder: Path, doc: dict) -> None:
    """Refuse a result folder whose files do not match its manifest (a file missing,
    changed, or not listed)."""
    meta = folder / "result.json"
    entries = doc.get(MANIFEST)
    if not isinstance(entries, list):
        raise LesionAlignError(
            f"{meta}: has no manifest of its files (written by an earlier version of "
            "napari-lesion-align, or not by it), so it cannot be checked; run the analysis "
            "again into a new folder")
    listed = {}
    for e in entries:
        if not (isinstance(e, dict) and isinstance(e.get("file"), str)
                and "/" not in e["file"] and e["file"] not in ("", ".", "..")):
            raise LesionAlignError(f"{meta}: malformed manifest entry {e!r}; this folder is "
                                   "not a result written by napari-lesion-align")
        listed[e["file"]] = e
    bad = []
    for name, e in listed.items():
        p = folder / name
        try:
            size = p.stat().st_size
        except OSError:
            bad.append(f"{name} is missing")
            continue
        if not p.is_file():
            bad.append(f"{name} is not a file")
        elif size != e.get("bytes") or file_digest(p) != e.get("blake2b"):
            bad.append(f"{name} has changed")
    needed = [m.get("file") for m in doc.get("maps", []) if isinstance(m, dict)]
    needed += [c.get("file") for c in (doc.get("categories") or {}).values()
               if isinstance(c, dict)]
    if (doc.get("space") or {}).get("kind") == "volume":
        needed.append(doc["space"].get("mask", "mask.nii.gz"))
    bad += [f"{n} is not in the manifest" for n in needed if n not in listed]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise LesionAlignError(
            f"{folder}: its files do not match result.json ({'; '.join(bad[:3])}{more}): the "
            "folder was changed after the run, or a run into it stopped part-way. Run the same "
            "command again to finish it (finished units are kept), or use another folder")


def _stray_files(folder: Path, keep: set) -> list[Path]:
    """Files of ours (:data:`OWN_FILE_PATTERNS`) in ``folder`` that ``keep`` does not list:
    maps of an earlier analysis or of an earlier group stage."""
    return [p for pattern in OWN_FILE_PATTERNS for p in folder.glob(pattern)
            if p.is_file() and p.name not in keep and p.name != "result.json"]







def write_values(space, path: Path, v: np.ndarray) -> None:
    """One map, atomically: a NIfTI image in the mask's space, or a region table (values
    written with 9 significant digits: float32 reads back exactly)."""
    if space.kind == "volume":
        atomic_save_nifti(space.to_image(v, fill=np.nan), path)  # NaN outside the mask
    else:
        lines = ["region\tvalue"] + [f"{n}\t{float(x):.9g}" for n, x in zip(space.names, v)]
        atomic_write_text(path, "\n".join(lines) + "\n")


def write_labels(space, path: Path, labels: np.ndarray) -> None:
    """A category label map (int16 volume, or a region table)."""
    if space.kind == "volume":
        atomic_save_nifti(space.labels_image(labels), path)
    else:
        write_values(space, path, labels.astype(float))


class LazyMaps(MutableMapping):
    """Maps of a result folder, read from their files on first access (then kept)."""

    def __init__(self, space, folder: Path, files: dict):
        self.space, self.folder = space, Path(folder)
        self.files = dict(files)  # key -> file name
        self._loaded: dict = {}

    def __getitem__(self, key):
        if key not in self._loaded:
            if key not in self.files:
                raise KeyError(key)
            self._loaded[key] = _read_values(self.space, self.folder / self.files[key])
        return self._loaded[key]

    def __setitem__(self, key, value):
        self.files.setdefault(key, None)
        self._loaded[key] = value

    def __delitem__(self, key):
        self.files.pop(key)
        self._loaded.pop(key, None)

    def __iter__(self):
        return iter(self.files)

    def __len__(self):
        return len(self.files)


# --------------------------------------------------------------------------- result
@dataclass
class AlignmentResult:
    """Per-voxel (or per-region) maps keyed by (subject, language, condition, stat)."""

    space: object  # bold.VolumeSpace or bold.RegionSpace
    maps: dict = field(default_factory=dict)
    n_valid: dict = field(default_factory=dict)  # (subject, language) -> voxels fitted
    provenance: dict = field(default_factory=dict)
    truth: dict | None = None  # the demo's planted ground truth (not saved)
    group_maps: dict = field(default_factory=dict)  # (language, condition, stat) -> (V,)
    categories: dict = field(default_factory=dict)  # set name -> (labels (V,), legend)
    controls: dict = field(default_factory=dict)  # random draw -> the lesion it controls for
    #: the nulls and baselines ([controls]): label -> {"kind", "test", "meaning"}
    baselines: dict = field(default_factory=dict)
    sweep: list = field(default_factory=list)  # layer-sweep condition labels, in layer order
    sweep_layers: dict = field(default_factory=dict)  # sweep label -> block lesioned
    summary: list | None = None  # summary rows computed when the result was made

    # ----------------------------------------------------------------- access
    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.maps))

    @property
    def languages(self) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.maps))

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(k[2] for k in self.maps))

    def get(self, subject, language, condition="intact", stat="r") -> np.ndarray:
        try:
            return self.maps[(subject, language, condition, stat)]
        except KeyError:
            raise LesionAlignError(
                f"no map for subject={subject!r}, language={language!r}, condition={condition!r}, "
                f"stat={stat!r}; available: subjects {self.subjects}, languages {self.languages}, "
                f"conditions {self.conditions}"
            ) from None

    def mean_r(self, subject, language, condition) -> float:
        v = self.maps[(subject, language, condition, "r")]
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else float("nan")

    def rel_drop(self, subject, language, condition) -> float:
        """Relative drop of whole-brain mean r: (intact - condition) / intact."""
        if condition == "intact" or (subject, language, "intact", "r") not in self.maps:
            return float("nan")
        return rel_drop(self.mean_r(subject, language, "intact"),
                        self.mean_r(subject, language, condition))

    def kind_of(self, condition: str) -> str:
        """``intact``, a lesion's kind (``selection``, ``random``, ``manual``...) or
        ``control`` (a null or baseline)."""
        if condition in self.baselines:
            return "control"
        for c in self.provenance.get("conditions") or []:
            if c.get("label") == condition:
                return c.get("kind") or ""
        return "intact" if condition == "intact" else (
            "random" if condition in self.controls else "")

    def draws_of(self, condition: str) -> list[str]:
        """The random draws of a lesion (their labels, in order)."""
        return [c for c, of in self.controls.items() if of == condition]

    def summary_rows(self) -> list[dict]:
        """One row per subject, language and condition, then the group means (subject
        'group'): the rows computed with the result (or read from its summary.tsv), else
        computed from the maps (without the group tests' counts)."""
        if self.summary is not None:
            return self.summary
        rows, group = [], []
        for lang in self.languages:
            subjects = [s for s in self.subjects if (s, lang, "intact", "r") in self.maps]
            if not subjects:
                continue
            labels = [c for c in self.conditions if (subjects[0], lang, c, "r") in self.maps]
            means = {c: subject_rows(rows, subjects, lang, c, np.stack(
                [self.maps[(s, lang, c, "r")] for s in subjects]), self.n_valid,
                self.kind_of(c)) for c in labels}
            fill_drops(rows, lang, subjects, means,
                       {c: self.draws_of(c) for c in labels if self.draws_of(c)})
            if len(subjects) > 1:
                group += summary_group_rows(rows, lang, labels)
        return rows + group

    def control_rows(self) -> list[dict]:
        """controls.tsv: per language, the intact model and each control (null, baseline),
        per region (region input) or over the whole brain (volumes: the subjects' mean r):
        the mean r across subjects and the group test of the model above the control
        (intact: above 0; aboveWordRate: above 0): one-sided t, p and, per region, the
        FDR q of the group map."""
        from scipy.stats import ttest_1samp, ttest_rel

        rows = []
        regions = self.space.kind == "regions"
        units = list(self.space.names) if regions else ["whole brain"]
        for lang in self.languages:
            subs = [s for s in self.subjects if (s, lang, "intact", "r") in self.maps]
            if not subs:
                continue
            intact = np.stack([self.maps[(s, lang, "intact", "r")] for s in subs])
            for cond in ["intact", *self.baselines]:
                if cond != "intact" and (subs[0], lang, cond, "r") not in self.maps:
                    continue
                B = intact if cond == "intact" else np.stack(
                    [self.maps[(s, lang, cond, "r")] for s in subs])
                paired = cond != "intact" and self.baselines[cond].get("test") != "positive"
                test = "model > control" if paired else "r > 0"
                A = intact
                if not regions:  # volumes: the subjects' whole-brain means
                    with np.errstate(invalid="ignore"):
                        A = np.nanmean(intact, axis=1, keepdims=True)
                        B = np.nanmean(B, axis=1, keepdims=True)
                for j, unit in enumerate(units):
                    a, b = A[:, j], B[:, j]
                    okj = np.isfinite(a) & np.isfinite(b)
                    t = p = float("nan")
                    if okj.sum() >= 2:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            res = (ttest_rel(a[okj], b[okj], alternative="greater") if paired
                                   else ttest_1samp(b[okj], 0.0, alternative="greater"))
                        t, p = float(res.statistic), float(res.pvalue)
                    q = float("nan")
                    if regions and (lang, cond, "q") in self.group_maps:
                        q = float(self.group_maps[(lang, cond, "q")][j])
                    p_fwe = float("nan")  # regions: the permutation test's family-wise p
                    if regions and (lang, cond, "pfwe") in self.group_maps:
                        p_fwe = float(self.group_maps[(lang, cond, "pfwe")][j])
                    ceiling = self._ceiling_columns(lang, cond, j if regions else None)
                    rows.append({"language": lang, "region": unit, "condition": cond,
                                 "test": test,
                                 "mean_r": float(np.mean(b[okj])) if okj.any() else float("nan"),
                                 "sd_r": float(np.std(b[okj], ddof=1)) if okj.sum() > 1
                                 else float("nan"), "t": t, "p": p, "q": q,
                                 "n_subjects": int(okj.sum()), "p_fwe": p_fwe, **ceiling})
        return rows

    def _ceiling_columns(self, lang: str, cond: str, region: int | None) -> dict:
        """controls.tsv's noise-ceiling columns of a condition: the ceiling and r / ceiling
        of a region, or (``region`` None) their medians over the voxels where the ceiling
        is reliable (where r / ceiling is defined); NaN without a ceiling."""
        nan = {"ceiling_median": float("nan"), "norm_r_median": float("nan")}
        if (lang, cond, "normr") not in self.group_maps or \
                (lang, CEILING_CONDITION, "ceiling") not in self.group_maps:
            return nan
        norm = np.asarray(self.group_maps[(lang, cond, "normr")], dtype=np.float64)
        ceil = np.asarray(self.group_maps[(lang, CEILING_CONDITION, "ceiling")],
                          dtype=np.float64)
        if region is not None:
            norm, ceil = norm[region:region + 1], ceil[region:region + 1]
        rel = np.isfinite(norm)
        if not rel.any():
            return nan
        return {"ceiling_median": float(np.median(ceil[rel])),
                "norm_r_median": float(np.median(norm[rel]))}

    def closing_summary(self) -> list[str]:
        """What a run found, in a few lines per language (the console, the Run widget):
        the intact model against its controls, each lesion's relative drop against its
        random draws, the category voxel counts."""
        unit = "voxels" if self.space.kind == "volume" else "regions"
        group = {(r["language"], r["condition"]): r for r in self.summary_rows()
                 if r["subject"] == "group"}
        if not group:  # one subject: its rows
            group = {(r["language"], r["condition"]): r for r in self.summary_rows()}
        lines = []

        def count(r, key):
            v = r.get(key, "")
            return None if v in ("", None) or (isinstance(v, float) and not np.isfinite(v)) \
                else int(float(v))

        for lang in self.languages:
            r0 = group.get((lang, "intact"))
            if r0 is None:
                continue
            n_sub = len([s for s in self.subjects if (s, lang, "intact", "r") in self.maps
                         and np.isfinite(self.maps[(s, lang, "intact", "r")]).any()])
            k = count(r0, "n_significant")
            aligned = f"; aligned in {k} of {self.space.n_features} {unit}" if k is not None \
                else ""
            lines.append(f"{lang}: intact model mean r {r0['mean_r']:.4f} ({n_sub} subjects"
                         f"{aligned})")
            lines += self._ceiling_lines(lang, r0, unit)
            for cond, info in self.baselines.items():
                r = group.get((lang, cond))
                if r is None:
                    continue
                k = count(r, "n_significant")
                what = ("model above 0" if info.get("test") == "positive"
                        else "model above it")
                where = f"; {what} in {k} {unit}" if k is not None else ""
                lines.append(f"  {cond:<14} mean r {r['mean_r']:.4f}{where}")
            for (lg, cond), r in group.items():
                if lg != lang or r.get("kind") in ("intact", "control", "random"):
                    continue
                drop = r["rel_drop"]
                line = f"  lesion {cond:<12} relative drop {100 * drop:.1f} %"
                nd = r.get("random_draws") or 0
                if nd and int(float(nd)):
                    sd = r.get("control_rel_drop_sd", float("nan"))
                    sd_txt = f" ± {100 * float(sd):.1f}" if np.isfinite(float(sd)) else ""
                    n_draws = int(float(nd))
                    line += (f" vs its {n_draws} random draw{'s' if n_draws > 1 else ''} "
                             f"{100 * float(r['control_rel_drop']):.1f}{sd_txt} %")
                k, b = count(r, "n_significant"), count(r, "n_beyond_random")
                if k is not None:
                    line += f"; significant drop in {k} {unit}"
                if b is not None:
                    line += f", beyond random in {b}"
                lines.append(line)
        for name, (labels, legend) in self.categories.items():
            counts = ", ".join(f"{info['name']} {int((labels == k).sum())}"
                               for k, info in legend.items() if k != 0)
            lines.append(f"categories ({name}): {counts} {unit}")
        inference = {r.get("inference") for r in group.values() if r.get("inference")}
        if inference:
            lines.append(f"group inference: {'; '.join(sorted(inference))}")
        return lines

    def _ceiling_lines(self, lang: str, r0: dict, unit: str) -> list[str]:
        """The closing summary's noise-ceiling line of a language (or why it was skipped)."""
        c, n = r0.get("ceiling_median", ""), r0.get("n_reliable", "")
        if c not in ("", None) and n not in ("", None):
            c, n, nr = float(c), int(float(n)), r0.get("norm_r_median", "")
            if not n:
                return [f"  noise ceiling  reliable in no {unit}: r / ceiling not reported"]
            nr_txt = (f"; intact r / ceiling median {float(nr):.2f}"
                      if nr not in ("", None) and np.isfinite(float(nr)) else "")
            return [f"  noise ceiling  median {c:.3f} in {n} reliable {unit}{nr_txt}"]
        for w in self.provenance.get("warnings") or []:
            if w.startswith(f"{lang}: noise ceiling skipped"):
                return [f"  noise ceiling  {w.split(': ', 1)[1].removeprefix('noise ceiling ')}"]
        return []

    def summary_table(self) -> list[dict]:
        """:meth:`summary_rows` with ``n_excluded``: the voxels (regions) of the mask left
        out of a subject's fit (constant or NaN in its runs; all of them for a subject
        excluded whole); for group rows, the subjects' mean."""
        n = self.space.n_features
        notes = {}  # language -> its warnings, on the language's group intact row
        for w in self.provenance.get("warnings") or []:
            lang, _, text = w.partition(": ")
            if text:
                notes.setdefault(lang, []).append(" ".join(text.split()))
        rows = []
        for r in self.summary_rows():
            note = ""
            if r["subject"] == "group" and r["condition"] == "intact":
                note = "; ".join(notes.get(r["language"], []))
            rows.append({**dict.fromkeys(SUMMARY_COLUMNS, ""), **r,
                         "n_excluded": n - int(r["n_voxels"]), "note": note})
        return rows

    def exclusions(self) -> list[str]:
        """One line per subject and language with voxels (regions) excluded, for the
        console and the GUI."""
        unit = "voxels" if self.space.kind == "volume" else "regions"
        n, lines = self.space.n_features, []
        for (s, lang), k in sorted(self.n_valid.items()):
            if k < n:
                what = ("excluded whole" if k == 0 else
                        f"{n - k} of {n} {unit} excluded (constant or NaN in its runs)")
                lines.append(f"sub-{s} {lang}: {what}")
        return lines

    def notices(self, max_excluded: int = 10) -> list[str]:
        """What a user must see at the end of a run (the console, the Run widget): the
        exclusions (:meth:`exclusions`, at most ``max_excluded`` lines) and the warnings."""
        excluded = self.exclusions()
        lines = [f"excluded: {e}" for e in excluded[:max_excluded]]
        if len(excluded) > max_excluded:
            lines.append(f"excluded: ... {len(excluded) - max_excluded} more (column "
                         "n_excluded of summary.tsv)")
        # (a subject excluded whole is among the exclusions already)
        lines += [f"warning: {w}" for w in self.provenance.get("warnings") or []
                  if not w.endswith("; excluded")]
        lines += [f"cleaning: {c}" for c in self.cleaning_lines()]
        return lines

    def cleaning(self) -> dict:
        """The cleaning record's totals (:func:`cleaning_summary`) of this result."""
        return self.provenance.get("cleaning") or cleaning_summary(
            self.provenance.get("fits") or {})

    def cleaning_lines(self, max_runs: int = 6) -> list[str]:
        """What the cleaning removed, for the console and the GUI: the confound columns,
        the volumes removed (non-steady-state, spikes, censored) and the volumes beyond the
        annotations, with the runs they come from (at most ``max_runs`` named)."""
        c = self.cleaning()
        if not c:
            return []
        strategy = ((self.provenance.get("config") or {}).get("data") or {}).get("confounds")
        lines = []
        ncol = c["n_confound_columns"]
        cols = (f"{ncol[0]}" if ncol[0] == ncol[1] else f"{ncol[0]}-{ncol[1]}")
        lines.append(f"{c['runs']} runs of {c['units']} fits; {cols} confound columns per "
                     f"run (strategy {strategy}; result.json has the columns of each run)")
        for key, what in (("non_steady_state_volumes", "non-steady-state volumes removed"),
                          ("spike_volumes", "motion-outlier volumes removed (spikes)"),
                          ("censored_volumes", "NaN volumes censored"),
                          ("volumes_beyond_annotations",
                           "volumes after the annotations' end (kept)")):
            total, where = c[key]
            if total:
                shown = ", ".join(where[:max_runs]) + (", ..." if len(where) > max_runs
                                                       else "")
                lines.append(f"{what}: {total} ({shown})")
        bids = ((self.provenance.get("config") or {}).get("data") or {}).get("bids")
        if c["runs_without_confounds_table"] and bids:
            lines.append(f"{c['runs_without_confounds_table']} runs without a confounds "
                         "table: their non-steady-state volumes are not detected")
        return lines

    def sweep_rows(self) -> list[dict]:
        """Layer sweep: relative change of whole-brain mean r per layer and language, with
        the random draws' mean and standard deviation across subjects (the band; each
        subject's value is the mean over the layer's draws)."""
        rows = []
        for label in self.sweep:
            layer = self.sweep_layers[label]
            draws = self.draws_of(label)
            for lang in self.languages:
                subs = [s for s in self.subjects if np.isfinite(self.rel_drop(s, lang, label))]
                ch = [-self.rel_drop(s, lang, label) for s in subs]
                # per subject, the mean over the layer's random draws
                cc = [-float(np.mean([self.rel_drop(s, lang, d) for d in draws]))
                      for s in subs] if draws else []
                rows.append({"layer": layer, "language": lang,
                             "rel_change": float(np.mean(ch)) if ch else float("nan"),
                             "rel_change_sd": float(np.std(ch)) if ch else float("nan"),
                             "control_rel_change": float(np.mean(cc)) if cc else float("nan"),
                             "control_sd": float(np.std(cc)) if cc else float("nan"),
                             "n_subjects": len(subs)})
        return rows

    # ----------------------------------------------------------------- saving
    def filename(self, subject, language, condition, stat) -> str:
        return map_file(self.space, subject, language, condition, stat)

    def save(self, out_dir) -> list[Path]:
        """Write the result (every map, the mask, summary.tsv, result.json) as a new folder
        ``out_dir``, or in place of an earlier saved result there.

        Everything is written into a staging folder beside ``out_dir`` and then renamed into
        place, so ``out_dir`` holds the previous result or the new one, never a mix. A
        folder that holds anything else (files of the user's, or an analysis' output folder
        with its ``units/``) is refused: nothing is overwritten.
        """
        import shutil

        out = Path(out_dir)
        if out.exists():
            _check_save_target(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.saving-", dir=out.parent))
        try:
            for (s, lang, cond, stat), v in self.maps.items():
                write_values(self.space, stage / self.filename(s, lang, cond, stat), v)
            for (lang, cond, stat), v in self.group_maps.items():
                write_values(self.space, stage / group_file(self.space, lang, cond, stat), v)
            names = [p.name for p in self.write_tables(stage)]
            os.chmod(stage, 0o777 & ~_umask())
            old = None
            if out.exists():
                _check_save_target(out)  # (again: it may have changed meanwhile)
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "result")
            os.replace(stage, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return [out / n for n in names]

    def write_tables(self, out: Path) -> list[Path]:
        """The mask, category maps, categories.json, summary.tsv, layer_sweep.tsv and
        result.json (last, with the manifest of every file), for maps already in ``out``.

        Files of ours that this result does not list (maps of an earlier group stage) are
        deleted before result.json is written.
        """
        written = []
        if self.space.kind == "volume":
            atomic_save_nifti(self.space.mask_img, out / "mask.nii.gz")
            written.append(out / "mask.nii.gz")
        cats = {}
        for name, (labels, legend) in self.categories.items():
            fname = category_file(self.space, name)
            write_labels(self.space, out / fname, labels)
            written.append(out / fname)
            cats[name] = {"file": fname, "labels": {str(k): v for k, v in legend.items()}}
        if cats:
            atomic_write_text(out / "categories.json", json.dumps(cats, indent=2))
            written.append(out / "categories.json")
        atomic_write_text(out / "summary.tsv", _tsv(self.summary_table(), SUMMARY_COLUMNS))
        written.append(out / "summary.tsv")
        if self.baselines:
            atomic_write_text(out / "controls.tsv", _tsv(self.control_rows(), CONTROL_COLUMNS))
            written.append(out / "controls.tsv")
        if self.sweep:
            atomic_write_text(out / "layer_sweep.tsv", _tsv(self.sweep_rows(), SWEEP_COLUMNS))
            written.append(out / "layer_sweep.tsv")
        files = [{"subject": s, "language": lang, "condition": cond, "stat": stat,
                  "file": self.filename(s, lang, cond, stat)}
                 for (s, lang, cond, stat) in self.maps]
        files += [{"subject": "group", "language": lang, "condition": cond, "stat": stat,
                   "file": group_file(self.space, lang, cond, stat)}
                  for (lang, cond, stat) in self.group_maps]
        doc = dict(self.provenance)
        doc["space"] = ({"kind": "volume", "mask": "mask.nii.gz", "shape": list(self.space.shape),
                         "affine": np.asarray(self.space.affine).tolist()}
                        if self.space.kind == "volume"
                        else {"kind": "regions", "names": list(self.space.names)})
        doc["maps"] = files
        doc["categories"] = cats
        doc["controls"] = self.controls
        doc["baselines"] = self.baselines
        doc["closing_summary"] = self.closing_summary()
        doc["sweep"] = [{"label": lbl, "layer": self.sweep_layers[lbl]} for lbl in self.sweep]
        doc["n_valid"] = [{"subject": s, "language": lang, "n_voxels": int(n)}
                          for (s, lang), n in self.n_valid.items()]
        names = {m["file"] for m in files} | {p.name for p in written}
        for stray in _stray_files(out, names):
            stray.unlink()
        doc[MANIFEST] = make_manifest(out, names)
        atomic_write_text(out / "result.json", json.dumps(doc, indent=2, default=json_default))
        written.append(out / "result.json")
        return written

    @classmethod
    def load(cls, out_dir, lazy: bool = False, verify: bool = True) -> "AlignmentResult":
        """Read a result folder written by :meth:`save` (or by an analysis).

        ``lazy``: maps are read from their files when first used (a study's maps need not
        all fit in memory at once). ``verify``: check every file against the manifest in
        ``result.json`` first (:func:`check_manifest`; a folder that does not match is
        refused).
        """
        out = Path(out_dir)
        meta_path = out / "result.json"
        if not meta_path.exists():
            raise LesionAlignError(
                f"{out}: no result.json; this is not a finished napari-lesion-align output "
                "folder (if a run into it stopped, run the same command again to finish it)")
        try:
            doc = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise LesionAlignError(f"{meta_path}: not valid JSON ({err})") from err
        if not isinstance(doc, dict):
            raise LesionAlignError(f"{meta_path}: not a napari-lesion-align result")
        if verify:
            check_manifest(out, doc)
        sp = doc.get("space", {})
        if sp.get("kind") == "volume":
            space = VolumeSpace(out / sp.get("mask", "mask.nii.gz"))
        else:
            space = RegionSpace(sp.get("names", []))
        files = {(m["subject"], m["language"], m["condition"], m["stat"]): m["file"]
                 for m in doc.get("maps", [])}
        for f in files.values():
            if not (out / f).exists():
                raise LesionAlignError(f"{out / f}: listed in result.json but missing")
        subject_files = {k: f for k, f in files.items() if k[0] != "group"}
        group_files = {k[1:]: f for k, f in files.items() if k[0] == "group"}
        maps = LazyMaps(space, out, subject_files)
        group = LazyMaps(space, out, group_files)
        if not lazy:
            maps, group = dict(maps.items()), dict(group.items())
        n_valid = {(d["subject"], d["language"]): d["n_voxels"] for d in doc.get("n_valid", [])}
        cats = {}
        for name, info in (doc.get("categories") or {}).items():
            vals = _read_values(space, out / info["file"]).astype(np.int16)
            cats[name] = (vals, {int(k): v for k, v in info["labels"].items()})
        sweep = [e["label"] if isinstance(e, dict) else e for e in doc.get("sweep") or []]
        sweep_layers = {e["label"]: int(e["layer"]) for e in doc.get("sweep") or []
                        if isinstance(e, dict)}
        prov = {k: v for k, v in doc.items()
                if k not in ("space", "maps", "n_valid", "categories", "controls", "baselines",
                             "sweep")}
        for c in prov.get("conditions") or []:  # JSON keys are text; blocks are numbers
            if isinstance(c.get("per_layer"), dict):
                c["per_layer"] = {int(b): n for b, n in c["per_layer"].items()}
        summary = _read_tsv(out / "summary.tsv") if (out / "summary.tsv").is_file() else None
        return cls(space=space, maps=maps, n_valid=n_valid, provenance=prov, group_maps=group,
                   categories=cats, controls=doc.get("controls") or {},
                   baselines=doc.get("baselines") or {}, sweep=sweep,
                   sweep_layers=sweep_layers, summary=summary)


def _check_save_target(out: Path) -> None:
    """A folder :meth:`AlignmentResult.save` may replace: empty, or an earlier saved result
    (result.json and files of ours only, no ``units/``)."""
    if not out.is_dir():
        raise LesionAlignError(f"{out}: exists and is not a folder; choose another folder")
    entries = list(out.iterdir())
    if not entries:
        return
    if (out / "units").exists():
        raise LesionAlignError(f"{out}: is an analysis' output folder; save into another "
                               "folder (this one is kept as it is)")
    ours = {out / d for d in OWN_FOLDERS if (out / d).is_dir()}
    for pattern in OWN_FILE_PATTERNS:
        ours |= {p for p in out.glob(pattern) if p.is_file()}
    others = [p.name for p in entries if p not in ours]
    if not (out / "result.json").is_file() or others:
        what = f" ({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''})" \
            if others else ""
        raise LesionAlignError(f"{out}: is not empty and is not a saved result{what}; choose a "
                               "new or empty folder (nothing in it is overwritten)")


def _read_values(space, path: Path) -> np.ndarray:
    """Values inside the mask (volume) or per region (table) of one saved map."""
    if not path.exists():
        raise LesionAlignError(f"{path}: listed in result.json but missing")
    if space.kind == "volume":
        import nibabel as nib

        vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        return vol[np.asarray(space.mask_img.dataobj, dtype=bool)]
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype={"region": str})["value"].to_numpy(
        dtype=np.float32)


def _tsv(rows: list[dict], cols: list[str]) -> str:
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join(f"{r[c]:.6f}" if isinstance(r[c], float) else str(r[c])
                               for c in cols))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- summary rows
def subject_rows(rows: list, subjects: list, code: str, label: str, B: np.ndarray,
                 n_valid: dict, kind: str = "") -> list[float]:
    """Append one summary row per subject (``B``: their r maps, one row each); return the
    subjects' whole-brain mean r."""
    means = []
    for i, s in enumerate(subjects):
        v = B[i][np.isfinite(B[i])]
        mean = float(v.mean()) if len(v) else float("nan")
        means.append(mean)
        rows.append({"subject": s, "language": code, "condition": label, "kind": kind,
                     "n_voxels": int(n_valid.get((s, code), len(v))), "mean_r": mean,
                     "median_r": float(np.median(v)) if len(v) else float("nan"),
                     "rel_drop": float("nan"), "control_rel_drop": float("nan"),
                     "control_rel_drop_sd": float("nan"), "random_draws": 0,
                     "n_significant": "", "n_beyond_random": ""})
    return means


def summary_group_rows(rows: list, code: str, labels: list, n_sig: dict | None = None,
                       n_beyond: dict | None = None) -> list[dict]:
    """Group means (subject 'group') of a language's rows, with the group tests' counts:
    ``n_significant`` (intact: voxels aligned; a lesion: voxels with a significant drop;
    a control: voxels where the model is above it, or above 0) and ``n_beyond_random``
    (a lesion: voxels where its drop is beyond its random draws')."""
    out = []
    for label in labels:
        sub = [r for r in rows if r["language"] == code and r["condition"] == label
               and np.isfinite(r["mean_r"])]
        if not sub:
            continue
        out.append({"subject": "group", "language": code, "condition": label,
                    "kind": sub[0]["kind"], "random_draws": sub[0]["random_draws"],
                    "n_voxels": int(np.mean([r["n_voxels"] for r in sub])),
                    "n_significant": (n_sig or {}).get(label, ""),
                    "n_beyond_random": (n_beyond or {}).get(label, ""),
                    **{k: float(np.nanmean([r[k] for r in sub])) if any(
                        np.isfinite(r[k]) for r in sub) else float("nan")
                       for k in ("mean_r", "median_r", "rel_drop", "control_rel_drop",
                                 "control_rel_drop_sd")}})
    return out


def rel_drop(m0: float, m1: float) -> float:
    """Relative drop of whole-brain mean r: (intact - condition) / intact (NaN when the
    intact mean r is not positive)."""
    return (m0 - m1) / m0 if m0 > 0 else float("nan")


def fill_drops(rows: list, code: str, subjects: list, means: dict, draws: dict) -> None:
    """Set the relative drops of a language's subject rows from the subjects' whole-brain
    mean r per condition (``means``), and, for a lesion with random draws (``draws``:
    lesion -> draw labels), the mean and spread of its draws' drops."""
    m0 = means["intact"]
    for row in rows:
        if row["language"] == code and row["condition"] != "intact":
            i = subjects.index(row["subject"])
            row["rel_drop"] = rel_drop(m0[i], means[row["condition"]][i])
            rel = [rel_drop(m0[i], means[d][i]) for d in draws.get(row["condition"], [])]
            if rel:
                row["control_rel_drop"] = float(np.mean(rel))
                row["control_rel_drop_sd"] = (float(np.std(rel, ddof=1)) if len(rel) > 1
                                              else float("nan"))
                row["random_draws"] = len(rel)


#: summary.tsv columns read back as numbers (the others stay text: subject "01")
_NUMERIC = {"n_voxels": int, "n_excluded": int, "random_draws": int, "mean_r": float,
            "median_r": float, "rel_drop": float, "control_rel_drop": float,
            "control_rel_drop_sd": float, "n_significant": int, "n_beyond_random": int,
            "n_reliable": int, "ceiling_median": float, "norm_r_median": float}


def _read_tsv(path: Path) -> list[dict]:
    """A table written by :func:`_tsv` (summary.tsv), numbers as numbers, "" kept."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    cols = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        vals = line.split("\t")
        row = {}
        for c, v in zip(cols, vals):
            conv = _NUMERIC.get(c)
            try:
                row[c] = conv(float(v)) if conv is int and v != "" else (
                    conv(v) if conv is not None and v != "" else v)
            except ValueError:
                row[c] = v
        rows.append(row)
    return rows


def cleaning_summary(fits: dict) -> dict:
    """The totals of the fits' cleaning records (``result.json`` ``fits.<s>/<L>.cleaning``):
    runs and fit units, the number of confound columns per run (smallest, largest), and per
    kind of volume removed or noted (non-steady-state, spikes, censored, beyond the
    annotations) ``[total, ["sub-01 EN run 1: 1", ...]]``; ``{}`` when no fit has one."""
    units = {k: v["cleaning"] for k, v in fits.items() if v.get("cleaning")}
    if not units:
        return {}
    out: dict = {"units": len(units), "runs": sum(len(v) for v in units.values())}
    ncols = [len(r.get("confound_columns") or []) for v in units.values() for r in v]
    out["n_confound_columns"] = [min(ncols), max(ncols)]
    for key in ("non_steady_state_volumes", "spike_volumes", "censored_volumes",
                "volumes_beyond_annotations"):
        total, where = 0, []
        for unit, runs in units.items():
            s, _, lang = unit.partition("/")
            for r in runs:
                v = r.get(key) or 0
                n = v if isinstance(v, int) else len(v)
                if n:
                    total += n
                    where.append(f"sub-{s} {lang} run {r.get('run')}: {n}")
        out[key] = [total, where]
    out["runs_without_confounds_table"] = sum(
        1 for v in units.values() for r in v if not r.get("confounds_table"))
    return out


def assemble_result(source, folder: Path, conditions: list, controls: list, *, files: dict,
                    group_files: dict, n_valid: dict, categories: dict, summary: list,
                    fits: dict, warnings: list) -> "AlignmentResult":
    """The result of the group stage: the maps in ``folder`` (read lazily: ``files``,
    ``group_files``), the conditions' links (random draws, controls, sweep layers), the
    summary rows and the provenance of the fits (the caller adds the rest and writes the
    tables and ``result.json``)."""
    result = AlignmentResult(
        space=source.space, maps=LazyMaps(source.space, folder, files), n_valid=n_valid,
        group_maps=LazyMaps(source.space, folder, group_files), categories=categories,
        controls={c.label: c.control_of for c in conditions if c.control_of},
        baselines={c.label: c.describe() for c in controls},
        sweep=[c.label for c in conditions if c.kind == "sweep"],
        sweep_layers={c.label: c.spec.layer for c in conditions if c.kind == "sweep"},
        summary=summary, truth=getattr(source, "truth", None))
    result.provenance = {"fits": fits, "warnings": warnings,
                         "conditions": [c.describe() for c in conditions],
                         "cleaning": cleaning_summary(fits)}
    return result
