"""Lesion masks: model anatomy, exact application and restoration, files, random controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lesion_align.core.model.anatomy import describe_model
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.lesions.masks import (Lesion, apply_lesion, percentile_rank,
                                                    random_like, top_k_mask)
from napari_lesion_align.core.model.loading import parameters_hash
from tiny_models import FAMILIES, load_tiny, make_tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    torch.set_num_threads(1)
    folder = make_tiny_model(tmp_path_factory.mktemp(request.param) / "m", request.param,
                             n_layers=3, heads=4)
    lm = load_tiny(folder)
    return lm, describe_model(lm.model)


def _hidden(lm, text="The little prince lived on a small planet."):
    enc = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**enc, output_hidden_states=True)
    return out.hidden_states


def test_anatomy_finds_every_part_by_structure(tiny):
    lm, anat = tiny
    assert len(anat.blocks) == 3 and anat.n_heads == 4
    for b in anat.blocks:
        assert {"q", "k", "v", "o", "ffn_up", "ffn_down"} <= set(b.linears)
        assert ("ffn_gate" in b.linears) == anat.is_decoder
        down = anat.module(b.linears["ffn_down"])
        assert down.in_features == anat.intermediate_size
    names = dict(lm.model.named_parameters())
    for n in anat.weight_names():
        assert n in names and names[n].dim() == 2
    assert not any("embed" in n or "norm" in n.lower() for n in anat.weight_names())


def _full_lesion(element, anat, gen):
    masks = {}
    for b in anat.blocks:
        if element == "weights":
            for role, name in b.linears.items():
                W = anat.module(name).weight
                masks[f"{b.index}.{role}"] = torch.rand(W.shape, generator=gen) < 0.05
        elif element == "neurons":
            masks[f"{b.index}.neurons"] = torch.rand(anat.intermediate_size, generator=gen) < 0.2
        elif element == "heads":
            masks[f"{b.index}.heads"] = torch.tensor([True, False, False, True])
        elif element == "hidden":
            masks[f"{b.index}.hidden"] = torch.rand(anat.hidden_size, generator=gen) < 0.2
        elif element == "layers" and b.index == 1:
            masks["1.layer"] = torch.tensor([True])
    return Lesion(element, masks, {"name": f"test-{element}"})


@pytest.mark.parametrize("element", ["weights", "neurons", "heads", "hidden", "layers"])
def test_lesion_changes_outputs_and_restores_bit_for_bit(tiny, element):
    lm, anat = tiny
    gen = torch.Generator().manual_seed(0)
    lesion = _full_lesion(element, anat, gen)
    h0 = parameters_hash(lm.model)
    ref = _hidden(lm)
    with apply_lesion(lm.model, lesion, anat):
        les = _hidden(lm)
    assert parameters_hash(lm.model) == h0
    after = _hidden(lm)
    for a, b in zip(ref, after):
        assert torch.equal(a, b)
    assert not torch.allclose(les[-1], ref[-1])
    if element == "layers":  # block 1 skipped: its output is its input
        assert torch.equal(les[2], les[1])
        assert torch.equal(les[1], ref[1])
    if element == "hidden":  # the masked dimensions of every block's output are zero
        m = lesion.masks["0.hidden"].to_bool()
        assert torch.all(les[1][..., m] == 0)


def test_restored_on_exception_and_cancel(tiny):
    lm, anat = tiny
    lesion = _full_lesion("weights", anat, torch.Generator().manual_seed(1))
    h0 = parameters_hash(lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_lesion(lm.model, lesion, anat):
            assert parameters_hash(lm.model) != h0
            raise RuntimeError("boom")
    assert parameters_hash(lm.model) == h0
    from napari_lesion_align.core.base.errors import Cancelled

    with pytest.raises(Cancelled):
        with apply_lesion(lm.model, lesion, anat):
            raise Cancelled()
    assert parameters_hash(lm.model) == h0


def test_lesions_do_not_accumulate(tiny):
    lm, anat = tiny
    a = Lesion("hidden", {"0.hidden": torch.arange(anat.hidden_size) < 4})
    b = Lesion("hidden", {"2.hidden": torch.arange(anat.hidden_size) >= anat.hidden_size - 4})
    with apply_lesion(lm.model, a, anat):
        first = _hidden(lm)
    with apply_lesion(lm.model, b, anat):
        second = _hidden(lm)
    ref = _hidden(lm)
    # b alone leaves blocks 0-1 intact: a's lesion did not stay behind
    assert torch.equal(second[1], ref[1]) and torch.equal(second[2], ref[2])
    assert not torch.equal(first[1], ref[1])


def test_weights_lesion_zeroes_exactly_the_masked_entries(tiny):
    lm, anat = tiny
    b = anat.blocks[0]
    W = anat.module(b.linears["q"]).weight
    mask = torch.zeros(W.shape, dtype=torch.bool)
    mask[0, :3] = True
    before = W.detach().clone()
    with apply_lesion(lm.model, Lesion("weights", {"0.q": mask}), anat):
        assert torch.all(W[mask] == 0)
        assert torch.equal(W[~mask], before[~mask])
    assert torch.equal(W, before)


def test_mismatched_lesion_is_a_clear_error(tiny):
    lm, anat = tiny
    with pytest.raises(LesionAlignError, match="block 7"):
        with apply_lesion(lm.model, Lesion("hidden", {"7.hidden": torch.ones(anat.hidden_size,
                                                                             dtype=torch.bool)})):
            pass
    with pytest.raises(LesionAlignError, match="another model"):
        with apply_lesion(lm.model, Lesion("neurons", {"0.neurons": torch.ones(5, dtype=torch.bool)})):
            pass
    with pytest.raises(LesionAlignError, match="unknown lesion element"):
        Lesion("synapses", {})


def test_save_load_roundtrip_and_random_control(tmp_path, tiny):
    lm, anat = tiny
    lesion = _full_lesion("weights", anat, torch.Generator().manual_seed(2))
    lesion.spec.update(model_hash=parameters_hash(lm.model), method="manual", k=5.0)
    st, js = lesion.save(tmp_path / "my-lesion")
    assert st.name == "my-lesion.safetensors" and js.name == "my-lesion.json"
    back = Lesion.load(tmp_path / "my-lesion.json")
    assert back.element == "weights" and back.spec == lesion.spec
    assert set(back.masks) == set(lesion.masks)
    for k in lesion.masks:
        assert back.masks[k] == lesion.masks[k]
    # into a folder that does not exist yet: created
    st2, _ = lesion.save(tmp_path / "new" / "folder" / "copy")
    assert st2.read_bytes() == st.read_bytes()
    rnd = random_like(lesion, anat, seed=3)
    assert rnd.per_layer() == lesion.per_layer()
    for k in lesion.masks:
        assert int(rnd.masks[k].sum()) == int(lesion.masks[k].sum())
    assert any(rnd.masks[k] != lesion.masks[k] for k in lesion.masks)
    again = random_like(lesion, anat, seed=3)
    assert all(again.masks[k] == rnd.masks[k] for k in rnd.masks)
    with pytest.raises(LesionAlignError, match="not found"):
        Lesion.load(tmp_path / "nothing")
    with pytest.raises(LesionAlignError, match="not found"):  # loading creates nothing
        Lesion.load(tmp_path / "no-folder" / "nothing.json")
    assert not (tmp_path / "no-folder").exists()


def test_top_k_and_percentile_rank():
    s = torch.tensor([[0.1, 5.0, 3.0], [4.0, 0.2, 0.3]])
    top = top_k_mask(s, 34)
    assert top.sum() == 2 and top.indices.tolist() == [1, 3] and top.shape == (2, 3)
    assert top.to_bool()[0, 1] and top.to_bool()[1, 0]
    assert top_k_mask(s, 1).sum() == 1  # at least one element when k > 0
    assert top_k_mask(s, 0).sum() == 0
    r = percentile_rank(s)
    assert r.shape == s.shape and float(r.max()) == 1.0 and float(r[0, 0]) == pytest.approx(1 / 6)


@pytest.mark.parametrize("layer", [1, 2])
def test_resuming_from_stored_hidden_states_equals_a_full_lesioned_pass(tiny, layer):
    """A lesion confined to blocks >= l leaves the hidden states below l unchanged: the
    lesioned features computed from the intact pass's stored states are identical."""
    from napari_lesion_align.core.features.extraction import FeatureOptions, extract_word_features
    from napari_lesion_align.core.data.stimuli import read_words
    from napari_lesion_align.core.data.demo import DEMO_DIR

    lm, anat = tiny
    words = list(read_words(DEMO_DIR / "EN_run-1.TextGrid").words)[:150]
    opts = FeatureOptions(stride_tokens=32, max_context_tokens=60, batch_size=4)
    cache = {}
    intact = extract_word_features(lm.model, lm.tokenizer, words, [-1], opts, record=[1, 2],
                                   cache=cache)[-1]
    W = anat.module(anat.blocks[layer].linears["ffn_down"]).weight
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(layer)) < 0.3
    lesion = Lesion("weights", {f"{layer}.ffn_down": mask})
    assert lesion.first_layer == layer
    with apply_lesion(lm.model, lesion, anat):
        full = extract_word_features(lm.model, lm.tokenizer, words, [-1], opts)[-1]
        resumed = extract_word_features(lm.model, lm.tokenizer, words, [-1], opts, cache=cache,
                                        start_layer=layer)[-1]
    assert np.array_equal(full, resumed)
    assert not np.allclose(full, intact)
    # the blocks' forward methods are restored
    assert all("forward" not in anat.module(b.name).__dict__ for b in anat.blocks)


@pytest.mark.parametrize("element", ["neurons", "heads", "hidden"])
def test_mean_ablation_sets_units_to_their_mean(tiny, element):
    from napari_lesion_align.core.lesions.importance import mean_activations

    lm, anat = tiny
    texts = {"EN": ["The little prince lived on a small planet with three volcanoes."] * 2}
    means = mean_activations(lm.model, lm.tokenizer, texts, element, anat)
    key = f"1.{element}"
    blk = anat.blocks[1]
    mask = torch.zeros(anat.n_heads if element == "heads" else means[key].shape[0],
                       dtype=torch.bool)
    mask[:2] = True
    cols = mask.repeat_interleave(blk.head_dim) if element == "heads" else mask
    mean = Lesion(element, {key: mask}, {"name": "m"}, mode="mean", means={key: means[key]})
    zero = Lesion(element, {key: mask}, {"name": "z"})
    seen = []
    with apply_lesion(lm.model, mean, anat):
        # registered after the lesion's hooks: sees what the rest of the model sees
        if element == "hidden":
            h = anat.module(blk.name).register_forward_hook(
                lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
        else:
            name = blk.linears["ffn_down" if element == "neurons" else "o"]
            h = anat.module(name).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        out_mean = _hidden(lm)
        h.remove()
    with apply_lesion(lm.model, zero, anat):
        out_zero = _hidden(lm)
    x = seen[0][..., cols]
    torch.testing.assert_close(x, means[key][cols].expand_as(x))
    assert not torch.allclose(out_mean[-1], out_zero[-1])
    with pytest.raises(LesionAlignError, match="no mean activations"):
        with apply_lesion(lm.model, Lesion(element, {key: mask}, {"name": "x"}, mode="mean"),
                          anat):
            pass
