"""Readers of word annotations: the words of one run (one audio section of a story) with times.

A run's words come either from a Praat TextGrid (one file per run, one interval tier with
the words) or from a table (CSV / TSV) with one row per word and, optionally, a run column
when one table holds several runs. Every reader returns a :class:`Words` with the silences
removed and the times checked (finite, non-negative, onsets in time order, offset >= onset).

Every problem that a user's file can cause raises
:class:`~napari_lesion_align.core.base.errors.LesionAlignError` with one message that names the
file, the offending value and the fix; errors of the underlying libraries (praatio, pandas,
codecs) are chained as the ``__cause__``.

Encodings: ASCII, UTF-8 (with or without BOM) and UTF-16 with a BOM (little- or big-endian;
Praat writes non-ASCII TextGrids as UTF-16 BE with a BOM). A TextGrid that is neither UTF-8
nor UTF-16 is read as ISO Latin-1 with a warning, as Praat itself does.
"""

from __future__ import annotations

import codecs
import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..base.errors import LesionAlignError, describe_chars, input_error
from ..base.io import read_bytes
from .languages import is_spaceless

__all__ = [
    "SILENCE_LABELS",
    "WORD_TIER_NAMES",
    "Words",
    "read_textgrid",
    "read_table",
    "read_words",
    "list_runs",
    "words_text_for_model",
    "is_spaceless",
    "is_silence",
]

#: Labels that mark a silence, not a word (compared after stripping and lower-casing).
SILENCE_LABELS = frozenset({"", "#", "sp", "sil", "<sil>"})

#: Tier names taken for the word tier when a TextGrid has several interval tiers
#: (compared lower-cased).
WORD_TIER_NAMES = ("word", "words", "text words", "tokensalign")

#: Column names recognised in tables (compared lower-cased, spaces and dashes as "_"),
#: in order of preference.
ONSET_COLUMNS = ("onset", "start", "tmin", "xmin", "onset_time", "start_time", "begin")
OFFSET_COLUMNS = ("offset", "end", "tmax", "stop", "xmax", "offset_time", "end_time")
WORD_COLUMNS = ("word", "token", "text", "words", "tokens", "label")
RUN_COLUMNS = ("run", "section", "run_id", "section_id")
SENTENCE_COLUMNS = ("sentence_id", "sent_id", "sentence")

TEXTGRID_SUFFIXES = (".textgrid",)
#: Table suffixes and their field separators.
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}

_TEXTGRID_OPTIONS = ("tier",)
_TABLE_OPTIONS = ("run", "word_col", "onset_col", "offset_col", "run_col", "sentence_col")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True, eq=False)
class Words:
    """The words of one run with their times.

    Parameters
    ----------
    words : tuple of str
        The words in time order, silences removed.
    onsets, offsets : numpy.ndarray
        Start and end of each word in seconds from the start of the run's audio
        (float64, read-only).
    source : str
        The file the words were read from.
    sentence_ids : numpy.ndarray or None
        Sentence number of each word (int64, read-only) when the file gives it.
    audio_end : float or None
        End of the annotated audio in seconds when the file records it (the word tier's
        ``xmax`` of a TextGrid); ``None`` for tables. It is normally a few seconds after
        the last word's offset.

    Notes
    -----
    Equality is identity (the fields hold arrays); compare ``to_frame()`` results instead.
    """

    words: tuple[str, ...]
    onsets: np.ndarray
    offsets: np.ndarray
    source: str = ""
    sentence_ids: np.ndarray | None = None
    audio_end: float | None = None

    def __post_init__(self):
        words = tuple(str(w) for w in self.words)
        onsets = np.array(self.onsets, dtype=np.float64).reshape(-1)
        offsets = np.array(self.offsets, dtype=np.float64).reshape(-1)
        if not len(words) == len(onsets) == len(offsets):
            raise ValueError(
                f"Words: {len(words)} words but {len(onsets)} onsets and {len(offsets)} offsets"
            )
        onsets.setflags(write=False)
        offsets.setflags(write=False)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "onsets", onsets)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "source", str(self.source))
        if self.sentence_ids is not None:
            ids = np.array(self.sentence_ids, dtype=np.int64).reshape(-1)
            if len(ids) != len(words):
                raise ValueError(f"Words: {len(words)} words but {len(ids)} sentence ids")
            ids.setflags(write=False)
            object.__setattr__(self, "sentence_ids", ids)
        if self.audio_end is not None:
            object.__setattr__(self, "audio_end", float(self.audio_end))

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        name = Path(self.source).name if self.source else "?"
        return f"Words({len(self)} words, {self.duration:.3f} s, source={name!r})"

    @property
    def duration(self) -> float:
        """End of the last word in seconds (0.0 when there are no words).

        Returns
        -------
        float
            The largest offset, which is the last word's offset when words do not overlap.
        """
        return float(self.offsets.max()) if len(self.offsets) else 0.0

    def text(self, language: str | None = None) -> str:
        """The words as one string.

        Parameters
        ----------
        language : str, optional
            Language code or name; for languages written without spaces (see
            :func:`~napari_lesion_align.core.data.languages.is_spaceless`, e.g. ``"zh"``) the
            words are joined without spaces. None or ``""``: joined with spaces.

        Returns
        -------
        str
            The words joined by single spaces, or without separator.

        Raises
        ------
        LesionAlignError
            When ``language`` is given but is not a known language code or name.
        """
        sep = "" if language and is_spaceless(language) else " "
        return sep.join(self.words)

    def to_frame(self) -> pd.DataFrame:
        """One row per word.

        Returns
        -------
        pandas.DataFrame
            Columns ``word``, ``onset``, ``offset`` and, when known, ``sentence_id``.
        """
        cols = {
            "word": list(self.words),
            "onset": np.array(self.onsets),
            "offset": np.array(self.offsets),
        }
        if self.sentence_ids is not None:
            cols["sentence_id"] = np.array(self.sentence_ids)
        return pd.DataFrame(cols)


def words_text_for_model(words: Words, language: str) -> list[str]:
    """The word strings that the language model will see.

    Parameters
    ----------
    words : Words
        One run's words.
    language : str
        The language code of the run (kept for future language-specific cleaning;
        currently no word is changed by it).

    Returns
    -------
    list of str
        Each word with surrounding whitespace removed; punctuation is kept.
    """
    return [w.strip() for w in words.words]


def is_silence(label: str) -> bool:
    """Whether an annotation label marks a silence (see :data:`SILENCE_LABELS`)."""
    return label.strip().lower() in SILENCE_LABELS


# --------------------------------------------------------------------------- file helpers
def _read_bytes(path) -> bytes:
    return read_bytes(path, "word annotation file",
                      "give the path of one annotation file (TextGrid, .csv or .tsv)")


def _guess_encoding(data: bytes) -> str:
    """The encoding of a text file from its BOM, or UTF-16 by NUL bytes, else UTF-8."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith(codecs.BOM_UTF16_LE) or data.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"  # the codec reads the BOM and removes it
    sample = data[:400]
    if len(sample) >= 8 and sample.count(0) >= len(sample) // 4:
        # UTF-16 without BOM: ASCII characters have a NUL high byte.
        even = sample[0::2].count(0)
        odd = sample[1::2].count(0)
        if odd > 0.8 * len(sample[1::2]) and even < 0.2 * len(sample[0::2]):
            return "utf-16-le"
        if even > 0.8 * len(sample[0::2]) and odd < 0.2 * len(sample[1::2]):
            return "utf-16-be"
    return "utf-8"


def _decode(data: bytes, name: str, what: str) -> str:
    """Decode a text file; raise a LesionAlignError naming the file when it is not text."""
    enc = _guess_encoding(data)
    try:
        text = data.decode(enc)
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1].hex()
        if enc == "utf-8" and what == "TextGrid":
            latin = data.decode("latin-1")
            if _looks_like_textgrid(latin):
                warnings.warn(
                    f"{name}: not valid UTF-8 (byte 0x{bad} at position {err.start}); "
                    "read it as ISO Latin-1 as Praat does. Check the non-ASCII words, "
                    "or save the file from Praat again (it writes UTF-16).",
                    UserWarning,
                    stacklevel=3,
                )
                return latin
            raise LesionAlignError(
                f"{name}: not a Praat TextGrid text file (not UTF-8 or UTF-16 text: byte "
                f"0x{bad} at position {err.start}). Open it in Praat and use 'Save as text file'."
            ) from err
        enc_name = {"utf-8": "UTF-8", "utf-16": "UTF-16"}.get(enc, enc.upper())
        raise LesionAlignError(
            f"{name}: cannot be decoded as {enc_name} (byte 0x{bad} at position {err.start}). "
            f"Save the {what} as UTF-8 (or UTF-16 with a BOM)."
        ) from err
    if "\x00" in text:
        raise LesionAlignError(
            f"{name}: contains NUL characters, so it is not a text {what}. "
            f"Check that the path points to the {what}."
        )
    return text


def _looks_like_textgrid(text: str) -> bool:
    head = text[:300]
    return "ooTextFile" in head and "TextGrid" in head


def _fmt_t(t: float) -> str:
    return f"{t:.6g} s"


def _check_times(name: str, words: Sequence[str], onsets, offsets, where: Sequence[str]) -> None:
    """Raise for non-finite or negative times, onsets out of order or offset < onset; the
    error names the file and the word's place (``where[i]``: its line or interval)."""
    onsets = np.asarray(onsets, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)

    def at(i):
        return f"{where[i]} ({words[i]!r})"

    for arr, what in ((onsets, "onset"), (offsets, "offset")):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            i = bad[0]
            raise input_error(name, at(i), f"{what} {arr[i]} is not a time",
                              "times must be finite numbers in seconds; fix that time in the "
                              "file")
    bad = np.flatnonzero(onsets < 0)
    if len(bad):
        i = bad[0]
        raise input_error(name, at(i), f"negative onset {_fmt_t(onsets[i])}",
                          "times are seconds from the start of the run's audio; fix the "
                          "times in the file")
    bad = np.flatnonzero(np.diff(onsets) < 0)
    if len(bad):
        i = bad[0] + 1
        raise input_error(name, at(i), f"onsets are not in time order: it starts at "
                          f"{_fmt_t(onsets[i])}, before {at(i - 1)} at "
                          f"{_fmt_t(onsets[i - 1])}", "sort the rows by onset or fix the times")
    bad = np.flatnonzero(offsets < onsets)
    if len(bad):
        i = bad[0]
        raise input_error(name, at(i), f"ends at {_fmt_t(offsets[i])}, before its onset "
                          f"{_fmt_t(onsets[i])}", "fix the times (offset must be >= onset)")


def _is_invisible(label: str) -> bool:
    """A label that is not a silence but has no visible character: only format, control,
    separator or private characters (a zero-width space, a BOM, a soft hyphen, ...). A
    model's tokenizer makes no token of it."""
    import unicodedata

    return bool(label) and all(unicodedata.category(c)[0] in "CZ" or c.isspace()
                               for c in label)


def _check_visible(name: str, words: Sequence[str], onsets, offsets,
                   where: Sequence[str], silence: str) -> None:
    """Raise for a word without a visible character, naming its file, place and time."""
    for i, w in enumerate(words):
        if _is_invisible(w):
            raise input_error(
                name, f"{where[i]} ({float(onsets[i]):.6g}-{float(offsets[i]):.6g} s)",
                f"the word {w!r} has no visible character ({describe_chars(w)}); a language "
                "model makes no token of it", f"{silence} or type the word")


# --------------------------------------------------------------------------- TextGrid
def read_textgrid(path, tier: str | None = None) -> Words:
    """Read the words of one run from a Praat TextGrid.

    Parameters
    ----------
    path : str or os.PathLike
        A Praat TextGrid text file, long or short format, in ASCII, UTF-8 or UTF-16 with a
        BOM (little- or big-endian).
    tier : str, optional
        Name of the interval tier holding the words (exact, else case-insensitive match).
        By default the only interval tier, or else the only one whose name is in
        :data:`WORD_TIER_NAMES` (``word``, ``words``, ``text words``, ``TokensAlign``).

    Returns
    -------
    Words
        The non-silent intervals of the tier (labels in :data:`SILENCE_LABELS` removed),
        with ``audio_end`` set to the tier's end time.

    Raises
    ------
    LesionAlignError
        When the file is missing or unreadable, is not a text TextGrid, cannot be parsed,
        has no such tier (or the tier is ambiguous or a point tier), holds no words, or
        has bad times.
    """
    from praatio.data_classes.interval_tier import IntervalTier
    from praatio.utilities import textgrid_io
    from praatio.utilities.constants import INTERVAL_TIER

    name = Path(path).name
    text = _decode(_read_bytes(path), name, "TextGrid")
    if text.lstrip("\ufeff").startswith("File type = \"ooBinaryFile\""):
        raise LesionAlignError(
            f"{name}: is a binary Praat file. Open it in Praat and use 'Save as text file'."
        )
    if not _looks_like_textgrid(text):
        raise LesionAlignError(
            f"{name}: not a Praat TextGrid (the first lines should read "
            "'File type = \"ooTextFile\"' and 'Object class = \"TextGrid\"'). Check the path, "
            "or save the annotation from Praat with 'Save as text file'."
        )
    try:
        tg = textgrid_io.parseTextgridStr(text, includeEmptyIntervals=True)
        tiers = [dict(t) for t in tg["tiers"]]
    except Exception as err:  # noqa: BLE001 - any parser failure means a damaged file
        raise LesionAlignError(
            f"{name}: cannot be parsed as a TextGrid ({type(err).__name__}: {err}). "
            "The file may be truncated or edited by hand; open it in Praat and save it again."
        ) from err

    chosen = _select_tier(name, tiers, tier, INTERVAL_TIER)
    try:
        itier = IntervalTier(chosen["name"], list(chosen["entries"]), chosen["xmin"], chosen["xmax"])
    except Exception as err:  # noqa: BLE001
        raise LesionAlignError(
            f"{name}: tier {chosen['name']!r} is not a valid interval tier ({err}). "
            "Open the file in Praat, fix the intervals and save it again."
        ) from err

    words, onsets, offsets, where = [], [], [], []
    for k, (start, end, label) in enumerate(itier.entries, start=1):
        if is_silence(label):
            continue
        words.append(label.strip())
        onsets.append(start)
        offsets.append(end)
        where.append(f"tier {chosen['name']!r}, interval [{k}]")
    if not words:
        raise LesionAlignError(
            f"{name}: tier {chosen['name']!r} has no words (only silences "
            f"{sorted(SILENCE_LABELS)}). Choose the tier that holds the words."
        )
    _check_times(str(path), words, onsets, offsets, where)
    _check_visible(str(path), words, onsets, offsets, where,
                   "empty the interval's label in Praat (a silence)")
    return Words(tuple(words), np.array(onsets), np.array(offsets), str(path), None, itier.maxTimestamp)


def _select_tier(name: str, tiers: list[dict], tier: str | None, interval_class: str) -> dict:
    names = [t["name"] for t in tiers]
    if tier is not None:
        matches = [t for t in tiers if t["name"] == tier]
        if not matches:
            key = str(tier).strip().lower()
            matches = [t for t in tiers if t["name"].strip().lower() == key]
        if not matches:
            intervals = [t["name"] for t in tiers if t["class"] == interval_class]
            hint = (
                f"Set tier = {intervals[0]!r} in the config."
                if len(intervals) == 1
                else "Set tier to one of them in the config."
            )
            raise LesionAlignError(f"{name}: no tier named {tier!r}; tiers are {names}. {hint}")
        if len(matches) > 1:
            raise LesionAlignError(
                f"{name}: {len(matches)} tiers are named {matches[0]['name']!r} (tiers are "
                f"{names}). Rename one of them in Praat."
            )
        chosen = matches[0]
        if chosen["class"] != interval_class:
            raise LesionAlignError(
                f"{name}: tier {chosen['name']!r} is a point tier; words need an interval tier. "
                f"Tiers are {names}; set tier to an interval tier in the config."
            )
        return chosen
    intervals = [t for t in tiers if t["class"] == interval_class]
    if not intervals:
        raise LesionAlignError(
            f"{name}: no interval tier (tiers are {names}). Word annotations need an interval "
            "tier with one interval per word."
        )
    if len(intervals) == 1:
        return intervals[0]
    known = [t for t in intervals if t["name"].strip().lower() in WORD_TIER_NAMES]
    if len(known) == 1:
        return known[0]
    raise LesionAlignError(
        f"{name}: cannot tell which tier holds the words; interval tiers are "
        f"{[t['name'] for t in intervals]}. Set tier = '<name>' in the config."
    )


# --------------------------------------------------------------------------- tables
def _norm_col(col) -> str:
    return re.sub(r"[\s\-]+", "_", str(col).strip().lower())


def _norm_run(value) -> str:
    """A run value as a canonical string: 1, 1.0, '1' and ' 1 ' all give '1'."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    s = str(value).strip()
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if math.isfinite(f) and f.is_integer() and re.fullmatch(r"[+-]?\d+(\.0*)?", s) else s


def _display_run(key: str):
    return int(key) if re.fullmatch(r"[+-]?\d+", key) else key


def _load_table(path) -> tuple[str, pd.DataFrame]:
    name = Path(path).name
    suffix = Path(path).suffix.lower()
    sep = TABLE_SEPARATORS.get(suffix)
    if sep is None:
        raise LesionAlignError(
            f"{name}: unknown table type {suffix!r}; use .csv (comma-separated) or .tsv / .txt "
            "(tab-separated)."
        )
    text = _decode(_read_bytes(path), name, "table")
    if not text.strip():
        raise LesionAlignError(f"{name}: the file is empty. It needs a header and one row per word.")
    lines = _check_fields(name, text, sep)
    try:
        df = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        kind = "comma" if sep == "," else "tab"
        raise LesionAlignError(
            f"{name}: cannot be read as a {kind}-separated table ({err}). "
            f"Check that every row has the same number of {kind}-separated fields."
        ) from err
    if df.shape[1] == 1:
        kind = "commas" if sep == "," else "tabs"
        raise LesionAlignError(
            f"{name}: found a single column {str(df.columns[0])[:60]!r}; {suffix} files must be "
            f"separated by {kind}. Save it with {kind} or use the matching extension "
            "(.csv for commas, .tsv for tabs)."
        )
    if len(lines) == len(df) + 1:  # the line of every row (the header's first)
        df.attrs["lines"] = lines[1:]
    return name, df


def _row_places(df: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Where each of ``rows`` (of table ``df``) is in its file: ``line N`` (``data row N``
    when the lines are not known)."""
    lines = df.attrs.get("lines")
    if lines is not None:
        return [f"line {lines[i]}" for i in rows.index]
    return [f"data row {i + 1}" for i in rows.index]


def _check_fields(name: str, text: str, sep: str) -> list[int]:
    """Every row has as many fields as the header (a short row would be padded with empty
    values and a long one shift its fields: both are refused, naming the line). Returns the
    line number of every row (blank lines skipped), the header's first."""
    import csv

    kind = "comma" if sep == "," else "tab"
    lines = []
    try:
        rows = csv.reader(io.StringIO(text), delimiter=sep)
        width = None
        for row in rows:
            if not row or not "".join(row).strip():
                continue  # blank lines are skipped by the reader too
            lines.append(rows.line_num)
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise LesionAlignError(
                    f"{name}: cannot be read as a {kind}-separated table: line "
                    f"{rows.line_num} has {len(row)} fields but the header has {width}. Every row needs one value per column (check "
                    f"for missing or extra {kind}s, or a {kind} inside a word: quote it)."
                )
    except csv.Error as err:
        raise LesionAlignError(f"{name}: cannot be read as a {kind}-separated table ({err}). "
                               "Check the quotes of that line.") from err
    return lines


def _find_col(name, df, given, candidates, what, option, required=True):
    cols = list(df.columns)
    if given is not None:
        if given in cols:
            return given
        matches = [c for c in cols if _norm_col(c) == _norm_col(given)]
        if len(matches) == 1:
            return matches[0]
        raise LesionAlignError(
            f"{name}: no column {given!r} for the {what}; columns are {cols}. "
            f"Set {option} to one of them in the config."
        )
    norm = {}
    for c in cols:
        norm.setdefault(_norm_col(c), c)
    for cand in candidates:
        if cand in norm:
            return norm[cand]
    if required:
        raise LesionAlignError(
            f"{name}: no {what} column; columns are {cols}. Name it "
            f"{' / '.join(repr(c) for c in candidates[:3])} or set {option} = '<column>' in the config."
        )
    return None


def _numbers(name, series: pd.Series, col: str, where: Sequence[str] | None = None,
             what: str = "a time in seconds") -> np.ndarray:
    """The numbers of a column; ``where``: the place of each row (:func:`_row_places`)."""
    vals = pd.to_numeric(series.str.strip(), errors="coerce")
    bad = np.flatnonzero(vals.isna().to_numpy())
    if len(bad):
        place = where[bad[0]] if where is not None else f"data row {series.index[bad[0]] + 1}"
        raise input_error(name, place, f"{col} {series.iloc[bad[0]]!r} is not a number",
                          f"every {col!r} value must be {what}")
    return vals.to_numpy(dtype=np.float64)


def _run_column(name, df, run_col):
    return _find_col(name, df, run_col, RUN_COLUMNS, "run", "run_col", required=run_col is not None)


def list_runs(path, run_col: str | None = None) -> list:
    """The runs held by a word table.

    Parameters
    ----------
    path : str or os.PathLike
        A table (.csv / .tsv / .txt) or a TextGrid.
    run_col : str, optional
        The run column; by default the first of :data:`RUN_COLUMNS` present
        (``run``, ``section``, ...).

    Returns
    -------
    list
        The distinct run values in order of first appearance (int when they are whole
        numbers, else str), i.e. the values accepted by ``read_table(path, run=...)``.
        Empty when the file is a single run (a TextGrid, or a table without run column).

    Raises
    ------
    LesionAlignError
        When the file cannot be read or ``run_col`` is not a column.
    """
    if Path(path).suffix.lower() in TEXTGRID_SUFFIXES:
        _read_bytes(path)
        return []
    name, df = _load_table(path)
    col = _run_column(name, df, run_col)
    if col is None:
        return []
    keys = list(dict.fromkeys(_norm_run(v) for v in df[col]))
    return [_display_run(k) for k in keys]


def read_table(
    path,
    run=None,
    word_col: str | None = None,
    onset_col: str | None = None,
    offset_col: str | None = None,
    run_col: str | None = None,
    sentence_col: str | None = None,
) -> Words:
    """Read the words of one run from a CSV or TSV table.

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv`` (comma-separated) or ``.tsv`` / ``.txt`` (tab-separated), UTF-8 (with or
        without BOM) or UTF-16 with a BOM, with a header row and one row per word.
    run : int or str, optional
        The run to read when the table holds several (see :func:`list_runs`); ``1``,
        ``"1"`` and ``1.0`` are the same run. Not needed when the table holds one run.
    word_col, onset_col, offset_col, run_col, sentence_col : str, optional
        Column names. By default the first present of :data:`WORD_COLUMNS` (word, token,
        text, ...), :data:`ONSET_COLUMNS` (onset, start, tmin, ...),
        :data:`OFFSET_COLUMNS` (offset, end, tmax, stop, ...), :data:`RUN_COLUMNS` (run,
        section, ...) and :data:`SENTENCE_COLUMNS` (sentence_id, ...); names are compared
        case-insensitively. The offset, run and sentence columns are optional.

    Returns
    -------
    Words
        The run's words in file order. Rows whose word is a silence label are dropped
        (after offsets are derived); rows with an empty word are dropped with a warning.
        Without an offset column, each offset is the next row's onset and the last word
        lasts the median of those durations.

    Raises
    ------
    LesionAlignError
        When the file is missing or unreadable, a column is missing, the run is not given
        (several runs) or not present, a time is not a number, the times are bad, or the
        run holds no words.

    Warns
    -----
    UserWarning
        When rows with an empty word are dropped.
    """
    name, df = _load_table(path)
    wcol = _find_col(name, df, word_col, WORD_COLUMNS, "word", "word_col")
    ocol = _find_col(name, df, onset_col, ONSET_COLUMNS, "onset", "onset_col")
    fcol = _find_col(
        name, df, offset_col, OFFSET_COLUMNS, "offset", "offset_col",
        required=offset_col is not None,
    )
    rcol = _run_column(name, df, run_col)
    scol = _find_col(
        name, df, sentence_col, SENTENCE_COLUMNS, "sentence id", "sentence_col",
        required=sentence_col is not None,
    )

    if rcol is None:
        if run is not None:
            raise LesionAlignError(
                f"{name}: has no run column (columns are {list(df.columns)}), so it holds a "
                f"single run and run = {run!r} cannot be selected. Remove run from the config "
                "or set run_col."
            )
        rows = df
    else:
        keys = df[rcol].map(_norm_run)
        runs = list(dict.fromkeys(keys))
        if run is None:
            if len(runs) > 1:
                raise LesionAlignError(
                    f"{name}: holds {len(runs)} runs (column {rcol!r}: "
                    f"{[_display_run(k) for k in runs]}). Choose one with run = <value> in the config."
                )
            rows = df
        else:
            rows = df[keys == _norm_run(run)]
            if rows.empty:
                raise LesionAlignError(
                    f"{name}: no rows with {rcol} = {run!r}; the runs are "
                    f"{[_display_run(k) for k in runs]}. Set run to one of them."
                )
    if rows.empty:
        raise LesionAlignError(f"{name}: the table has no rows. It needs one row per word.")

    labels = [str(w) for w in rows[wcol]]
    where = _row_places(df, rows)
    onsets = _numbers(str(path), rows[ocol], ocol, where)
    # Check the onsets before deriving offsets from them.
    _check_times(str(path), labels, onsets, onsets, where)
    if fcol is not None:
        offsets = _numbers(str(path), rows[fcol], fcol, where)
    else:
        offsets = np.empty_like(onsets)
        offsets[:-1] = onsets[1:]
        durs = np.diff(onsets)
        offsets[-1] = onsets[-1] + (float(np.median(durs)) if len(durs) else 0.0)

    keep = np.array([not is_silence(w) for w in labels], dtype=bool)
    empty = [where[i] for i, w in enumerate(labels) if not w.strip()]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn(
            f"{name}: {len(empty)} row(s) with an empty {wcol!r} were skipped ({shown}).",
            UserWarning,
            stacklevel=2,
        )
    if not keep.any():
        raise LesionAlignError(
            f"{name}: the run has no words (every {wcol!r} is empty or a silence label "
            f"{sorted(SILENCE_LABELS)}). Check word_col and run."
        )
    idx = np.flatnonzero(keep)
    words = [labels[i].strip() for i in idx]
    where = [where[i] for i in idx]
    onsets, offsets = onsets[idx], offsets[idx]
    _check_times(str(path), words, onsets, offsets, where)
    _check_visible(str(path), words, onsets, offsets, where,
                   f"empty that {wcol!r} (a silence, skipped)")

    sentence_ids = None
    if scol is not None:
        sids = _numbers(str(path), rows[scol].iloc[idx], scol, where, "a whole number")
        frac = np.flatnonzero(sids != np.round(sids))
        if len(frac):
            raise input_error(name, where[frac[0]],
                              f"{scol} {sids[frac[0]]} is not a whole number",
                              "sentence ids must be integers")
        sentence_ids = sids.astype(np.int64)
    return Words(tuple(words), onsets, offsets, str(path), sentence_ids, None)


# --------------------------------------------------------------------------- dispatch
def read_words(path, **kw) -> Words:
    """Read the words of one run, choosing the reader by the file extension.

    Parameters
    ----------
    path : str or os.PathLike
        ``.TextGrid`` (any case) for :func:`read_textgrid`; ``.csv``, ``.tsv`` or ``.txt``
        for :func:`read_table`.
    **kw
        Options of that reader (``tier`` for TextGrids; ``run``, ``word_col``,
        ``onset_col``, ``offset_col``, ``run_col``, ``sentence_col`` for tables). Options
        of the other reader are accepted when ``None``.

    Returns
    -------
    Words
        Words whose onsets are finite, non-negative and in time order, with offset >=
        onset (every reader checks this).

    Raises
    ------
    LesionAlignError
        For an unsupported extension, an unknown or inapplicable option, and every error
        of the readers.
    """
    suffix = Path(path).suffix.lower()
    known = set(_TEXTGRID_OPTIONS) | set(_TABLE_OPTIONS)
    unknown = sorted(k for k in kw if k not in known)
    if unknown:
        raise LesionAlignError(
            f"{Path(path).name}: unknown word-annotation option(s) {unknown}; the options are "
            f"{sorted(known)}."
        )
    if suffix in TEXTGRID_SUFFIXES:
        reader, allowed = read_textgrid, _TEXTGRID_OPTIONS
    elif suffix in TABLE_SEPARATORS:
        reader, allowed = read_table, _TABLE_OPTIONS
    else:
        raise LesionAlignError(
            f"{Path(path).name}: unsupported word-annotation file type {suffix or '(none)'!r}; "
            "use a Praat .TextGrid or a .csv / .tsv table."
        )
    wrong = sorted(k for k, v in kw.items() if k not in allowed and v is not None)
    if wrong:
        kind = "TextGrid" if reader is read_textgrid else "table"
        raise LesionAlignError(
            f"{Path(path).name}: option(s) {wrong} do not apply to a {kind} (its options are "
            f"{list(allowed)}). Remove them from the config."
        )
    return reader(path, **{k: v for k, v in kw.items() if k in allowed})


# --------------------------------------------------------------------------- BIDS events
#: the file-name ending of a BIDS events file
EVENTS_SUFFIX = "_events.tsv"
#: values that BIDS writes for a missing value
BIDS_MISSING = ("n/a", "")
#: words of an events file may overlap by this much (s); more, with several event types
#: in the file, means rows that are not words are among them
EVENTS_OVERLAP_S = 0.05


def is_events_file(path) -> bool:
    """Whether ``path`` is a BIDS events file (``*_events.tsv``)."""
    return Path(str(path)).name.lower().endswith(EVENTS_SUFFIX)


def events_word_column(path) -> str | None:
    """The column of a BIDS events file that holds words (the first of
    :data:`WORD_COLUMNS`), or ``None``."""
    _, df = _load_table(path)
    return _find_col(Path(path).name, df, None, WORD_COLUMNS, "word", "word_column",
                     required=False)


def read_events(path, keep: dict | None = None, word_col: str | None = None) -> Words:
    """Read the words of one run from a BIDS events file (``*_events.tsv``).

    Each kept row is one word: ``onset`` (s) and ``duration`` (s) give its times (offset =
    onset + duration; a ``n/a`` duration is the time to the next kept row's onset, the
    last row's the median of the others); the word is in ``word_col`` (by default the
    first of :data:`WORD_COLUMNS` present). ``keep``: column -> the values of the rows to
    keep (e.g. ``{"trial_type": ["word"]}``); the other rows (sentences, pauses, other
    event types) are left out. Silence labels are dropped as in :func:`read_table`.

    Raises :class:`~.errors.LesionAlignError` naming the file, the row and the fix for a
    missing column, an unknown filter column or value, a time that is not a number, and
    rows out of time order (events of several kinds mixed: choose the word rows with
    ``keep``).
    """
    name, df = _load_table(path)
    cols = list(df.columns)
    ocol = _find_col(name, df, None, ("onset",), "onset", "onset column")
    dcol = _find_col(name, df, None, ("duration",), "duration", "duration column")
    wcol = _find_col(name, df, word_col, WORD_COLUMNS, "word", "word_column")
    rows = df
    for col, values in (keep or {}).items():
        c = _find_col(name, df, col, (), col, "events_filter")
        values = [values] if isinstance(values, str) else [str(v) for v in values]
        present = sorted(set(df[c].astype(str)))
        unknown = [v for v in values if v not in present]
        if unknown:
            raise LesionAlignError(
                f"{name}: events_filter {col} = {unknown}: no row has this value; the "
                f"column {c!r} holds {present[:12]}{' ...' if len(present) > 12 else ''}")
        rows = rows[rows[c].astype(str).isin(values)]
    if rows.empty:
        raise LesionAlignError(f"{name}: no event row is left after events_filter {keep}")
    where = [f"data row {i + 1}" for i in rows.index]
    onsets = _numbers(name, rows[ocol], ocol)
    dur_text = rows[dcol].str.strip()
    missing = dur_text.isin(BIDS_MISSING).to_numpy()
    durations = np.full(len(rows), np.nan)
    if (~missing).any():
        durations[~missing] = _numbers(name, dur_text[~missing], dcol)
    labels = [str(w) for w in rows[wcol]]
    kinds = {c: sorted(set(df[c].astype(str))) for c in cols
             if _norm_col(c) in ("trial_type", "type", "event_type")}
    hint = "; ".join(f"{c} holds {v[:8]}" for c, v in kinds.items() if len(v) > 1)
    mixed = (" The events file may mix several kinds of event: keep the word rows with "
             "events_filter = {trial_type = \"...\"}" + (f" ({hint})" if hint else ""))
    try:
        _check_times(name, labels, onsets, onsets, where)
    except LesionAlignError as err:
        raise LesionAlignError(f"{err}{mixed}") from None
    if np.any(durations[~np.isnan(durations)] < 0):
        i = int(np.flatnonzero(durations < 0)[0])
        raise LesionAlignError(f"{name}: {where[i]}: duration {durations[i]} is negative; a "
                               "duration is a time in seconds >= 0")
    offsets = onsets + durations
    gaps = np.isnan(offsets)
    if gaps.any():  # n/a durations: to the next onset
        nxt = np.r_[onsets[1:], np.nan]
        known = durations[~np.isnan(durations)]
        steps = np.diff(onsets)
        last = float(np.median(known)) if len(known) else (
            float(np.median(steps)) if len(steps) else 0.0)
        nxt[-1] = onsets[-1] + last
        offsets[gaps] = nxt[gaps]
    keep_rows = np.array([w.strip() not in BIDS_MISSING and not is_silence(w)
                          for w in labels])
    if not keep_rows.any():
        raise LesionAlignError(f"{name}: no word left (every {wcol!r} is empty or a silence "
                               "label); check word_column and events_filter")
    idx = np.flatnonzero(keep_rows)
    words = [labels[i].strip() for i in idx]
    _check_times(name, words, onsets[idx], offsets[idx], [where[i] for i in idx])
    over = np.flatnonzero(onsets[idx][1:] < offsets[idx][:-1] - EVENTS_OVERLAP_S)
    if len(over) and hint:  # rows of another kind among the words
        i, j = idx[over[0]], idx[over[0] + 1]
        raise LesionAlignError(
            f"{name}: {where[j]} ({labels[j]!r}) starts at {_fmt_t(onsets[j])}, before "
            f"{where[i]} ({labels[i]!r}) ends at {_fmt_t(offsets[i])}.{mixed}")
    return Words(tuple(words), onsets[idx], offsets[idx], str(path), None, None)
