"""The Results tab's category legend is readable on napari's dark and light themes: each
swatch has a border that stands out from the dock (WCAG 2 contrast), the text is in the
theme's text colour, and the swatches keep the category palette itself (it is part of the
results and of the colour-blind test)."""

from __future__ import annotations

import base64
import re

import pytest

from test_gui_viewer import _dock, _show_tiny


def _swatches(html: str):
    """``[(border hex, centre hex)]`` of the legend's swatch images."""
    from qtpy.QtGui import QColor, QImage

    out = []
    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        img = QImage.fromData(base64.b64decode(data), "PNG")
        assert not img.isNull()
        w, h = img.width(), img.height()
        out.append((QColor(img.pixel(0, 0)).name(), QColor(img.pixel(w // 2, h // 2)).name()))
    return out


def test_wcag_contrast_formula():
    from napari_lesion_align._widgets._viewer import contrast_ratio, readable_on

    assert contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#777777") == pytest.approx(1.0)
    assert contrast_ratio("#0072b2", "#ffffff") == pytest.approx(5.19, abs=0.01)  # worked by hand
    assert readable_on("#23242b") == "#ffffff" and readable_on("#ebe7e6") == "#000000"


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_legend_swatches_and_text_stand_out_on_both_themes(make_napari_viewer, qtbot, theme):
    from napari_lesion_align._widgets._viewer import (BORDER_CONTRAST, TEXT_CONTRAST,
                                                      contrast_ratio, theme_colours)
    from napari_lesion_align.core.analysis.statistics import CATEGORY_COLOURS, language_colour

    viewer = make_napari_viewer()
    viewer.theme = theme
    results = _dock(viewer, "Results")
    result = _show_tiny(viewer, results, qtbot)
    results._update_legend()
    html = results.legend.text()
    panel = theme_colours(theme)
    swatches = _swatches(html)
    wanted = [CATEGORY_COLOURS["shared"]] + [language_colour(c, result.languages)
                                             for c in result.languages]
    # the palette is unchanged: each swatch's inside is its category's colour
    assert [centre for _, centre in swatches] == [c[:7].lower() for c in wanted]
    if theme == "dark":  # what was seen: the shared blue alone hardly stands out
        assert contrast_ratio(CATEGORY_COLOURS["shared"], panel["background"]) < 3.0
    for border, _ in swatches:
        for where in ("background", "foreground"):
            ratio = contrast_ratio(border, panel[where])
            assert ratio >= BORDER_CONTRAST, (theme, where, border, ratio)
    colours = set(re.findall(r"color:(#[0-9a-fA-F]{6})", html))
    assert colours, html[:200]
    for colour in colours:
        for where in ("background", "foreground"):
            assert contrast_ratio(colour, panel[where]) >= TEXT_CONTRAST, (theme, colour)
    # the legend follows a theme change
    other = "light" if theme == "dark" else "dark"
    viewer.theme = other
    qtbot.wait(50)
    border = _swatches(results.legend.text())[0][0]
    assert contrast_ratio(border, theme_colours(other)["background"]) >= BORDER_CONTRAST
