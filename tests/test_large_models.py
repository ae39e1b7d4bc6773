"""What large (7-14B) models need, checked on tiny random models of their families.

* loading: ``[model] dtype`` / ``device_map`` / ``low_cpu_mem_usage``, the weights hash
  streamed one tensor (piece) at a time;
* features: only the blocks up to the chosen layer run, and the layer read equals the full
  model's ``output_hidden_states`` (float32: to rounding; bfloat16: within a measured
  tolerance), for every family the feature code supports; prefix reuse in bfloat16;
* importance: gradient x weight folded into per-tensor accumulators during the backward
  pass equals the plain full-gradient computation, also with the LM loss computed a few
  tokens at a time; the gradient passes bounded by a token budget; bfloat16 top-k
  selections against float32 (measured agreement);
* features: the ``[features] max_batch_tokens`` budget changes the passes, not the
  features nor the feature store's keys;
* lesions: compact in memory (sorted int32 indices: a 1 % lesion holds <= 0.05 bytes per
  weight) with the keys, selections and random draws of boolean masks; bit-exact restore
  in float32 and bfloat16, compact files (at most P/8 bytes); BLOOM's fused qkv and heads.

Tests marked ``gpu`` run the same checks on a CUDA GPU and skip without one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

from tiny_models import PAD_ID, load_tiny, make_tiny_model, make_tokenizer  # noqa: E402

from napari_lesion_align.core.lesions import importance as imp  # noqa: E402
from napari_lesion_align.core.model import loading as M  # noqa: E402
from napari_lesion_align.core.model.anatomy import describe_model  # noqa: E402
from napari_lesion_align.core.base.errors import LesionAlignError  # noqa: E402
from napari_lesion_align.core.features.extraction import (FeatureOptions, batch_windows,
                                                          extract_word_features, plan_windows,
                                                          special_tokens, tokenize_words)
from napari_lesion_align.core.lesions.masks import (IndexMask, Lesion, apply_lesion, pack_mask,
                                                    random_like, top_k_mask)

N_LAYERS = 3
#: the families whose blocks the feature code finds (all of the paper's and the encoders)
FAMILIES = ("llama", "qwen2", "mistral", "gemma", "bloom", "xglm", "xlm-roberta")
#: the families whose q / k / v (BLOOM: the fused qkv) / o / FFN weights lesions address
LESION_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "bloom", "xglm", "xlm-roberta")
WORDS = ("Once when I was six years old I saw a magnificent picture in a book called True "
         "Stories from Nature about the primeval forest . It was a picture of a boa "
         "constrictor in the act of swallowing an animal . Here is a copy of the drawing . "
         "In the book it said Boa constrictors swallow their prey whole without chewing it "
         ".").split()
TEXTS = {
    "EN": ["The little prince lived on a planet barely bigger than himself. " * 4],
    "FR": ["Le petit prince habitait une planète à peine plus grande que lui. " * 4],
}
ONE_WINDOW = FeatureOptions(max_context_tokens=10**6, stride_tokens=10**4)

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU: the gpu-marked checks need one "
                                       "(benchmarks/gpu_check.sh runs them on a GPU machine)")


#: tiny models gain nothing from threads; on a busy machine they lose a lot
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def tokenizer(family: str):
    return make_tokenizer(None, "xlm-roberta" if family == "xlm-roberta" else "llama",
                          n_merges=100)


def tiny_config(family: str, vocab: int, layers: int = N_LAYERS):
    """A tiny config of each family (hidden 32, 4 heads, 2 key-value heads where the
    family has grouped-query attention)."""
    ids = dict(pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2)
    dec = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=False, **ids)
    if family == "llama":
        return T.LlamaConfig(**dec)
    if family == "qwen2":
        return T.Qwen2Config(**dec, use_sliding_window=False)
    if family == "mistral":
        return T.MistralConfig(**dec, sliding_window=None)
    if family == "gemma":  # head_dim x heads differs from hidden, as in Gemma-7B
        return T.GemmaConfig(**dec, head_dim=16)
    if family == "bloom":
        return T.BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=layers, n_head=4,
                             hidden_dropout=0.0, attention_dropout=0.0, **ids)
    if family == "xglm":
        return T.XGLMConfig(vocab_size=vocab, d_model=32, num_layers=layers, attention_heads=4,
                            ffn_dim=64, max_position_embeddings=512, dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, **ids)
    if family == "xlm-roberta":
        return T.XLMRobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=512 + PAD_ID + 1, type_vocab_size=1,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  **ids)
    raise ValueError(family)


@functools.lru_cache(maxsize=None)
def base_model(family: str):
    """The family's base model (no head), float32, random weights (seeded)."""
    torch.manual_seed(0)
    cfg = tiny_config(family, len(tokenizer(family)))
    kw = M.architecture_kwargs(cfg)
    return T.AutoModel.from_config(cfg, **kw).eval()


@functools.lru_cache(maxsize=None)
def causal_model(family: str = "llama"):
    torch.manual_seed(1)
    cfg = tiny_config(family, len(tokenizer(family)))
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def reference_layers(model, tok, words):
    """{layer: (n_words, hidden) float64}: ONE pass with ``output_hidden_states`` over
    [pre] + the text + [post], pooled per word (the straightforward computation)."""
    t = tokenize_words(tok, list(words))
    pre, post = special_tokens(tok)
    ids = torch.tensor([pre + t.ids.tolist() + post])
    with torch.inference_mode():
        res = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                    output_hidden_states=True, return_dict=True)
    out = {}
    for l, h in enumerate(res.hidden_states):
        h = h[0].double().numpy()
        out[l] = np.stack([h[len(pre) + a: len(pre) + b].mean(0)
                           for a, b in zip(t.word_tok_start, t.word_tok_stop)])
    return out


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- loading
def test_model_config_has_the_loading_keys_with_checked_values():
    from napari_lesion_align.core.run.config import ModelConfig

    m = ModelConfig()
    assert (m.dtype, m.device_map, m.low_cpu_mem_usage) == ("auto", "", True)
    m = ModelConfig(dtype="bfloat16", device_map="auto", low_cpu_mem_usage=False)
    assert m.load_options()["device_map"] == "auto" and m.load_options()["dtype"] == "bfloat16"
    assert ModelConfig().load_options()["device_map"] is None
    with pytest.raises(LesionAlignError, match="dtype"):
        ModelConfig(dtype="float64")
    with pytest.raises(LesionAlignError, match="device_map"):
        ModelConfig(device_map="gpu0")


def test_dtype_auto_is_float32_on_the_cpu():
    assert M.resolve_dtype("auto", "cpu") == torch.float32
    assert M.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(LesionAlignError, match="dtype"):
        M.resolve_dtype("int8", "cpu")


def _naive_hash(model) -> str:
    """The weights hash as first written: every tensor's bytes at once."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_weights_hash_streams_pieces_and_equals_the_plain_hash(monkeypatch):
    model = causal_model("llama")
    plain = _naive_hash(model)
    assert M.parameters_hash(model) == plain
    monkeypatch.setattr(M, "HASH_CHUNK_BYTES", 100)  # many pieces per tensor
    assert M.parameters_hash(model) == plain
    bf = copy.deepcopy(model).to(torch.bfloat16)
    assert M.parameters_hash(bf) == _naive_hash(bf) != plain


def test_load_model_in_bfloat16_and_the_head_model_follows(tmp_path):
    folder = make_tiny_model(tmp_path / "m", "llama", n_layers=2)
    f32 = load_tiny(folder)
    bf = M.load_model(str(folder), offline=True, device="cpu", use_cache=False,
                      dtype="bfloat16")
    assert {p.dtype for p in f32.model.parameters()} == {torch.float32}
    assert {p.dtype for p in bf.model.parameters()} == {torch.bfloat16}
    assert bf.weights_hash != f32.weights_hash  # another model identity
    head, kind = imp.load_lm_head_model(str(folder), "cpu")
    assert kind == "causal" and head.lm_head.weight.dtype == torch.bfloat16
    head32, _ = imp.load_lm_head_model(str(folder), "cpu", dtype="float32")
    assert head32.lm_head.weight.dtype == torch.float32


def test_device_map_without_accelerate_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(M, "_has_accelerate", lambda: False)
    with pytest.raises(LesionAlignError, match="accelerate"):
        M.loading_kwargs(torch.bfloat16, "cuda", "auto")
    assert "device_map" not in M.loading_kwargs(torch.float32, "cpu")


# --------------------------------------------------------------------------- features
@pytest.mark.parametrize("family", FAMILIES)
def test_features_up_to_a_layer_equal_the_full_models_layer(family):
    model, tok = base_model(family), tokenizer(family)
    ref = reference_layers(model, tok, WORDS)
    n = model.config.num_hidden_layers
    assert len(ref) == n + 1
    for l in range(n + 1):
        stats = {}
        got = extract_word_features(model, tok, WORDS, [l], ONE_WINDOW, stats=stats)[l]
        np.testing.assert_allclose(got, ref[l], rtol=0, atol=1e-5 * np.abs(ref[l]).max())
        assert stats["n_batches"] == 1
        assert stats["blocks_run"] == l, (family, l)  # layer l: blocks 0..l-1 only
    # several layers in one pass, negative indices
    got = extract_word_features(model, tok, WORDS, [1, -1], ONE_WINDOW)
    np.testing.assert_allclose(got[-1], ref[n], rtol=0, atol=1e-5 * np.abs(ref[n]).max())
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=1e-5 * np.abs(ref[1]).max())
    # the layers differ far more than the tolerance: the checks above are not trivially true
    assert np.abs(ref[1] - ref[n]).max() > 100 * 1e-5 * np.abs(ref[n]).max()


#: measured on these tiny models (hidden 32, 3 blocks, torch 2.13 CPU): the relative error
#: ||bf16 - f32|| / ||f32|| of the word features is 0.0026-0.0033 at layer 1 and
#: 0.0042-0.0054 at the last layer over the seven families; the bound leaves room for
#: other seeds, torch versions and the GPU's kernels
BF16_REL_TOL = 0.02


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_features_match_float32_within_a_measured_tolerance(family):
    model, tok = base_model(family), tokenizer(family)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    for l in (2, N_LAYERS):
        a = extract_word_features(model, tok, WORDS, [l], ONE_WINDOW)[l]
        b = extract_word_features(bf, tok, WORDS, [l], ONE_WINDOW)[l]
        assert b.dtype == np.float32 and np.all(np.isfinite(b))
        err = rel_err(b, a)
        assert 0 < err < BF16_REL_TOL, (family, l, err)


def test_token_budget_batches_give_the_same_features():
    model, tok = base_model("llama"), tokenizer("llama")
    words = WORDS * 3
    opts = FeatureOptions(max_context_tokens=40, stride_tokens=12, batch_size=8)
    wins = plan_windows(tokenize_words(tok, words), 511, opts)
    big = batch_windows(wins, 8, None, 1)
    small = batch_windows(wins, 8, 120, 1)
    assert len(small) > len(big)
    for b0, b1 in small:  # within the budget (a lone window may exceed it)
        longest = max(w.stop - w.ctx_start + 1 for w in wins[b0:b1])
        assert b1 - b0 == 1 or longest * (b1 - b0) <= 120
    s1, s2 = {}, {}
    a = extract_word_features(model, tok, words, [2], opts, stats=s1)[2]
    b = extract_word_features(model, tok, words, [2], opts, stats=s2, max_batch_tokens=120)[2]
    assert s2["n_batches"] > s1["n_batches"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())
    # a resumed pass takes the recorded passes' batches, whatever budget it is given (on a
    # GPU the default budget follows the free memory, which changes between calls)
    cache = {}
    extract_word_features(model, tok, words, [2], opts, record=[1], cache=cache,
                          max_batch_tokens=120)
    c = extract_word_features(model, tok, words, [2], opts, cache=cache, start_layer=1,
                              max_batch_tokens=10**6)[2]
    assert np.array_equal(c, b)


def test_the_features_token_budget_is_a_key_that_changes_memory_not_features_or_keys(
        tmp_path):
    """``[features] max_batch_tokens``: checked when read, used by the extraction (more,
    smaller passes; the same features to rounding); at its default the options dump as
    before the key existed, and whatever its value the feature store's keys (and so the
    stored features of earlier runs) stay the same."""
    from types import SimpleNamespace

    from napari_lesion_align.core.run import stages
    from napari_lesion_align.core.run.config import config_from_dict
    from napari_lesion_align.core.run.store import FeatureStore, _digest, words_digest
    from napari_lesion_align.core.data.stimuli import Words

    old_dump = {"max_context_tokens": 40, "stride_tokens": 12, "batch_size": 8}
    opts = FeatureOptions(**old_dump)
    assert opts.model_dump() == old_dump  # the default (0: automatic) is not dumped
    small = opts.replace(max_batch_tokens=120)
    assert small.max_batch_tokens == 120 and small.model_dump()["max_batch_tokens"] == 120
    assert small.content() == opts
    cfg = config_from_dict({"data": {"kind": "demo"}, "features": {"max_batch_tokens": 2048}})
    assert cfg.features.max_batch_tokens == 2048
    assert "max_batch_tokens" not in config_from_dict({"data": {"kind": "demo"}}).to_dict()[
        "features"]
    with pytest.raises(LesionAlignError, match="max_batch_tokens"):
        FeatureOptions(max_batch_tokens=-1)

    model, tok = base_model("llama"), tokenizer("llama")
    words = WORDS * 3
    s1, s2 = {}, {}
    a = extract_word_features(model, tok, words, [2], opts, stats=s1)[2]
    b = extract_word_features(model, tok, words, [2], small, stats=s2)[2]
    assert s2["n_batches"] > s1["n_batches"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())

    # the stage's feature keys: those of the options without the budget, as first written
    w = Words(tuple(words[:12]), np.arange(12.0), np.arange(12.0) + 0.5)
    store = FeatureStore(tmp_path / "store")
    old_key = _digest("features", 1, "model-id", "intact", 2,
                      json.dumps(old_dump, sort_keys=True), False, words_digest(w))
    for o in (opts, small):
        eng = SimpleNamespace(
            config=SimpleNamespace(features=o), store=store,
            info=SimpleNamespace(identity="model-id"),
            sets=[SimpleNamespace(name="analysis", layer=2,
                                  conditions=[SimpleNamespace(label="intact", key="intact")])],
            source=SimpleNamespace(stimuli={"EN": SimpleNamespace(runs=[w], spaceless=False)}))
        assert stages._feature_keys(eng) == {("analysis", "EN", 0, "intact"): old_key}


@pytest.mark.parametrize("family", ["llama", "bloom"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefix_reuse_is_exact_in_bfloat16_too(family, dtype):
    """A change confined to blocks >= 2 computed from the stored block inputs equals a full
    pass: a weight lesion of block 2 (llama), a hook on block 2's output (BLOOM, whose
    blocks return tuples)."""
    from contextlib import contextmanager

    from napari_lesion_align.core.features.extraction import find_blocks

    model = copy.deepcopy(base_model(family)).to(dtype)
    tok = tokenizer(family)
    words = WORDS * 2
    opts = FeatureOptions(max_context_tokens=30, stride_tokens=10, batch_size=3)
    cache = {}
    intact = extract_word_features(model, tok, words, [-1], opts, record=[2],
                                   cache=cache)[-1]

    @contextmanager
    def changed():
        if family == "bloom":
            def hook(m, a, out):
                return (out[0] * 0.5,) + tuple(out[1:]) if isinstance(out, tuple) else out * 0.5
            h = find_blocks(model)[2].register_forward_hook(hook)
            try:
                yield
            finally:
                h.remove()
        else:
            anat = describe_model(model)
            W = anat.module(anat.blocks[2].linears["ffn_down"]).weight
            mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(0)) < 0.3
            with apply_lesion(model, Lesion("weights", {"2.ffn_down": mask}), anat):
                yield

    before = M.parameters_hash(model)
    s_full, s_resumed = {}, {}
    with changed():
        full = extract_word_features(model, tok, words, [-1], opts, stats=s_full)[-1]
        resumed = extract_word_features(model, tok, words, [-1], opts, cache=cache,
                                        start_layer=2, stats=s_resumed)[-1]
    assert np.array_equal(full, resumed)
    assert not np.allclose(full, intact)
    assert M.parameters_hash(model) == before
    assert all("forward" not in b.__dict__ for b in find_blocks(model))


# --------------------------------------------------------------------------- importance
def _plain_gradxweight(model, tok, texts, batch_size=8):
    """The straightforward computation: full gradients summed by autograd (each batch's
    mean loss times its windows), divided by the windows, then x W."""
    cap = imp._capacity(model, tok)
    model.zero_grad(set_to_none=True)
    n = 0
    for batch in imp.text_batches(tok, texts, cap, 20000, batch_size):
        ids = torch.tensor(batch)
        (model(input_ids=ids, labels=ids).loss * len(batch)).backward()
        n += len(batch)
    anat = describe_model(model)
    out = {f"{b.index}.{r}": (anat.module(name).weight.grad.float() / n)
           * anat.module(name).weight.detach().float()
           for b in anat.blocks for r, name in b.linears.items()}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("accumulate_on", ["auto", "cpu"])
def test_streamed_gradxweight_equals_the_full_gradient_computation(accumulate_on):
    model = copy.deepcopy(causal_model("llama"))
    tok = tokenizer("llama")
    texts = {"EN": TEXTS["EN"] * 40}  # several batches of one window
    assert len(list(imp.text_batches(tok, texts["EN"], imp._capacity(model, tok), 20000,
                                     batch_size=1))) >= 3
    emb_grads = []
    model.get_input_embeddings().weight.register_hook(lambda g: emb_grads.append(1))
    got = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"),
                                 accumulate_on=accumulate_on, batch_size=1)["EN"]
    # no gradient kept, no gradient for the weights not scored, requires_grad restored
    assert emb_grads == []
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    ref = _plain_gradxweight(model, tok, texts["EN"], batch_size=1)
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert float(sum(v.abs().sum() for v in got.values())) > 0
    assert emb_grads  # the reference did differentiate the embeddings


def test_streamed_gradxweight_matches_with_batches_of_several_windows():
    model = copy.deepcopy(causal_model("qwen2"))
    tok = tokenizer("qwen2")
    texts = {"FR": TEXTS["FR"] * 60}  # batches of several windows
    got = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"),
                                 max_batch_tokens=10**6)["FR"]
    ref = _plain_gradxweight(model, tok, texts["FR"])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_causal_loss_in_chunks_of_tokens_equals_the_models_loss(monkeypatch, family):
    """The LM loss computed a few tokens at a time (a 7B model's logits over 152k words
    are never held for a whole window) gives the gradients of the model's own loss."""
    model = copy.deepcopy(causal_model(family))
    tok = tokenizer(family)
    texts = {"EN": TEXTS["EN"] * 6}
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(imp, "LOSS_CHUNK_BYTES", 4 * vocab * 7)  # 7 tokens per chunk
    seen = []
    real = imp._causal_backward_in_chunks
    monkeypatch.setattr(imp, "_causal_backward_in_chunks",
                        lambda split, ids, **kw: (seen.append(ids.numel()),
                                                  real(split, ids, **kw)))
    got = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"))["EN"]
    assert seen and max(seen) > 7 * 3  # several chunks per pass
    ref = _plain_gradxweight(model, tok, texts["EN"])
    for k in ref:  # the same sums in another order: equal to float32 rounding
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4,
                                   atol=1e-5 * float(ref[k].abs().max()))
    assert float(sum(v.abs().sum() for v in got.values())) > 0


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_recomputed_blocks_give_the_same_scores_and_keep_less_for_the_backward(family):
    """Activation checkpointing (each block run again during the backward pass): the same
    scores, bit for bit, and a fraction of the activations saved for the backward pass
    (counted by a saved-tensors hook around the gradient passes); the blocks' forward is
    restored afterwards."""
    from contextlib import contextmanager

    torch.manual_seed(5)
    tok = tokenizer(family)
    model = T.AutoModelForCausalLM.from_config(
        tiny_config(family, len(tok), layers=6)).eval()
    texts = {"EN": TEXTS["EN"] * 8}

    @contextmanager
    def counting(box):
        def pack(t):
            box[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    saved, scores = {}, {}
    for recompute in (False, True):
        box = [0]
        with counting(box):
            scores[recompute] = imp.gradxweight_scores(
                "unused", tok, texts, head_model=(model, "causal"), recompute=recompute)["EN"]
        saved[recompute] = box[0]
    assert all(torch.equal(scores[True][k], scores[False][k]) for k in scores[False])
    print(f"{family}: bytes saved for the backward pass: {saved[False]} -> {saved[True]}")
    assert saved[True] < 0.5 * saved[False]
    assert all("forward" not in blk.__dict__ for blk in
               (describe_model(model).module(b.name) for b in describe_model(model).blocks))


def test_scaled_logits_use_the_models_own_loss():
    model = copy.deepcopy(causal_model("llama"))
    assert imp._loss_parts(model) is not None
    model.config.final_logit_softcapping = 30.0  # as Gemma-2's
    assert imp._loss_parts(model) is None


def test_the_importance_token_budget_bounds_the_windows_per_pass(monkeypatch):
    """importance_batch_tokens: between one window and GRAD_BATCH_WINDOWS windows, from
    the memory and the model's size; a budget of one window gives the scores of one-window
    batches."""
    model = copy.deepcopy(causal_model("llama"))
    tok = tokenizer("llama")
    cap = imp._capacity(model, tok)
    tokens = imp.importance_batch_tokens(model)
    assert 512 <= tokens <= imp.GRAD_BATCH_WINDOWS * 512
    monkeypatch.setattr(imp, "GRAD_MODEL_SHARE", 1e9)  # the memory alone decides
    monkeypatch.setattr(imp, "GRAD_MEMORY_SHARE", 1e-12)  # no memory to spare: one window
    assert imp.importance_batch_tokens(model) == 512
    monkeypatch.setattr(imp, "GRAD_MEMORY_SHARE", 1.0)
    assert imp.importance_batch_tokens(model) == imp.GRAD_BATCH_WINDOWS * 512  # tiny model
    # the activations of a pass stay within GRAD_MODEL_SHARE of the model's size: a tiny
    # model gets one window, whatever the memory
    monkeypatch.setattr(imp, "GRAD_MODEL_SHARE", 0.5)
    assert imp.importance_batch_tokens(model) == 512
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    per_token = imp.grad_bytes_per_token(model)
    monkeypatch.setattr(imp, "GRAD_MODEL_SHARE", 1500.5 * per_token / params)
    assert imp.importance_batch_tokens(model) == 1500  # the model's share, in tokens
    texts = {"EN": TEXTS["EN"] * 60}  # several windows
    assert len(list(imp.text_batches(tok, texts["EN"], cap, 20000, 1))) >= 3
    one = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"),
                                 batch_size=1)["EN"]
    budget = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"),
                                    max_batch_tokens=cap + 2)["EN"]
    full = imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"),
                                  max_batch_tokens=10**6)["EN"]
    assert all(torch.equal(one[k], budget[k]) for k in one)
    # other batches, the same mean over windows (to float rounding): machines whose
    # budgets differ get the same scores
    batches = [len(b) for b in imp.text_batches(tok, texts["EN"], cap, 20000, 8)]
    assert len(set(batches)) > 1, batches  # unequal batches: a mean over batches would differ
    for k in one:
        scale = float(one[k].abs().max())
        torch.testing.assert_close(full[k], one[k], rtol=1e-4, atol=1e-5 * scale)


#: measured on the tiny llama: the 1 % shared selections of bfloat16 scores share 0.989
#: (gradient x weight) and 0.996 (Wanda) of their entries with float32's
def test_bfloat16_top_k_selections_agree_with_float32():
    model = copy.deepcopy(causal_model("llama"))
    tok = tokenizer("llama")
    texts = {L: t * 4 for L, t in TEXTS.items()}
    agree = {}
    for method in ("gradxweight", "wanda"):
        sel = {}
        for dt in (torch.float32, torch.bfloat16):
            m = copy.deepcopy(model).to(dt)
            if method == "gradxweight":
                s = imp.gradxweight_scores("unused", tok, texts, head_model=(m, "causal"))
            else:
                s = imp.wanda_scores(m.model, tok, texts)
            sel[dt] = imp.select(s, "shared", 1.0)
        a, b = sel[torch.float32], sel[torch.bfloat16]
        same = sum(int((a.masks[k] & b.masks[k]).sum()) for k in a.masks)
        agree[method] = same / a.n_elements
    print("bf16/f32 top-1% agreement:", agree)
    assert agree["wanda"] >= 0.95, agree
    assert agree["gradxweight"] >= 0.9, agree


def test_wanda_and_lape_running_sums_equal_stored_activations():
    """Wanda's and LAPE's running sums over several batches equal the computation from
    every input activation stored (the straightforward way), for every tensor."""
    model = base_model("llama")
    tok = tokenizer("llama")
    texts = TEXTS["EN"] * 30
    cap = imp._capacity(model, tok)
    batches = list(imp.text_batches(tok, texts, cap, 20000))
    assert len(batches) >= 2
    anat = describe_model(model)
    seen: dict = {}
    hooks = [anat.module(n).register_forward_pre_hook(
        lambda m, a, key=f"{b.index}.{r}": seen.setdefault(key, []).append(
            a[0].detach().reshape(-1, a[0].shape[-1]).double()))
        for b in anat.blocks for r, n in b.linears.items()]
    with torch.no_grad():
        for batch in batches:
            model(input_ids=torch.tensor(batch))
    for h in hooks:
        h.remove()
    scores = imp.wanda_scores(model, tok, {"EN": texts}, anat)["EN"]
    P = imp.lape_probabilities(model, tok, {"EN": texts}, anat)["EN"]
    for b in anat.blocks:
        for r, n in b.linears.items():
            X = torch.cat(seen[f"{b.index}.{r}"])
            ref = anat.module(n).weight.detach().abs().double() * X.pow(2).mean(0).sqrt()
            torch.testing.assert_close(scores[f"{b.index}.{r}"].double(), ref, rtol=1e-5,
                                       atol=1e-7)
        X = torch.cat(seen[f"{b.index}.ffn_down"])
        torch.testing.assert_close(P[f"{b.index}.neurons"].double(), (X > 0).double().mean(0))


# --------------------------------------------------------------------------- lesions
@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weight_lesions_restore_bit_for_bit(dtype, mode):
    model = copy.deepcopy(base_model("qwen2")).to(dtype)
    anat = describe_model(model)
    gen = torch.Generator().manual_seed(3)
    masks = {f"{b.index}.{r}": torch.rand(anat.module(n).weight.shape, generator=gen) < 0.01
             for b in anat.blocks for r, n in b.linears.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h0 = M.parameters_hash(model)
    lesion = Lesion("weights", masks, mode=mode)
    assert all(isinstance(m, IndexMask) for m in lesion.masks.values())  # compact in memory
    with apply_lesion(model, lesion, anat):
        W = anat.module(anat.blocks[1].linears["q"]).weight
        value = 0 if mode == "zero" else before["layers.1.self_attn.q_proj.weight"].mean()
        assert torch.all(W[masks["1.q"]] == value)
        assert torch.equal(W[~masks["1.q"]], before["layers.1.self_attn.q_proj.weight"]
                           [~masks["1.q"]])
        assert M.parameters_hash(model) != h0
    assert M.parameters_hash(model) == h0
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.uint8) if v.dtype != torch.bool else v,
                           before[k].view(torch.uint8) if v.dtype != torch.bool else before[k])


@pytest.mark.parametrize("density", [0.01, 0.05, 0.5])
def test_lesion_files_take_at_most_p_over_8_bytes(tmp_path, density):
    model = base_model("llama")
    anat = describe_model(model)
    gen = torch.Generator().manual_seed(0)
    masks = {f"{b.index}.{r}": torch.rand(anat.module(n).weight.shape, generator=gen) < density
             for b in anat.blocks for r, n in b.linears.items()}
    P = sum(m.numel() for m in masks.values())
    lesion = Lesion("weights", masks, {"name": "x"})
    st, _ = lesion.save(tmp_path / "les")
    size = st.stat().st_size
    header = 8 + int.from_bytes(st.read_bytes()[:8], "little")  # safetensors: u64 + JSON
    shapes = 2 * 8 * len(masks)  # one int64 pair per mask
    data = size - header - shapes
    print(f"density {density}: {size} bytes for P = {P} weights (P/8 = {P // 8}); "
          f"header {header} bytes for {len(masks)} masks")
    assert data <= P / 8
    assert header <= 256 + 200 * len(masks)  # the small overhead: ~2 entries per mask
    kinds = {pack_mask(m)[0] for m in masks.values()}
    assert kinds == ({"idx"} if density < 1 / 32 else {"bits"})
    if density == 0.01:  # 4-byte indices of 1 %: about a third of P/8
        assert data == 4 * sum(int(m.sum()) for m in masks.values()) < P / 8 / 2
    back = Lesion.load(st)
    assert set(back.masks) == set(masks)
    for k in masks:
        assert isinstance(back.masks[k], IndexMask)
        assert torch.equal(back.masks[k].to_bool(), masks[k])


def test_lesion_files_of_the_first_format_still_load(tmp_path):
    import json

    from safetensors.torch import save_file

    masks = {"0.q": torch.rand(32, 32) < 0.1, "1.neurons": torch.zeros(64, dtype=torch.bool)}
    masks["1.neurons"][[3, 9]] = True
    save_file({"mask/0.q": masks["0.q"].to(torch.uint8)}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.json").write_text(json.dumps({
        "format": "napari-lesion-align lesion 1", "element": "weights", "mode": "zero",
        "spec": {"name": "old"}}))
    back = Lesion.load(tmp_path / "old.json")
    assert torch.equal(back.masks["0.q"].to_bool(), masks["0.q"]) and back.name == "old"
    # a unit lesion in the new format, with mean values
    les = Lesion("neurons", {"1.neurons": masks["1.neurons"]}, {"name": "n"}, mode="mean",
                 means={"1.neurons": torch.arange(64, dtype=torch.float32)})
    les.save(tmp_path / "new")
    back = Lesion.load(tmp_path / "new")
    assert json.loads((tmp_path / "new.json").read_text())["format"].endswith("lesion 2")
    assert torch.equal(back.masks["1.neurons"].to_bool(), masks["1.neurons"])
    assert torch.equal(back.means["1.neurons"], les.means["1.neurons"])


def test_a_damaged_packed_mask_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    les = Lesion("hidden", {"0.hidden": torch.arange(32) < 20}, {"name": "d"})
    st, _ = les.save(tmp_path / "d")
    t = load_file(str(st))
    t["shape/0.hidden"] = torch.tensor([320])
    save_file(t, str(st))
    with pytest.raises(LesionAlignError, match="does not hold shape"):
        Lesion.load(st)


# the bool implementations the compact masks replaced, as they were written: the keys of
# result folders and of the demo's cache, and the random draws, must not change
def _old_lesion_key(lesion_element, mode, bool_masks, means=None) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(lesion_element.encode() + b"\x1f" + mode.encode())
    for k in sorted(bool_masks):
        h.update(k.encode())
        h.update(bool_masks[k].to(dtype=torch.uint8).contiguous().numpy().tobytes())
    if mode == "mean":
        for k in sorted(means):
            h.update(b"mean:" + k.encode())
            h.update(means[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _old_random_like(bool_masks, seed):
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for key, m in bool_masks.items():
        n = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        if n:
            flat[torch.randperm(m.numel(), generator=g)[:n]] = True
        out[key] = flat.view(m.shape)
    return out


def _old_top_k(scores, k_percent):
    from napari_lesion_align.core.lesions.vocabulary import top_k_count

    flat = scores.reshape(-1)
    n = top_k_count(flat.numel(), k_percent)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if n:
        mask[torch.topk(flat.float(), n, sorted=False).indices] = True
    return mask.view(scores.shape)


def _weight_scores(anat, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"{b.index}.{r}": torch.randn(anat.module(n).weight.shape, generator=g)
            for b in anat.blocks for r, n in b.linears.items()}


def test_compact_masks_keep_the_keys_draws_and_selections_of_boolean_masks():
    from napari_lesion_align.core.lesions.plan import lesion_key

    anat = describe_model(base_model("llama"))
    scores = _weight_scores(anat)
    for k_percent in (1.0, 37.0):
        les = Lesion("weights", {k: top_k_mask(s, k_percent) for k, s in scores.items()})
        old = {k: _old_top_k(s, k_percent) for k, s in scores.items()}
        assert all(torch.equal(les.masks[k].to_bool(), old[k]) for k in old)
        assert lesion_key(les) == _old_lesion_key("weights", "zero", old)
        for seed in (0, 7):
            rnd = random_like(les, anat, seed=seed)
            ref = _old_random_like(old, seed)
            assert all(torch.equal(rnd.masks[k].to_bool(), ref[k]) for k in ref)
            assert lesion_key(rnd) == _old_lesion_key("weights", "zero", ref)
    # unit masks, mean mode, a key whose mask is empty
    g = torch.Generator().manual_seed(1)
    units = {"0.neurons": torch.rand(64, generator=g) < 0.2,
             "1.neurons": torch.zeros(64, dtype=torch.bool)}
    means = {k: torch.randn(64, generator=g) for k in units}
    les = Lesion("neurons", dict(units), mode="mean", means=means)
    assert lesion_key(les) == _old_lesion_key("neurons", "mean", units, means)
    assert lesion_key(les) != _old_lesion_key("neurons", "zero", units)


def test_a_one_percent_lesion_holds_at_most_a_twentieth_of_a_byte_per_weight():
    model = base_model("qwen2")
    anat = describe_model(model)
    scores = _weight_scores(anat, seed=2)
    P = sum(s.numel() for s in scores.values())
    les = Lesion("weights", {k: top_k_mask(s, 1.0) for k, s in scores.items()})
    rnd = random_like(les, anat, seed=4)
    for lesion in (les, rnd):
        held = sum(m.indices.nbytes for m in lesion.masks.values())  # what the masks hold
        assert held == lesion.nbytes
        print(f"1 % lesion of P = {P} weights: {held} bytes in memory ({held / P:.3f} P; "
              f"boolean masks: {P} bytes)")
        assert held <= 0.05 * P
        assert lesion.n_elements == sum(max(1, round(s.numel() / 100)) for s in scores.values())


def test_index_masks_combine_on_their_indices():
    g = torch.Generator().manual_seed(3)
    a_b, b_b = torch.rand(7, 9, generator=g) < 0.3, torch.rand(7, 9, generator=g) < 0.3
    a, b = IndexMask.of(a_b), IndexMask.of(b_b)
    assert a.shape == (7, 9) and a.numel() == 63 and a.sum() == int(a_b.sum())
    assert torch.equal((a & b).to_bool(), a_b & b_b) and torch.equal((a | b).to_bool(), a_b | b_b)
    assert a == IndexMask.of(a_b.clone()) and a != b
    assert IndexMask.from_indices([5, 1, 5, 3], (2, 4)).indices.tolist() == [1, 3, 5]
    assert not IndexMask.of(torch.zeros(3, dtype=torch.bool)).any()
    with pytest.raises(LesionAlignError, match="cannot be combined"):
        a & IndexMask.of(torch.ones(3, dtype=torch.bool))


def test_mask_indices_from_a_file_in_any_order_load_sorted_and_unique(tmp_path):
    from safetensors.torch import load_file, save_file

    les = Lesion("weights", {"0.q": torch.arange(10000).view(100, 100) % 997 == 0}, {"name": "x"})
    st, _ = les.save(tmp_path / "x")
    t = load_file(str(st))
    assert "idx/0.q" in t
    t["idx/0.q"] = torch.cat([t["idx/0.q"].flip(0), t["idx/0.q"][:2]])  # reversed, repeats
    save_file(t, str(st))
    back = Lesion.load(st)
    assert back.masks["0.q"] == les.masks["0.q"]


@pytest.mark.parametrize("family", LESION_FAMILIES)
def test_anatomy_of_each_family(family):
    model = base_model(family)
    anat = describe_model(model)
    assert len(anat.blocks) == N_LAYERS
    assert anat.intermediate_size == (4 * 32 if family == "bloom" else 64)
    attn = {"qkv"} if family == "bloom" else {"q", "k", "v"}
    for b in anat.blocks:
        assert attn | {"o", "ffn_up", "ffn_down"} <= set(b.linears)
        assert not ({"q", "k", "v", "qkv"} - attn) & set(b.linears)
        assert b.qkv_per_head == (family == "bloom")
        W = {r: anat.module(n).weight for r, n in b.linears.items()}
        assert W["o"].shape == (32, b.n_heads * b.head_dim)
        if family == "bloom":
            assert W["qkv"].shape == (3 * 32, 32)


def _bloom_attention_dense(model, block):
    return model.h[block].self_attention.dense


def test_bloom_heads_lesion_zeroes_the_heads_columns_of_the_output_projection():
    """A heads lesion of BLOOM (fused qkv) acts on the attention output projection's input
    columns of the head: the same as zeroing those columns of its weight (the planted
    truth), and the model is restored bit for bit."""
    from napari_lesion_align.core.lesions.importance import manual

    model = copy.deepcopy(base_model("bloom"))
    tok = tokenizer("bloom")
    anat = describe_model(model)
    hd = anat.blocks[1].head_dim
    ids = torch.tensor([special_tokens(tok)[0] + tok(" ".join(WORDS[:20]),
                                                     add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        ref = model(input_ids=ids).last_hidden_state
    h0 = M.parameters_hash(model)
    lesion = manual("heads", {1: [2]}, anat)
    with apply_lesion(model, lesion, anat), torch.inference_mode():
        got = model(input_ids=ids).last_hidden_state
    assert M.parameters_hash(model) == h0
    planted = copy.deepcopy(model)
    with torch.no_grad():
        _bloom_attention_dense(planted, 1).weight[:, 2 * hd: 3 * hd] = 0
        want = planted(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - ref).abs().max() > 1e-3


def test_bloom_weights_lesions_from_importance_scores_apply_and_restore(tmp_path):
    """Importance (Wanda and gradient x weight) scores BLOOM's fused qkv like any linear
    layer; the shared 5 % lesion zeroes exactly its entries and is undone bit for bit;
    head scores take each head's q, k and v rows."""
    torch.manual_seed(4)
    tok = tokenizer("bloom")
    model = T.AutoModelForCausalLM.from_config(tiny_config("bloom", len(tok))).eval()
    texts = {L: t * 3 for L, t in TEXTS.items()}
    anat = describe_model(model)
    for scores in (imp.wanda_scores(model.transformer, tok, texts),
                   imp.gradxweight_scores("unused", tok, texts, head_model=(model, "causal"))):
        assert {f"{b}.qkv" for b in range(N_LAYERS)} <= set(scores["EN"])
        lesion = imp.select(scores, "shared", 5.0)
        assert lesion.masks["0.qkv"].sum() == round(96 * 32 * 0.05)
        W = anat.module(anat.blocks[0].linears["qkv"]).weight
        before = W.detach().clone()
        h0 = M.parameters_hash(model)
        with apply_lesion(model, lesion, anat):
            m = lesion.masks["0.qkv"].to_bool()
            assert torch.all(W[m] == 0) and torch.equal(W[~m], before[~m])
        assert M.parameters_hash(model) == h0
        heads = imp.unit_scores(scores["EN"], "heads", anat)["0.heads"]
        S = scores["EN"]["0.qkv"].abs()
        hd = anat.blocks[0].head_dim
        for h in range(anat.n_heads):
            want = (S[h * 3 * hd:(h + 1) * 3 * hd].sum()
                    + scores["EN"]["0.o"].abs()[:, h * hd:(h + 1) * hd].sum())
            torch.testing.assert_close(heads[h], want, rtol=1e-5, atol=0)
    lesion.save(tmp_path / "bloom")
    back = Lesion.load(tmp_path / "bloom")
    assert back.masks == lesion.masks


# --------------------------------------------------------------------------- GPU
@gpu
@needs_cuda
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "bloom"])
def test_gpu_bfloat16_features_and_lesion_restore(family):
    model, tok = base_model(family), tokenizer(family)
    ref = extract_word_features(model, tok, WORDS, [2], ONE_WINDOW)[2]
    cuda = copy.deepcopy(model).to("cuda", torch.bfloat16)
    got = extract_word_features(cuda, tok, WORDS, [2], ONE_WINDOW)[2]
    assert rel_err(got, ref) < BF16_REL_TOL
    anat = describe_model(cuda)
    masks = {f"{b.index}.{r}": torch.rand(anat.module(n).weight.shape) < 0.01
             for b in anat.blocks for r, n in b.linears.items()}
    h0 = M.parameters_hash(cuda)
    with apply_lesion(cuda, Lesion("weights", masks), anat):
        assert M.parameters_hash(cuda) != h0
    assert M.parameters_hash(cuda) == h0


@gpu
@needs_cuda
def test_gpu_streamed_gradxweight_matches_the_cpu():
    tok = tokenizer("llama")
    texts = {"EN": TEXTS["EN"] * 4}
    cpu = imp.gradxweight_scores("unused", tok, texts,
                                 head_model=(copy.deepcopy(causal_model("llama")), "causal"))
    gpu_model = copy.deepcopy(causal_model("llama")).to("cuda")
    for where in ("device", "cpu"):
        got = imp.gradxweight_scores("unused", tok, texts, head_model=(gpu_model, "causal"),
                                     accumulate_on=where)
        for k in cpu["EN"]:  # float32 on both: the same up to summation order
            ref = cpu["EN"][k]
            torch.testing.assert_close(got["EN"][k], ref, rtol=1e-3,
                                       atol=1e-4 * float(ref.abs().max()))


# --------------------------------------------------------------------------- head model
def _folder_of(tmp_path, model, family):
    folder = tmp_path / family
    model.save_pretrained(folder)
    tokenizer("xlm-roberta" if family.startswith("xlm") else "llama").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["llama", "qwen2-tied", "xlm-roberta-mlm"])
def test_the_head_model_shares_the_loaded_feature_model(tmp_path, case):
    """With the feature model loaded, the LM-head model is built around it (no second
    copy); its weights and gradient x weight scores equal a separately loaded one's."""
    torch.manual_seed(2)
    if case == "xlm-roberta-mlm":
        cfg = tiny_config("xlm-roberta", len(tokenizer("xlm-roberta")))
        made = T.XLMRobertaForMaskedLM(cfg)
    else:
        family = case.split("-")[0]
        cfg = tiny_config(family, len(tokenizer(family)))
        cfg.tie_word_embeddings = case.endswith("tied")
        made = T.AutoModelForCausalLM.from_config(cfg)
    folder = _folder_of(tmp_path, made, case)
    lm = M.load_model(str(folder), offline=True, device="cpu", use_cache=False)
    head, kind = imp.load_lm_head_model(str(folder), "cpu")
    full, kind2 = imp.load_lm_head_model(str(folder), "cpu", share=False)
    assert kind == kind2 == ("masked" if case.endswith("mlm") else "causal")
    body = getattr(head, head.base_model_prefix)
    assert body is lm.model  # shared: not a copy
    assert getattr(full, full.base_model_prefix) is not lm.model
    a, b = head.state_dict(), full.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if case.endswith("tied"):
        assert head.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    texts = {"EN": TEXTS["EN"] * 3}
    s1 = imp.gradxweight_scores(str(folder), lm.tokenizer, texts, head_model=(head, kind))
    s2 = imp.gradxweight_scores(str(folder), lm.tokenizer, texts, head_model=(full, kind))
    assert all(torch.equal(s1["EN"][k], s2["EN"][k]) for k in s1["EN"])
    # the feature model is as it was: no gradients, weights unchanged
    assert all(p.grad is None for p in lm.model.parameters())
    assert M.parameters_hash(lm.model) == lm.weights_hash


# --------------------------------------------------------------------------- setup.sh
STUB_PYTHON = r'''#!/usr/bin/env bash
# a stand-in for .venv/bin/python: logs pip calls; "torch" exists once a pip install of it
# succeeded; PyTorch's CPU index answers only when CPU_INDEX_OK=1
echo "$*" >> "$STUB_LOG"
if [ "$1" = "-c" ]; then [ -f "$STUB_STATE" ] && { cat "$STUB_STATE"; exit 0; }; exit 1; fi
case "$*" in
  *"pip install"*download.pytorch.org*)
    [ "${CPU_INDEX_OK:-0}" = 1 ] && { echo cpu > "$STUB_STATE"; exit 0; }
    echo "ERROR: unreachable" >&2; exit 1 ;;
  *"pip install"*torch==*) echo "${DEFAULT_BUILD:-cuda 12.8}" > "$STUB_STATE" ;;
esac
exit 0
'''


@pytest.mark.parametrize("args,cpu_index_ok,expect", [
    ((), "0", ["download.pytorch.org/whl/cpu --timeout 5 --retries 0", "install -q torch==",
               "-e .[offline,gui]"]),
    ((), "1", ["download.pytorch.org/whl/cpu --timeout 5 --retries 0", "-e .[offline,gui]"]),
    (("--gpu",), "1", ["install -q torch==", "-e .[offline,gui,gpu]"]),
])
def test_setup_sh_takes_the_cpu_index_and_falls_back_at_once(tmp_path, args, cpu_index_ok,
                                                             expect):
    """setup.sh's torch step, with a stand-in python (nothing installed): the CPU index
    first with a short timeout and no retries, the default index when it fails; --gpu the
    default index and the gpu extra; it says which build it installed."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "setup.sh", tmp_path / "setup.sh")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = dict(os.environ, STUB_LOG=str(tmp_path / "log"), STUB_STATE=str(tmp_path / "st"),
               CPU_INDEX_OK=cpu_index_ok)
    proc = subprocess.run(["bash", str(tmp_path / "setup.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [c for c in (tmp_path / "log").read_text().splitlines() if "pip install" in c]
    for want in expect:
        assert any(want in c for c in calls), (want, calls)
    if "--gpu" in args:
        assert not any("download.pytorch.org" in c for c in calls)
        assert "(cuda 12.8 build) installed from the default index" in proc.stdout
    elif cpu_index_ok == "1":
        assert "(cpu build) installed from PyTorch's CPU index" in proc.stdout
        assert not any(c.endswith("install -q torch==2.13.0") for c in calls)
    else:
        assert "CPU index is not reachable" in proc.stdout
    bad = subprocess.run(["bash", str(tmp_path / "setup.sh"), "--tpu"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "unknown option '--tpu'" in bad.stderr


def test_specific_selections_are_the_same_past_the_rank_cache_limit(monkeypatch):
    """Past RANK_CACHE_BYTES the percentile ranks are not kept (a 7B model's take 26 GB
    per language) but computed again: the selections do not change."""
    g = torch.Generator().manual_seed(5)
    scores = {L: {f"{b}.q": torch.randn(40, 30, generator=g) for b in range(3)}
              for L in ("EN", "FR", "ZH")}
    cache: dict = {}
    ref = {L: imp.select(scores, f"specific:{L}", 2.0, rank_cache=cache) for L in scores}
    assert len([k for k in cache if k != ("__bytes__",)]) == 9
    monkeypatch.setattr(imp, "RANK_CACHE_BYTES", 2 * 40 * 30 * 4)  # two ranks at most
    small: dict = {}
    for L in scores:
        got = imp.select(scores, f"specific:{L}", 2.0, rank_cache=small)
        assert all(got.masks[k] == ref[L].masks[k] for k in got.masks)
    assert len([k for k in small if k != ("__bytes__",)]) == 2
