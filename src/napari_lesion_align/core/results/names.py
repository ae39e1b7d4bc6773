"""The file names of a result folder, one table: the patterns its maps are written by
(:data:`MAP_PATTERN`, :data:`GROUP_PATTERN`, :data:`CATEGORY_PATTERN`), the files an
analysis owns (:data:`OWN_FILE_PATTERNS`: what ``--force`` may delete) and the reader of a
name's keys (:func:`parse_filename`). The stages, the result reader, the layers and the
widgets ask here."""

from __future__ import annotations

import re
from pathlib import Path

MAP_PATTERN = "sub-{subject}_lang-{language}_desc-{condition}_stat-{stat}_statmap"

GROUP_PATTERN = "group_lang-{language}_desc-{condition}_stat-{stat}_statmap"

CATEGORY_PATTERN = "group_desc-{name}_categories"

#: every file an analysis writes into its output folder (``--force`` deletes these only)
OWN_FILE_PATTERNS = ("sub-*_statmap.nii.gz", "sub-*_statmap.tsv", "group_*_statmap.nii.gz",
                     "group_*_statmap.tsv", "group_desc-*_categories.nii.gz",
                     "group_desc-*_categories.tsv", "categories.json", "summary.tsv",
                     "controls.tsv", "layer_sweep.tsv", "mask.nii.gz", "result.json")
#: the report and its tables (``report/report.html``, ``clusters.tsv``, ``regions.tsv``):
#: a folder of its own, made from the result and made again at any time
REPORT_FOLDER = "report"
#: folders of ours in a result folder: ``--force`` deletes them, and a saved result holding
#: them is still a saved result (replaced as a whole)
OWN_FOLDERS = (REPORT_FOLDER,)
#: the keys of a name: its statistic, and the BIDS-like entities (subject, language, condition)
_FILE_STAT = re.compile(r"_stat-([A-Za-z0-9]+)_statmap")
_FILE_KEY = re.compile(r"(?:^|_)(sub|lang|desc)-([A-Za-z0-9]+)")


def _ext(space) -> str:
    return ".nii.gz" if space.kind == "volume" else ".tsv"


def map_file(space, subject, language, condition, stat) -> str:
    return MAP_PATTERN.format(subject=subject, language=language, condition=condition,
                              stat=stat) + _ext(space)


def group_file(space, language, condition, stat) -> str:
    return GROUP_PATTERN.format(language=language, condition=condition, stat=stat) + _ext(space)


#: the condition a language's noise-ceiling maps are filed under (they describe the data, and
#: are shown next to the intact model's r)
CEILING_CONDITION = "intact"


def ceiling_file(space, language, stat) -> str:
    """A noise-ceiling map of a language (``stat``: ceiling, isc, qceiling)."""
    return group_file(space, language, CEILING_CONDITION, stat)


def category_file(space, name) -> str:
    return CATEGORY_PATTERN.format(name=name) + _ext(space)


def parse_filename(path) -> dict:
    """Keys in one of our output file names: ``stat``, ``subject``, ``language``,
    ``condition`` (missing keys are absent). ``_categories`` files get stat
    ``categories``, ``mask.nii.gz`` stat ``mask``."""
    name = Path(str(path)).name
    base = re.sub(r"\.nii(\.gz)?$", "", name)
    keys: dict = {}
    m = _FILE_STAT.search(base)
    if m:
        keys["stat"] = m.group(1)
    elif base.endswith("_categories"):
        keys["stat"] = "categories"
    elif base == "mask":
        keys["stat"] = "mask"
    names = {"sub": "subject", "lang": "language", "desc": "condition"}
    for key, value in _FILE_KEY.findall(base):
        keys[names[key]] = value
    if base.startswith("group_"):
        keys["subject"] = "group"
    return keys
