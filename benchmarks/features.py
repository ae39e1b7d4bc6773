"""Cost of the windowed word-feature extraction, side by side with its alternatives.

Run from the repository root (no network needed)::

    python benchmarks/features.py            # built-in offline model when installed
    python benchmarks/features.py --tiny     # force the tiny random model
    python benchmarks/features.py --threads 1 --per-word 50

What it measures, for the words of run 1 of the built-in demo in English and Chinese
(``src/napari_lesion_align/data/demo``), reading the last layer:

* ``plain``: one plain non-overlapping pass over the text (stride = the model's capacity,
  no context) -- the cheapest possible reading, the reference (1.00x);
* ``ctx C / stride S``: :func:`napari_lesion_align.core.features.extraction.extract_word_features`
  with ``max_context_tokens=C``, ``stride_tokens=S`` (the default is 500 / 128): every
  pass re-reads up to C tokens of preceding context and reads out S new tokens;
* ``per word``: one pass per word, each with its own preceding context of up to 500
  tokens (the naive way). Timed on 100 words only -- the first 100 words whose full
  500-token context exists, so each timed pass is representative -- then extrapolated to
  the whole run as (measured seconds per token fed) x (tokens the whole run would feed,
  counted exactly).

For each: passes, tokens fed to the model (special tokens included, batch padding not),
wall time, and both relative to ``plain``. Everything is measured in the same
process, one after the other, after one warm-up pass, with the same batch size (8).

The model: ``builtin:multilingual-e5-small-q4`` (12 layers, hidden 384, 512 positions;
converted once into the user's cache by ``load_model``) when the ``offline`` extra is
installed, else a tiny random XLM-RoBERTa from ``tests/tiny_models.py`` (2 layers, hidden
32; its times say little about a real model, the token counts still hold). The header
says which. Takes well under 2 minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from napari_lesion_align.core.features.extraction import (FeatureOptions, Window,
                                                          extract_word_features, model_capacity,
                                                          special_tokens, tokenize_words)
from napari_lesion_align.core.data.stimuli import list_runs, read_words  # noqa: E402
from napari_lesion_align.core.data.demo import DEMO_DIR  # noqa: E402

BUILTIN = "builtin:multilingual-e5-small-q4"
STRIDES = (128, 256, 64, 32)  # with max_context 500; 128 is the default
CONTEXT = 500


def load(tiny: bool):
    from napari_lesion_align.core.model.loading import load_model

    if not tiny:
        try:
            lm = load_model(BUILTIN, offline=True, device="cpu")
            return lm, f"{BUILTIN} (built-in offline model)"
        except Exception as err:  # not installed / not convertible here
            print(f"[built-in model not available: {err}]")
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import load_tiny, make_tiny_model

    folder = make_tiny_model(Path(tempfile.mkdtemp()) / "xlmr", "xlm-roberta")
    return load_tiny(folder), "TINY RANDOM xlm-roberta (2 layers, hidden 32) from tests/tiny_models.py"


def run_windows(model, tokenizer, ids: np.ndarray, wins: list, batch_size: int = 8):
    """The forward passes of ``wins`` (batched, padded as in extract_word_features).

    Returns (seconds, tokens fed)."""
    import torch

    pre, post = special_tokens(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fed = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b0 in range(0, len(wins), batch_size):
            seqs = [pre + ids[w.ctx_start:w.stop].tolist() + post
                    for w in wins[b0:b0 + batch_size]]
            L = max(len(s) for s in seqs)
            x = torch.full((len(seqs), L), pad, dtype=torch.long)
            m = torch.zeros((len(seqs), L), dtype=torch.long)
            for i, s in enumerate(seqs):
                x[i, :len(s)] = torch.as_tensor(s)
                m[i, :len(s)] = 1
            fed += int(m.sum())
            model(input_ids=x, attention_mask=m, output_hidden_states=True, return_dict=True)
    return time.perf_counter() - t0, fed


def bench_language(lm, label: str, words, spaceless: bool, n_per_word: int) -> list:
    model, tok = lm.model, lm.tokenizer
    w = list(words.words)
    cap = model_capacity(model, tok)
    n_special = sum(len(x) for x in special_tokens(tok))
    rows = []

    def extract(opts):
        st = {}
        t0 = time.perf_counter()
        extract_word_features(model, tok, w, [-1], opts, spaceless=spaceless,
                              sentence_ids=words.sentence_ids, stats=st)
        return time.perf_counter() - t0, st

    extract(FeatureOptions(max_context_tokens=0, stride_tokens=cap))  # warm-up
    t, st = extract(FeatureOptions(max_context_tokens=0, stride_tokens=cap))
    rows.append((f"plain (stride {cap}, no context)", st["n_passes"], st["n_tokens_fed"], t))
    for s in STRIDES:
        t, st = extract(FeatureOptions(max_context_tokens=CONTEXT, stride_tokens=s))
        name = f"ctx {CONTEXT} / stride {s}" + ("  (default)" if s == 128 else "")
        rows.append((name, st["n_passes"], st["n_tokens_fed"], t))

    # one pass per word, each with up to CONTEXT tokens of its own context
    tr = tokenize_words(tok, w, spaceless, words.sentence_ids)
    per_word = [Window(max(0, int(a) - min(CONTEXT, cap - (int(b) - int(a)))), int(a), int(b),
                       (j, j + 1))
                for j, (a, b) in enumerate(zip(tr.word_tok_start, tr.word_tok_stop))]
    total_fed = sum(x.stop - x.ctx_start + n_special for x in per_word)
    full = [x for x in per_word if x.new_start - x.ctx_start == min(CONTEXT, cap - (x.stop - x.new_start))
            and x.ctx_start > 0]
    sample = (full or per_word)[:n_per_word]
    t, fed = run_windows(model, tok, tr.ids, sample)
    rows.append((f"per word, {len(sample)} timed -> {len(w)} (extrap.)", len(w), total_fed,
                 t / fed * total_fed))

    base_fed, base_t = rows[0][2], rows[0][3]
    print(f"\n{label}: {len(w)} words, {len(tr.ids)} tokens, capacity {cap} tokens/pass")
    print(f"  {'method':42s} {'passes':>7s} {'tokens fed':>11s} {'x plain':>8s} "
          f"{'seconds':>9s} {'x plain':>8s}")
    for name, n, fed, t in rows:
        print(f"  {name:42s} {n:7d} {fed:11d} {fed / base_fed:7.2f}x {t:9.3f} {t / base_t:7.2f}x")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="use the tiny random model")
    ap.add_argument("--per-word", type=int, default=100, help="words timed one pass each")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm, desc = load(args.tiny)
    print(f"model: {desc}")
    print(f"device: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load {time.perf_counter() - t0:.1f} s; layer: last; batch size 8")
    zh = DEMO_DIR / "ZH_runs.tsv"
    bench_language(lm, "EN run 1", read_words(DEMO_DIR / "EN_run-1.TextGrid"), False,
                   args.per_word)
    bench_language(lm, "ZH run 1", read_words(zh, run=list_runs(zh)[0]), True, args.per_word)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
