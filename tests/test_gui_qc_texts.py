"""What the plugin writes next to a map agrees with what is drawn: coordinates without a
negative zero, an exported colour bar whose label and ticks describe the same scale, and
plain text (never an object's repr) wherever a value reaches a label. No window needed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesion_align import _layers as L


# --------------------------------------------------------------------------- coordinates
@pytest.mark.parametrize("value, digits, plus, text", [
    (-0.0, 1, False, "0.0"), (-0.04, 1, False, "0.0"), (-0.05001, 1, False, "-0.1"),
    (0.04, 1, False, "0.0"), (-44.0, 1, False, "-44.0"), (32.25, 1, False, "32.2"),
    (-0.3, 0, True, "+0"), (-0.0, 0, True, "+0"), (-4.0, 0, True, "-4"), (4.4, 0, True, "+4"),
    (np.float32(-0.0), 1, False, "0.0")])
def test_number_never_prints_a_negative_zero(value, digits, plus, text):
    from napari_lesion_align._widgets._export import number

    assert number(value, digits, plus=plus) == text


def test_status_slice_and_export_texts_have_no_negative_zero():
    """The status bar at world (z, -y, x) = (0.02, 0.0, -0.04) reads ``y=0.0`` (it read
    ``y=-0.0``: world -y is 0.0, so MNI y is -0.0); the slice text of an export too."""
    from napari_lesion_align._widgets._export import slice_text
    from napari_lesion_align._widgets._viewer import mni_status_text

    text = mni_status_text((0.02, 0.0, -0.04))
    assert "-0.0" not in text and text == "MNI x=0.0 y=0.0 z=0.0 mm", text
    assert mni_status_text((32.0, 66.0, -44.0)) == "MNI x=-44.0 y=-66.0 z=32.0 mm"
    assert slice_text(1, 0.3) == "coronal slice y = 0 mm (MNI)"
    assert slice_text(1, 20.0) == "coronal slice y = -20 mm (MNI)"


def test_slider_labels_have_no_negative_zero(make_napari_viewer):
    from napari_lesion_align._widgets.inspector import slice_labels

    viewer = make_napari_viewer()
    data = np.zeros((5, 5, 5), dtype=np.float32)
    viewer.add_image(data, translate=(-2.2, -2.0, -2.0), metadata={"lesion_align": True})
    viewer.dims.set_point(0, -0.2)  # z = -0.2: the nearest slice is at -0.2
    assert viewer.dims.point[0] == pytest.approx(-0.2)
    labels = slice_labels(viewer)
    assert labels is not None and labels[0] == "z +0 mm", labels
    assert all("-0 mm" not in str(label) for label in labels), labels


# --------------------------------------------------------------------------- colour bar
def _map_layer(stat, values, threshold, magnitude):
    from napari.layers import Image

    shown = L.threshold_display(stat, threshold, float(np.abs(values).max()),
                                magnitude=magnitude)
    return Image(values, colormap=shown["colormap"], contrast_limits=shown["contrast_limits"],
                 metadata={"stat": stat, "magnitude": magnitude, "lesion_align": True})


def _exported_bar(layer):
    """(label, lowest tick, highest tick, limits) of the colour bar an export draws."""
    from napari_lesion_align._widgets._export import colorbar_of, figure

    bar = colorbar_of(layer)
    fig = figure(np.zeros((60, 80, 3), dtype=np.uint8), title="x", colorbar=bar)
    cax = next(ax for ax in fig.axes if ax.get_label() == "colour bar")
    lo, hi = cax.get_ylim()
    ticks = [t for t in cax.get_yticks() if lo - 1e-9 <= t <= hi + 1e-9]
    return cax.get_ylabel(), min(ticks), max(ticks), (lo, hi), bar


def test_exported_colour_bar_label_agrees_with_its_ticks():
    """A t map in its colours: labelled ``t``, ticks on both sides of 0 (the data's
    scale); the same map in grey while categories are shown (both signs drawn alike):
    labelled ``|t|``, ticks from 0 up, nothing below 0 (it read |t| over -6..6)."""
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 3.0, (4, 6, 6)).astype(np.float32)

    label, low, high, (lo, hi), _ = _exported_bar(_map_layer("t", values, 3.0, False))
    assert label.split()[0] == "t" and "|" not in label, label
    assert lo < 0 < hi and low < 0 < high, (lo, hi, low, high)

    layer = _map_layer("t", values, 3.0, True)
    assert layer.contrast_limits[0] < 0  # the grey display itself is symmetric
    label, low, high, (lo, hi), bar = _exported_bar(layer)
    assert label.startswith("|t|"), label
    assert lo == 0.0 and low >= 0.0 and hi == pytest.approx(layer.contrast_limits[1])
    # the bar's colours are the ones drawn for |t| from 0 to the top: transparent below the
    # threshold (the gap), the grey ramp's brightest at the top
    rgba = bar[0]
    n = len(rgba)
    th_pos = 3.0 / hi
    assert rgba[: int(0.8 * th_pos * n), 3].max() == 0.0
    assert rgba[-1, 3] == 1.0 and rgba[-1, :3].min() > 0.8


def test_exported_colour_bar_of_a_p_map_runs_from_zero():
    values = np.linspace(0.0, 1.0, 60, dtype=np.float32).reshape(3, 4, 5)
    for magnitude in (False, True):
        label, low, high, (lo, hi), _ = _exported_bar(_map_layer("q", values, 0.05,
                                                                 magnitude))
        assert lo == 0.0 and hi == pytest.approx(0.05) and low >= 0 and high <= 0.05
        assert not label.startswith("|"), label


# --------------------------------------------------------------------------- plain text
def test_a_notification_shows_its_text_wherever_it_lands():
    """A napari notification passed where a text is expected (a legend row, an export's
    title or note, a category row of the Inspector, the activity dock's step, the end
    notice) shows its message, never ``<Notification ...>``."""
    from napari.utils.notifications import Notification

    from napari_lesion_align._widgets._export import figure, plain_text
    from napari_lesion_align._widgets.inspector import InspectorWidget

    note = Notification("Opened the demo's shipped result", severity="info")
    assert plain_text(note) == "Opened the demo's shipped result"
    assert plain_text(Notification(note)) == "Opened the demo's shipped result"
    assert plain_text(None) == "" and plain_text(ValueError("bad TR")) == "bad TR"
    assert plain_text(3.5) == "3.5" and plain_text("Source") == "Source"

    fig = figure(np.zeros((40, 40, 3), dtype=np.uint8), title=note, note=note,
                 legend=[("#0072b2", note)])
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any(t.startswith("Opened the demo") for t in texts), texts
    assert not any("Notification" in t for t in texts), texts

    class Result:
        categories = {"lesion": (np.array([0, 1]), {1: {"name": note}})}

    row = InspectorWidget._categories_at(Result(), 1)
    assert row == "lesion: Opened the demo's shipped result", row


def test_the_end_notice_of_a_task_shows_text(notifications):
    from napari.utils.notifications import Notification

    from napari_lesion_align._widgets._tasks import Outcome, _notify_end

    _notify_end(Notification("demo result", severity="info"), Outcome("cancelled"))
    assert notifications and notifications[-1].message == "Lesion Align: demo result cancelled"


def test_no_button_text_has_an_accidental_mnemonic(make_napari_viewer, qtbot):
    """Qt reads a single "&" in a button's text as a keyboard mnemonic: "Clusters & report…"
    showed as "Clusters _report…". Every button of the panel writes a literal "&" as "&&"."""
    import re

    from qtpy.QtWidgets import QAbstractButton

    from test_gui_session import _open_panel, _small_screen_viewer

    viewer, _ = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    texts = [b.text() for b in panel.findChildren(QAbstractButton)]
    assert any("report" in t for t in texts), texts  # the Results tab's buttons are there
    single = [t for t in texts if re.search(r"(?<!&)&(?!&)", t.replace("&&", ""))]
    assert single == [], single
