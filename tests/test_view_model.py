"""The Qt-free view model under the widgets (no window): one threshold rule per statistic
(core.display) checked against the tiny result's planted significance, the slider in the
statistic's units, layer names that carry their result, and no import circle between the
widget helpers."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_lesion_align import _view_model as vm
from napari_lesion_align.core.analysis import display
from napari_lesion_align.core.base.errors import LesionAlignError
from test_figures import make_tiny_result

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_lesion_align"


def _with_lesions(result, **lesions):
    prov = dict(result.provenance)
    prov["config"] = {"lesions": lesions}
    return dataclasses.replace(result, provenance=prov)


# --------------------------------------------------------------------------- thresholds
def test_t_threshold_is_the_group_tests_corrected_significance():
    """The tiny result plants q = 0.001, t = 5 where the drop is significant and q = 0.9,
    t = 0.1 elsewhere: the t threshold is 5 (every significant voxel shown, no other),
    stated with its correction and degrees of freedom (3 subjects: 2 df)."""
    result = make_tiny_result()
    th = display.default_threshold(result, "t", "EN", "shared")
    t = np.abs(result.group_maps[("EN", "shared", "t")])
    q = result.group_maps[("EN", "shared", "q")]
    assert th.value == pytest.approx(float(t[q < 0.05].min())) == pytest.approx(5.0)
    assert (t[q >= 0.05] < th.value).all()
    assert (th.correction, th.alpha, th.df) == ("fdr", 0.05, 2)
    assert th.text == "t ≥ 5 · q < 0.05 FDR · 2 df"
    # no significant voxel: a threshold above every |t|, and the text says so
    none = display.default_threshold(make_tiny_result(shared=False), "t", "EN", "shared")
    assert none.empty and none.value > 0.1 and "no voxel passes" in none.text


def test_uncorrected_results_threshold_on_p_and_say_so():
    result = _with_lesions(make_tiny_result(), alpha=0.01, correction="none")
    th = display.default_threshold(result, "t", "EN", "shared")
    assert th.correction == "none" and th.text == "t ≥ 5 · p < 0.01 uncorrected · 2 df"
    p = display.default_threshold(result, "p", "EN", "shared")
    assert p.value == 0.01 and p.text == "p < 0.01 (uncorrected)"
    assert display.default_threshold(result, "q").text == "q < 0.01 (FDR)"


def test_without_the_test_maps_t_uses_the_critical_value():
    """A t map without its p / q maps: the one-sided critical t at alpha, n - 1 df
    (scipy's Student t: 2.92 for 2 df at 0.05)."""
    from scipy.stats import t as student

    result = make_tiny_result()
    result = dataclasses.replace(result, group_maps={
        k: v for k, v in result.group_maps.items() if k[2] == "t"})
    th = display.default_threshold(result, "t", "EN", "shared")
    assert th.value == pytest.approx(student.ppf(0.95, 2)) == pytest.approx(2.92, abs=0.01)
    assert th.text == "t ≥ 2.92 · p < 0.05 uncorrected · 2 df"


@pytest.mark.parametrize("stat,value", [("r", 0.1), ("deltar", 0.02), ("reldrop", 0.1),
                                        ("lpi", 0.2)])
def test_effect_sizes_have_a_stated_default(stat, value):
    th = display.default_threshold(make_tiny_result(), stat)
    assert th.value == value and th.correction is None
    assert th.text.endswith("(display default, no test)")
    assert display.statistic(stat).rule == "fixed"


def test_a_moved_threshold_names_the_tests():
    th = display.default_threshold(make_tiny_result(), "t", "EN", "shared")
    assert display.describe("t", 6.0, th) == "t ≥ 6 (the test: t ≥ 5 · q < 0.05 FDR · 2 df)"


def test_one_table_one_owner():
    """The layers' kinds and labels are the table's (no second list)."""
    from napari_lesion_align import _layers

    assert _layers.DIVERGING == display.DIVERGING and _layers.SEQUENTIAL == display.SEQUENTIAL
    assert _layers.STAT_LABELS["deltar"] == display.statistic("deltar").label == "Δr"
    with pytest.raises(LesionAlignError, match="colour kind"):
        display.map_colours("rainbow")


# --------------------------------------------------------------------------- slider
@pytest.mark.parametrize("stat,limit", [("t", 7.3), ("r", 0.4), ("deltar", 0.0937),
                                        ("q", 1.0), ("reldrop", 0.6)])
def test_the_slider_moves_in_the_statistics_units_on_round_steps(stat, limit):
    scale = display.slider_scale(stat, limit, display.default_threshold(None, stat).value)
    values = [scale.value(i) for i in range(scale.positions + 1)]
    assert values[0] == scale.minimum and values[-1] == pytest.approx(scale.maximum)
    # every value is a multiple of a 1-2-5 step, printed without binary noise (no 0.101)
    mantissa = scale.step / 10 ** np.floor(np.log10(scale.step))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)
    assert all(len(repr(v).split(".")[-1]) <= 4 for v in values)
    for i in (0, 1, scale.positions // 2, scale.positions):
        assert scale.position(values[i]) == i
    if stat in ("p", "q"):
        assert scale.minimum > 0 and scale.maximum <= 0.1
    else:
        assert scale.maximum >= limit - 1e-9


# --------------------------------------------------------------------------- the model
def test_result_view_names_thresholds_and_colours():
    result = make_tiny_result()
    a = vm.ResultView(result, "key-a", "res0")
    b = vm.ResultView(result, "key-b", "res1")
    assert a.view == {"subject": "group", "language": "EN", "condition": "intact",
                      "stat": "r"}
    assert a.layer_name() == "r EN intact (group) [res0]" != b.layer_name()
    assert a.colormap_kind() == "magnitude"  # the category overlay is on
    a.categories_shown = False
    assert a.colormap_kind() == "diverging"
    a.choose(stat="t", condition="shared")
    assert a.threshold == pytest.approx(5.0)
    assert a.threshold_text() == "t ≥ 5 · q < 0.05 FDR · 2 df"
    a.set_threshold(6.0)
    assert a.threshold == 6.0 and a.threshold_text().startswith("t ≥ 6 (the test")
    a.set_threshold(None)
    assert a.threshold == pytest.approx(5.0)
    data, kw, kind = a.layer_tuple()
    assert kind == "image" and kw["name"] == "t EN shared (group) [res0]"
    assert kw["metadata"][vm.RESULT_KEY] == "key-a" and kw["metadata"][vm.VIEW_TAG]
    assert kw["metadata"]["threshold"] == pytest.approx(5.0)
    with pytest.raises(LesionAlignError, match="language 'DE' is not in this result"):
        a.choose(language="DE")
    with pytest.raises(LesionAlignError, match="not available"):
        a.choose(subject="01", stat="t")
    assert a.view["language"] == "EN"  # a refused choice changes nothing
    assert [t for _, t, _ in a.legend()] == ["shared", "EN", "FR"]
    assert a.categories_text() == "categories: significant drops, q < 0.05 FDR · 2 df"


def test_what_a_result_opens_with_is_owned_and_visible():
    result = make_tiny_result()
    tuples = vm.result_tuples(result, key="k", label="res0", with_template=True)
    names = [kw["name"] for _, kw, _ in tuples]
    assert names == ["MNI152 template (2 mm)", "r EN intact (group) [res0]",
                     "categories lesion [res0]"]
    assert all(kw.get("visible", True) for _, kw, _ in tuples)  # nothing hidden
    assert vm.owner_of(tuples[0][1]["metadata"]) is None  # the template: no result's
    assert all(vm.owner_of(kw["metadata"]) == "k" for _, kw, _ in tuples[1:])
    assert vm.unique_label("res0", {"res0", "res0 (2)"}) == "res0 (3)"


# --------------------------------------------------------------------------- imports
def _imports(path: Path) -> set[str]:
    """The sibling modules of ``_widgets`` a module imports (at the top or in a
    function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names}
    return out


def test_the_widget_helpers_import_no_circle():
    """``_run_prep``, ``_show``, ``_state``, ``_tasks``, ``_viewer`` (and the Results
    dock) form no import circle, lazy imports included; ``_state`` and the view model
    import no Qt."""
    widgets = SRC / "_widgets"
    graph = {p.stem: _imports(p) & {q.stem for q in widgets.glob("*.py")}
             for p in widgets.glob("*.py") if p.stem != "__init__"}
    helpers = {"_run_prep", "_show", "_state", "_tasks", "_viewer", "results"}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = [m for m in helpers if m in reach(m)]
    assert not circles, {m: graph[m] for m in circles}
    for qt_free in (widgets / "_state.py", SRC / "_view_model.py",
                    SRC / "core" / "analysis" / "display.py"):
        text = qt_free.read_text()
        assert "qtpy" not in text and "PyQt" not in text, qt_free


def test_a_result_with_one_subjects_maps_and_group_maps_offers_the_group():
    """The shipped sample keeps one subject's maps beside the demo's group maps: the group
    is offered (its tests), but not as a mean over the one subject kept."""
    from napari_lesion_align import _sample_data
    from napari_lesion_align.core.results.result import AlignmentResult

    sample = AlignmentResult.load(_sample_data.SAMPLE_FOLDER)
    assert len(sample.subjects) == 1 and sample.group_maps
    choices = vm.view_choices(sample)
    assert choices["subjects"] == ["group"] + sample.subjects
    stats = vm.stats_for(sample, "group", "shared")
    assert "t" in stats and "r" not in stats and "deltar" not in stats
    one = make_tiny_result()
    several = vm.view_choices(one)["subjects"]
    assert several[0] == "group" and len(one.subjects) > 1
    assert "r" in vm.stats_for(one, "group", "intact")


def test_a_tests_t_map_is_shown_only_where_the_test_was_made():
    """A lesion is tested only where the intact model aligns (p and q are written as 1
    elsewhere): its t is shown there only, by the layers, the view and the surface alike."""
    from napari_lesion_align import _layers

    result = make_tiny_result()
    key = next(k for k in result.group_maps if k[2] == "t" and k[1] != "intact")
    lang, cond, _ = key
    p = np.array(result.group_maps[(lang, cond, "p")], dtype=np.float32)
    t = np.array(result.group_maps[key], dtype=np.float32)
    untested = np.zeros(p.size, dtype=bool)
    untested[::3] = True
    p[untested] = 1.0
    t[untested] = 9.0  # a large t that no test stands behind
    maps = dict(result.group_maps)
    maps[(lang, cond, "p")], maps[key] = p, t
    result = dataclasses.replace(result, group_maps=maps)
    shown = vm.view_values(result, {"subject": "group", "language": lang, "condition": cond,
                                    "stat": "t"})
    assert np.isnan(shown[untested]).all()
    np.testing.assert_array_equal(shown[~untested], t[~untested])
    layer = _layers.map_layer(result, "group", lang, cond, "t")
    assert np.nanmax(layer[0]) < 9.0
    # maps that are not a test's t are shown whole
    r_like = vm.view_values(result, {"subject": "group", "language": lang, "condition": cond,
                                     "stat": "p"})
    np.testing.assert_array_equal(r_like, p)
