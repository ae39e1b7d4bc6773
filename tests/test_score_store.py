"""Importance scores of large models go to disk one tensor at a time (core.lesions.scores).

The same float32 numbers on disk as in memory, so every selection is the same lesion; no
language's scores held whole while they are made; the temporary folder removed; too
little disk refused with the fix; the plan switches to disk past the size bound.
"""

from __future__ import annotations

import gc
import shutil
import weakref
from collections import namedtuple

import pytest
import torch

from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.lesions import importance as imp
from napari_lesion_align.core.lesions import scores as sc
from napari_lesion_align.core.model.anatomy import describe_model
from test_importance import TEXTS, llama  # noqa: F401 (the three languages' text, the tiny llama)



class SpyStore(sc.ScoreStore):
    """A store on disk that records, at every put, how many tensors put before are still
    alive somewhere (the function that makes the scores must not keep them)."""

    def __init__(self, folder):
        super().__init__(folder)
        self.refs: list = []
        self.alive_at_put: list[int] = []

    def put(self, language, key, tensor):
        gc.collect()
        self.alive_at_put.append(sum(r() is not None for r in self.refs))
        self.refs.append(weakref.ref(tensor))
        super().put(language, key, tensor)


def _same_lesion(a, b) -> bool:
    return a.masks.keys() == b.masks.keys() and all(a.masks[k] == b.masks[k] for k in a.masks)


@pytest.mark.parametrize("method", ["gradxweight", "wanda"])
def test_scores_on_disk_are_the_scores_in_memory_and_never_held_whole(llama, tmp_path, method):
    folder, lm = llama
    anat = describe_model(lm.model)
    if method == "gradxweight":
        def run(**kw):
            return imp.gradxweight_scores(str(folder), lm.tokenizer, TEXTS, **kw)
    else:
        def run(**kw):
            return imp.wanda_scores(lm.model, lm.tokenizer, TEXTS, anat, **kw)
    mem = run()
    spy = SpyStore(tmp_path / "s")
    disk = run(store=spy)
    assert disk is spy and list(disk) == list(mem) == list(TEXTS)
    n_keys = len(mem["EN"])
    assert len(spy.alive_at_put) == 3 * n_keys
    # no score tensor outlives its put: a language's scores are never all in memory
    assert max(spy.alive_at_put) == 0, spy.alive_at_put
    assert len(list((tmp_path / "s").rglob("*.npy"))) == 3 * n_keys
    for lang in TEXTS:
        assert list(disk[lang]) == list(mem[lang])
        for k, v in mem[lang].items():
            got = disk[lang][k]
            assert got.dtype == v.dtype == torch.float32
            assert torch.equal(got, v), (lang, k)
    # every selection is the same lesion from either store (shared, specific, units)
    ranks = spy.beside("ranks")  # the percentile ranks on disk too, none kept in memory
    for selection in ("shared", "specific:FR", "specific:ZH"):
        want = imp.select(mem, selection, 5.0)
        assert _same_lesion(want, imp.select(disk, selection, 5.0))
        assert _same_lesion(want, imp.select(disk, selection, 5.0, rank_cache=ranks))
    assert sorted(ranks) == sorted(TEXTS) and all(len(ranks[L]) == n_keys for L in TEXTS)
    assert ranks.folder.parent == spy.folder
    for element in ("neurons", "heads"):
        um = {L: imp.unit_scores(s, element, anat) for L, s in mem.items()}
        ud = {L: imp.unit_scores(s, element, anat) for L, s in disk.items()}
        assert all(torch.equal(um[L][k], ud[L][k]) for L in um for k in um[L])


def test_a_temporary_store_is_removed_and_refused_without_disk(tmp_path, monkeypatch):
    s = sc.ScoreStore.temporary(parent=str(tmp_path))
    s.put("EN", "0.q", torch.ones(3, 4))
    where = s.folder
    assert where.is_dir() and where.parent == tmp_path
    assert torch.equal(s["EN"]["0.q"], torch.ones(3, 4))
    s.close()
    assert not where.exists() and len(s) == 0
    # dropped without close: removed when collected
    s = sc.ScoreStore.temporary(parent=str(tmp_path))
    s.put("EN", "0.q", torch.ones(2))
    where = s.folder
    del s
    gc.collect()
    assert not where.exists()
    # too little free disk: a clear error naming the folder, the need and the fix
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(sc.shutil, "disk_usage", lambda p: Usage(10, 10, 2**30))
    with pytest.raises(LesionAlignError, match=r"need 30\.0 GiB.*1\.0 GiB are free.*TMPDIR"):
        sc.ScoreStore.temporary(need_bytes=30 * 2**30, parent=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_unknown_scores_are_a_key_error(tmp_path):
    for s in (sc.ScoreStore(), sc.ScoreStore(tmp_path / "d")):
        s.put("EN", "0.q", torch.zeros(2))
        with pytest.raises(KeyError):
            s["FR"]
        with pytest.raises(KeyError):
            s.get("EN", "1.q")


def test_the_store_is_chosen_by_size(monkeypatch, tmp_path):
    monkeypatch.setattr(sc.tempfile, "gettempdir", lambda: str(tmp_path))
    assert not sc.store_for(1000, 3).on_disk
    # 7B: ~6.5e9 lesionable weights, 26 GB of float32 scores per language
    assert sc.scores_bytes(6_500_000_000, 3) == 78_000_000_000
    big = sc.store_for(sc.SCORES_IN_MEMORY_BYTES // 4 + 1, 1)
    assert big.on_disk and big.folder.parent == tmp_path
    big.close()


def test_the_plan_streams_scores_past_the_bound_and_makes_the_same_lesions(
        llama, tmp_path, monkeypatch):
    from napari_lesion_align.core.data.dataset import load_stimuli
    from napari_lesion_align.core.data.demo import demo_language_data
    from napari_lesion_align.core.lesions.plan import LesionPlan
    from napari_lesion_align.core.run.config import config_from_dict

    _, lm = llama
    langs = {d.code: d for d in demo_language_data()}
    stimuli = {c: load_stimuli(langs[c]) for c in ("EN", "FR")}
    cfg = config_from_dict({"data": {"kind": "demo"}, "lesions": {
        "k_percent": 5.0, "max_tokens": 200, "random_controls": 1, "method": "wanda"}})
    plan = LesionPlan.from_config(cfg.lesions, list(stimuli), cfg.seed)
    mem = plan.build(lm, stimuli)
    made = []
    real = sc.ScoreStore.temporary.__func__

    def spy(cls, *a, **kw):
        s = real(cls, *a, parent=str(tmp_path), **{k: v for k, v in kw.items()
                                                    if k != "parent"})
        made.append(s)
        return s

    monkeypatch.setattr(sc, "SCORES_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(sc.ScoreStore, "temporary", classmethod(spy))
    disk = plan.build(lm, stimuli)
    assert len(made) == 1 and made[0].on_disk
    # the specific selections' percentile ranks went to disk beside the scores
    assert any((made[0].folder / "_ranks").rglob("*.npy"))
    assert [c.label for c in disk] == [c.label for c in mem]
    for a, b in zip(mem, disk):
        if a.lesion is not None:
            assert _same_lesion(a.lesion, b.lesion), a.label
    made.clear()
    del disk
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the scores' folder went with the plan's builder
    assert shutil.disk_usage(tmp_path).free > 0
