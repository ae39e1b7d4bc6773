"""Tests of the one rule for language codes and spaceless scripts (core/languages.py)."""

from __future__ import annotations

import pytest

from napari_lesion_align.core.data import stimuli
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.data.languages import (SPACELESS_SCRIPTS, is_spaceless,
                                                     normalize_language)

SPACELESS = (
    "zh", "zh-CN", "zh-Hans", "zh-TW", "zh-Hant", "cmn", "yue", "wuu", "chi", "zho",
    "Chinese", "Mandarin", "Cantonese", "Simplified Chinese", "中文",
    "ja", "jpn", "Japanese", "日本語",
    "th", "tha", "Thai", "lo", "lao", "km", "khm", "my", "mya", "bur", "Burmese",
    "bo", "dz", "Tibetan",
)
SPACED = (
    "en", "fr", "de", "ko", "ar", "he", "hi", "vi", "ru", "es",
    "eng", "fra", "fre", "kor", "English", "French", "Korean", "Vietnamese", "Hindi",
    "en-US", "pt-BR", "sr-Cyrl",
    "zh-Latn", "ja-Latn",  # pinyin and romaji are written with spaces
)
UNKNOWN = ("xx", "qqq", "cn", "jp", "klingonish", "", "   ", "und", "zh CN", "Englishman")


@pytest.mark.parametrize("language", SPACELESS)
def test_spaceless_languages(language):
    assert is_spaceless(language) is True


@pytest.mark.parametrize("language", SPACED)
def test_spaced_languages(language):
    assert is_spaceless(language) is False


def test_script_subtag_overrides_the_likely_script():
    assert is_spaceless("zh") and not is_spaceless("zh-Latn")
    assert not is_spaceless("ko") and is_spaceless("ko-Hani")  # Hanja-only Korean
    assert is_spaceless("ja-Hira") and is_spaceless("ja-Kana")
    # the region decides the likely script: Traditional in Taiwan, Simplified in China
    assert normalize_language("zh-TW") == "zh-TW" and is_spaceless("zh-TW")


def test_spaceless_scripts_is_the_one_list():
    assert isinstance(SPACELESS_SCRIPTS, frozenset)
    assert {"Hani", "Hans", "Hant", "Jpan", "Hira", "Kana", "Thai", "Laoo", "Khmr", "Mymr",
            "Tibt"} <= SPACELESS_SCRIPTS
    assert not {"Latn", "Kore", "Hang", "Arab", "Hebr", "Deva", "Cyrl"} & SPACELESS_SCRIPTS


@pytest.mark.parametrize("given, tag", [
    ("cmn", "zh"), ("jpn", "ja"), ("tha", "th"), ("fra", "fr"), ("fre", "fr"),
    ("EN", "en"), ("en-us", "en-US"), ("zh-Hans", "zh-Hans"), ("zh-hans", "zh-Hans"),
    ("ZH-cn", "zh-CN"), ("zh_TW", "zh-TW"), ("cmn_Hans", "zh-Hans"), (" zh ", "zh"),
    ("Chinese", "zh"), ("chinese", "zh"), ("Mandarin", "zh"), ("Japanese", "ja"),
    ("Thai", "th"), ("Cantonese", "yue"), ("yue", "yue"), ("wuu", "wuu"),
    ("Simplified Chinese", "zh-Hans"), ("français", "fr"), ("zh-Latn", "zh-Latn"),
])
def test_normalize_language(given, tag):
    assert normalize_language(given) == tag


@pytest.mark.parametrize("language", UNKNOWN)
def test_unknown_languages_raise_with_where_value_and_fix(language):
    where = "[languages.CN].text_language"
    for func in (normalize_language, is_spaceless):
        with pytest.raises(LesionAlignError) as info:
            func(language, where=where)
        msg = str(info.value)
        assert msg.startswith(f"{where} = {language!r} is not a known language code or name")
        assert "BCP-47 / ISO 639" in msg and "'zh-Hans'" in msg and "'cmn'" in msg


def test_unknown_language_without_where_names_the_value():
    with pytest.raises(LesionAlignError, match=r"^language 'qqq' is not a known language"):
        normalize_language("qqq")
    with pytest.raises(LesionAlignError, match="language None is not a known"):
        is_spaceless(None)


@pytest.mark.parametrize("code, fix, name", [("cn", "zh", "Chinese"), ("jp", "ja", "Japanese")])
def test_country_codes_suggest_the_language_code(code, fix, name):
    with pytest.raises(LesionAlignError, match=rf"did you mean '{fix}' \({name}\)\?") as info:
        is_spaceless(code, where=f"[languages.{code.upper()}].text_language")
    assert f"[languages.{code.upper()}].text_language = '{code}'" in str(info.value)
    assert "country code" in str(info.value)


def test_no_suggestion_for_other_unknown_codes():
    for code in ("xx", "qqq", "klingonish"):
        with pytest.raises(LesionAlignError) as info:
            normalize_language(code)
        assert "did you mean" not in str(info.value)


def test_fuzzy_name_matches_are_refused():
    # langcodes.find() maps "Thaiwanese" to Thai (a 4-letter prefix); a typo must not
    # silently make a language spaceless
    with pytest.raises(LesionAlignError):
        is_spaceless("Thaiwanese")


def test_errors_are_not_cached_and_results_are():
    for _ in range(2):
        with pytest.raises(LesionAlignError):
            normalize_language("cn", where="a")
    with pytest.raises(LesionAlignError, match="^b = 'cn'"):
        normalize_language("cn", where="b")  # the message names this call's `where`
    assert is_spaceless("zh") and is_spaceless("zh")


def test_stimuli_uses_the_same_rule():
    assert stimuli.is_spaceless is is_spaceless
    assert "is_spaceless" in stimuli.__all__
    assert not hasattr(stimuli, "SPACELESS_LANGUAGES")
    w = stimuli.Words(("ไป", "ไหน"), [0, 1], [1, 2])
    assert w.text("tha") == "ไปไหน" and w.text(None) == w.text("") == "ไป ไหน"
    assert w.text("Korean") == "ไป ไหน"
    with pytest.raises(LesionAlignError, match="did you mean 'ja'"):
        w.text("jp")


def test_chinese_with_bopomofo_is_spaceless():
    # CLDR lists zh-Hanb (Han with Bopomofo) as a script of Chinese
    assert is_spaceless("zh-Hanb") and not is_spaceless("zh-Latn")
