"""The data options of a config (``[data]``, ``[data.demo]``, ``[languages.<CODE>]``):
typed, frozen tables that the data sources read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Mapping

from pydantic import BeforeValidator, Field, field_serializer

from ..base.errors import LesionAlignError
from ..base.schema import Int, Label, NonNegInt, Number, PositiveNumber, Section, Table, Text
from .languages import is_spaceless


def _subject(v):
    """Subject labels may be written as whole numbers (``1`` -> ``"1"``)."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


SubjectLabel = Annotated[Label, BeforeValidator(_subject)]


class DemoConfig(Section):
    """``[data.demo]``: the built-in demo's synthetic subjects."""

    TABLE: ClassVar[str] = "[data.demo]"
    n_subjects: Annotated[int, Field(strict=True, ge=1)] = Field(
        5, description="synthetic subjects (each one more fit per language and condition)")
    seed: Int = Field(0, description="the seed of the synthetic BOLD (same seed, same data)")


class LanguageData(Section):
    """Stimuli and BOLD files of one language (a ``[languages.<CODE>]`` table, expanded)."""

    code: Label
    annotations: tuple[Text, ...]  # one path per run (or a single multi-run table repeated)
    runs: tuple[Int | Text, ...]  # run labels
    bold: dict[SubjectLabel, tuple[Text, ...]] = {}  # subject -> one path per run
    text_language: Text = ""
    tier: Text | None = None
    confounds: dict[SubjectLabel, tuple[Text, ...]] | None = None
    bold_start_s: Number = 0.0
    #: kind = "bids": the entities the files were chosen by (task, space, desc, ...)
    bids: dict[Text, Text] | None = None
    #: the subjects that lack some of ``runs``: subject -> the runs it has (its ``bold`` and
    #: ``confounds`` list one file per run it has); the others have every run
    subject_runs: dict[SubjectLabel, tuple[Int | Text, ...]] | None = None
    #: BIDS events.tsv annotations: the rows kept (column -> the values kept, e.g.
    #: ``{trial_type = ["word"]}``); the word column (default: the first of word, token...)
    events_filter: dict[Text, tuple[Text, ...]] | None = None
    word_column: Text | None = None

    def runs_of(self, subject: str) -> tuple:
        """The runs of ``runs`` that ``subject`` has (all of them unless ``subject_runs``
        says otherwise)."""
        return tuple((self.subject_runs or {}).get(subject, self.runs))

    @property
    def language_tag(self) -> str:
        """What says how the text is written: ``text_language``, else the code."""
        return self.text_language or self.code

    @property
    def spaceless(self) -> bool:
        """Whether the words are joined without spaces (:func:`.languages.is_spaceless`)."""
        return is_spaceless(self.language_tag, where=f"[languages.{self.code}].text_language")


class BidsSource(Section):
    """Where a ``kind = "bids"`` config's files came from (recorded in ``[data].bids``)."""

    root: Text
    derivatives: tuple[Text, ...] = ()
    mask: Text = ""  # how the mask was made
    #: what was found and decided that changes the data used (a subject's missing runs,
    #: runs of a session left out, runs without a confounds table)
    notes: tuple[Text, ...] = ()


class DataConfig(Table):
    """``[data]``: what kind of data, the TR, the mask, the subjects.

    A ``kind = "bids"`` config is read as a ``volume`` config whose files were found in the
    BIDS dataset (:mod:`.bids`); ``bids`` records where.
    """

    TABLE: ClassVar[str] = "[data]"
    kind: Literal["volume", "regions", "demo"] = Field("volume", description=(
        "volume: NIfTI BOLD runs and a brain mask; regions: ROI time series tables; "
        "demo: the built-in demo"))
    tr: PositiveNumber = Field(2.0, description="the repetition time of the BOLD runs (s)")
    mask: Text | None = Field(None, description=(
        "the brain mask (NIfTI, > 0 inside); required for volumes"))
    roi_names: tuple[Text, ...] | None = None
    languages: tuple[LanguageData, ...] = ()
    subjects: tuple[SubjectLabel, ...] = Field((), description=(
        "subject labels, letters and digits (empty: every subject with BOLD files)"))
    length_tolerance_trs: NonNegInt = 10
    confounds_skip_rows: NonNegInt = 0
    #: volumes at the start of every run that were acquired before the scanner reached a
    #: steady state (dummy scans kept in the files); regressed out like fMRIPrep's
    #: non-steady-state volumes (which are removed whatever this says)
    dummy_scans: NonNegInt = 0
    bold_skip_rows: NonNegInt = 0
    demo: DemoConfig | None = None
    #: a nilearn confound strategy for fMRIPrep confound tables (None: every column)
    #: (the arguments of load_confounds[_strategy], read by .bold.confound_strategy)
    confounds: dict[Text, Any] | None = None
    bids: BidsSource | None = None

    @field_serializer("languages")
    def _languages_out(self, languages):
        """The demo's annotation files are the package's own: recorded by file name
        (``demo:EN_run-1.TextGrid``), so a result's recipe (and the identity a resume compares)
        does not depend on where the package is installed."""
        if self.kind != "demo":
            return languages
        return tuple(lang.model_copy(update={"annotations": tuple(
            f"demo:{Path(a).name}" for a in lang.annotations)}) for lang in languages)


def events_options(ld: dict, where: str) -> dict:
    """``events_filter`` / ``word_column`` of a ``[languages.<CODE>]`` table (BIDS
    events.tsv annotations), checked: ``events_filter = {trial_type = "word"}`` (a value
    or a list of values per column)."""
    out = {}
    f = ld.get("events_filter")
    if f is not None:
        if not isinstance(f, dict) or not f or not all(
                isinstance(v, str) or (isinstance(v, list) and v and all(
                    isinstance(x, (str, int)) for x in v)) for v in f.values()):
            raise LesionAlignError(f"{where}.events_filter = {f!r}: write a table of the "
                                   "events.tsv rows to keep, column = value or [values], "
                                   "e.g. {trial_type = \"word\"}")
        out["events_filter"] = {str(k): (v,) if isinstance(v, str) else tuple(str(x) for x in v)
                                for k, v in f.items()}
    w = ld.get("word_column")
    if w is not None:
        if not isinstance(w, str) or not w:
            raise LesionAlignError(f"{where}.word_column = {w!r}: the name of the events.tsv "
                                   "column that holds the words, e.g. \"word\"")
        out["word_column"] = w
    return out


@dataclass(frozen=True)
class DataKind:
    """What one ``[data] kind`` brings to a config (the config reader asks its registry of
    kinds, never a kind by name).

    ``read(kind, data, config, base)`` turns the ``[data]`` table (a dict, ``kind`` popped
    or not), the whole config mapping and the config file's folder into ``(data, languages,
    demo)``: the ``[data]`` table left for :class:`DataConfig`, the :class:`LanguageData`
    of every language and the ``[data.demo]`` table (or None). ``defaults``: section ->
    defaults that the config's own keys override (``lesions`` only when the config has a
    ``[lesions]`` table). ``check(config, data)``: a kind's own refusals, asked before the
    sections are read.
    """

    name: str
    read: Callable
    defaults: Mapping[str, Mapping] = field(default_factory=dict)
    check: Callable | None = None
