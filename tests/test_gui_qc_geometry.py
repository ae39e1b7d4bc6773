"""Every combo box and line edit of every tab of the panel at 1,366 x 768 shows its text:
the text (a combo box's current item, a line edit's value or placeholder) fits inside the
box's visible rectangle, or the box carries the full text as its tooltip. (The Model tab's
"Selection" read "shared + specific per lang".)"""

from __future__ import annotations

from test_gui_session import _open_panel, _small_screen_viewer


def text_problems(panel) -> list[str]:
    from qtpy.QtWidgets import (QAbstractSpinBox, QComboBox, QLineEdit, QStyle,
                                QStyleOptionComboBox)

    problems = []
    widget = panel.tabs.currentWidget()
    title = panel.tabs.tabText(panel.tabs.currentIndex())
    inner = widget.scroll_area.widget()
    for box in inner.findChildren(QComboBox):
        if not box.isVisibleTo(inner) or box.width() <= 0:
            continue
        opt = QStyleOptionComboBox()
        box.initStyleOption(opt)
        field = box.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                           QStyle.SubControl.SC_ComboBoxEditField, box)
        fm = box.fontMetrics()
        for i in range(box.count()):
            text = box.itemText(i)
            fits = fm.horizontalAdvance(text) <= field.width()
            tip = box.itemData(i, 3) or ""  # Qt.ItemDataRole.ToolTipRole
            if not fits and (text not in str(tip) and text not in box.toolTip()
                             or i == box.currentIndex() and text not in box.toolTip()):
                problems.append(f"{title}: combo box item {text!r} needs "
                                f"{fm.horizontalAdvance(text)} px, shows {field.width()}")
    for edit in inner.findChildren(QLineEdit):
        if not edit.isVisibleTo(inner) or isinstance(edit.parent(), (QComboBox,
                                                                     QAbstractSpinBox)):
            continue
        fm = edit.fontMetrics()
        room = edit.width() - 8  # the frame and text margins
        for kind, text in (("value", edit.text()), ("placeholder", edit.placeholderText())):
            if kind == "placeholder" and edit.text():
                continue
            if text and fm.horizontalAdvance(text) > room and text not in edit.toolTip():
                problems.append(f"{title}: line edit {kind} {text!r} needs "
                                f"{fm.horizontalAdvance(text)} px, shows {room}")
    return problems


def test_every_combo_box_and_line_edit_shows_its_text(make_napari_viewer, qtbot):
    """Every tab at 1,366 x 768, before and after a result is shown (the Results tab's
    boxes then list maps and results) and with a long path typed in: no text is cut
    without its full text in a tooltip."""
    from qtpy.QtWidgets import QLineEdit

    from test_gui_viewer import _show_tiny

    viewer, win = _small_screen_viewer(make_napari_viewer, qtbot)
    panel = _open_panel(viewer, qtbot)
    problems = []
    for title in panel.widgets:
        panel.show_tab(title)
        qtbot.wait(80)
        problems += text_problems(panel)
    _show_tiny(viewer, panel.results, qtbot)
    # a long value typed into every line edit of the Model and Run tabs
    long_path = "/home/someone/projects/lesions/" + "a-long-folder-name/" * 4 + "out"
    for title in ("Model", "Run"):
        tab = panel.show_tab(title)
        for edit in tab.scroll_area.widget().findChildren(QLineEdit):
            if edit.isVisibleTo(tab) and edit.isEnabled() and not edit.isReadOnly() \
                    and type(edit.parent()).__name__ not in ("QComboBox", "QSpinBox",
                                                             "QDoubleSpinBox"):
                edit.setText(long_path)
    for title in panel.widgets:
        panel.show_tab(title)
        qtbot.wait(80)
        problems += text_problems(panel)
    assert not problems, "\n".join(problems)
