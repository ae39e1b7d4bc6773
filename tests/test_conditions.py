"""LesionPlan.build: the analysis conditions built from the [lesions] config.

Per tiny family (xlm-roberta, bert, llama) and element (weights, neurons, heads): the
labels, the size of every selection (k % per tensor / layer), the random controls
(same count per mask key, other positions, reproducible), the distinctness of the
selections, and that every lesion changes the model and is undone bit for bit. Then the
manual layer sweep and saved lesion files.
"""

from __future__ import annotations

import pytest
import torch

from napari_lesion_align.core.model.anatomy import describe_model
from napari_lesion_align.core.run.config import config_from_dict
from napari_lesion_align.core.data.dataset import load_stimuli
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.lesions.masks import IndexMask, Lesion, apply_lesion
from napari_lesion_align.core.model.loading import parameters_hash
from napari_lesion_align.core.lesions.plan import LesionPlan
from napari_lesion_align.core.data.demo import demo_language_data
from tiny_models import load_tiny, make_tiny_model

torch.set_num_threads(1)

FAMS = ("xlm-roberta", "bert", "llama")
N_LAYERS, HIDDEN, HEADS, FFN = 3, 32, 4, 64
K = 10.0  # % : 102 of 1024, 205 of 2048, 6 of 64 neurons, 0.4 -> at least 1 of 4 heads
MAX_TOKENS = 300
LABELS = ["intact", "shared", "sharedRandom", "specificEN", "specificENRandom",
          "specificFR", "specificFRRandom"]
SENTENCE = "The little prince lived on a planet barely bigger than himself."


def _expected(n_units: int, k: float = K) -> int:
    """top_k_mask's count: round(n * k / 100), at least one when k > 0."""
    return max(int(round(n_units * k / 100.0)), 1)


@pytest.fixture(scope="module")
def stimuli():
    langs = {d.code: d for d in demo_language_data()}
    return {code: load_stimuli(langs[code]) for code in ("EN", "FR")}


_MODELS: dict = {}


def _model(fam, tmp_path_factory):
    """The family's tiny model and anatomy, made once per module."""
    if fam not in _MODELS:
        folder = make_tiny_model(tmp_path_factory.mktemp(fam) / "m", fam, n_layers=N_LAYERS,
                                 hidden=HIDDEN, heads=HEADS, ffn=FFN)
        lm = load_tiny(folder)
        _MODELS[fam] = (lm, describe_model(lm.model))
    return _MODELS[fam]


@pytest.fixture(scope="module", params=FAMS)
def tiny(request, tmp_path_factory):
    torch.set_num_threads(1)
    fam = request.param
    return (fam,) + _model(fam, tmp_path_factory)


def _config(seed=0, **lesions):
    # one random draw per lesion (the draws themselves: tests/test_controls.py)
    d = {"lesions": dict(dict(k_percent=K, max_tokens=MAX_TOKENS, random_controls=1),
                         **lesions)}
    return config_from_dict({"data": {"kind": "demo"}, "seed": seed, **d})


def build_conditions(config, lm, stimuli):
    """The plan of ``config`` on the languages of ``stimuli``, built on ``lm``."""
    plan = LesionPlan.from_config(config.lesions, list(stimuli), config.seed)
    return plan.build(lm, stimuli)


_BUILT: dict = {}


def _build(lm, stimuli, fam, seed=0, **lesions):
    key = (fam, seed, tuple(sorted(lesions.items())))
    if key not in _BUILT:
        _BUILT[key] = build_conditions(_config(seed, **lesions), lm, stimuli)
    return _BUILT[key]


def _last_hidden(lm):
    enc = lm.tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        return lm.model(**enc).last_hidden_state.clone()


def _same_masks(a: Lesion, b: Lesion) -> bool:
    return a.masks.keys() == b.masks.keys() and all(a.masks[k] == b.masks[k] for k in a.masks)


def _unit_counts(anat, element):
    """{mask key: number of units in the tensor / layer} for an importance element."""
    if element == "weights":
        return {f"{b.index}.{r}": anat.module(n).weight.numel()
                for b in anat.blocks for r, n in b.linears.items()}
    if element == "neurons":
        return {f"{b.index}.neurons": anat.intermediate_size for b in anat.blocks}
    return {f"{b.index}.heads": b.n_heads for b in anat.blocks}


CASES = [(e, "auto") for e in ("weights", "neurons", "heads")]


# --------------------------------------------------------------------------- importance
@pytest.mark.parametrize("element,method", CASES + [("neurons", "wanda")])
def test_labels_kinds_and_methods(tiny, stimuli, element, method):
    fam, lm, anat = tiny
    if method == "wanda" and fam != "xlm-roberta":
        pytest.skip("wanda neuron scores: one family is enough")
    conds = _build(lm, stimuli, fam, element=element, method=method)
    assert [c.label for c in conds] == LABELS
    assert conds[0].lesion is None and conds[0].kind == "intact"
    for c in conds[1:]:
        assert c.lesion.element == element and c.lesion.mode == "zero"
        if c.label.endswith("Random"):
            assert c.kind == "random" and c.control_of == c.label[:-len("Random")]
        else:
            assert c.kind == "selection" and c.control_of is None
            assert c.lesion.spec["model_hash"] == lm.weights_hash
    # auto: LAPE for neurons; gradient x weight where the folder has an LM head (the tiny
    # decoders are saved as *ForCausalLM), else wanda (the tiny encoders have no head)
    want = {"auto": ("lape" if element == "neurons" else
                     "gradxweight" if fam == "llama" else "wanda")}.get(method, method)
    assert {c.lesion.spec["method"] for c in conds[1:]} == {want}


@pytest.mark.parametrize("element,method", CASES + [("neurons", "wanda")])
def test_selection_sizes_are_k_percent_per_tensor(tiny, stimuli, element, method):
    fam, lm, anat = tiny
    if method == "wanda" and fam != "xlm-roberta":
        pytest.skip("wanda neuron scores: one family is enough")
    conds = {c.label: c for c in _build(lm, stimuli, fam, element=element, method=method)}
    units = _unit_counts(anat, element)
    lape = conds["shared"].lesion.spec["method"] == "lape"
    for label in ("shared", "specificEN", "specificFR"):
        les = conds[label].lesion
        assert set(les.masks) == set(units), label
        for key, n in units.items():
            m = les.masks[key]
            assert isinstance(m, IndexMask) and m.numel() == n
            got = int(m.sum())
            if lape and label != "shared":
                # LAPE-specific: at most k %, only neurons most active in the language
                assert got <= _expected(n), (label, key, got)
            else:
                assert got == _expected(n), (label, key, got, n)
        assert les.n_elements > 0


def test_weights_lesions_touch_only_attention_and_ffn_matrices(tiny, stimuli):
    fam, lm, anat = tiny
    conds = _build(lm, stimuli, fam, element="weights", method="auto")
    allowed = set(anat.weight_names())
    assert allowed and not any(x in n for n in allowed for x in ("embed", "norm", "lm_head"))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    les = conds[1].lesion  # shared
    with apply_lesion(lm.model, les, anat):
        after = lm.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        zeroed = sum(int(((before[k] != 0) & (after[k] == 0)).sum()) for k in changed)
    assert changed and changed <= allowed
    # every lesioned entry was nonzero in these random models
    assert zeroed == les.n_elements


@pytest.mark.parametrize("element", ["weights", "neurons", "heads"])
def test_random_controls_match_size_not_positions(tiny, stimuli, element):
    fam, lm, anat = tiny
    conds = {c.label: c for c in _build(lm, stimuli, fam, element=element, method="auto")}
    for label in ("shared", "specificEN", "specificFR"):
        les, rnd = conds[label].lesion, conds[label + "Random"].lesion
        assert rnd.masks.keys() == les.masks.keys()
        for key in les.masks:
            assert rnd.masks[key].shape == les.masks[key].shape
            assert int(rnd.masks[key].sum()) == int(les.masks[key].sum()), (label, key)
        assert not _same_masks(rnd, les), label
        if element == "weights":  # hundreds of entries per tensor: never the same set
            for key in les.masks:
                assert rnd.masks[key] != les.masks[key], (label, key)
        assert rnd.spec["matched_to"] == les.name
    # the three controls are drawn with different seeds
    r = [conds[lab].lesion for lab in ("sharedRandom", "specificENRandom", "specificFRRandom")]
    assert len({c.spec["seed"] for c in r}) == 3


@pytest.mark.parametrize("element", ["weights", "neurons", "heads"])
def test_conditions_are_reproducible_with_the_same_seed(tiny, stimuli, element):
    fam, lm, anat = tiny
    a = _build(lm, stimuli, fam, element=element, method="auto")
    b = build_conditions(_config(0, element=element, method="auto"), lm, stimuli)
    assert [c.label for c in a] == [c.label for c in b]
    for x, y in zip(a[1:], b[1:]):
        assert _same_masks(x.lesion, y.lesion), x.label
        assert x.key == y.key
    # another seed: the importance selections stay, the random controls move
    c = build_conditions(_config(7, element=element, method="auto"), lm, stimuli)
    for x, y in zip(a[1:], c[1:]):
        if x.kind == "selection":
            assert _same_masks(x.lesion, y.lesion), x.label
    assert any(not _same_masks(x.lesion, y.lesion) for x, y in zip(a[1:], c[1:])
               if x.kind == "random")


@pytest.mark.parametrize("element,method", CASES + [("neurons", "wanda")])
def test_specific_selections_differ(tiny, stimuli, element, method):
    fam, lm, anat = tiny
    if method == "wanda" and fam != "xlm-roberta":
        pytest.skip("wanda neuron scores: one family is enough")
    conds = {c.label: c.lesion for c in _build(lm, stimuli, fam, element=element, method=method)}
    assert not _same_masks(conds["specificEN"], conds["specificFR"])
    assert not _same_masks(conds["specificEN"], conds["shared"])
    assert not _same_masks(conds["specificFR"], conds["shared"])
    if element != "heads":  # at least one element apart in every tensor
        for key in conds["shared"].masks:
            assert conds["specificEN"].masks[key] != conds["specificFR"].masks[key]


@pytest.mark.parametrize("element,method", CASES + [("neurons", "wanda")])
def test_every_lesion_changes_the_model_and_is_undone_exactly(tiny, stimuli, element, method):
    fam, lm, anat = tiny
    if method == "wanda" and fam != "xlm-roberta":
        pytest.skip("wanda neuron scores: one family is enough")
    conds = _build(lm, stimuli, fam, element=element, method=method)
    h0 = parameters_hash(lm.model)
    assert h0 == lm.weights_hash  # building did not change the model
    ref = _last_hidden(lm)
    for c in conds:
        with apply_lesion(lm.model, c.lesion, anat):
            out = _last_hidden(lm)
        if c.lesion is None:
            assert torch.equal(out, ref)
        else:
            assert (out - ref).abs().max() > 1e-6, c.label
        assert parameters_hash(lm.model) == h0, c.label
        assert torch.equal(_last_hidden(lm), ref), c.label


def test_gradxweight_on_the_causal_lm(stimuli, tmp_path_factory):
    """Explicit gradient x weight on the tiny llama (saved with its causal-LM head)."""
    fam = "llama"
    lm, anat = _model(fam, tmp_path_factory)
    conds = build_conditions(_config(element="weights", method="gradxweight"), lm, stimuli)
    assert [c.label for c in conds] == LABELS
    assert {c.lesion.spec["method"] for c in conds[1:]} == {"gradxweight"}
    wanda = build_conditions(_config(element="weights", method="wanda"), lm, stimuli)
    # a different importance measure: a different shared selection, the same sizes
    assert not _same_masks(conds[1].lesion, wanda[1].lesion)
    assert conds[1].lesion.per_layer() == wanda[1].lesion.per_layer()
    ref = _last_hidden(lm)
    with apply_lesion(lm.model, conds[3].lesion, anat):
        assert (_last_hidden(lm) - ref).abs().max() > 1e-6
    assert parameters_hash(lm.model) == lm.weights_hash


def test_the_plan_bounds_the_gradient_passes_by_the_importance_token_budget(
        stimuli, tmp_path_factory, monkeypatch):
    """LesionBuilder asks importance.importance_batch_tokens (the one owner of the budget)
    and passes it to the gradient passes (which then hold that many tokens: tested in
    test_large_models); the budget is recorded in the lesion's spec."""
    from napari_lesion_align.core.lesions import importance as imp

    lm, _ = _model("llama", tmp_path_factory)
    seen = []
    real = imp.gradxweight_scores

    def spy(*args, **kw):
        seen.append(kw.get("max_batch_tokens"))
        return real(*args, **kw)

    monkeypatch.setattr(imp, "gradxweight_scores", spy)
    monkeypatch.setattr(imp, "importance_batch_tokens", lambda model, *a: 1)  # one window
    one = build_conditions(_config(element="weights", method="gradxweight"), lm, stimuli)
    assert seen == [1] and one[1].lesion.spec["batch_tokens"] == 1
    monkeypatch.setattr(imp, "importance_batch_tokens", lambda model, *a: 10**6)
    many = build_conditions(_config(element="weights", method="gradxweight"), lm, stimuli)
    assert seen == [1, 10**6] and many[1].lesion.spec["batch_tokens"] == 10**6
    # [lesions] importance_batch_tokens, set by a user short of memory, wins; the lesion is
    # the same (mean over windows whatever the batches) and so is the analysis' identity
    cfg = _config(element="weights", method="gradxweight", importance_batch_tokens=700)
    mine = build_conditions(cfg, lm, stimuli)
    assert seen == [1, 10**6, 700] and mine[1].lesion.spec["batch_tokens"] == 700
    assert mine[1].key == many[1].key == one[1].key
    from napari_lesion_align.core.run.store import identity

    base = _config(element="weights", method="gradxweight")
    assert identity(cfg)["fits"] == identity(base)["fits"]
    assert identity(base.replace(lesions=base.lesions.replace(k_percent=2.0)))["fits"] != \
        identity(base)["fits"]


def test_gradxweight_without_lm_head_is_a_clear_error(stimuli, tmp_path_factory):
    fam = "bert"
    lm, _ = _model(fam, tmp_path_factory)
    with pytest.raises(LesionAlignError, match="no language-modelling head"):
        build_conditions(_config(element="heads", method="gradxweight"), lm, stimuli)


# --------------------------------------------------------------------------- layer sweep
SWEEP_SIZE = {"neurons": FFN, "heads": HEADS, "hidden": HIDDEN, "layers": 1}


@pytest.mark.parametrize("indices", [(0, 3, 5), ()], ids=["explicit", "default"])
@pytest.mark.parametrize("sweep_element", ["neurons", "heads", "hidden", "layers"])
def test_layer_sweep(tiny, stimuli, sweep_element, indices):
    fam, lm, anat = tiny
    if fam == "bert" or (fam == "llama" and indices):
        pytest.skip("sweep: xlm-roberta (both index sets) and llama (default) suffice")
    if sweep_element == "heads" and indices:
        indices = (0, 3)
    # selections = []: no importance-based selection, only the sweep
    conds = _build(lm, stimuli, fam, selections=(), sweep=True, sweep_element=sweep_element,
                   sweep_indices=indices)
    controls = sweep_element != "layers"  # a skipped block has no random alternative
    want = []
    for b in range(N_LAYERS):
        want += [f"sweepL{b}"] + ([f"sweepL{b}Random"] if controls else [])
    assert [c.label for c in conds] == ["intact"] + want
    if sweep_element == "layers":
        n = 1
    else:
        n = len(indices) if indices else len(range(0, SWEEP_SIZE[sweep_element], 10))
    part = {"neurons": "neurons", "heads": "heads", "hidden": "hidden", "layers": "layer"}
    h0 = parameters_hash(lm.model)
    ref = _last_hidden(lm)
    step = 2 if controls else 1
    for b in range(N_LAYERS):
        c = conds[1 + step * b]
        r = conds[2 + step * b] if controls else c
        assert c.kind == "sweep" and c.lesion.spec["layer"] == b
        if controls:
            assert r.kind == "random" and r.control_of == c.label
        assert c.lesion.element == sweep_element
        assert c.lesion.per_layer() == {b: n} == r.lesion.per_layer()
        assert list(c.lesion.masks) == [f"{b}.{part[sweep_element]}"]
        if sweep_element != "layers":
            got = c.lesion.masks[f"{b}.{part[sweep_element]}"].indices.tolist()
            assert got == (list(indices) if indices
                           else list(range(0, SWEEP_SIZE[sweep_element], 10)))
        with apply_lesion(lm.model, c.lesion, anat):
            assert (_last_hidden(lm) - ref).abs().max() > 1e-6, c.label
        assert parameters_hash(lm.model) == h0
    if sweep_element in ("neurons", "hidden"):  # enough units for the control to move
        assert all(not _same_masks(conds[1 + 2 * b].lesion, conds[2 + 2 * b].lesion)
                   for b in range(N_LAYERS))


def test_layer_skip_sweep_has_no_random_control(stimuli, tmp_path_factory):
    """Skipping a whole block has no size-matched random alternative in that block: a
    'layers' sweep runs without controls (a control would be the lesion itself)."""
    fam = "xlm-roberta"
    lm, _ = _model(fam, tmp_path_factory)
    conds = _build(lm, stimuli, fam, selections=(), sweep=True, sweep_element="layers",
                   sweep_indices=())
    assert [c.kind for c in conds[1:]] == ["sweep"] * (len(conds) - 1) and len(conds) > 1
    assert len({c.key for c in conds}) == len(conds)


# --------------------------------------------------------------------------- lesion files
def test_saved_lesion_files_round_trip(tiny, stimuli, tmp_path):
    fam, lm, anat = tiny
    if fam == "bert":
        pytest.skip("files: xlm-roberta and llama suffice")
    src = {c.label: c.lesion for c in _build(lm, stimuli, fam, element="weights", method="auto")}
    heads = {c.label: c.lesion for c in _build(lm, stimuli, fam, element="heads", method="auto")}
    src["shared"].save(tmp_path / "my_shared")
    heads["specificFR"].save(tmp_path / "fr-heads")
    cfg = config_from_dict({"data": {"kind": "demo"}, "lesions": {
        "selections": [], "files": ["my_shared.json", "fr-heads.json"],
        "random_controls": 1}}, base=tmp_path)
    conds = build_conditions(cfg, lm, stimuli)
    assert [c.label for c in conds] == ["intact", "myshared", "mysharedRandom", "frheads",
                                        "frheadsRandom"]
    by = {c.label: c for c in conds}
    assert by["myshared"].kind == "file" and by["mysharedRandom"].control_of == "myshared"
    for label, orig in (("myshared", src["shared"]), ("frheads", heads["specificFR"])):
        les = by[label].lesion
        assert les.element == orig.element and _same_masks(les, orig)
        assert les.spec["model_hash"] == lm.weights_hash
        rnd = by[label + "Random"].lesion
        assert {k: int(m.sum()) for k, m in rnd.masks.items()} == \
            {k: int(m.sum()) for k, m in les.masks.items()}
        assert not _same_masks(rnd, les)
    # the file condition is the same lesion: same cache key, same effect on the model
    assert by["myshared"].key == next(c.key for c in _build(
        lm, stimuli, fam, element="weights", method="auto") if c.label == "shared")
    ref = _last_hidden(lm)
    with apply_lesion(lm.model, src["shared"], anat):
        a = _last_hidden(lm)
    with apply_lesion(lm.model, by["myshared"].lesion, anat):
        b = _last_hidden(lm)
    assert torch.equal(a, b) and not torch.equal(a, ref)
    assert parameters_hash(lm.model) == lm.weights_hash


def test_lesion_file_of_another_model_is_a_clear_error(stimuli, tmp_path, tmp_path_factory):
    lm, anat = _model("xlm-roberta", tmp_path_factory)
    fam = "xlm-roberta"
    other = load_tiny(make_tiny_model(tmp_path / "other", fam, n_layers=N_LAYERS, hidden=HIDDEN,
                                      heads=HEADS, ffn=FFN, seed=1))
    assert other.weights_hash != lm.weights_hash
    theirs = build_conditions(_config(element="neurons", method="wanda"), other, stimuli)
    theirs[1].lesion.save(tmp_path / "theirs")
    cfg = _config(selections=[], files=[str(tmp_path / "theirs.json")])
    with pytest.raises(LesionAlignError, match=r"made for model weights .*make it again"):
        build_conditions(cfg, lm, stimuli)
    # the same file is fine on the model it was made for
    assert [c.label for c in build_conditions(cfg, other, stimuli)] == \
        ["intact", "theirs", "theirsRandom"]


def test_lesions_that_make_nothing_are_a_clear_error_when_read(stimuli, tmp_path_factory):
    """[lesions] on with no selection, manual lesion, sweep or file used to run the intact
    model alone, silently; hidden / layers are not importance elements."""
    lm, _ = _model("xlm-roberta", tmp_path_factory)
    with pytest.raises(LesionAlignError, match="makes no lesion"):
        _config(selections=[])
    for element in ("hidden", "layers"):
        with pytest.raises(LesionAlignError, match=rf"element = '{element}'.*lesions\.manual"):
            _config(element=element)
    # with a sweep there is a lesion
    conds = build_conditions(_config(selections=[], sweep=True, sweep_indices=[0]), lm,
                             stimuli)
    assert [c.label for c in conds][:3] == ["intact", "sweepL0", "sweepL0Random"]


def test_lesion_file_named_like_a_selection_is_a_clear_error(tiny, stimuli, tmp_path):
    fam, lm, anat = tiny
    if fam != "xlm-roberta":
        pytest.skip("one family")
    src = _build(lm, stimuli, fam, element="neurons", method="auto")
    src[1].lesion.save(tmp_path / "shared")
    cfg = _config(element="neurons", files=[str(tmp_path / "shared.json")])
    with pytest.raises(LesionAlignError, match=r"share the label\(s\) \['shared'"):
        build_conditions(cfg, lm, stimuli)


def test_a_file_named_like_a_selection_stays_a_file_condition(tiny, stimuli, tmp_path):
    """Conditions are linked by type: a lesion file named shared.json is a file condition,
    not the shared lesion of the category maps (which only selections make)."""
    fam, lm, anat = tiny
    if fam != "xlm-roberta":
        pytest.skip("one family")
    src = _build(lm, stimuli, fam, element="neurons", method="auto")
    src[1].lesion.save(tmp_path / "shared")
    cfg = _config(selections=[], files=[str(tmp_path / "shared.json")])
    plan = LesionPlan.from_config(cfg.lesions, list(stimuli), cfg.seed)
    conds = plan.build(lm, stimuli)
    assert [(c.label, c.kind, c.control_of) for c in conds] == [
        ("intact", "intact", None), ("shared", "file", None),
        ("sharedRandom", "random", "shared")]
    assert plan.selection_specs([c.spec for c in conds]) == {}
    # with selections, the categories use the selection, found by kind
    plan2 = LesionPlan.from_config(_config(element="neurons").lesions, ["EN", "FR"], 0)
    specs = plan2.specs(N_LAYERS)
    assert plan2.selection_specs(specs) == {
        "lesion": ("shared", {"EN": "specificEN", "FR": "specificFR"}),
        "random": ("sharedRandom", {"EN": "specificENRandom", "FR": "specificFRRandom"})}


# --------------------------------------------------------------------------- plan sizes
SIZE_CASES = [("weights", "wanda"), ("weights", "auto"), ("neurons", "auto"),
              ("neurons", "wanda"), ("heads", "wanda"), ("heads", "auto")]


@pytest.mark.parametrize("element,method", SIZE_CASES)
def test_plan_sizes_equal_the_built_lesions(tiny, stimuli, tmp_path, element, method):
    """What the Model & lesion widget previews (LesionPlan.sizes, from the anatomy alone)
    is what build() makes, for every element x method, manual lesions, sweeps and files."""
    fam, lm, anat = tiny
    saved = _build(lm, stimuli, fam, element="heads", method="wanda")[3].lesion
    saved.save(tmp_path / "saved")
    cfg = _config(element=element, method=method, sweep=True, sweep_element="neurons",
                  sweep_indices=[1, 5, 9],
                  files=[str(tmp_path / "saved.json")],
                  manual=[{"name": "units", "element": "hidden", "indices": {"0": [1, 2, 3],
                                                                             "2": [7]}},
                          {"name": "skip", "element": "layers", "indices": {"1": []}}])
    plan = LesionPlan.from_config(cfg.lesions, list(stimuli), cfg.seed)
    sizes = {spec.label: (per, el) for spec, per, el in plan.sizes(anat)}
    built = {c.label: c for c in plan.build(lm, stimuli)}
    assert set(sizes) == {lbl for lbl, c in built.items() if c.kind not in ("intact", "random")}
    for label, (per, el) in sizes.items():
        les = built[label].lesion
        assert el == les.element, label
        got = les.per_layer()
        if built[label].lesion.spec.get("method") == "lape" and label.startswith("specific"):
            assert all(got.get(b, 0) <= n for b, n in per.items()), label  # at most k %
        else:
            assert got == per, (label, got, per)
    for c in built.values():  # random controls: the size of what they control
        if c.kind == "random":
            assert c.lesion.per_layer() == built[c.control_of].lesion.per_layer()
    assert sizes["units"][0] == {0: 3, 2: 1} and sizes["skip"][0] == {1: 1}
    assert sizes["sweepL2"][0] == {2: 3}

