"""Language codes and names: one rule for which languages are written without spaces.

A run's text language may be given as a BCP-47 tag (``"zh-CN"``, ``"zh-Hans"``, ``"zh_TW"``),
an ISO 639-1/-2/-3 code (``"zh"``, ``"chi"``, ``"cmn"``, ``"jpn"``, ``"tha"``) or an English
(or native) name (``"Chinese"``, ``"Mandarin"``, ``"Japanese"``, ``"Thai"``), in any case.
:func:`normalize_language` turns any of these into one standard tag with the `langcodes`
library (ISO 639 macrolanguages normalised, e.g. ``"cmn"`` -> ``"zh"``), and
:func:`is_spaceless` decides from the language's *script* (given in the tag, or the
likely script from the CLDR data that `langcodes` ships) whether its words are joined
without spaces (:data:`SPACELESS_SCRIPTS`).

A value that is not a known language raises
:class:`~napari_lesion_align.core.base.errors.LesionAlignError` instead of being treated as a
spaced language: ``"cn"`` (a country code) silently joining Chinese words with spaces
would change every feature of the run.
"""

from __future__ import annotations

import functools

import langcodes
from langcodes.data_dicts import LIKELY_SUBTAGS

from ..base.errors import LesionAlignError

__all__ = ["SPACELESS_SCRIPTS", "normalize_language", "is_spaceless"]

#: ISO 15924 codes of the scripts written without spaces between words: Han (``Hani``,
#: ``Hans``, ``Hant``; ``Hanb`` is Han with Bopomofo), Japanese (``Jpan``, ``Hira``, ``Kana``, ``Hrkt``), Thai, Lao
#: (``Laoo``), Khmer (``Khmr``), Myanmar (``Mymr``) and Tibetan (``Tibt``). Korean
#: (``Kore``, ``Hang``) uses spaces.
SPACELESS_SCRIPTS = frozenset(
    {"Hani", "Hans", "Hant", "Hanb", "Jpan", "Hira", "Kana", "Hrkt", "Thai", "Laoo", "Khmr",
     "Mymr", "Tibt"}
)

_EXAMPLES = "'en', 'fr', 'zh', 'zh-Hans', 'ja', 'cmn'"


def _is_known(tag: str) -> bool:
    """Whether the language subtag of a standard tag is one `langcodes` has data for."""
    lang = langcodes.Language.get(tag).language
    if not lang or lang == "und":
        return False
    return lang in LIKELY_SUBTAGS or langcodes.Language.get(lang).has_name_data()


def _exact_name(name: str) -> str | None:
    """The tag of a language *named* exactly ``name``, else None.

    The name is looked up in `language_data`'s index of English names, then in its index
    of names in any language (``"français"``, ``"中文"``). ``langcodes.find`` alone also
    accepts a name with extra letters after 4 letters of a known name ("Thaiwanese" ->
    Thai, "Englishman" -> English); that fuzzy match is refused here.
    """
    try:
        from language_data import names as _names

        key = _names.normalize_name(name)
        for in_language in ("en", "und"):
            code = _names.name_to_code("language", name, in_language)  # loads the index
            if code is not None and key in _names.TRIES[f"{in_language}/name_to_language"]:
                return code
        return None
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - other versions
        # cannot tell an exact match from a prefix match; keep langcodes.find()'s answer
        try:
            return langcodes.find(name).to_tag()
        except LookupError:
            return None


@functools.lru_cache(maxsize=512)
def _standard_tag(language: str) -> str | None:
    """The standard tag of a code or name, or None when it is not a known language."""
    text = language.strip()
    if not text:
        return None
    candidate = text.replace("_", "-")
    if langcodes.tag_is_valid(candidate):
        tag = langcodes.standardize_tag(candidate, macro=True)
        if _is_known(tag):
            return tag
    named = _exact_name(text)
    if named is not None:
        tag = langcodes.standardize_tag(named, macro=True)
        if _is_known(tag):
            return tag
    return None


def _hint(language: str) -> str:
    """A suggestion for a country code given as a language code ("cn" -> "zh")."""
    text = language.strip()
    if len(text) == 2 and text.isalpha():
        likely = LIKELY_SUBTAGS.get("und-" + text.upper())
        if likely:
            lang = likely.split("-")[0]
            name = langcodes.Language.get(lang).display_name()
            country = langcodes.Language.get("und-" + text.upper()).territory_name()
            return f"; did you mean '{lang}' ({name})? '{text}' is the country code of {country}"
    return ""


def normalize_language(language: str, where: str = "") -> str:
    """The standard BCP-47 tag of a language code or name.

    Parameters
    ----------
    language : str
        A BCP-47 tag (``"zh-CN"``, ``"zh-Hans"``; ``"_"`` is accepted for ``"-"``), an
        ISO 639-1/-2/-3 code (``"fr"``, ``"fra"``, ``"cmn"``, ``"jpn"``) or a language
        name (``"Chinese"``, ``"Mandarin"``, ``"Japanese"``); case-insensitive.
    where : str, optional
        Where the value came from (e.g. ``"[languages.CN].text_language"``), named in the
        error message.

    Returns
    -------
    str
        The tag as ``langcodes.standardize_tag(tag, macro=True)`` writes it: ``"cmn"`` ->
        ``"zh"``, ``"jpn"`` -> ``"ja"``, ``"EN"`` -> ``"en"``, ``"zh_TW"`` -> ``"zh-TW"``,
        ``"Mandarin"`` -> ``"zh"``; ``"zh-Hans"`` stays ``"zh-Hans"``.

    Raises
    ------
    LesionAlignError
        When ``language`` is not a known language code or name (e.g. ``"cn"``, ``"jp"``,
        ``"xx"``, ``"qqq"``, ``""``). A language is known when `langcodes` has likely
        subtags (CLDR) or name data for it.
    """
    tag = _standard_tag(language) if isinstance(language, str) else None
    if tag is None:
        subject = f"{where} = {language!r}" if where else f"language {language!r}"
        hint = _hint(language) if isinstance(language, str) else ""
        raise LesionAlignError(
            f"{subject} is not a known language code or name; use a BCP-47 / ISO 639 code "
            f"such as {_EXAMPLES}{hint}"
        )
    return tag


@functools.lru_cache(maxsize=512)
def _script(tag: str) -> str | None:
    """The script of a standard tag: its script subtag, else the likely script."""
    lang = langcodes.Language.get(tag)
    if lang.script:
        return lang.script
    if lang.language not in LIKELY_SUBTAGS:
        # maximize() would fall back to 'Latn' for any language; no data means no script
        return None
    return lang.maximize().script


def is_spaceless(language: str, where: str = "") -> bool:
    """Whether a language is written without spaces between words.

    Parameters
    ----------
    language : str
        A language code or name, as :func:`normalize_language` accepts.
    where : str, optional
        Where the value came from, named in the error message.

    Returns
    -------
    bool
        True when the language's script -- the script subtag if the tag has one
        (``"zh-Latn"``, pinyin, is spaced), else the likely script from CLDR (``"zh-TW"``
        -> Hant) -- is in :data:`SPACELESS_SCRIPTS`: Chinese (``"zh"``, ``"cmn"``,
        ``"yue"``, ``"wuu"``, ``"Mandarin"``), Japanese, Thai, Lao, Khmer, Burmese, Tibetan,
        Dzongkha. False for e.g. English, French, Korean, Arabic, Hindi, Vietnamese, and
        for a known language without script data.

    Raises
    ------
    LesionAlignError
        When ``language`` is not a known language code or name (see
        :func:`normalize_language`).
    """
    return _script(normalize_language(language, where)) in SPACELESS_SCRIPTS
