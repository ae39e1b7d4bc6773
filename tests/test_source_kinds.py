"""The widgets' session asks the registry of data sources (core/run/sources.py: ``KINDS``)
what a kind of source brings -- its languages, its own config, the tables it starts from --
and never asks for the demo by name. No Qt: the session is Qt-free."""

from __future__ import annotations

import ast
from pathlib import Path

from napari_lesion_align._widgets._state import DEFAULT_LESIONS, Session
from napari_lesion_align.core.data import demo
from napari_lesion_align.core.run import sources
from napari_lesion_align.core.run.config import demo_config

STATE = Path(__file__).resolve().parents[1] / "src" / "napari_lesion_align" / "_widgets" / \
    "_state.py"


def test_a_new_built_in_kind_needs_no_change_to_the_session(monkeypatch):
    made = []

    def toy_config(tables, *, seed=0, lesions=None, **overrides):
        made.append((tables, seed, lesions, overrides))
        return "the toy's config"

    toy = sources.SourceKind("toy", "Toy (built-in)", languages=("DE", "IT"),
                             config=toy_config,
                             tables={"data": {"kind": "toy", "toy": {"n_subjects": 2}}})
    monkeypatch.setitem(sources.KINDS, "toy", toy)
    s = Session()
    s.set_data(toy.start_tables())
    s.seed = 7
    assert s.source is toy and s.is_demo and s.languages() == ["DE", "IT"]
    assert s.build_config() == "the toy's config"
    tables, seed, lesions, overrides = made[0]
    assert tables == {"data": {"kind": "toy", "toy": {"n_subjects": 2}}} and seed == 7
    assert lesions == DEFAULT_LESIONS and overrides == {"model": s.model}
    # start_tables is a copy: the session's edits never reach the registry
    s.data["data"]["toy"]["n_subjects"] = 9
    assert toy.tables["data"]["toy"]["n_subjects"] == 2


def test_a_kind_of_files_is_read_from_its_tables():
    s = Session()
    s.set_data({"data": {"kind": "regions"}, "languages": {"EN": {}, "FR": {}}})
    assert s.source is sources.KINDS["regions"] and not s.is_demo
    assert s.languages() == ["EN", "FR"]
    s.set_data({"data": {"kind": "demo"}}, data_file="study.toml")  # the file decides
    assert s.source is None and not s.is_demo


def test_the_session_starts_from_the_default_kind_the_demo():
    s = Session()
    assert s.source is sources.DEFAULT_KIND and s.is_demo
    assert s.languages() == list(demo.LANGUAGES)
    assert DEFAULT_LESIONS == dict(demo.GENERATOR_LESIONS, enabled=True,
                                   random_controls=demo.DEMO_RANDOM_CONTROLS)
    s.data["data"]["demo"]["n_subjects"] = 2
    s.lesions = {}
    assert s.build_config() == demo_config(n_subjects=2, seed=0, lesions=False,
                                           model=s.model)
    assert (sources.DEFAULT_KIND.shipped_result / "result.json").is_file()


def test_the_session_names_no_kind_of_source():
    """No string constant in _state.py names a kind (``"demo"``, ``"volume"``, ...)."""
    kinds = set(sources.KINDS)
    named = [n.value for n in ast.walk(ast.parse(STATE.read_text(encoding="utf-8")))
             if isinstance(n, ast.Constant) and n.value in kinds]
    assert named == []
