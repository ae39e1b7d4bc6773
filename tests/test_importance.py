"""Importance scores and selections, against hand computations and planted scores."""

from __future__ import annotations

import pytest
import torch

from napari_lesion_align.core.lesions import importance as imp
from napari_lesion_align.core.model.anatomy import describe_model
from napari_lesion_align.core.base.errors import LesionAlignError
from tiny_models import load_tiny, make_tiny_model

TEXTS = {
    "EN": ["The little prince lived on a planet barely bigger than himself."] * 3,
    "FR": ["Le petit prince habitait une planète à peine plus grande que lui."] * 3,
    "ZH": ["小王子住在一个很小的星球上。"] * 3,
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.set_num_threads(1)
    folder = make_tiny_model(tmp_path_factory.mktemp("llama") / "m", "llama", n_layers=2)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("xlmr") / "m", "xlm-roberta", n_layers=2)
    return folder, load_tiny(folder)


def test_wanda_equals_hand_computation(xlmr):
    _, lm = xlmr
    anat = describe_model(lm.model)
    scores = imp.wanda_scores(lm.model, lm.tokenizer, {"EN": TEXTS["EN"]}, anat)["EN"]
    assert set(scores) == {f"{b.index}.{r}" for b in anat.blocks for r in b.linears}
    # reference: capture the input of block 1's query by hand
    batches = list(imp.text_batches(lm.tokenizer, TEXTS["EN"], imp._capacity(lm.model, lm.tokenizer)))
    seen = []
    q = anat.module(anat.blocks[1].linears["q"])
    h = q.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            lm.model(input_ids=torch.tensor(b))
    h.remove()
    X = torch.cat(seen).double()
    ref = q.weight.detach().abs().double() * torch.sqrt((X * X).mean(0))[None, :]
    torch.testing.assert_close(scores["1.q"].double(), ref, rtol=1e-5, atol=1e-7)


def test_gradxweight_equals_hand_computation_on_a_causal_lm(llama):
    folder, lm = llama
    scores = imp.gradxweight_scores(str(folder), lm.tokenizer, {"EN": TEXTS["EN"]})["EN"]
    model, kind = imp.load_lm_head_model(str(folder))
    assert kind == "causal"
    batches = list(imp.text_batches(lm.tokenizer, TEXTS["EN"], imp._capacity(model, lm.tokenizer)))
    model.zero_grad()
    for b in batches:
        ids = torch.tensor(b)
        model(input_ids=ids, labels=ids).loss.backward()
    W = describe_model(model)
    down = W.module(W.blocks[0].linears["ffn_down"]).weight
    ref = down.grad / len(batches) * down.detach()
    torch.testing.assert_close(scores["0.ffn_down"], ref.float(), rtol=1e-5, atol=1e-9)
    assert float(scores["0.ffn_down"].abs().sum()) > 0


def test_gradxweight_needs_a_language_modelling_head(xlmr):
    folder, lm = xlmr
    with pytest.raises(LesionAlignError, match="no language-modelling head.*wanda"):
        imp.gradxweight_scores(str(folder), lm.tokenizer, {"EN": TEXTS["EN"]})


def test_gradxweight_masked_lm(tmp_path, xlmr):
    import transformers as T

    _, lm = xlmr
    cfg = lm.model.config
    mlm = T.XLMRobertaForMaskedLM(cfg)
    mlm.save_pretrained(tmp_path / "mlm")
    lm.tokenizer.save_pretrained(tmp_path / "mlm")
    s = imp.gradxweight_scores(str(tmp_path / "mlm"), lm.tokenizer, {"FR": TEXTS["FR"] * 4})
    assert float(s["FR"]["1.ffn_up"].abs().sum()) > 0


def _planted():
    """Scores of 3 languages over one 10x10 tensor with known shared / specific entries."""
    g = torch.Generator().manual_seed(0)
    base = {L: torch.rand(10, 10, generator=g) * 0.1 for L in ("EN", "FR", "ZH")}
    for L in base:
        base[L][0, :5] = 10.0  # shared: high in every language
    # specific: important in one language, unimportant (zero) in the others
    for L, row, val in (("EN", 5, 10.0), ("FR", 6, 10.0), ("ZH", 7, -10.0)):  # sign: |I|
        for other in base:
            base[other][row, :5] = val if other == L else 0.0
    return {L: {"0.q": s} for L, s in base.items()}


def test_shared_and_specific_selections_recover_planted_entries():
    scores = _planted()
    shared = imp.select(scores, "shared", 5.0)
    assert torch.equal(shared.masks["0.q"].to_bool()[0, :5], torch.ones(5, dtype=torch.bool))
    assert int(shared.masks["0.q"].sum()) == 5
    for L, row in (("EN", 5), ("FR", 6), ("ZH", 7)):
        spec = imp.select(scores, f"specific:{L}", 5.0)
        assert int(spec.masks["0.q"].sum()) == 5
        assert bool(spec.masks["0.q"].to_bool()[row, :5].all()), L
        assert not bool(spec.masks["0.q"].to_bool()[0].any())  # shared entries are not specific
    assert spec.spec["selection"] == "specific:ZH" and spec.spec["k_percent"] == 5.0
    with pytest.raises(LesionAlignError, match="no scores for language 'DE'"):
        imp.select(scores, "specific:DE", 5.0)
    with pytest.raises(LesionAlignError, match="unknown selection"):
        imp.select(scores, "everything", 5.0)


def test_lape_selection_on_planted_probabilities():
    P = {L: {"0.neurons": torch.full((20,), 0.5)} for L in ("EN", "FR")}
    P["EN"]["0.neurons"][3] = 0.9
    P["FR"]["0.neurons"][3] = 0.0  # neuron 3 fires for EN only
    P["FR"]["0.neurons"][7] = 0.8
    P["EN"]["0.neurons"][7] = 0.01  # neuron 7 mostly FR
    P["EN"]["0.neurons"][11] = P["FR"]["0.neurons"][11] = 0.99  # active everywhere
    en = imp.select_lape(P, "specific:EN", 5.0)
    fr = imp.select_lape(P, "specific:FR", 5.0)
    sh = imp.select_lape(P, "shared", 5.0)
    assert en.masks["0.neurons"].indices.tolist() == [3]
    assert fr.masks["0.neurons"].indices.tolist() == [7]
    assert sh.masks["0.neurons"].indices.tolist() == [11]
    # a language-specific selection needs a language to be specific against
    with pytest.raises(LesionAlignError, match="at least two languages"):
        imp.select_lape({"EN": P["EN"]}, "specific:EN", 5.0)


def test_lape_probabilities_and_unit_scores_on_a_model(xlmr):
    _, lm = xlmr
    anat = describe_model(lm.model)
    P = imp.lape_probabilities(lm.model, lm.tokenizer, TEXTS, anat)
    p = P["ZH"]["1.neurons"]
    assert p.shape == (anat.intermediate_size,) and 0 <= float(p.min()) and float(p.max()) <= 1
    w = imp.wanda_scores(lm.model, lm.tokenizer, {"EN": TEXTS["EN"]}, anat)["EN"]
    u = imp.unit_scores(w, "neurons", anat)
    ref = w["0.ffn_down"].abs().sum(0) + w["0.ffn_up"].abs().sum(1)
    torch.testing.assert_close(u["0.neurons"], ref)
    heads = imp.unit_scores(w, "heads", anat)["1.heads"]
    assert heads.shape == (anat.n_heads,)


def test_manual_lesions(xlmr):
    _, lm = xlmr
    anat = describe_model(lm.model)
    les = imp.manual("hidden", {1: list(range(0, anat.hidden_size, 10))}, anat)
    assert les.per_layer() == {1: len(range(0, anat.hidden_size, 10))}
    assert les.first_layer == 1 and list(les.masks) == ["1.hidden"]
    skip = imp.manual("layers", {0: []}, anat)
    assert list(skip.masks) == ["0.layer"] and skip.n_elements == 1
    with pytest.raises(LesionAlignError, match="out of range"):
        imp.manual("heads", {0: [99]}, anat)
    with pytest.raises(LesionAlignError, match="block 5"):
        imp.manual("heads", {5: [0]}, anat)
