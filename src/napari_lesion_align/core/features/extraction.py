"""Word-level features from a language model, resampled to fMRI volumes.

1. :func:`extract_word_features` feeds the words of a run to the model in long windows:
   each pass holds up to ``max_context_tokens`` tokens of preceding context followed by a
   *region* of new words (whole sentences when sentence ends are known, at most
   ``stride_tokens`` tokens). The hidden states of the chosen layer(s) are read for the
   region's tokens only and mean-pooled over each word's sub-word tokens. Many words come
   out of every pass (never one pass per word); windows are batched.
2. :func:`words_to_trs` puts word vectors on the TR grid: the paper's ``floor(onset/TR)``
   binning with averaging (TRs without words are zero), or Lanczos interpolation.
3. :func:`fir_delays` stacks delayed copies (default 1-4 TRs) per run.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Annotated, Callable, ClassVar, Sequence

import numpy as np

from pydantic import Field, Strict, model_serializer

from ..base.errors import Cancelled, LesionAlignError
from ..base.schema import Table
from ..model.anatomy import BlockForwards
from ..model.anatomy import _find_layers

SENTENCE_END = (".", "!", "?", "。", "！", "？", "…", "؟")


class FeatureOptions(Table):
    """How text is fed to the model (the ``[features]`` table)."""

    TABLE: ClassVar[str] = "[features]"

    #: preceding tokens a word can see
    max_context_tokens: Annotated[int, Strict(), Field(ge=0)] = 500
    #: new tokens read out per model pass
    stride_tokens: Annotated[int, Strict(), Field(ge=1)] = 128
    #: windows per forward pass
    batch_size: Annotated[int, Strict(), Field(ge=1)] = 8
    #: tokens per forward pass, padding included (0: automatic); memory only
    max_batch_tokens: Annotated[int, Strict(), Field(ge=0, description=(
        "tokens per forward pass of the feature extraction, padding included (windows x "
        "the longest window; a single window always makes a pass); 0: automatic (no "
        "limit on the CPU, a quarter of the free GPU memory on a GPU). Lower it when a "
        "large model runs out of GPU memory: it changes the memory, not the features"))] = 0

    #: keys that change only the memory a pass takes, never the features: left out of the
    #: dump at their defaults (the keys of earlier analyses stay the same) and out of the
    #: feature store's keys (:meth:`content`) whatever their values
    MEMORY_KEYS: ClassVar[tuple] = ("max_batch_tokens",)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        d = handler(self)
        if isinstance(d, dict):
            for k in self.MEMORY_KEYS:
                if k in d and d[k] == type(self).model_fields[k].default:
                    del d[k]
        return d

    def content(self) -> "FeatureOptions":
        """These options with the memory-only keys at their defaults: what the features'
        values depend on (the feature store's key)."""
        return self.replace(**{k: type(self).model_fields[k].default
                               for k in self.MEMORY_KEYS})


# --------------------------------------------------------------------------- tokens
@dataclass
class TokenizedRun:
    """Token ids of a run's text and, per word, its token range [start, stop)."""

    ids: np.ndarray
    word_tok_start: np.ndarray
    word_tok_stop: np.ndarray
    sentence_end: np.ndarray  # bool per word: a sentence ends after this word



class NoTokenError(LesionAlignError):
    """A word the tokenizer turns into no token: ``index`` (its position in the run) and
    ``word``; the stage that knows the annotation file names the file and the time
    (:func:`.stages._features`)."""

    def __init__(self, index: int, word: str):
        super().__init__(f"word {index} ({word!r}) produced no token; remove empty or "
                         "control-only words")
        self.index = int(index)
        self.word = str(word)

    def __reduce__(self):  # travels between processes (Dask workers) intact
        return type(self), (self.index, self.word)

def tokenize_words(tokenizer, words: Sequence[str], spaceless: bool = False,
                   sentence_ids: np.ndarray | None = None) -> TokenizedRun:
    """Tokenise the running text of a run and map every word to its sub-word tokens.

    The words are joined with spaces (without them for ``spaceless`` scripts such as
    Chinese) and tokenised once with character offsets; a token belongs to every word its
    character span overlaps, so no word is left without a token.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise LesionAlignError(
            f"tokenizer {type(tokenizer).__name__} is not a 'fast' tokenizer; word-level "
            "features need character offsets. Load the model with a tokenizer.json."
        )
    sep = "" if spaceless else " "
    starts, stops, pos = [], [], 0
    for w in words:
        starts.append(pos)
        pos += len(w)
        stops.append(pos)
        pos += len(sep)
    text = sep.join(words)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts = np.asarray(starts)
    stops = np.asarray(stops)
    # token i overlaps word j iff tok_start < word_stop and tok_stop > word_start
    # running maxima make the spans monotone (empty-span tokens never break the search)
    tok_s = np.maximum.accumulate(offs[:, 0]) if len(ids) else offs[:, 0]
    tok_e = np.maximum.accumulate(offs[:, 1]) if len(ids) else offs[:, 1]
    first = np.searchsorted(tok_e, starts, side="right")  # first token ending after start
    last = np.searchsorted(tok_s, stops, side="left")  # first token starting at/after stop
    if len(ids) == 0 or np.any(first >= last):
        bad = int(np.flatnonzero(first >= last)[0]) if len(ids) else 0
        raise NoTokenError(bad, words[bad])
    if sentence_ids is not None and len(sentence_ids) == len(words):
        sid = np.asarray(sentence_ids)
        ends = np.r_[sid[1:] != sid[:-1], True]
    else:
        ends = np.array([w.rstrip().endswith(SENTENCE_END) for w in words], dtype=bool)
        if len(ends):
            ends[-1] = True
    return TokenizedRun(ids, first, last, ends)


@dataclass
class Window:
    """One model pass: tokens [ctx_start, stop), of which [new_start, stop) are read out."""

    ctx_start: int
    new_start: int
    stop: int
    words: tuple[int, int]  # words [w0, w1) whose tokens are all in the new region


def plan_windows(tok: TokenizedRun, capacity: int, opts: FeatureOptions) -> list[Window]:
    """Split a run into passes: whole sentences (or words) per region, with context before.

    ``capacity`` is the number of content tokens a pass can hold (model maximum minus
    special tokens).
    """
    stride = min(opts.stride_tokens, capacity)
    n_words = len(tok.word_tok_start)
    wins: list[Window] = []
    w = 0
    while w < n_words:
        # grow the region by whole sentences (or by words inside a long sentence)
        r_start = int(tok.word_tok_start[w])
        w1 = w
        while w1 < n_words:
            # end of the sentence that contains word w1
            s_end = w1
            while not tok.sentence_end[s_end] and s_end + 1 < n_words:
                s_end += 1
            if tok.word_tok_stop[s_end] - r_start <= stride:
                w1 = s_end + 1
                continue
            if w1 > w:
                break
            # the sentence alone is longer than the stride: take words up to the stride
            while w1 < n_words and (tok.word_tok_stop[w1] - r_start <= stride or w1 == w):
                w1 += 1
            break
        stop = int(tok.word_tok_stop[w1 - 1])
        region = stop - r_start
        if region > capacity:
            raise LesionAlignError(
                f"word {w} ({region} tokens) is longer than the model's window ({capacity})"
            )
        ctx = min(opts.max_context_tokens, capacity - region, r_start)
        wins.append(Window(r_start - ctx, r_start, stop, (w, w1)))
        w = w1
    return wins


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence (e.g. <s> ... </s>)."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True, verbose=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    raise LesionAlignError(
        f"cannot find how {type(tokenizer).__name__} adds special tokens; use a standard "
        "Hugging Face tokenizer"
    )


def model_capacity(model, tokenizer) -> int:
    """Content tokens per pass: the model's maximum length minus its special tokens."""
    n_pos = getattr(model.config, "max_position_embeddings", None) or 512
    if getattr(model.config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
        n_pos -= (model.config.pad_token_id or 1) + 1  # positions start after padding_idx
    tmax = getattr(tokenizer, "model_max_length", None)
    if tmax and tmax < 10**7:
        n_pos = min(n_pos, tmax)
    pre, post = special_tokens(tokenizer)
    return int(n_pos - len(pre) - len(post))


# --------------------------------------------------------------------------- extraction
def extract_word_features(
    model,
    tokenizer,
    words: Sequence[str],
    layers: Sequence[int],
    opts: FeatureOptions = FeatureOptions(),
    *,
    spaceless: bool = False,
    sentence_ids: np.ndarray | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    stats: dict | None = None,
    record: Sequence[int] = (),
    cache: dict | None = None,
    start_layer: int = 0,
    max_batch_tokens: int | None = None,
) -> dict[int, np.ndarray]:
    """Hidden states of ``layers`` mean-pooled per word: {layer: (n_words, hidden)} float32.

    Layer indices follow ``output_hidden_states``: 0 is the embedding output, ``i`` the
    output of block ``i``; negative indices count from the last block. The result is keyed
    by the indices as given (``layers=[-1]`` gives ``{-1: ...}``); indices naming the same
    layer share one array.

    Only the blocks below the highest layer asked for run (a 32-block model read at layer
    20 runs blocks 0..19), and only the asked layers' hidden states are kept (the input of
    block ``l`` is caught by a hook; the last layer is the model's ``last_hidden_state``,
    as ``output_hidden_states`` reports it). Windows are batched up to
    ``opts.batch_size`` and ``max_batch_tokens`` tokens per pass (padding included;
    ``None``: ``opts.max_batch_tokens``, and when that is 0 :func:`default_batch_tokens`);
    word vectors are pooled in float32 whatever the model's dtype.

    Reuse across lesions: with ``record=[l, ...]`` and a ``cache`` dict, the input of block
    ``l`` (``hidden_states[l]``) of every pass is stored; a later call with the same words
    and options, ``start_layer=l`` and that cache skips blocks ``0..l-1`` and starts from the
    stored states. This is exact when the model is unchanged below block ``l`` (a lesion
    confined to blocks >= ``l``).
    """
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    tok = tokenize_words(tokenizer, list(words), spaceless, sentence_ids)
    capacity = model_capacity(model, tokenizer)
    wins = plan_windows(tok, capacity, opts)
    n_hidden = model.config.num_hidden_layers + 1
    layer_idx = sorted({(l if l >= 0 else n_hidden + l) for l in layers})
    for l in layer_idx:
        if not 0 <= l < n_hidden:
            raise LesionAlignError(
                f"layer {l} does not exist: the model has layers 0..{n_hidden - 1} "
                "(0 = embeddings, negative counts from the last)"
            )
    hidden = model.config.hidden_size
    n_words = len(words)
    out = {l: np.zeros((n_words, hidden), dtype=np.float32) for l in layer_idx}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pre, post = special_tokens(tokenizer)
    n_special_front = len(pre)
    device = model.get_input_embeddings().weight.device
    t0 = time.perf_counter()
    n_tokens_fed = 0
    record = sorted({int(l) for l in record if 0 < int(l) < n_hidden - 1})
    if (record or start_layer) and cache is None:
        raise ValueError("record / start_layer need a cache dict")
    if start_layer and any(l < start_layer for l in layer_idx):
        raise ValueError(f"layers {layer_idx} below start_layer {start_layer} are not computed")
    if start_layer and cache.get(("batches",)) is not None:
        batches = cache[("batches",)]  # the recorded passes' batches (the keys of their states)
    else:
        if max_batch_tokens is None:
            max_batch_tokens = opts.max_batch_tokens or default_batch_tokens(model)
        batches = batch_windows(wins, opts.batch_size, max_batch_tokens, len(pre) + len(post))
        if record:
            cache[("batches",)] = batches
    blocks = find_blocks(model)
    reader = _LayerReader(model, blocks, layer_idx, record)
    replay = _BlockReplay(blocks, start_layer, cache) if start_layer else None
    with torch.inference_mode(), reader, (replay or nullcontext()):
        for bi, (b0, b1) in enumerate(batches):
            if cancel is not None and cancel():
                raise Cancelled()
            batch = wins[b0:b1]
            seqs = [pre + tok.ids[w.ctx_start : w.stop].tolist() + post for w in batch]
            L = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), L), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.as_tensor(s)
                mask[i, : len(s)] = 1
            n_tokens_fed += int(mask.sum())
            if replay is not None:
                replay.batch = (b0, b1)
            got = reader.run(input_ids=ids.to(device), attention_mask=mask.to(device))
            for l in record:
                cache[((b0, b1), l)] = got.pop(("record", l))
            tuple_out = got.pop(("tuple",), None)
            if cache is not None and tuple_out is not None:
                cache.setdefault(("tuple_out",), tuple_out)
            hs = {l: got[l].float().cpu().numpy() for l in layer_idx}
            del got
            for i, w in enumerate(batch):
                for j in range(*w.words):
                    a = tok.word_tok_start[j] - w.ctx_start + n_special_front
                    b = tok.word_tok_stop[j] - w.ctx_start + n_special_front
                    for l in layer_idx:
                        out[l][j] = hs[l][i, a:b].mean(0)
            if progress is not None:
                progress(min(1.0, b1 / len(wins)), f"features: pass {b1}/{len(wins)}")
    if stats is not None:
        stats.update(n_passes=len(wins), n_tokens=int(len(tok.ids)),
                     n_tokens_fed=n_tokens_fed, seconds=time.perf_counter() - t0,
                     n_batches=len(batches), blocks_run=reader.blocks_run)
    # key the result by the indices the caller asked for (-1 stays -1)
    return {l: out[l if l >= 0 else n_hidden + l] for l in dict.fromkeys(layers)}


def batch_windows(wins: Sequence[Window], batch_size: int, max_tokens: int | None,
                  n_special: int = 0) -> list[tuple[int, int]]:
    """Consecutive windows grouped into passes ``[(b0, b1), ...]``: at most ``batch_size``
    windows and, when ``max_tokens`` is set, at most ``max_tokens`` tokens per pass counted
    with padding (windows x the longest window; a single window always makes a pass)."""
    out: list[tuple[int, int]] = []
    b0 = 0
    while b0 < len(wins):
        b1, longest = b0 + 1, wins[b0].stop - wins[b0].ctx_start + n_special
        while b1 < len(wins) and b1 - b0 < batch_size:
            n = max(longest, wins[b1].stop - wins[b1].ctx_start + n_special)
            if max_tokens is not None and n * (b1 - b0 + 1) > max_tokens:
                break
            longest = n
            b1 += 1
        out.append((b0, b1))
        b0 = b1
    return out


def default_batch_tokens(model) -> int | None:
    """Tokens per forward pass when none is given: no limit on the CPU (``batch_size``
    decides), on a GPU what a quarter of its free memory holds at an estimated
    ``(4 x hidden + 3 x FFN + heads x 512) x bytes per value`` per token in one block (a
    pass keeps only one block's activations alive)."""
    import torch  # reason: torch loads where a model or tensor is used (CLI start-up without it)

    p = model.get_input_embeddings().weight
    if p.device.type != "cuda":
        return None
    cfg = model.config
    hidden = int(cfg.hidden_size)
    ffn = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    per_token = (4 * hidden + 3 * ffn + heads * 512) * max(p.element_size(), 4)
    free, _ = torch.cuda.mem_get_info(p.device)
    return max(512, int(free * 0.25 // per_token))


def find_blocks(model):
    """The transformer blocks of a model: its ``ModuleList`` with one entry per hidden
    layer (see :mod:`.anatomy`)."""
    return list(_find_layers(model, int(model.config.num_hidden_layers))[1])


class _StopForward(Exception):
    """Raised by a hook once every hidden state needed is caught: the blocks above do not
    run."""


def _block_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class _LayerReader:
    """Runs a model up to the highest layer needed and catches the hidden states of
    ``layers`` (and the block inputs of ``record``).

    Hidden state ``l < n_blocks`` is the input of block ``l`` (a forward pre-hook);
    the last, ``n_blocks``, is the model's ``last_hidden_state`` (after the final norm for
    decoders, as ``output_hidden_states`` reports it), or the last block's output when
    the model's config sets ``tie_last_hidden_states = False``. When the last layer is not
    needed, the pre-hook of the first block not needed stops the forward pass.
    """

    def __init__(self, model, blocks, layers, record=()):
        self.model = model
        self.blocks = blocks
        self.n = len(blocks)
        self.layers = sorted(set(layers))
        self.record = sorted(set(record))
        top = max(self.layers + self.record)
        self.stop_at = top if top < self.n else None  # block whose input ends the pass
        self.untied_last = (self.n in self.layers and getattr(
            model.config, "tie_last_hidden_states", None) is False)
        self.blocks_run = 0
        self._got: dict = {}
        self._hooks: list = []

    def __enter__(self):
        want = {l for l in self.layers if l < self.n} | set(self.record)
        if self.stop_at is not None:
            want.add(self.stop_at)
        for l in sorted(want):
            self._hooks.append(self.blocks[l].register_forward_pre_hook(
                self._pre_hook(l), with_kwargs=True))
        # counts the blocks that run; tells whether blocks return tuples (for the replay)
        for blk in self.blocks:
            self._hooks.append(blk.register_forward_hook(self._count))
        if self.untied_last:
            self._hooks.append(self.blocks[-1].register_forward_hook(self._last_out))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return False

    def _pre_hook(self, l):
        def hook(module, args, kwargs):
            x = _block_input(args, kwargs)
            if l in self.layers:
                self._got[l] = x.detach()
            if l in self.record:
                self._got[("record", l)] = x.detach().clone()
            if l == self.stop_at:
                raise _StopForward()
        return hook

    def _count(self, module, args, output):
        self.blocks_run += 1
        self._got[("tuple",)] = isinstance(output, tuple)

    def _last_out(self, module, args, output):
        self._got[self.n] = (output[0] if isinstance(output, tuple) else output).detach()

    def run(self, **inputs) -> dict:
        self._got = {}
        try:
            res = self.model(**inputs, return_dict=True)
        except _StopForward:
            pass
        else:
            if self.n in self.layers and not self.untied_last:
                last = getattr(res, "last_hidden_state", None)
                if last is None:  # e.g. a model with a head: ask for the hidden states
                    res = self.model(**inputs, output_hidden_states=True, return_dict=True)
                    last = res.hidden_states[-1]
                self._got[self.n] = last.detach()
        got, self._got = self._got, {}
        return got


class _BlockReplay(BlockForwards):
    """Skip blocks ``0..l-1``: block ``l-1`` returns the stored input of block ``l``.

    The blocks' ``forward`` is replaced on the instances (hooks still run) and restored on
    exit. Blocks before ``l-1`` return their input unchanged (cheap; their outputs are not
    used). Blocks that return tuples (e.g. BLOOM's) return one-element tuples.
    """

    def __init__(self, blocks, start_layer: int, cache: dict):
        super().__init__()
        self.blocks = list(blocks)
        self.l = int(start_layer)
        self.cache = cache
        self.batch = None

    def __enter__(self):
        for i, blk in enumerate(self.blocks[: self.l]):
            self.replace(blk, self._replayer(last=(i == self.l - 1)))
        return self

    def _replayer(self, last: bool):
        def forward(*args, **kwargs):
            x = _block_input(args, kwargs)
            if last:
                key = (self.batch, self.l)
                if key not in self.cache:
                    raise LesionAlignError("internal: no stored hidden states to resume from; "
                                           "extract the intact features with record first "
                                           "(same words, options and batches)")
                x = self.cache[key]
            return (x,) if self.cache.get(("tuple_out",)) else x
        return forward


# --------------------------------------------------------------------------- TR grid
def words_to_trs(vectors: np.ndarray, onsets: np.ndarray, n_trs: int, tr: float,
                 method: str = "floor", start_s: float = 0.0, pad_before: int = 0) -> np.ndarray:
    """Resample word vectors to volumes.

    Parameters
    ----------
    vectors : (n_words, d)
    onsets : (n_words,) seconds on the annotation clock.
    n_trs : number of volumes of the run.
    tr : repetition time in seconds.
    method : "floor" (paper: word -> volume floor((onset - start_s)/tr), mean per volume,
        zero where no word) or "lanczos" (3-lobe Lanczos interpolation at volume centres).
    start_s : time of the first volume on the annotation clock (dropped volumes).
    pad_before : extra volumes to compute before the first (context for the FIR delays).

    Returns
    -------
    (pad_before + n_trs, d) float32
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    onsets = np.asarray(onsets, dtype=np.float64)
    n_out = n_trs + pad_before
    d = vectors.shape[1]
    rel = (onsets - start_s) / tr + pad_before  # in volumes, from the first output row
    if method == "floor":
        idx = np.floor(rel).astype(np.int64)
        ok = (idx >= 0) & (idx < n_out)
        out = np.zeros((n_out, d))
        np.add.at(out, idx[ok], vectors[ok])
        counts = np.bincount(idx[ok], minlength=n_out).astype(np.float64)
        nz = counts > 0
        out[nz] /= counts[nz, None]
        return out.astype(np.float32)
    if method == "lanczos":
        window = 3
        centres = np.arange(n_out) + 0.5
        t = centres[:, None] - rel[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            k = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi**2 * t**2)
        k[t == 0] = 1.0
        k[np.abs(t) > window] = 0.0
        return (k @ vectors).astype(np.float32)
    raise LesionAlignError(f"unknown downsampling method {method!r}; use 'floor' or 'lanczos'")


def fir_delays(X: np.ndarray, delays: Sequence[int], pad_before: int = 0) -> np.ndarray:
    """Concatenate copies of ``X`` delayed by ``delays`` volumes (within one run).

    ``X`` has ``pad_before`` leading rows that precede the run (they feed the delays and are
    dropped); rows before them count as zero.
    """
    X = np.asarray(X)
    n = X.shape[0] - pad_before
    out = np.zeros((n, X.shape[1] * len(delays)), dtype=X.dtype)
    for k, dly in enumerate(delays):
        if dly < 0:
            raise LesionAlignError(f"delays must be >= 0, got {dly}")
        src0 = pad_before - dly  # row of X that lands on output row 0
        lo = max(0, -src0)
        if lo < n:
            out[lo:, k * X.shape[1] : (k + 1) * X.shape[1]] = X[src0 + lo : src0 + n]
    return out
