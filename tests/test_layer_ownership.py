"""Layers belong to a result: two results opened side by side (one with File > Open, the
reader; one with the Results dock) never touch each other's layers, every layer carries
its result's identity, and closing a result removes exactly its layers. Also the canvas
legend and the surface view's own scene (make_napari_viewer under Xvfb; tiny results
from tests/test_figures.py, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesion_align._view_model import RESULT_KEY, RESULT_LABEL, VIEW_TAG
from test_figures import make_tiny_result

PLUGIN = "napari-lesion-align"


@pytest.fixture(scope="module")
def same_named_folders(tmp_path_factory):
    """Two saved tiny results in folders of the same name (``a/res``, ``b/res``), as two
    copies of one demo result would be."""
    root = tmp_path_factory.mktemp("two")
    folders = []
    for seed, parent in ((0, "a"), (1, "b")):
        folder = root / parent / "res"
        make_tiny_result(seed=seed).save(folder)
        folders.append(folder)
    return folders


def _results_dock(viewer):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_lesion_align._widgets.results import ResultsWidget

    widget = ResultsWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget, name="Results")
    return widget


def _wait(qtbot, task):
    qtbot.waitUntil(lambda: task.done, timeout=60_000)


def _snapshot(viewer, key):
    return [(layer, layer.name) for layer in viewer.layers
            if layer.metadata.get(RESULT_KEY) == key]


def test_two_results_side_by_side_own_their_layers(make_napari_viewer, qtbot,
                                                   same_named_folders):
    from napari_lesion_align._widgets._state import result_key
    from napari_lesion_align._widgets._viewer import canvas_legend

    viewer = make_napari_viewer()
    results = _results_dock(viewer)
    session = results.session
    a, b = same_named_folders
    key_a, key_b = result_key(a), result_key(b)
    # A with the reader (File > Open)
    viewer.open(str(a), plugin=PLUGIN)
    qtbot.waitUntil(lambda: key_a in session.results, timeout=30_000)
    mine_a = _snapshot(viewer, key_a)
    assert [n for _, n in mine_a] == ["r EN intact (group) [res]", "categories lesion [res]"]
    assert len(viewer.layers) == 3  # and the template: nothing hidden floods the list
    # B with the Results dock: same folder name, another label; A is untouched
    _wait(qtbot, results.open_result(b))
    qtbot.waitUntil(lambda: results.feeder is not None and results.feeder.done,
                    timeout=30_000)
    assert session.results[key_b].label == "res (2)" and session.current == key_b
    assert _snapshot(viewer, key_a) == mine_a
    mine_b = _snapshot(viewer, key_b)
    assert [n for _, n in mine_b] == ["r EN intact (group) [res (2)]",
                                      "categories lesion [res (2)]"]
    names = [layer.name for layer in viewer.layers]
    assert len(set(names)) == len(names) and names.count("MNI152 template (2 mm)") == 1
    for layer in viewer.layers:
        if layer.metadata.get("stat") != "template":
            key = layer.metadata[RESULT_KEY]
            assert layer.metadata[RESULT_LABEL] == session.results[key].label
            assert layer.name.endswith(f"[{session.results[key].label}]")
    # a map chosen for A replaces A's view only; B's layers stay, the same objects
    results.choose_result(key_a)
    t_a = results.set_view(subject="group", language="EN", condition="shared", stat="t")
    assert t_a.name == "t EN shared (group) [res]" and t_a.metadata[RESULT_KEY] == key_a
    assert _snapshot(viewer, key_b) == mine_b
    assert [layer for layer in viewer.layers if layer.metadata.get(VIEW_TAG) and
            layer.metadata.get(RESULT_KEY) == key_a] == [t_a]
    # the threshold: the group test's, in words next to the slider and on the canvas
    assert t_a.metadata["threshold"] == pytest.approx(5.0)
    assert results.threshold_text.text() == "t ≥ 5 · q < 0.05 FDR · 2 df"
    assert results.threshold_label.text() == "5"
    shown = canvas_legend(viewer)
    assert shown["text"] == f"{t_a.name}\nt ≥ 5 · q < 0.05 FDR · 2 df"
    assert shown["colorbar"] == t_a.name
    assert [t for _, t in shown["entries"]] == ["shared", "EN", "FR"]
    # the slider moves in t units, on round steps
    results.threshold.setValue(results.threshold.value() + 10)
    assert t_a.metadata["threshold"] == pytest.approx(6.0)
    assert results.threshold_text.text().startswith("t ≥ 6 (the test: t ≥ 5")
    # opening A again (the dock) adds nothing and removes nothing
    before = list(viewer.layers)
    assert results.open_result(a) is None
    assert list(viewer.layers) == before and session.current == key_a
    # closing B removes exactly B's layers
    n = results.close_result(key_b)
    assert n == len(mine_b) and key_b not in session.results
    assert all(layer.metadata.get(RESULT_KEY) != key_b for layer in viewer.layers)
    assert list(viewer.layers) == [layer for layer in before
                                   if layer.metadata.get(RESULT_KEY) != key_b]
    assert session.current == key_a and results.result_choice.count() == 1


def test_surface_view_has_its_own_scene(make_napari_viewer, qtbot):
    """Entering the surface view hides the volumes (no white block through the cortex)
    and goes 3D; back in 2D the volumes return and the surfaces hide."""
    from napari_lesion_align import _layers as L
    from napari_lesion_align._widgets._viewer import enter_surface_scene

    viewer = make_napari_viewer()
    template = viewer.add_layer(__import__("napari").layers.Layer.create(
        *L.template_layer(2)[:2], "image"))
    hidden_before = viewer.add_image(np.zeros((4, 4, 4)), visible=False, name="off")
    enter_surface_scene(viewer)
    verts = np.array([[0, 0, 0], [0, 10, 0], [0, 0, 10], [10, 0, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    surf = viewer.add_surface((verts, faces, np.arange(4.0)),
                              metadata={"lesion_align": True})
    assert viewer.dims.ndisplay == 3 and not template.visible and surf.visible
    viewer.dims.ndisplay = 2
    assert template.visible and not surf.visible and not hidden_before.visible


def test_category_surface_lies_above_the_map_surface():
    """The category overlay's mesh is lifted off the map's surface along the outward
    normals (it does not hide the map beneath it), and uncategorised vertices are
    transparent."""
    from napari_lesion_align import _layers as L

    verts, faces = L.surface_vertices("pial", "left")
    up = L.lifted(verts, faces, L.SURFACE_LIFT_MM)
    moved = np.linalg.norm(up - verts, axis=1)
    assert np.allclose(moved[moved > 0], L.SURFACE_LIFT_MM)

    def volume(v):  # enclosed volume (divergence theorem): lifting outwards grows it
        return abs(np.einsum("ij,ij->i", v[faces[:, 0]],
                             np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum()) / 6

    assert volume(up) > volume(verts) * 1.01
    assert volume(L.lifted(verts, faces, -L.SURFACE_LIFT_MM)) < volume(verts)
    cmap = L._label_colormap({1: "#0072b2"}, 2, background=(0, 0, 0, 0))
    assert cmap.colors[0][3] == 0 and cmap.colors[1][3] == 1


def test_category_surfaces_are_outlines():
    """A patch of labelled vertices keeps its label only on its border (a vertex with a
    face touching another label): the map beneath shows inside the patch."""
    from napari_lesion_align import _layers as L

    verts, faces = L.surface_vertices("pial", "left")
    labels = np.where(verts[:, 1] < np.median(verts[:, 1]), 2.0, 0.0)  # half the cortex
    out = L.outline_labels(labels, faces)
    kept = out == 2
    assert 0 < kept.sum() < 0.2 * (labels == 2).sum()
    assert set(np.unique(out)) <= {0.0, 2.0} and not (out[labels == 0] != 0).any()
    tri = labels[faces]
    border = np.unique(faces[(tri != tri[:, :1]).any(axis=1)])
    assert set(np.nonzero(kept)[0]) == set(border[labels[border] == 2])


def test_a_session_made_before_the_viewer_helpers_load_is_attached(tmp_path):
    """A dock that only knows ``_state`` (e.g. Data) may give a viewer its session before
    ``_viewer`` is imported: importing it then attaches that viewer (registry, template
    at the bottom, orientation), without the import circle ``_state`` -> ``_viewer``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = ("import sys, napari\n"
            "from napari_lesion_align._widgets import _state\n"
            "assert 'napari_lesion_align._widgets._viewer' not in sys.modules\n"
            "v = napari.Viewer(show=False)\n"
            "_state.session_for(v)\n"
            "from napari_lesion_align._widgets import _viewer\n"
            "assert v in _viewer._ATTACHED\n"
            "w = napari.Viewer(show=False)\n"
            "_state.session_for(w)\n"
            "assert w in _viewer._ATTACHED\n"
            "v.close(); w.close(); print('attached')\n")
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and "attached" in out.stdout, out.stderr[-2000:]
