"""Tiny random language models for the tests: built from a config, saved to a folder.

Nothing is downloaded. :func:`make_tiny_model` writes a complete Hugging Face model folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``)
that :func:`napari_lesion_align.core.model.loading.load_model` loads offline::

    from tiny_models import make_tiny_model
    folder = make_tiny_model(tmp_path / "llama", family="llama")
    lm = load_model(str(folder), offline=True, device="cpu", use_cache=False)

Families: ``"xlm-roberta"`` and ``"bert"`` (bidirectional encoders, saved as the base model
without pooler) and ``"llama"`` and ``"qwen2"`` (causal decoders, saved as ``*ForCausalLM``
so that a language-model head exists; ``AutoModel`` loads their base model).

The tokenizer is a small BPE trained here (:func:`make_tokenizer`) with special tokens
``<s>`` (0), ``<pad>`` (1), ``</s>`` (2), ``<unk>`` (3), ``<mask>`` (4):

* ``xlm-roberta``, ``bert``, ``llama``: sentencepiece-like, a ``Metaspace`` pre-tokenizer
  (leading spaces are part of the pieces, offsets point into the original text) and every
  character of the corpus in the initial alphabet (no ``<unk>`` for its Chinese or
  accented French characters). Encoders add ``<s> ... </s>``, llama ``<s> ...``.
* ``qwen2``: byte-level like the real Qwen2, because transformers' ``AutoTokenizer``
  always rebuilds a qwen2 folder's tokenizer as ``Qwen2Tokenizer`` (byte-level
  pre-tokenizer, NFC, *no* special tokens around a sequence) from the saved vocabulary and
  merges. So this family has no ``<s>`` prefix -- which also exercises the "no special
  tokens" path of the feature code; no text ever becomes ``<unk>``, and a Chinese
  character may be split into byte pieces that share its character offsets.

The default corpus holds every word of the built-in demo annotations (EN, FR TextGrids
and the ZH table), so every demo word tokenises without ``<unk>``.

Note on size: the demo's Chinese text alone has ~710 distinct characters, and they are all
in the alphabet, so the vocabulary is ``len(alphabet) + 5 specials + n_merges`` (about
1,075 with the default corpus; 561 for the byte-level ``qwen2``), not a few hundred.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

ENCODERS = ("xlm-roberta", "bert")
DECODERS = ("llama", "qwen2")
FAMILIES = ENCODERS + DECODERS
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
# transformers' Qwen2Tokenizer pre-tokenisation (models/qwen2/tokenization_qwen2.py)
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_REPO = Path(__file__).resolve().parents[1]
_SRC = str(_REPO / "src")
if _SRC not in sys.path:  # importable without conftest too
    sys.path.insert(0, _SRC)

EXTRA_SENTENCES = (
    "The little prince lived on a planet barely bigger than himself.",
    "Once when I was six years old I saw a magnificent picture in a book.",
    "Grown-ups never understand anything by themselves!",
    "Le petit prince habitait une planète à peine plus grande que lui.",
    "Lorsque j'avais six ans j'ai vu, une fois, une magnifique image.",
    "Les grandes personnes ne comprennent jamais rien toutes seules…",
    "小王子住在一个很小的星球上。",
    "当我还只有六岁的时候，在一本书中看到了一幅精彩的插画。",
    "大人们自己什么也不懂！",
)


@functools.lru_cache(maxsize=1)
def demo_texts() -> tuple[str, ...]:
    """The demo runs as text: EN/FR words joined with spaces, ZH sentences without."""
    from napari_lesion_align.core.data.stimuli import list_runs, read_words
    from napari_lesion_align.core.data.demo import DEMO_DIR

    texts: list[str] = []
    for f in sorted(DEMO_DIR.glob("*.TextGrid")):
        texts.append(" ".join(read_words(f).words))
    zh = DEMO_DIR / "ZH_runs.tsv"
    for run in list_runs(zh):
        w = read_words(zh, run=run)
        sent: dict[int, list[str]] = {}
        ids = w.sentence_ids if w.sentence_ids is not None else [0] * len(w)
        for word, sid in zip(w.words, ids):
            sent.setdefault(int(sid), []).append(word)
        texts.extend("".join(v) for v in sent.values())
    return tuple(texts)


def default_corpus() -> list[str]:
    """A few EN/FR/ZH sentences plus the text of every demo run."""
    return list(EXTRA_SENTENCES) + list(demo_texts())


def make_tokenizer(corpus: list[str] | None = None, family: str = "xlm-roberta", *,
                   n_merges: int = 300, model_max_length: int = 512):
    """A small sentencepiece-like BPE tokenizer trained on ``corpus``.

    Parameters
    ----------
    corpus : list of str, optional
        Training text (default :func:`default_corpus`). Every character in it is in the
        alphabet, so it never tokenises to ``<unk>``.
    family : str
        Decides the post-processor: encoders (``xlm-roberta``, ``bert``) wrap a sequence
        as ``<s> $A </s>``, ``llama`` as ``<s> $A``; ``qwen2`` is byte-level with no
        special tokens around a sequence (what ``Qwen2Tokenizer`` loads back).
    n_merges : int
        BPE merges on top of the alphabet (vocabulary = 5 specials + alphabet + merges,
        fewer when the corpus has nothing more to merge; the alphabet is the corpus'
        characters, or the 256 bytes for ``qwen2``).
    model_max_length : int
        Stored in the tokenizer config.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")
    corpus = default_corpus() if corpus is None else list(corpus)
    if family == "qwen2":
        # what transformers' Qwen2Tokenizer rebuilds from vocab + merges on loading
        tk = Tokenizer(models.BPE())
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated",
                                 invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        alphabet = sorted(set("".join(corpus)) - {" "} | {"\u2581"})
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                    prepend_scheme="always")
        tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(alphabet) + n_merges,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        min_frequency=2,
        show_progress=False,
    )
    tk.train_from_iterator(corpus, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tk.token_to_id(t) == i, (t, tk.token_to_id(t))
    if family in ENCODERS:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)])
    elif family == "llama":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    else:  # qwen2: no special tokens around a sequence, like the real Qwen2
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
        unk_token="<unk>", mask_token="<mask>", model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False,
    )


def make_config(family: str, vocab_size: int, *, n_layers: int = 2, hidden: int = 32,
                heads: int = 2, ffn: int = 64, max_positions: int = 512):
    """The transformers config of a tiny model (no dropout; ids as in :data:`SPECIAL_TOKENS`).

    ``max_positions`` is the longest sequence (special tokens included) the model takes;
    for XLM-RoBERTa ``max_position_embeddings`` is ``max_positions + 2`` (its positions
    start after the padding index, as in the real model: 514 for 512).
    """
    import transformers as T

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=n_layers,
                  num_attention_heads=heads, intermediate_size=ffn, pad_token_id=PAD_ID,
                  bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if family == "xlm-roberta":
        return T.XLMRobertaConfig(**common, max_position_embeddings=max_positions + PAD_ID + 1,
                                  type_vocab_size=1, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    if family == "bert":
        return T.BertConfig(**common, max_position_embeddings=max_positions, type_vocab_size=2,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "llama":
        return T.LlamaConfig(**common, num_key_value_heads=heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=False)
    if family == "qwen2":
        return T.Qwen2Config(**common, num_key_value_heads=heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=False,
                             use_sliding_window=False)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def build_model(config):
    """A randomly initialised model for ``config`` (encoders: base model without pooler;
    decoders: ``*ForCausalLM``). Seed torch before calling for reproducible weights."""
    import transformers as T

    family = config.model_type
    if family == "xlm-roberta":
        return T.XLMRobertaModel(config, add_pooling_layer=False)
    if family == "bert":
        return T.BertModel(config, add_pooling_layer=False)
    if family == "llama":
        return T.LlamaForCausalLM(config)
    if family == "qwen2":
        return T.Qwen2ForCausalLM(config)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def make_tiny_model(folder, family: str = "xlm-roberta", n_layers: int = 2, hidden: int = 32,
                    heads: int = 2, ffn: int = 64, max_positions: int = 512,
                    corpus: list[str] | None = None, seed: int = 0, *,
                    n_merges: int = 300) -> Path:
    """Build a tiny random model with its tokenizer and ``save_pretrained`` both in ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created if needed; the model folder.
    family : {"xlm-roberta", "bert", "llama", "qwen2"}
    n_layers, hidden, heads, ffn : int
        Blocks, hidden size, attention heads, feed-forward size.
    max_positions : int
        Longest sequence the model takes, special tokens included (also the tokenizer's
        ``model_max_length``).
    corpus : list of str, optional
        Tokenizer training text (default: a few sentences + every demo word).
    seed : int
        ``torch.manual_seed(seed)`` before the weights are drawn.

    Returns
    -------
    Path
        ``folder``.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(corpus, family, n_merges=n_merges, model_max_length=max_positions)
    config = make_config(family, len(tok), n_layers=n_layers, hidden=hidden, heads=heads,
                         ffn=ffn, max_positions=max_positions)
    torch.manual_seed(seed)
    model = build_model(config)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # record how the folder was made (informative only)
    (folder / "tiny_model.json").write_text(json.dumps(dict(
        family=family, n_layers=n_layers, hidden=hidden, heads=heads, ffn=ffn,
        max_positions=max_positions, seed=seed, vocab_size=len(tok))))
    return folder


def load_tiny(folder):
    """Load a folder written by :func:`make_tiny_model` the way the package does
    (offline, CPU, not cached): a :class:`~napari_lesion_align.core.model.loading.LoadedModel`."""
    from napari_lesion_align.core.model.loading import load_model

    return load_model(str(folder), offline=True, device="cpu", use_cache=False)
