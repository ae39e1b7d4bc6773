"""Memory and time of 0.5-7B decoder models: loading, features, importance, a 1 % lesion.

Run from the repository root (no network, nothing downloaded)::

    python benchmarks/models.py --quick            # CPU, Qwen2-0.5B, small counts (~5 min)
    python benchmarks/models.py                    # CPU, Qwen2-0.5B and Qwen2-1.5B
    python benchmarks/models.py --gpu              # CUDA: every size (0.5B .. 7B), bfloat16
    python benchmarks/models.py --models Qwen2-7B --gpu --dtype bfloat16
    python benchmarks/models.py --quick --scores   # importance scores: memory vs disk

The models are randomly initialised from the published configurations written below
(sizes, heads, vocabulary: what decides memory and time; the weights do not), saved with
their language-modelling head as a Hugging Face folder (safetensors) by one child process,
then measured in a fresh child process that does what an analysis does:

1. ``load``: :func:`napari_lesion_align.core.model.loading.load_model` (``dtype``, the whole model
   on one device) and the weights hash (streamed, see ``parameters_hash``);
2. ``features``: 1,500 words of the demo's English text at ``--layer`` (default: 2/3 of
   the depth), the default feature options (500 tokens of context, 128 new per pass);
3. ``importance``: gradient x weight of one language over 20,000 tokens (the model with its
   LM head built around the loaded model, as the pipeline does; gradients folded into one
   float32 accumulator per lesionable weight; blocks recomputed in the backward pass; the
   loss computed a few tokens at a time), ``--batch`` windows of 512 tokens per pass
   (default 0: the automatic token budget of ``importance_batch_tokens``, as in a run);
4. ``lesion``: the top 1 % per tensor of those scores, applied and restored (bit-exact
   check by the weights hash), the bytes its masks hold in memory (sorted int32 indices
   of the ablated weights, measured) and the size of its saved file; the memory of the
   default plan's lesions (a shared and one specific lesion per language, each with
   ``DEFAULT_RANDOM_CONTROLS`` random draws, all kept until the features are made) by
   arithmetic for every configuration, without building the model (``--lesion-memory``).

The tokenizer is the tests' small BPE (tests/tiny_models.py, ~1,000 pieces, so the word
to token ratio is not the real model's); ``--quick`` reads 300 words and scores 1,000
tokens. Peak memory per step: on the CPU the process' resident memory sampled every 5 ms
(minus what it held before the step), on a GPU ``torch.cuda.max_memory_allocated``.
Each row states the aims: importance peak <= 2 x the model + one float32 accumulator per
lesionable weight (+ the language's float32 scores), lesion apply/restore extra memory
<= 2 % of the model (the larger of the measured growth and the bytes of the values it
keeps, since resident memory does not show memory the allocator reuses).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

#: published configurations (config.json of each model on the Hugging Face hub)
CONFIGS = {
    "Qwen2-0.5B": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                 num_hidden_layers=24, num_attention_heads=14,
                                 num_key_value_heads=2, max_position_embeddings=32768,
                                 rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                 use_sliding_window=False)),
    "Qwen2-1.5B": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                 num_hidden_layers=28, num_attention_heads=12,
                                 num_key_value_heads=2, max_position_embeddings=32768,
                                 rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                 use_sliding_window=False)),
    "Qwen2-7B": ("qwen2", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                               num_hidden_layers=28, num_attention_heads=28,
                               num_key_value_heads=4, max_position_embeddings=32768,
                               rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
                               use_sliding_window=False)),
    "Llama-2-7B": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                 num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=32, max_position_embeddings=4096,
                                 rms_norm_eps=1e-5, tie_word_embeddings=False)),
}
CPU_MODELS = ("Qwen2-0.5B", "Qwen2-1.5B")
QUICK_MODELS = ("Qwen2-0.5B",)


def make_config(name: str):
    import transformers as T

    family, kw = CONFIGS[name]
    cls = {"qwen2": T.Qwen2Config, "llama": T.LlamaConfig}[family]
    return cls(**kw, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def make_tokenizer(family: str):
    """The tests' small BPE of the family (a qwen2 folder's tokenizer is always read back
    as a byte-level Qwen2Tokenizer, see tests/tiny_models.py)."""
    from tiny_models import make_tokenizer as mk

    return mk(None, family, model_max_length=4096)


# --------------------------------------------------------------------------- memory
class Peak:
    """Peak memory of a step: CUDA allocator peak, or resident memory sampled every 5 ms."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def now(self) -> int:
        import torch

        return torch.cuda.memory_allocated() if self.cuda else self.rss()

    def __enter__(self):
        import torch

        gc.collect()
        self.t0 = time.perf_counter()
        self.start = self.now()
        self.peak = self.start
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())
        self.seconds = time.perf_counter() - self.t0
        self.end = self.now()
        return False

    def report(self) -> dict:
        return {"seconds": round(self.seconds, 2), "start_gb": gib(self.start),
                "peak_gb": gib(self.peak), "extra_gb": gib(self.peak - self.start),
                "end_gb": gib(self.end)}


def gib(n: float) -> float:
    return round(n / 2**30, 3)


# --------------------------------------------------------------------------- children
def child_make(args) -> dict:
    """Build the random model (with its LM head) and save it with the tokenizer."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    cfg = make_config(args.model)
    t0 = time.perf_counter()
    with torch.device(args.device):  # random weights drawn on the GPU with --gpu (faster)
        model = T.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(args.folder)
    make_tokenizer(CONFIGS[args.model][0]).save_pretrained(args.folder)
    n = sum(p.numel() for p in model.parameters())
    return {"params": n, "make_s": round(time.perf_counter() - t0, 1)}


def demo_words(n: int) -> list[str]:
    from napari_lesion_align.core.data.stimuli import read_words
    from napari_lesion_align.core.data.demo import DEMO_DIR

    words: list[str] = []
    for f in sorted(DEMO_DIR.glob("EN_run-*.TextGrid")):
        words.extend(read_words(f).words)
    while len(words) < n:
        words = words + words
    return words[:n]


def child_run(args) -> dict:
    import torch

    from napari_lesion_align.core.lesions import importance as imp
    from napari_lesion_align.core.model.anatomy import describe_model
    from napari_lesion_align.core.features.extraction import FeatureOptions, extract_word_features
    from napari_lesion_align.core.lesions.masks import apply_lesion
    from napari_lesion_align.core.model.loading import load_model, parameters_hash

    cuda = args.device.startswith("cuda")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out: dict = {"model": args.model, "dtype": args.dtype, "device": args.device}
    base = Peak(cuda).now()
    out["baseline_gb"] = gib(base)

    with Peak(cuda) as p:
        lm = load_model(args.folder, offline=True, device=args.device, use_cache=False,
                        dtype=args.dtype)
        h0 = lm.weights_hash
    out["load"] = p.report()
    model = lm.model
    elt = next(model.parameters()).element_size()
    n_params = sum(t.numel() for t in model.parameters())
    out["model_gb"] = gib(n_params * elt)
    anat = describe_model(model)
    n_lesionable = sum(anat.module(n).weight.numel() for b in anat.blocks
                       for n in b.linears.values())
    out["lesionable_params"] = n_lesionable
    n_layers = model.config.num_hidden_layers
    layer = args.layer if args.layer is not None else round(2 * n_layers / 3)
    out["layer"] = layer

    words = demo_words(args.words)
    stats: dict = {}
    with Peak(cuda) as p:
        extract_word_features(model, lm.tokenizer, words, [layer], FeatureOptions(),
                              stats=stats)
    out["features"] = dict(p.report(), words=len(words), tokens_fed=stats["n_tokens_fed"],
                           blocks_run=stats["blocks_run"], passes=stats["n_passes"],
                           batches=stats["n_batches"])

    text = " ".join(demo_words(4000))
    texts = {"EN": [text] * 20}
    n_tok = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    with Peak(cuda) as p:
        head = imp.load_lm_head_model(lm.source, lm.device)
        if args.batch:
            windows, opts = args.batch, {"batch_size": args.batch}
        else:  # what a run does: the automatic budget
            budget = imp.importance_batch_tokens(head[0])
            cap = imp._capacity(head[0], lm.tokenizer)
            windows = max(1, min(imp.GRAD_BATCH_WINDOWS, budget // (cap + 2)))
            opts = {"max_batch_tokens": budget}
        scores = imp.gradxweight_scores(lm.source, lm.tokenizer, texts, lm.device,
                                        max_tokens=args.tokens, head_model=head, **opts)
        del head
        gc.collect()
    out["importance"] = dict(p.report(), tokens=min(args.tokens, 20 * n_tok), languages=1,
                             batch_windows=windows)
    out["accumulator_gb"] = gib(4 * n_lesionable)

    with Peak(cuda) as p:
        lesion = imp.select(scores, "shared", 1.0)
    out["select"] = p.report()
    del scores
    gc.collect()
    with tempfile.TemporaryDirectory() as d:
        st, _ = lesion.save(Path(d) / "lesion")
        out["lesion_file_mb"] = round(st.stat().st_size / 2**20, 2)
        out["lesion_file_bound_mb"] = round(n_lesionable / 8 / 2**20, 2)
    out["lesion_memory_mb"] = round(lesion.nbytes / 2**20, 2)
    out["lesion_memory_bool_mb"] = round(n_lesionable / 2**20, 2)  # one byte per weight
    with Peak(cuda) as p:
        with apply_lesion(model, lesion, anat):
            pass
    # what apply_lesion holds: the original values of the zeroed entries (RSS cannot show
    # memory the allocator reuses, so this is stated as well)
    out["lesion"] = dict(p.report(), n_elements=lesion.n_elements,
                         held_gb=gib(lesion.n_elements * elt))
    out["restored_bit_exact"] = parameters_hash(model) == h0
    return out


def child_scores(args) -> dict:
    """Gradient x weight importance of ``--languages`` languages and the default plan's
    selections (shared, specific per language), the scores held in memory or streamed to
    disk one tensor at a time (``--store``): the host memory each way."""
    import torch

    from napari_lesion_align.core.lesions import importance as imp
    from napari_lesion_align.core.lesions.scores import ScoreStore, scores_bytes
    from napari_lesion_align.core.model.anatomy import describe_model
    from napari_lesion_align.core.model.loading import load_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    lm = load_model(args.folder, offline=True, device=args.device, use_cache=False,
                    dtype=args.dtype)
    anat = describe_model(lm.model)
    sizes = [anat.module(n).weight.numel() for b in anat.blocks for n in b.linears.values()]
    langs = ["EN", "FR", "ZH", "DE", "ES"][:args.languages]
    text = " ".join(demo_words(4000))
    texts = {L: [text] * 20 for L in langs}  # the same text: memory, not science, is measured
    out: dict = {"model": args.model, "store": args.store, "languages": len(langs),
                 "lesionable_params": sum(sizes),
                 "scores_gb": gib(scores_bytes(sum(sizes), len(langs))),
                 "largest_tensor_gb": gib(4 * max(sizes)),
                 "model_gb": gib(sum(p.numel() * p.element_size()
                                     for p in lm.model.parameters()))}
    out["accumulator_gb"] = gib(4 * sum(sizes))
    base = Peak(False).now()
    out["baseline_gb"] = gib(base)
    store = ScoreStore.temporary(scores_bytes(sum(sizes), len(langs))) \
        if args.store == "disk" else None
    with Peak(False) as p:
        head = imp.load_lm_head_model(lm.source, lm.device)
        scores = imp.gradxweight_scores(lm.source, lm.tokenizer, texts, lm.device,
                                        max_tokens=args.tokens, head_model=head, store=store)
        del head
        gc.collect()
    out["importance"] = p.report()
    with Peak(False) as p:
        # the ranks where a run keeps them (LesionBuilder): beside scores on disk, or in
        # the in-memory rank cache (up to importance.RANK_CACHE_BYTES)
        ranks = store.beside("ranks") if store is not None else {}
        for sel in ["shared"] + [f"specific:{L}" for L in langs]:
            imp.select(scores, sel, 1.0, rank_cache=ranks)
        del ranks
    out["select"] = p.report()
    # what the scores hold in memory after the importance step, as multiples of the
    # largest tensor's float32 scores
    held = (out["importance"]["end_gb"] - out["baseline_gb"])
    out["held_after_importance_gb"] = round(held, 3)
    out["select_extra_x_largest"] = round(out["select"]["extra_gb"]
                                          / max(out["largest_tensor_gb"], 1e-9), 1)
    if store is not None:
        store.close()
    return out


def scores_table(rows: list[dict]) -> str:
    lines = ["| model | scores | languages | scores GB (float32) | largest tensor GB | "
             "importance s / peak - baseline GB | held after importance GB | selections s / "
             "extra GB (x largest tensor) |", "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['store']} | {r['languages']} | {r['scores_gb']:.2f} | "
            f"{r['largest_tensor_gb']:.3f} | {r['importance']['seconds']:.1f} / "
            f"{r['importance']['peak_gb'] - r['baseline_gb']:.2f} | "
            f"{r['held_after_importance_gb']:.2f} | {r['select']['seconds']:.1f} / "
            f"{r['select']['extra_gb']:.3f} ({r['select_extra_x_largest']}) |")
    return "\n".join(lines)


def lesion_memory(name: str, k_percent: float = 1.0, languages: int = 3) -> dict:
    """The default plan's lesions of one configuration, by arithmetic (no model built): the
    lesionable weights per block, the top-k count per tensor (the plan's formula), 4 bytes
    per ablated weight (int32 indices) against the 1 byte per weight of boolean masks."""
    from napari_lesion_align.core.lesions.vocabulary import (DEFAULT_RANDOM_CONTROLS,
                                                             default_selections, top_k_count)

    cfg = make_config(name)
    H, F = cfg.hidden_size, cfg.intermediate_size
    hd = H // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = [(q, H), (kv, H), (kv, H), (H, q), (F, H), (F, H), (H, F)]  # q k v o gate up down
    per_tensor = [top_k_count(a * b, k_percent) for a, b in shapes]
    lesionable = cfg.num_hidden_layers * sum(a * b for a, b in shapes)
    ablated = cfg.num_hidden_layers * sum(per_tensor)
    n = len(default_selections([f"L{i}" for i in range(languages)])) * (
        1 + DEFAULT_RANDOM_CONTROLS)
    return {"model": name, "lesionable": lesionable, "k_percent": k_percent,
            "lesions": n, "one_lesion_gb": gib(4 * ablated),
            "plan_gb": gib(4 * ablated * n), "plan_bool_gb": gib(lesionable * n)}


def lesion_memory_table(k_percent: float = 1.0, languages: int = 3) -> str:
    rows = [lesion_memory(name, k_percent, languages) for name in CONFIGS]
    lines = [f"| model | lesionable weights | one {k_percent:g} % lesion GB | the default "
             f"plan on {languages} languages: lesions, GB (boolean masks: GB) |",
             "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['lesionable'] / 1e9:.2f}B | {r['one_lesion_gb']} | "
                     f"{r['lesions']}, {r['plan_gb']} ({r['plan_bool_gb']}) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def spawn(argv: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_model(name: str, folder: str, dtype: str, device: str, env: dict) -> dict:
    """The random model ``name`` saved into ``folder`` by a child process."""
    return spawn(["--child", "make", "--model", name, "--folder", folder, "--dtype", dtype,
                  "--device", device], env)


def aims(r: dict) -> dict:
    """The aims: importance peak (above the process' baseline) <= 2 x the model + one
    float32 accumulator per language (one language here); lesion extra <= 2 % of the
    model."""
    model = r["model_gb"]
    imp_bound = 2 * model + r["accumulator_gb"] * r["importance"].get("languages", 1)
    imp_peak = r["importance"]["peak_gb"] - r["baseline_gb"]
    return {"importance_bound_gb": round(imp_bound, 2), "importance_peak_gb": round(imp_peak, 2),
            "importance_ok": imp_peak <= imp_bound,
            "lesion_extra_pct": round(100 * lesion_extra(r) / model, 2),
            "lesion_ok": lesion_extra(r) <= 0.02 * model}


def lesion_extra(r: dict) -> float:
    return max(r["lesion"]["extra_gb"], r["lesion"].get("held_gb", 0.0))


def table(rows: list[dict]) -> str:
    head = ("| model | dtype | device | params | model GB | load s / peak GB | features s / "
            "peak GB (words, layer, blocks run per pass) | importance s / peak GB (tokens) | "
            "1 % lesion apply+restore s / extra GB (% of model) | file MB (<= P/8 MB) | "
            "aims |\n|---|---|---|---:|---:|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        a = aims(r)
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['device']} | "
            f"{r['params'] / 1e9:.2f}B | {r['model_gb']:.2f} | "
            f"{r['load']['seconds']:.1f} / {r['load']['peak_gb']:.2f} | "
            f"{r['features']['seconds']:.1f} / {r['features']['peak_gb']:.2f} "
            f"({r['features']['words']}, {r['layer']}, "
            f"{r['features']['blocks_run'] // max(1, r['features'].get('batches', 1))}) | "
            f"{r['importance']['seconds']:.1f} / {r['importance']['peak_gb']:.2f} "
            f"({r['importance']['tokens']}) | "
            f"{r['lesion']['seconds']:.2f} / {lesion_extra(r):.3f} "
            f"({a['lesion_extra_pct']} %), masks {r.get('lesion_memory_mb', '?')} MB in "
            f"memory (boolean: {r.get('lesion_memory_bool_mb', '?')}) | {r['lesion_file_mb']} "
            f"(<= {r['lesion_file_bound_mb']}) | importance {a['importance_peak_gb']} "
            f"{'<=' if a['importance_ok'] else '>'} {a['importance_bound_gb']} GB, lesion "
            f"{'ok' if a['lesion_ok'] else 'over 2 %'}, restore "
            f"{'bit-exact' if r['restored_bit_exact'] else 'NOT EXACT'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true",
                    help="run on CUDA (every size, bfloat16 by default); detected: without a "
                         "GPU this says so and exits")
    ap.add_argument("--quick", action="store_true",
                    help="Qwen2-0.5B only, 300 words, 1,000 importance tokens")
    ap.add_argument("--models", nargs="+", choices=list(CONFIGS))
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--words", type=int)
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--layer", type=int, help="hidden layer read (default: 2/3 of the depth)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0,
                    help="windows (of 512 tokens) per importance pass (default 0: the "
                         "automatic budget, as in a run)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--lesion-memory", action="store_true",
                    help="only the memory of the default plan's lesions per configuration "
                         "(arithmetic, nothing built)")
    ap.add_argument("--scores", action="store_true",
                    help="only the host memory of importance scores of --languages languages "
                         "and their selections, held in memory vs streamed to disk (CPU)")
    ap.add_argument("--languages", type=int, default=3)
    ap.add_argument("--stores", nargs="+", choices=("memory", "disk"),
                    default=["memory", "disk"], help="with --scores: which stores to measure")
    ap.add_argument("--store", choices=("memory", "disk"), help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("make", "run", "scores"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = {"make": child_make, "run": child_run, "scores": child_scores}[args.child](args)
        print(json.dumps(res))
        return 0

    if args.lesion_memory:
        print(lesion_memory_table())
        return 0

    import torch

    if args.gpu and not torch.cuda.is_available():
        print("benchmarks/models.py --gpu: no CUDA GPU here; nothing measured")
        return 0
    device = "cuda" if args.gpu else "cpu"
    dtype = args.dtype or ("bfloat16" if args.gpu else "float32")
    models = args.models or (QUICK_MODELS if args.quick else
                             list(CONFIGS) if args.gpu else CPU_MODELS)
    words = args.words or (300 if args.quick else 1500)
    tokens = args.tokens or (1000 if args.quick else 20000)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    rows = []
    if args.scores:
        for name in models:
            with tempfile.TemporaryDirectory(prefix="nla-bench-") as d:
                folder = str(Path(d) / name)
                made = make_model(name, folder, dtype, "cpu", env)
                for store in args.stores:
                    row = spawn(["--child", "scores", "--model", name, "--folder", folder,
                                 "--dtype", dtype, "--device", "cpu", "--tokens", str(tokens),
                                 "--threads", str(args.threads), "--store", store,
                                 "--languages", str(args.languages)], env)
                    rows.append(report_row(row, made))
        return finish(rows, scores_table, args.json)
    for name in models:
        with tempfile.TemporaryDirectory(prefix="nla-bench-") as d:
            folder = str(Path(d) / name)
            made = make_model(name, folder, dtype, device, env)
            argv = ["--child", "run", "--model", name, "--folder", folder, "--dtype", dtype,
                    "--device", device, "--words", str(words), "--tokens", str(tokens),
                    "--threads", str(args.threads), "--batch", str(args.batch)]
            if args.layer is not None:
                argv += ["--layer", str(args.layer)]
            row = spawn(argv, env)
        rows.append(report_row(row, made))
    return finish(rows, table, args.json)


def report_row(row: dict, made: dict) -> dict:
    """A measured row with its model's making, printed as it comes."""
    row.update(made)
    print(json.dumps(row), flush=True)
    return row


def finish(rows: list[dict], make_table, json_path: str | None) -> int:
    """The table of the rows (and the rows as JSON when asked)."""
    print()
    print(make_table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
