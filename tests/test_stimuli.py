"""Tests of the word-annotation readers (core/stimuli.py).

Real files: the Le Petit Prince (LPP) annotations under $NLA_SHARED_DATA/lpp_annotations
(EN and FR TextGrids, EN and CN word tables). Synthetic files are written in tmp_path,
TextGrids with praatio itself.
"""

from __future__ import annotations

import codecs
from pathlib import Path
import csv
import difflib
import re
import warnings

import numpy as np
import pytest
from praatio import textgrid
from praatio.data_classes.interval_tier import IntervalTier
from praatio.data_classes.point_tier import PointTier

from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.data.stimuli import (SILENCE_LABELS, Words, is_spaceless, list_runs,
                                                   read_table, read_textgrid, read_words,
                                                   words_text_for_model)

# Facts found in the real files (independently re-counted by the tests below).
EN_TG_WORDS = {1: 1521, 2: 1694, 3: 1864, 4: 1650, 5: 1548, 6: 1832, 7: 1788, 8: 1583, 9: 1973}
EN_CSV_ROWS = {1: 1517, 2: 1690, 3: 1852, 4: 1624, 5: 1534, 6: 1815, 7: 1786, 8: 1583, 9: 1975}
EN_CSV_EMPTY = {1: 1, 2: 0, 3: 0, 4: 9, 5: 14, 6: 5, 7: 1, 8: 0, 9: 1}
EN_AUDIO_END = {1: 564, 2: 596, 3: 680, 4: 606, 5: 530, 6: 686, 7: 650, 8: 584, 9: 736}
FR_TG_WORDS = {1: 1614, 2: 1768, 3: 1861, 4: 1641, 5: 1520, 6: 1845, 7: 1696, 8: 1516, 9: 1797}
CN_ROWS = {1: 1753, 2: 1800, 3: 1919, 4: 1645, 5: 1568, 6: 1845, 7: 1796, 8: 1568, 9: 2115}
SECTIONS = range(1, 10)
HAN = re.compile(r"[\u4e00-\u9fff]")


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="session")
def lpp(shared_data):
    return shared_data / "lpp_annotations"


def _raw_textgrid_labels(path) -> list[str]:
    """Labels of a one-tier long-format TextGrid, read without praatio (README's decoder).

    Praat doubles a quote inside a string (``na\\i""ve`` is the label ``na\\i"ve``).
    """
    b = path.read_bytes()
    text = b.decode("utf-16") if b[:2] in (b"\xfe\xff", b"\xff\xfe") else b.decode("utf-8")
    labels = re.findall(r'^\s*text = "(.*)"\s*$', text, flags=re.MULTILINE)
    return [x.replace('""', '"') for x in labels]


def _raw_csv_rows(path, section) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fd:
        return [r for r in csv.DictReader(fd) if int(r["section"]) == section]


def _read_quiet(*args, **kw) -> Words:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return read_words(*args, **kw)


def _save_tg(path, tiers, fmt="long_textgrid", encoding=None, bom=True):
    """Write a TextGrid with praatio, then re-encode it (None: praatio's own UTF-8)."""
    tg = textgrid.Textgrid()
    for t in tiers:
        tg.addTier(t)
    tg.save(str(path), format=fmt, includeBlankSpaces=True)
    if encoding is not None:
        text = path.read_bytes().decode("utf-8")
        boms = {"utf-8": codecs.BOM_UTF8, "utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}
        path.write_bytes((boms[encoding] if bom else b"") + text.encode(encoding))
    return path


WORD_ENTRIES = [(0.5, 1.0, "été"), (1.0, 1.2, "#"), (1.2, 1.6, "王子"), (1.7, 2.3, "prince")]


def _words_tier(entries=WORD_ENTRIES, name="words", maxT=3.0):
    return IntervalTier(name, entries, 0, maxT)


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- real files: EN
def test_en_section1_textgrid_vs_csv(lpp):
    tg = read_words(lpp / "EN" / "lppEN_section1.TextGrid")
    assert len(tg) == EN_TG_WORDS[1] == 1521
    assert not set(tg.words) & {"#", ""}
    assert tg.audio_end == 564.0
    assert tg.duration == pytest.approx(554.6296)

    with pytest.warns(UserWarning, match=r"1 row\(s\) with an empty 'word'"):
        table = read_words(lpp / "EN" / "lppEN_word_information.csv", run=1)
    assert len(table) == EN_CSV_ROWS[1] - EN_CSV_EMPTY[1] == 1516
    # The TextGrid has 5 tokens more than the CSV (after its 1 empty row is dropped).
    assert len(tg) - len(table) == 5

    a = [w.lower() for w in tg.words]
    b = [w.lower() for w in table.words]
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    pairs = [(blk.a + k, blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size)]
    assert len(pairs) >= 1500
    i, j = np.array(pairs).T
    diff = np.abs(tg.onsets[i] - table.onsets[j])
    # The CSV rounds to ms; 20 of 1506 matched words were re-timed (by at most 0.24 s).
    assert np.mean(diff <= 0.001) >= 0.98
    assert diff.max() < 0.25
    # Known tokenisation difference: "didn't" is didn + t in the TextGrid, did + nt in the CSV.
    k = a.index("didn")
    assert a[k : k + 2] == ["didn", "t"]
    m = b.index("did", j[np.searchsorted(i, k)] - 2)
    assert b[m : m + 2] == ["did", "nt"]
    assert table.onsets[m] == pytest.approx(tg.onsets[k], abs=0.001)


def test_en_section8_textgrid_equals_csv(lpp):
    tg = read_words(lpp / "EN" / "lppEN_section8.TextGrid")
    table = read_words(lpp / "EN" / "lppEN_word_information.csv", run=8)
    assert [w.lower() for w in tg.words] == [w.lower() for w in table.words]
    np.testing.assert_allclose(tg.onsets, table.onsets, atol=0.0006)
    np.testing.assert_allclose(tg.offsets, table.offsets, atol=0.0006)


@pytest.mark.parametrize("section", SECTIONS)
def test_en_textgrids(lpp, section):
    path = lpp / "EN" / f"lppEN_section{section}.TextGrid"
    encoding = "UTF-16 BE" if path.read_bytes()[:2] == codecs.BOM_UTF16_BE else "ASCII"
    assert encoding == ("UTF-16 BE" if section in (3, 4, 5, 6) else "ASCII")
    w = read_textgrid(path)
    raw = [x for x in _raw_textgrid_labels(path) if x.strip() not in ("#", "")]
    assert len(w) == len(raw) == EN_TG_WORDS[section]
    assert list(w.words) == [x.strip() for x in raw]
    assert np.all(np.diff(w.onsets) >= 0) and np.all(w.offsets > w.onsets)
    # README: each section is 530-736 s long (the audio, i.e. the tier's xmax); the last
    # word ends 8-10 s before that.
    assert w.audio_end == EN_AUDIO_END[section]
    assert 530 <= w.audio_end <= 736
    assert w.audio_end - 10 < w.duration < w.audio_end - 7


@pytest.mark.parametrize("section", SECTIONS)
def test_en_csv_runs(lpp, section):
    path = lpp / "EN" / "lppEN_word_information.csv"
    rows = _raw_csv_rows(path, section)
    assert len(rows) == EN_CSV_ROWS[section]
    assert sum(not r["word"].strip() for r in rows) == EN_CSV_EMPTY[section]
    w = _read_quiet(path, run=section)
    assert len(w) == EN_CSV_ROWS[section] - EN_CSV_EMPTY[section]
    assert w.sentence_ids is None
    assert w.onsets[0] == float(next(r["onset"] for r in rows if r["word"].strip()))
    assert np.all(np.diff(w.onsets) >= 0)
    assert 520 < w.duration <= 736


def test_en_list_runs_and_run_needed(lpp):
    path = lpp / "EN" / "lppEN_word_information.csv"
    assert list_runs(path) == list(SECTIONS)
    with pytest.raises(LesionAlignError, match=r"lppEN_word_information\.csv: holds 9 runs .*section.*run ="):
        read_words(path)


def test_en_tier_error_message(lpp):
    with pytest.raises(LesionAlignError) as exc:
        read_words(lpp / "EN" / "lppEN_section1.TextGrid", tier="words")
    assert str(exc.value) == (
        "lppEN_section1.TextGrid: no tier named 'words'; tiers are ['TokensAlign']. "
        "Set tier = 'TokensAlign' in the config."
    )


def test_en_gpt2_tsv_with_explicit_columns(lpp):
    path = lpp / "EN" / "Prince_gpt2.tsv"
    with pytest.raises(LesionAlignError, match="no onset column.*section_time_onset.*onset_col"):
        read_words(path, run=1)
    w = read_words(path, run=1, onset_col="section_time_onset", offset_col="section_time_offset")
    assert len(w) == 1517
    assert w.words[:3] == ("Once", "when", "I")
    assert w.sentence_ids is not None and w.sentence_ids[0] == 1


# --------------------------------------------------------------------------- real files: FR, CN
def test_fr_section1_utf16_be(lpp):
    path = lpp / "FR" / "lppFR_section1.TextGrid"
    assert path.read_bytes()[:2] == codecs.BOM_UTF16_BE
    w = read_words(path)
    assert len(w) == FR_TG_WORDS[1]
    assert w.words[:2] == ("lorsque", "j'")
    assert "prince" in w.words
    assert any(not x.isascii() for x in w.words)  # accents decoded
    assert w.audio_end == pytest.approx(613.52)
    assert words_text_for_model(w, "fr")[:2] == ["lorsque", "j'"]


@pytest.mark.parametrize("section", SECTIONS)
def test_fr_textgrids(lpp, section):
    path = lpp / "FR" / f"lppFR_section{section}.TextGrid"
    w = read_words(path)
    raw = [x for x in _raw_textgrid_labels(path) if x.strip()]
    assert len(w) == len(raw) == FR_TG_WORDS[section]
    assert 1516 <= len(w) <= 1861  # README
    assert 580.9 <= w.audio_end <= 750.4  # README: 581-750 s
    assert np.all(np.diff(w.onsets) >= 0)


def test_cn_section1(lpp):
    path = lpp / "CN" / "lppCN_word_information_sent_info.csv"
    assert list_runs(path) == list(SECTIONS)
    w = read_words(path, run=1)
    assert len(w) == CN_ROWS[1]
    assert w.words[:4] == ("当", "我", "还", "只有")
    assert np.mean([bool(HAN.search(x)) for x in w.words]) > 0.99
    assert w.sentence_ids[0] == 1 and w.sentence_ids[-1] == 258
    assert np.all(np.diff(w.sentence_ids) >= 0)
    assert w.text("zh").startswith("当我还只有六岁的时候")
    assert " " not in w.text("zh")
    assert w.to_frame().columns.tolist() == ["word", "onset", "offset", "sentence_id"]


def test_cn_all_runs(lpp):
    path = lpp / "CN" / "lppCN_word_information_sent_info.csv"
    total = 0
    durations = []
    for s in SECTIONS:
        w = read_words(path, run=str(s))
        assert len(w) == CN_ROWS[s]
        total += len(w)
        durations.append(w.duration)
    assert total == 16009  # README
    # The Mandarin audio is longer: sections 6 and 9 end after 750 s.
    assert min(durations) == pytest.approx(564.95)
    assert max(durations) == pytest.approx(801.06)
    assert [s for s, d in zip(SECTIONS, durations) if d > 750] == [6, 9]


# --------------------------------------------------------------------------- synthetic TextGrids
@pytest.mark.parametrize(
    "encoding,bom", [(None, False), ("utf-8", True), ("utf-16-le", True), ("utf-16-be", True), ("utf-16-le", False)]
)
def test_textgrid_encodings(tmp_path, encoding, bom):
    path = _save_tg(tmp_path / "a.TextGrid", [_words_tier()], encoding=encoding, bom=bom)
    if encoding and encoding.startswith("utf-16") and bom:
        assert path.read_bytes()[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    w = read_words(path)
    assert w.words == ("été", "王子", "prince")
    np.testing.assert_allclose(w.onsets, [0.5, 1.2, 1.7])
    np.testing.assert_allclose(w.offsets, [1.0, 1.6, 2.3])
    assert w.audio_end == 3.0
    assert w.source == str(path)


def test_textgrid_latin1_read_with_warning(tmp_path):
    text = _save_tg(tmp_path / "u.TextGrid", [_words_tier([(0.5, 1.0, "été")])]).read_text("utf-8")
    path = _write(tmp_path / "l.TextGrid", text, "latin-1")
    with pytest.warns(UserWarning, match="l.TextGrid: not valid UTF-8.*Latin-1"):
        w = read_words(path)
    assert w.words == ("été",)


def test_textgrid_short_format(tmp_path):
    path = _save_tg(tmp_path / "s.TextGrid", [_words_tier()], fmt="short_textgrid", encoding="utf-16-be")
    assert "intervals [" not in path.read_bytes().decode("utf-16")
    w = read_words(path)
    assert w.words == ("été", "王子", "prince")


def test_textgrid_silences_dropped(tmp_path):
    labels = ["#", "sp", "SIL", "<sil>", "<SIL>", "Sp", "spa", "  ", "word", "sil."]
    entries = [(i, i + 0.5, lab) for i, lab in enumerate(labels)]
    w = read_words(_save_tg(tmp_path / "x.TextGrid", [_words_tier(entries, maxT=20)]))
    assert w.words == ("spa", "word", "sil.")
    np.testing.assert_allclose(w.onsets, [6, 8, 9])
    assert {"", "#", "sp", "sil", "<sil>"} <= SILENCE_LABELS


def test_textgrid_only_silence_is_error(tmp_path):
    path = _save_tg(tmp_path / "q.TextGrid", [_words_tier([(0.0, 1.0, "#"), (1.0, 2.0, "sil")])])
    with pytest.raises(LesionAlignError, match=r"q\.TextGrid: tier 'words' has no words"):
        read_words(path)


#: labels that look empty but are not silences: format / control characters only
INVISIBLE = ["\u200b", "\ufeff", "\u00ad", "\u200b\u200d\u2060", "\x07", "\u200e"]


@pytest.mark.parametrize("label", INVISIBLE, ids=[f"U+{ord(c[0]):04X}" for c in INVISIBLE])
def test_a_word_without_visible_characters_is_named_where_it_is(tmp_path, label):
    """A zero-width space (or another format character) alone makes no token: refused when
    the annotation is read, naming the file, the tier and interval, and the time."""
    entries = WORD_ENTRIES + [(2.4, 2.6, label)]
    path = _save_tg(tmp_path / "z.TextGrid", [_words_tier(entries)])
    with pytest.raises(LesionAlignError) as exc:
        read_words(path)
    msg = str(exc.value)
    # Praat's interval number (the gaps between words count)
    assert msg.startswith("z.TextGrid: tier 'words', interval [8] (2.4-2.6 s): the word ")
    assert f"U+{ord(label[0]):04X}" in msg and "no visible character" in msg
    assert "\n" not in msg and msg.endswith("or type the word.")
    # a table: its line
    rows = "word,onset,offset\na,0,1\n" + f"{label},1.5,2\n"
    with pytest.raises(LesionAlignError, match=r"^t\.csv: line 3 \(1\.5-2 s\): the word "):
        read_words(_write(tmp_path / "t.csv", rows))


def test_visible_words_with_format_characters_are_kept(tmp_path):
    """A word with a visible character keeps its joiners (e.g. a zero-width joiner)."""
    entries = [(0.0, 0.5, "a\u200db"), (0.5, 1.0, "\u200bword")]
    w = read_words(_save_tg(tmp_path / "k.TextGrid", [_words_tier(entries)]))
    assert w.words == ("a\u200db", "\u200bword")


def test_textgrid_tier_selection(tmp_path):
    phones = IntervalTier("phones", [(0.5, 0.7, "e"), (0.7, 1.0, "t")], 0, 3)
    events = PointTier("events", [(0.2, "click")], 0, 3)
    path = _save_tg(tmp_path / "t.TextGrid", [phones, _words_tier(), events])
    assert read_words(path).words == ("été", "王子", "prince")  # known name 'words'
    assert read_words(path, tier="phones").words == ("e", "t")
    assert read_words(path, tier="WORDS").words == ("été", "王子", "prince")  # case-insensitive
    with pytest.raises(LesionAlignError, match="tier 'events' is a point tier"):
        read_words(path, tier="events")
    with pytest.raises(LesionAlignError, match=r"no tier named 'syllables'; tiers are \['phones', 'words', 'events'\]"):
        read_words(path, tier="syllables")


def test_textgrid_ambiguous_tier(tmp_path):
    ortho = IntervalTier("ortho", [(0.5, 1.0, "a")], 0, 3)
    phones = IntervalTier("phones", [(0.5, 1.0, "a")], 0, 3)
    path = _save_tg(tmp_path / "amb.TextGrid", [ortho, phones])
    with pytest.raises(LesionAlignError) as exc:
        read_words(path)
    msg = str(exc.value)
    assert msg.startswith("amb.TextGrid: cannot tell which tier holds the words")
    assert "['ortho', 'phones']" in msg and "tier =" in msg
    assert read_words(path, tier="ortho").words == ("a",)
    # two tiers with known word-tier names are ambiguous too
    two = _save_tg(tmp_path / "two.TextGrid", [IntervalTier("word", [(0.5, 1.0, "a")], 0, 3), _words_tier()])
    with pytest.raises(LesionAlignError, match=r"two\.TextGrid: cannot tell .*\['word', 'words'\]"):
        read_words(two)


def test_textgrid_garbage_and_damage(tmp_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.TextGrid"
    garbage.write_bytes(bytes([0x8F, 0xFF, 0x00, 0x13]) + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(LesionAlignError, match=r"^garbage\.TextGrid: "):
        read_words(garbage)

    notgrid = _write(tmp_path / "notes.TextGrid", "just some notes\n")
    with pytest.raises(LesionAlignError, match=r"notes\.TextGrid: not a Praat TextGrid"):
        read_words(notgrid)

    good = _save_tg(tmp_path / "g.TextGrid", [_words_tier()]).read_text("utf-8")
    cut = _write(tmp_path / "cut.TextGrid", good[: good.index("intervals [2]") + 30])
    with pytest.raises(LesionAlignError, match=r"cut\.TextGrid: cannot be parsed") as exc:
        read_words(cut)
    assert exc.value.__cause__ is not None

    overlap = _write(tmp_path / "ov.TextGrid", good.replace("xmin = 1.2", "xmin = 0.9"))
    with pytest.raises(LesionAlignError, match=r"ov\.TextGrid: tier 'words' is not a valid interval tier"):
        read_words(overlap)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(LesionAlignError, match="nope.TextGrid: file not found"):
        read_words(tmp_path / "nope.TextGrid")
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(LesionAlignError, match="is a folder"):
        read_words(folder)


# --------------------------------------------------------------------------- synthetic tables
def test_csv_without_offset(tmp_path):
    path = _write(tmp_path / "w.csv", "start,token\n0.0,the\n0.5,little\n1.5,prince\n1.7,said\n")
    w = read_words(path)
    assert w.words == ("the", "little", "prince", "said")
    # offset = next onset; the last word lasts the median duration (0.5 s, mean is 0.57 s)
    np.testing.assert_allclose(w.offsets, [0.5, 1.5, 1.7, 2.2])
    assert w.duration == pytest.approx(2.2)


def test_csv_offset_from_next_row_even_if_silence(tmp_path):
    path = _write(tmp_path / "w.csv", "onset,word\n0.0,a\n0.4,#\n1.0,b\n")
    w = read_words(path)
    assert w.words == ("a", "b")
    np.testing.assert_allclose(w.offsets, [0.4, 1.5])


def test_tsv_and_txt(tmp_path):
    text = "Word\tTMIN\tTMAX\tsentence_id\nhello\t0.1\t0.4\t1\nworld\t0.4\t0.9\t1\nagain\t1.2\t1.5\t2\n"
    for name in ("w.tsv", "w.txt"):
        w = read_words(_write(tmp_path / name, text))
        assert w.words == ("hello", "world", "again")
        np.testing.assert_allclose(w.offsets, [0.4, 0.9, 1.5])
        assert w.sentence_ids.tolist() == [1, 1, 2]
        assert w.text() == "hello world again"


def test_csv_utf8_bom_and_utf16(tmp_path):
    text = "word,onset,offset\nété,0,1\n"
    for enc, bom in (("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)):
        path = tmp_path / f"{enc}.csv"
        path.write_bytes(bom + text.encode(enc))
        assert read_words(path).words == ("été",)


def test_csv_latin1_is_error(tmp_path):
    path = _write(tmp_path / "lat.csv", "word,onset,offset\nété,0,1\n", "latin-1")
    with pytest.raises(LesionAlignError, match=r"lat\.csv: cannot be decoded as UTF-8 .*Save the table as UTF-8") as exc:
        read_words(path)
    assert isinstance(exc.value.__cause__, UnicodeDecodeError)


def test_multi_run_table(tmp_path):
    text = "section,word,onset,offset\n1,a,0,1\n1,b,1,2\n2,c,0,0.5\n2,d,0.5,1\n2,e,1,1.5\n"
    path = _write(tmp_path / "runs.csv", text)
    assert list_runs(path) == [1, 2]
    with pytest.raises(LesionAlignError, match=r"runs\.csv: holds 2 runs \(column 'section': \[1, 2\]\)"):
        read_words(path)
    assert read_words(path, run=2).words == ("c", "d", "e")
    assert read_table(path, run=2).to_frame().onset.tolist() == [0.0, 0.5, 1.0]
    assert read_words(path, run="2").words == ("c", "d", "e")
    assert read_words(path, run=1.0).words == ("a", "b")
    with pytest.raises(LesionAlignError, match=r"no rows with section = 3; the runs are \[1, 2\]"):
        read_words(path, run=3)


def test_run_column_named_and_string_runs(tmp_path):
    path = _write(tmp_path / "r.tsv", "part\tword\tonset\nA\tx\t0\nB\ty\t0\n")
    assert list_runs(path) == []  # no recognised run column
    assert list_runs(path, run_col="part") == ["A", "B"]
    assert read_words(path, run="B", run_col="part").words == ("y",)
    with pytest.raises(LesionAlignError, match="has no run column"):
        read_words(path, run="B")


def test_missing_column_errors(tmp_path):
    path = _write(tmp_path / "m.csv", "word,begin_s\nhello,0.1\n")
    with pytest.raises(LesionAlignError) as exc:
        read_words(path)
    msg = str(exc.value)
    assert msg.startswith("m.csv: no onset column; columns are ['word', 'begin_s']")
    assert "onset_col" in msg
    assert read_words(path, onset_col="begin_s").words == ("hello",)
    with pytest.raises(LesionAlignError, match=r"m\.csv: no column 'stop_s' for the offset"):
        read_words(path, onset_col="begin_s", offset_col="stop_s")
    no_word = _write(tmp_path / "n.csv", "onset,offset\n0,1\n")
    with pytest.raises(LesionAlignError, match=r"n\.csv: no word column"):
        read_words(no_word)


def test_out_of_order_onsets(tmp_path):
    # (a blank line: the places are the file's lines, not the rows)
    path = _write(tmp_path / "o.csv", "word,onset,offset\na,0.0,0.5\n\nb,3.5,3.9\nc,3.2,3.4\nd,4,5\n")
    with pytest.raises(LesionAlignError) as exc:
        read_words(path)
    assert str(exc.value) == (
        "o.csv: line 5 ('c'): onsets are not in time order: it starts at 3.2 s, before "
        "line 4 ('b') at 3.5 s. Sort the rows by onset or fix the times."
    )
    assert exc.value.file == str(path) and exc.value.where == "line 5 ('c')"


@pytest.mark.parametrize(
    "rows,pattern",
    [
        ("a,zero,1", r"line 2: onset 'zero' is not a number"),
        ("a,,1", r"line 2: onset '' is not a number"),
        ("a,-0.5,1", r"line 2 \('a'\): negative onset -0.5 s"),
        ("a,inf,1", r"line 2 \('a'\): onset inf is not a time"),
        ("a,2,1", r"line 2 \('a'\): ends at 1 s, before its onset 2 s"),
        ("#,0,1", r"the run has no words"),
    ],
)
def test_bad_numbers(tmp_path, rows, pattern):
    path = _write(tmp_path / "bad.csv", f"word,onset,offset\n{rows}\n")
    with pytest.raises(LesionAlignError, match=r"^bad\.csv: .*" + pattern):
        read_words(path)


def test_empty_words_dropped_with_warning(tmp_path):
    path = _write(tmp_path / "e.csv", "word,onset,offset\na,0,1\n,1,2\n  ,2,3\nb,3,4\n")
    with pytest.warns(UserWarning, match=r"e\.csv: 2 row\(s\) with an empty 'word' were skipped \(line 3, line 4\)"):
        w = read_words(path)
    assert w.words == ("a", "b")


def test_words_like_na_are_kept(tmp_path):
    path = _write(tmp_path / "na.csv", "word,onset,offset\nNA,0,1\nnull,1,2\nnan,2,3\n")
    assert read_words(path).words == ("NA", "null", "nan")


def test_table_garbage_and_wrong_separator(tmp_path):
    garbage = tmp_path / "g.csv"
    garbage.write_bytes(b"\x8f\xff\x00\x13" * 50)
    with pytest.raises(LesionAlignError, match=r"^g\.csv: "):
        read_words(garbage)
    tabbed = _write(tmp_path / "t.csv", "word\tonset\toffset\na\t0\t1\n")
    with pytest.raises(LesionAlignError, match=r"t\.csv: found a single column .*separated by commas"):
        read_words(tabbed)
    ragged = _write(tmp_path / "r.csv", "word,onset,offset\na,0,1\nb,1,2,3,4\n")
    with pytest.raises(LesionAlignError, match=r"^r\.csv: cannot be read as a comma-separated table"):
        read_words(ragged)
    empty = _write(tmp_path / "z.csv", "")
    with pytest.raises(LesionAlignError, match=r"z\.csv: the file is empty"):
        read_words(empty)


def test_read_words_dispatch_errors(tmp_path):
    with pytest.raises(LesionAlignError, match=r"a\.json: unsupported word-annotation file type '\.json'"):
        read_words(tmp_path / "a.json")
    path = _save_tg(tmp_path / "a.textgrid", [_words_tier()])  # lower-case suffix
    assert len(read_words(path, run=None)) == 3  # other reader's option, None: ignored
    with pytest.raises(LesionAlignError, match=r"option\(s\) \['run'\] do not apply to a TextGrid"):
        read_words(path, run=1)
    with pytest.raises(LesionAlignError, match=r"unknown word-annotation option\(s\) \['tire'\]"):
        read_words(path, tire="words")
    csv_path = _write(tmp_path / "a.csv", "word,onset\na,0\n")
    with pytest.raises(LesionAlignError, match=r"\['tier'\] do not apply to a table"):
        read_words(csv_path, tier="words")


# --------------------------------------------------------------------------- Words and helpers
def test_words_dataclass():
    w = Words(("  hello ", "world."), [0.0, 0.5], [0.5, 1.25], "x.csv", [1, 1])
    assert len(w) == 2 and w.duration == 1.25
    assert w.onsets.dtype == np.float64 and w.sentence_ids.dtype == np.int64
    with pytest.raises(AttributeError):
        w.words = ()
    with pytest.raises(ValueError):
        w.onsets[0] = 3.0
    assert words_text_for_model(w, "en") == ["hello", "world."]
    frame = w.to_frame()
    assert frame.columns.tolist() == ["word", "onset", "offset", "sentence_id"]
    assert frame.offset.tolist() == [0.5, 1.25]
    with pytest.raises(ValueError, match="2 words but 1 onsets"):
        Words(("a", "b"), [0.0], [1.0, 2.0])
    assert Words((), [], []).duration == 0.0


def test_text_and_spaceless():
    w = Words(("我", "是", "B612"), [0, 1, 2], [1, 2, 3])
    assert w.text() == "我 是 B612"
    assert w.text("zh") == "我是B612"
    assert w.text("") == w.text(None) == "我 是 B612"
    assert w.text("Mandarin") == w.text("zh-TW") == "我是B612"
    assert w.text("zh-Latn") == "我 是 B612"  # pinyin is written with spaces
    for code in ("zh", "ZH-cn", "zh_Hans", "cmn", "ja", "jpn", "th", "Chinese"):
        assert is_spaceless(code), code
    for code in ("en", "fr", "ko"):
        assert not is_spaceless(code), code
    # unknown codes are an error, not silently "spaced" (nor, as before, spaceless)
    for code in ("cn", "jp", "xx", "", None):
        with pytest.raises(LesionAlignError, match="not a known language"):
            is_spaceless(code)
    with pytest.raises(LesionAlignError, match="did you mean 'zh'"):
        w.text("cn")


def test_a_word_the_tokenizer_drops_is_named_with_its_file_and_time(tmp_path, monkeypatch):
    """A word that passes the readers but that the model's tokenizer turns into no token
    (tokenizers differ: the readers cannot know) is refused by the features stage with the
    annotation file, the word's number and its times, in the one input-error format."""
    from napari_lesion_align.core.features import extraction as features
    from napari_lesion_align.core.run.config import load_config
    from napari_lesion_align.core.base.errors import InputError
    from napari_lesion_align.core.run.pipeline import run_analysis
    from test_pipeline import write_study
    from tiny_models import make_tiny_model

    # a store of its own: another test's features of the same tiny model and words would be
    # reused and the tokenizer never asked
    monkeypatch.setenv("NAPARI_LESION_ALIGN_FEATURES", str(tmp_path / "features"))
    model = make_tiny_model(tmp_path / "tiny-xlmr", "xlm-roberta", max_positions=130)
    cfg = load_config(write_study(tmp_path / "study", model, n_subjects=1))
    real = features.extract_word_features

    def drops_word_7(model, tok, ws, *a, **kw):
        # the tokenizer of this model gives word 7 nothing (the real check, on a copy of
        # the words in which word 7 is empty)
        ws = list(ws)
        ws[7] = ""
        return real(model, tok, ws, *a, **kw)

    monkeypatch.setattr(features, "extract_word_features", drops_word_7)
    with pytest.raises(InputError) as info:
        run_analysis(cfg, tmp_path / "out")
    err = info.value
    msg = str(err)
    assert err.file.endswith(".TextGrid") and Path(err.file).name in msg, msg
    found = re.search(r"word 8 \((\d+\.\d+)-(\d+\.\d+) s\)", msg)
    assert found and float(found[1]) < float(found[2]) and "no token" in msg, msg
    assert "\n" not in msg
