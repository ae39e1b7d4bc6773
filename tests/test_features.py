"""Tests of word-level feature extraction (napari_lesion_align.core.features.extraction).

Tiny random models (tests/tiny_models.py) are built on the fly in a temporary folder and
loaded offline the way the package loads models. The references are computed here,
independently of the code under test:

* word -> token mapping: a brute-force scan of the tokenizer's character offsets;
* causal decoders (llama with <s>, qwen2 without special tokens): the hidden state of token
  t depends only on tokens <= t, so when every window's context reaches back to the start
  of the text, the windowed features equal those of ONE pass over the whole text; with a
  short context they must equal it exactly for words whose whole prefix is in their window
  and differ for the others;
* bidirectional encoders: one window run by hand ([pre] + context + region + [post]).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tiny_models import (  # noqa: E402  (tests/ is on sys.path: pytest rootdir insertion)
    DECODERS,
    FAMILIES,
    UNK_ID,
    demo_texts,
    load_tiny,
    make_tiny_model,
    make_tokenizer,
)

from napari_lesion_align.core.features import extraction as F  # noqa: E402
from napari_lesion_align.core.base.errors import Cancelled, LesionAlignError  # noqa: E402
from napari_lesion_align.core.features.extraction import (FeatureOptions, TokenizedRun,
                                                          extract_word_features, fir_delays,
                                                          model_capacity, plan_windows,
                                                          special_tokens, tokenize_words,
                                                          words_to_trs)
from napari_lesion_align.core.model.loading import parameters_hash  # noqa: E402
from napari_lesion_align.core.data.stimuli import list_runs, read_words  # noqa: E402
from napari_lesion_align.core.data.demo import DEMO_DIR  # noqa: E402

ATOL = 1e-5


# --------------------------------------------------------------------------- fixtures
#: tiny models gain nothing from threads; on a busy machine they lose a lot
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, **kw) -> LoadedModel (float32, CPU); each model is built once."""
    built: dict = {}

    def get(family: str, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(family.replace("-", "_"))
            make_tiny_model(folder, family, **kw)
            built[key] = load_tiny(folder)
        return built[key]

    return get


@pytest.fixture(scope="session")
def demo():
    """{'EN': Words, 'FR': Words, 'ZH': Words} of run 1 of the built-in demo."""
    zh = DEMO_DIR / "ZH_runs.tsv"
    return {
        "EN": read_words(DEMO_DIR / "EN_run-1.TextGrid"),
        "FR": read_words(DEMO_DIR / "FR_run-1.TextGrid"),
        "ZH": read_words(zh, run=list_runs(zh)[0]),
    }


def f64(lm):
    """A float64 copy of a loaded model (exact references, no float32 noise)."""
    import copy

    return copy.deepcopy(lm.model).double().eval()


# --------------------------------------------------------------------------- references
def brute_word_tokens(tokenizer, words, sep):
    """ids of the joined text and, per word, the token indices whose character span
    overlaps the word's (scanned one by one)."""
    text = sep.join(words)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + len(sep)
    toks = []
    for a, b in spans:
        toks.append([i for i, (s, e) in enumerate(offs) if e > s and s < b and e > a])
    return np.asarray(ids), toks


def hidden(model, ids, layers):
    """{layer: (len(ids), hidden)} float64 of one unpadded pass over ``ids``."""
    with torch.inference_mode():
        res = model(input_ids=torch.as_tensor([list(ids)]), output_hidden_states=True,
                    return_dict=True)
    return {l: res.hidden_states[l][0].double().numpy() for l in layers}


def full_pass_reference(lm, model, words, layers, sep=" "):
    """Word features from ONE pass over the whole text: [pre] + all tokens + [post]."""
    ids, toks = brute_word_tokens(lm.tokenizer, words, sep)
    pre, post = special_tokens(lm.tokenizer)
    hs = hidden(model, pre + ids.tolist() + post, layers)
    out = {}
    for l in layers:
        out[l] = np.stack([hs[l][[len(pre) + i for i in t]].mean(0) for t in toks])
    return out


# --------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_loads_offline_and_covers_demo_words(tiny, family, tmp_path):
    lm = tiny(family)
    assert lm.model.config.model_type == family
    assert lm.n_layers == 2 and lm.model.config.hidden_size == 32
    assert lm.tokenizer.is_fast
    # the folder's tokenizer gives the same ids as the one built in memory
    ref = make_tokenizer(None, family)
    text = demo_texts()[0][:400]
    assert lm.tokenizer(text)["input_ids"] == ref(text)["input_ids"]
    # decoders are saved with a language-model head
    from safetensors import safe_open

    with safe_open(os.path.join(lm.source, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) == (family in DECODERS)
    # every demo word of every language tokenises without <unk>
    for t in demo_texts():
        ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        assert UNK_ID not in ids
    pre, post = special_tokens(lm.tokenizer)
    expected = {"xlm-roberta": ([0], [2]), "bert": ([0], [2]), "llama": ([0], []),
                "qwen2": ([], [])}[family]
    assert (pre, post) == expected


def test_tiny_model_seed_decides_weights(tmp_path):
    a = load_tiny(make_tiny_model(tmp_path / "a", "llama", seed=1))
    b = load_tiny(make_tiny_model(tmp_path / "b", "llama", seed=1))
    c = load_tiny(make_tiny_model(tmp_path / "c", "llama", seed=2))
    assert parameters_hash(a.model) == parameters_hash(b.model) != parameters_hash(c.model)


# --------------------------------------------------------------------------- tokenize_words
@pytest.mark.parametrize("family", ["xlm-roberta", "qwen2"])
@pytest.mark.parametrize("lang", ["EN", "FR", "ZH"])
def test_tokenize_words_maps_every_word(tiny, demo, family, lang):
    lm = tiny(family)
    words = list(demo[lang].words)
    spaceless = lang == "ZH"
    tok = tokenize_words(lm.tokenizer, words, spaceless=spaceless)
    n = len(tok.ids)
    s, e = tok.word_tok_start, tok.word_tok_stop
    assert len(s) == len(e) == len(words)
    assert np.all(e - s >= 1), "a word has no token"
    assert np.all(np.diff(s) >= 0) and np.all(np.diff(e) >= 0)
    covered = np.zeros(n, bool)
    for a, b in zip(s, e):
        covered[a:b] = True
    # every token belongs to a word, except a lone word-separator piece
    lone = [i for i in np.flatnonzero(~covered)
            if lm.tokenizer.decode([int(tok.ids[i])]).strip() != ""]
    assert lone == []
    # same as a brute-force scan of the character offsets
    ids, toks = brute_word_tokens(lm.tokenizer, words, "" if spaceless else " ")
    assert np.array_equal(ids, tok.ids)
    for j, t in enumerate(toks):
        assert t == list(range(s[j], e[j])), (j, words[j])
    for j in range(0, len(words), 7):
        text = lm.tokenizer.decode(tok.ids[s[j]:e[j]].tolist())
        if spaceless:
            assert words[j] in text  # tokens may span a word boundary
        else:
            assert text.strip() == words[j]


def test_tokenize_words_spaceless_uses_character_offsets(tiny):
    """Chinese words without spaces: tokens that straddle two words belong to both."""
    lm = tiny("xlm-roberta")
    words = ["我", "知道", "除", "地球", "木星", "火星"]
    tok = tokenize_words(lm.tokenizer, words, spaceless=True)
    assert tok.ids.tolist() == lm.tokenizer("我知道除地球木星火星", add_special_tokens=False)[
        "input_ids"]
    assert np.all(tok.word_tok_stop > tok.word_tok_start)
    # with spaces, a different text is tokenised
    spaced = tokenize_words(lm.tokenizer, words, spaceless=False)
    assert spaced.ids.tolist() != tok.ids.tolist()
    # a hand-made straddling token: offsets (0,2) for the words "a" + "b"
    class Tok:
        is_fast = True

        def __call__(self, text, **kw):
            assert text == "abc"
            return {"input_ids": [7, 8], "offset_mapping": [(0, 2), (2, 3)]}

    t = tokenize_words(Tok(), ["a", "b", "c"], spaceless=True)
    assert t.word_tok_start.tolist() == [0, 0, 1] and t.word_tok_stop.tolist() == [1, 1, 2]


def test_tokenize_words_errors_and_sentence_ends(tiny):
    lm = tiny("xlm-roberta")
    with pytest.raises(LesionAlignError, match="no token"):
        tokenize_words(lm.tokenizer, ["once", "", "when"])
    with pytest.raises(LesionAlignError, match="fast"):
        tokenize_words(object(), ["once"])
    tok = tokenize_words(lm.tokenizer, ["once", "upon.", "a", "time!", "the", "end"])
    assert tok.sentence_end.tolist() == [False, True, False, True, False, True]
    tok = tokenize_words(lm.tokenizer, ["a", "b", "c", "d"], sentence_ids=np.array([1, 1, 2, 3]))
    assert tok.sentence_end.tolist() == [False, True, True, True]


# --------------------------------------------------------------------------- plan_windows
def synthetic_run(n_tok_per_word, sentence_end=None):
    n = np.asarray(n_tok_per_word)
    stop = np.cumsum(n)
    start = stop - n
    ends = np.zeros(len(n), bool) if sentence_end is None else np.asarray(sentence_end, bool)
    ends[-1] = True
    return TokenizedRun(np.arange(stop[-1]), start, stop, ends)


def check_plan(tok, wins, capacity, opts, sentences: bool):
    n_words = len(tok.word_tok_start)
    stride = min(opts.stride_tokens, capacity)
    # the regions partition the words, in order
    assert wins[0].words[0] == 0 and wins[-1].words[1] == n_words
    for a, b in zip(wins[:-1], wins[1:]):
        assert a.words[1] == b.words[0]
    read = np.zeros(n_words, int)
    for w in wins:
        w0, w1 = w.words
        assert w1 > w0
        read[w0:w1] += 1
        assert w.new_start == tok.word_tok_start[w0] and w.stop == tok.word_tok_stop[w1 - 1]
        assert 0 <= w.ctx_start <= w.new_start < w.stop
        assert w.stop - w.ctx_start <= capacity
        assert w.new_start - w.ctx_start <= opts.max_context_tokens
        # as much context as allowed
        assert w.new_start - w.ctx_start == min(opts.max_context_tokens,
                                                capacity - (w.stop - w.new_start), w.new_start)
        if w.stop - w.new_start > stride:
            assert w1 - w0 == 1, "only a single over-long word may exceed the stride"
    assert np.all(read == 1)
    if sentences:
        ends = np.flatnonzero(tok.sentence_end)
        for k, w in enumerate(wins):
            w0, w1 = w.words
            last = w1 - 1
            if not tok.sentence_end[last]:
                # only inside a sentence that alone is longer than the stride
                s_end = ends[ends >= last][0]
                s_start = (ends[ends < w0][-1] + 1) if np.any(ends < w0) else 0
                s_start = max(s_start, w0)
                assert tok.word_tok_stop[s_end] - tok.word_tok_start[s_start] > stride
            elif k + 1 < len(wins):
                # greedy: the next sentence would not have fitted
                nxt = ends[ends >= w1][0]
                assert tok.word_tok_stop[nxt] - w.new_start > stride


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ctx,stride,cap", [(500, 128, 510), (40, 16, 64), (0, 8, 50),
                                            (100, 1000, 120), (7, 3, 30)])
def test_plan_windows_properties(seed, ctx, stride, cap):
    rng = np.random.default_rng(seed)
    n_words = int(rng.integers(1, 400))
    n_tok = rng.integers(1, 4, n_words)
    n_tok[rng.random(n_words) < 0.02] = min(cap, 12)  # a few long words
    ends = rng.random(n_words) < 0.1
    opts = FeatureOptions(max_context_tokens=ctx, stride_tokens=stride)
    for sentences in (True, False):
        tok = synthetic_run(n_tok, ends if sentences else None)
        wins = plan_windows(tok, cap, opts)
        check_plan(tok, wins, cap, opts, sentences)


def test_plan_windows_sentences_and_long_sentence():
    # sentences of 5, 5, 30 (one long sentence), 4, 4 tokens; 1 token per word
    lens = [5, 5, 30, 4, 4]
    ends = np.zeros(sum(lens), bool)
    ends[np.cumsum(lens) - 1] = True
    tok = synthetic_run(np.ones(sum(lens), int), ends)
    opts = FeatureOptions(max_context_tokens=100, stride_tokens=12)
    wins = plan_windows(tok, 200, opts)
    regions = [w.words for w in wins]
    # 5+5 fit in 12; the 30-token sentence is cut every 12 tokens; its tail (6) and the
    # next sentence (4) share a region; the last sentence (4) would make 14 > 12
    assert regions == [(0, 10), (10, 22), (22, 34), (34, 44), (44, 48)]
    assert [w.ctx_start for w in wins] == [0] * 5
    opts = FeatureOptions(max_context_tokens=3, stride_tokens=12)
    assert [w.ctx_start for w in plan_windows(tok, 200, opts)] == [0, 7, 19, 31, 41]


def test_plan_windows_word_longer_than_capacity():
    tok = synthetic_run([2, 3, 20, 2])
    with pytest.raises(LesionAlignError, match="longer than the model's window"):
        plan_windows(tok, 10, FeatureOptions(stride_tokens=4))
    # a word longer than the stride but within the capacity is read alone
    wins = plan_windows(synthetic_run([2, 3, 9, 2]), 10, FeatureOptions(stride_tokens=4))
    assert [w.words for w in wins] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert wins[2].ctx_start == wins[2].new_start - 1  # 10 - 9 tokens of context


def test_feature_options_validated():
    with pytest.raises(LesionAlignError):
        FeatureOptions(stride_tokens=0)
    with pytest.raises(LesionAlignError):
        FeatureOptions(max_context_tokens=-1)
    with pytest.raises(LesionAlignError):
        FeatureOptions(batch_size=0)


# --------------------------------------------------------------------------- capacity
@pytest.mark.parametrize("family,expected", [("xlm-roberta", 510), ("bert", 510),
                                             ("llama", 511), ("qwen2", 512)])
@pytest.mark.parametrize("tokenizer_limit", [True, False])
def test_model_capacity_is_usable(tiny, family, expected, tokenizer_limit, monkeypatch):
    lm = tiny(family, max_positions=64)
    if not tokenizer_limit:  # many real tokenizers give no limit: the model's must hold
        monkeypatch.setattr(lm.tokenizer, "model_max_length", int(1e30))
    cap = model_capacity(lm.model, lm.tokenizer)
    assert cap == expected - 448  # max_positions 64 instead of 512
    # a pass of exactly `cap` content tokens runs (one more would overflow the positions
    # of the encoders)
    words = ("once when i was six years old i saw a magnificent picture " * 20).split()
    stats = {}
    extract_word_features(lm.model, lm.tokenizer, words, [-1],
                          FeatureOptions(max_context_tokens=10**6, stride_tokens=16),
                          stats=stats)
    pre, post = special_tokens(lm.tokenizer)
    assert stats["n_tokens"] > cap
    # the last window is full
    tok = tokenize_words(lm.tokenizer, words)
    last = plan_windows(tok, cap, FeatureOptions(max_context_tokens=10**6,
                                                 stride_tokens=16))[-1]
    assert last.stop - last.ctx_start == cap


# --------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("family", DECODERS)
def test_causal_windows_equal_one_full_pass(tiny, demo, family):
    """Causal model + context back to the text start => one full pass, exactly."""
    lm = tiny(family)
    model = f64(lm)
    words = list(demo["EN"].words[:150])
    tok = tokenize_words(lm.tokenizer, words)
    cap = model_capacity(model, lm.tokenizer)
    opts = FeatureOptions(max_context_tokens=10**6, stride_tokens=24, batch_size=3)
    wins = plan_windows(tok, cap, opts)
    assert len(wins) > 5 and all(w.ctx_start == 0 for w in wins)  # precondition
    layers = [0, 1, 2]
    stats = {}
    got = extract_word_features(model, lm.tokenizer, words, layers, opts, stats=stats)
    ref = full_pass_reference(lm, model, words, layers)
    assert stats["n_passes"] == len(wins)
    for l in layers:
        assert got[l].shape == (len(words), 32) and got[l].dtype == np.float32
        np.testing.assert_allclose(got[l], ref[l], atol=ATOL, rtol=0)
    # the reference is not trivially constant: words differ from each other
    assert np.abs(ref[2][1:] - ref[2][:-1]).max() > 1e-2


@pytest.mark.parametrize("family", DECODERS)
def test_causal_limited_context(tiny, demo, family):
    """Short context: words whose window starts at the text start equal the full pass;
    later words do not (their early context is cut), except at the embedding layer."""
    lm = tiny(family)
    model = f64(lm)
    words = list(demo["EN"].words[:150])
    tok = tokenize_words(lm.tokenizer, words)
    opts = FeatureOptions(max_context_tokens=20, stride_tokens=10, batch_size=4)
    wins = plan_windows(tok, model_capacity(model, lm.tokenizer), opts)
    full_prefix = np.zeros(len(words), bool)
    for w in wins:
        full_prefix[w.words[0]:w.words[1]] = w.ctx_start == 0
    assert full_prefix.sum() >= 5 and (~full_prefix).sum() >= 50  # precondition
    got = extract_word_features(model, lm.tokenizer, words, [0, -1], opts)
    ref = full_pass_reference(lm, model, words, [0, 2])
    np.testing.assert_allclose(got[-1][full_prefix], ref[2][full_prefix], atol=ATOL, rtol=0)
    diff = np.abs(got[-1][~full_prefix] - ref[2][~full_prefix]).max(axis=1)
    assert np.all(diff > 1e-4), f"{(diff <= 1e-4).sum()} late words unchanged by the cut"
    # the embedding layer does not see the context at all (no position embeddings)
    np.testing.assert_allclose(got[0], ref[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["xlm-roberta", "bert"])
def test_encoder_window_by_hand(tiny, demo, family):
    """Bidirectional encoder: each region's words come from [pre]+context+region+[post]."""
    lm = tiny(family)
    model = f64(lm)
    words = list(demo["EN"].words[:200])
    tok = tokenize_words(lm.tokenizer, words)
    opts = FeatureOptions(max_context_tokens=40, stride_tokens=30, batch_size=4)
    wins = plan_windows(tok, model_capacity(model, lm.tokenizer), opts)
    assert len(wins) > 6
    got = extract_word_features(model, lm.tokenizer, words, [1, 2], opts)
    pre, post = special_tokens(lm.tokenizer)
    _, toks = brute_word_tokens(lm.tokenizer, words, " ")
    for w in (wins[0], wins[1], wins[len(wins) // 2], wins[-1]):
        ids = pre + tok.ids[w.ctx_start:w.stop].tolist() + post
        hs = hidden(model, ids, [1, 2])
        for j in range(*w.words):
            rows = [len(pre) + i - w.ctx_start for i in toks[j]]
            for l in (1, 2):
                np.testing.assert_allclose(got[l][j], hs[l][rows].mean(0), atol=ATOL, rtol=0)
    # and the window matters: a full pass (with right context) gives something else
    ref = full_pass_reference(lm, model, words, [2])
    j0, j1 = wins[len(wins) // 2].words
    assert np.abs(got[2][j0:j1] - ref[2][j0:j1]).max() > 1e-3


# --------------------------------------------------------------------------- layers
@pytest.mark.parametrize("family", ["xlm-roberta", "llama"])
def test_layers_embeddings_last_and_out_of_range(tiny, family):
    lm = tiny(family)
    model = f64(lm)
    words = "once when i was six years old i saw a magnificent picture".split()
    got = extract_word_features(model, lm.tokenizer, words, [0, -1, 2, 1])
    assert set(got) == {0, -1, 2, 1}
    np.testing.assert_array_equal(got[-1], got[2])
    assert np.abs(got[1] - got[2]).max() > 1e-3
    # layer 0 is the embedding output, mean-pooled
    pre, post = special_tokens(lm.tokenizer)
    ids, toks = brute_word_tokens(lm.tokenizer, words, " ")
    x = torch.as_tensor([pre + ids.tolist() + post])
    with torch.inference_mode():
        emb = (model.embeddings(input_ids=x) if family == "xlm-roberta"
               else model.get_input_embeddings()(x))[0].numpy()
        last = model(input_ids=x).last_hidden_state[0].numpy()
    for j, t in enumerate(toks):
        rows = [len(pre) + i for i in t]
        np.testing.assert_allclose(got[0][j], emb[rows].mean(0), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[-1][j], last[rows].mean(0), atol=ATOL, rtol=0)
    for bad in (3, -4, 10):
        with pytest.raises(LesionAlignError, match="does not exist"):
            extract_word_features(lm.model, lm.tokenizer, words, [bad])


# --------------------------------------------------------------------------- real demo words
@pytest.mark.parametrize("lang", ["EN", "ZH"])
def test_demo_run_features(tiny, demo, lang):
    lm = tiny("xlm-roberta")
    words = demo[lang]
    spaceless = lang == "ZH"
    stats, calls = {}, []
    got = extract_word_features(
        lm.model, lm.tokenizer, list(words.words), [-1], FeatureOptions(), spaceless=spaceless,
        sentence_ids=words.sentence_ids, stats=stats, progress=lambda f, m: calls.append(f))
    X = got[-1]
    assert X.shape == (len(words), 32) and X.dtype == np.float32
    assert np.all(np.isfinite(X)) and np.all(np.abs(X).sum(1) > 0)
    assert stats["n_passes"] < len(words) / 10
    assert stats["n_tokens"] >= len(words)
    assert stats["n_tokens_fed"] > stats["n_tokens"]  # context is fed more than once
    assert calls and calls[-1] == 1.0 and all(np.diff(calls) > 0)
    if spaceless:
        # the ZH table has sentence ids: regions end at sentence ends
        tok = tokenize_words(lm.tokenizer, list(words.words), True, words.sentence_ids)
        wins = plan_windows(tok, model_capacity(lm.model, lm.tokenizer), FeatureOptions())
        check_plan(tok, wins, model_capacity(lm.model, lm.tokenizer), FeatureOptions(), True)
        assert sum(tok.sentence_end[w.words[1] - 1] for w in wins) >= len(wins) - 1


def test_cancel(tiny):
    lm = tiny("xlm-roberta")
    with pytest.raises(Cancelled):
        extract_word_features(lm.model, lm.tokenizer, ["once", "when"], [-1],
                              cancel=lambda: True)


# --------------------------------------------------------------------------- TR grid
def test_words_to_trs_floor_by_hand():
    v = np.array([[1.0, 10], [3, 30], [5, 50], [7, 70], [9, 90], [11, 110]])
    onsets = np.array([0.1, 1.9, 2.0, 7.5, 9.99, 10.0])
    X = words_to_trs(v, onsets, n_trs=5, tr=2.0)
    expected = np.array([[2, 20], [5, 50], [0, 0], [7, 70], [9, 90]], float)
    assert X.shape == (5, 2) and X.dtype == np.float32
    np.testing.assert_array_equal(X, expected)  # 10.0 s is volume 5: outside the run
    # the first volume is at 2 s on the annotation clock (one dropped volume)
    X = words_to_trs(v, onsets, n_trs=5, tr=2.0, start_s=2.0)
    np.testing.assert_array_equal(X, [[5, 50], [0, 0], [7, 70], [9, 90], [11, 110]])
    # one padding row before the run holds the words of the second before it
    X = words_to_trs(v, onsets, n_trs=5, tr=2.0, start_s=2.0, pad_before=1)
    assert X.shape == (6, 2)
    np.testing.assert_array_equal(X[0], [2, 20])
    np.testing.assert_array_equal(X[1:], [[5, 50], [0, 0], [7, 70], [9, 90], [11, 110]])
    with pytest.raises(LesionAlignError, match="unknown downsampling"):
        words_to_trs(v, onsets, 5, 2.0, method="nearest")


def test_words_to_trs_lanczos():
    tr = 2.0
    # one word per TR at arbitrary phase, constant value: constant output away from edges
    onsets = np.arange(0, 100) * tr + 0.37
    X = words_to_trs(np.full((100, 3), 2.5), onsets, n_trs=100, tr=tr, method="lanczos")
    np.testing.assert_allclose(X[5:-5], 2.5, rtol=0.02)
    # a single word: the 3-lobe Lanczos kernel centred at its time (volume centres at
    # (k + 0.5) TR), written here with numpy's normalised sinc
    t0 = 11.5
    x = words_to_trs(np.ones((1, 1)), [t0], n_trs=12, tr=tr, method="lanczos")[:, 0]
    d = (np.arange(12) + 0.5) - t0 / tr
    ref = np.where(np.abs(d) < 3, np.sinc(d) * np.sinc(d / 3), 0.0)
    np.testing.assert_allclose(x, ref, atol=1e-6)
    assert np.argmax(x) == int(t0 // tr)
    # with start_s and pad_before the kernel moves with the grid (row 0 starts at
    # start_s - pad_before * tr = 2 s)
    y = words_to_trs(np.ones((1, 1)), [t0 + 2.0], n_trs=10, tr=tr, method="lanczos",
                     start_s=6.0, pad_before=2)[:, 0]
    np.testing.assert_allclose(y, ref[:12], atol=1e-6)


# --------------------------------------------------------------------------- FIR
def test_fir_delays():
    X = np.arange(1, 13, dtype=np.float32).reshape(6, 2)  # rows r: [2r+1, 2r+2]
    D = fir_delays(X, [0, 1, 3])
    assert D.shape == (6, 6) and D.dtype == np.float32
    np.testing.assert_array_equal(D[:, 0:2], X)
    np.testing.assert_array_equal(D[1:, 2:4], X[:-1])
    np.testing.assert_array_equal(D[0, 2:4], 0)
    np.testing.assert_array_equal(D[3:, 4:6], X[:-3])
    np.testing.assert_array_equal(D[:3, 4:6], 0)
    # two leading rows precede the run: they feed the delays and are dropped
    D = fir_delays(X, [1, 2, 3], pad_before=2)
    assert D.shape == (4, 6)
    np.testing.assert_array_equal(D[:, 0:2], X[1:5])
    np.testing.assert_array_equal(D[:, 2:4], X[0:4])
    np.testing.assert_array_equal(D[0, 4:6], 0)
    np.testing.assert_array_equal(D[1:, 4:6], X[0:3])
    # a delay past the run's length gives zeros
    np.testing.assert_array_equal(fir_delays(X, [10]), 0)
    with pytest.raises(LesionAlignError, match=">= 0"):
        fir_delays(X, [1, -1])


def test_module_constants():
    assert "。" in F.SENTENCE_END and "." in F.SENTENCE_END
