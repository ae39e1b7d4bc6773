"""The forms generated from the config schema (``_widgets/_forms.py``): one widget per field,
with the schema's choices, bounds, defaults and descriptions, and the schema's own error
messages for wrong values (magicgui widgets under Xvfb)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

import pytest
from pydantic import Field

from napari_lesion_align.core.run import config as C
from napari_lesion_align.core.base.errors import LesionAlignError
from napari_lesion_align.core.base.schema import Bool, Int, Label, Section, Text


@pytest.fixture(autouse=True)
def _qapp(qapp):
    """magicgui widgets need a QApplication."""
    return qapp


def _section(default_k: float = 2.5, default_mode: str = "b"):
    """A throwaway table with one field of every kind the generator knows."""

    class Demo(Section):
        TABLE: ClassVar[str] = "[demo]"
        mode: Literal["a", "b", "c"] = Field(default_mode, description="the mode")
        flag: Bool = Field(True, description="a flag")
        count: Annotated[int, Field(strict=True, ge=2, le=40)] = Field(7, description="n")
        open_int: Int = Field(-3, description="unbounded")
        k: Annotated[float, Field(strict=True, gt=0, lt=10)] = Field(default_k,
                                                                     description="k")
        name: Text = Field("abc", description="a name")
        path: Text | None = Field(None, description="a file")
        labels: tuple[Label, ...] = Field(("x1", "y2"), description="labels")

    return Demo


def test_every_field_kind_gets_its_widget_with_the_schema_default_and_help():
    from magicgui import widgets as mw

    from napari_lesion_align._widgets._forms import DECIMALS, OPEN_RANGE, schema_form

    Demo = _section()
    form = schema_form(Demo, overrides={"path": {"widget_type": "FileEdit"}},
                       labels={"count": "How many"})
    assert isinstance(form, mw.Container) and form.fields == tuple(Demo.model_fields)
    kinds = {n: type(form[n]) for n in form.fields}
    assert kinds == {"mode": mw.ComboBox, "flag": mw.CheckBox, "count": mw.SpinBox,
                     "open_int": mw.SpinBox, "k": mw.FloatSpinBox, "name": mw.LineEdit,
                     "path": mw.FileEdit, "labels": mw.LineEdit}
    # choices, bounds, defaults and tooltips are the schema's
    assert tuple(form["mode"].choices) == ("a", "b", "c") and form["mode"].value == "b"
    assert form["flag"].value is True
    assert (form["count"].min, form["count"].max, form["count"].value) == (2, 40, 7)
    assert form["count"].label == "How many"
    assert (form["open_int"].min, form["open_int"].max) == (-OPEN_RANGE, OPEN_RANGE)
    step = 10.0 ** -DECIMALS  # open bounds: one step inside
    assert form["k"].min == pytest.approx(step) and form["k"].max == pytest.approx(10 - step)
    assert form["k"].value == 2.5
    assert form["name"].value == "abc" and form["labels"].value == "x1, y2"
    for n in form.fields:
        assert form[n].tooltip == Demo.model_fields[n].description, n
    # the defaults round-trip: values() is a table the class validates to its defaults
    values = form.values()
    assert "path" not in values  # an empty optional path is left out
    assert values["labels"] == ["x1", "y2"]
    assert form.parse() == Demo()


def test_values_are_validated_by_the_section_class():
    from napari_lesion_align._widgets._forms import schema_form

    Demo = _section()
    form = schema_form(Demo, overrides={"path": {"widget_type": "FileEdit"}})
    form.set_values(mode="c", flag=False, count=40, k=9.5, name="  z  ", path="/tmp/a.nii",
                    labels=["p1", "q2", "r3"])
    got = form.parse()
    assert (got.mode, got.flag, got.count, got.k, got.name, got.path, got.labels) == \
        ("c", False, 40, 9.5, "z", "/tmp/a.nii", ("p1", "q2", "r3"))


def test_a_changed_default_in_the_schema_shows_in_the_form():
    from napari_lesion_align._widgets._forms import schema_form

    one, two = (schema_form(_section(default_k=k, default_mode=m))
                for k, m in ((2.5, "b"), (7.25, "a")))
    assert (one["k"].value, one["mode"].value) == (2.5, "b")
    assert (two["k"].value, two["mode"].value) == (7.25, "a")


@pytest.mark.parametrize("section, fields", [
    (C.LesionConfig, ("element", "method", "k_percent", "mode", "random_controls", "alpha",
                      "correction", "min_relative_drop")),
    (C.ModelConfig, ("name", "layer", "offline", "device", "dtype")),
    (C.DataConfig, ("kind", "tr", "mask", "subjects")),
    (C.DemoConfig, ("n_subjects", "seed")),
    (C.ComputeConfig, ("workers", "scheduler", "threads")),
])
def test_bounds_and_choices_of_the_real_tables_are_the_schemas(section, fields):
    """Every numeric spin box stops at the last value the schema accepts (one resolution
    step further is refused); every combo box lists exactly the Literal's values."""
    from napari_lesion_align._widgets._forms import DECIMALS, OPEN_RANGE, field_kind, \
        schema_form

    form = schema_form(section, fields)
    for name in fields:
        w, kind = form[name], field_kind(section, name)
        f = section.model_fields[name]
        assert f.description, f"{section.__name__}.{name} has no description"
        assert w.tooltip == f.description
        if kind == "choice":
            assert tuple(w.choices) == get_args(f.annotation), name
        if kind in ("int", "float"):
            step = 1 if kind == "int" else 10.0 ** -DECIMALS
            for edge, beyond in ((w.min, w.min - step), (w.max, w.max + step)):
                section.parse({name: edge})  # accepted
                if abs(edge) != OPEN_RANGE:  # a bound of the schema: just beyond is refused
                    with pytest.raises(LesionAlignError, match=name):
                        section.parse({name: beyond})
        assert w.value == f.get_default() or (f.get_default() in (None, ())
                                              and w.value in ("", None)), name


def test_a_wrong_value_gives_the_config_files_message(tmp_path):
    """The form refuses what a config file is refused for, with the same message."""
    from napari_lesion_align._widgets._forms import schema_form

    form = schema_form(C.ModelConfig, ("name", "layer", "device"))
    form.set_values(device="gpu0")
    with pytest.raises(LesionAlignError) as in_form:
        form.parse()
    cfg = tmp_path / "study.toml"
    cfg.write_text('[data]\nkind = "demo"\n[model]\ndevice = "gpu0"\n')
    with pytest.raises(LesionAlignError) as in_file:
        C.load_config(cfg)
    assert str(in_form.value).startswith("[model].device = 'gpu0'")
    assert str(in_form.value) in str(in_file.value)
    # a list field: a subject label that cannot be part of a file name
    data = schema_form(C.DataConfig, ("kind", "tr", "subjects"))
    data.set_values(subjects="01, sub 2")
    with pytest.raises(LesionAlignError, match=r"\[data\]\.subjects\[1\] = 'sub 2': must "
                                               "contain only letters and digits"):
        data.parse()


def test_unset_float_is_left_out_and_overrides_are_checked():
    from napari_lesion_align._widgets._forms import schema_form

    form = schema_form(C.LesionConfig, ("k_percent", "min_relative_drop"),
                       overrides={"min_relative_drop": {"unset": "default"}})
    w = form["min_relative_drop"]
    assert w.value == 0.0 and form.values()["min_relative_drop"] == 0.0  # the default
    form.set_values(min_relative_drop=None)
    assert w.value < 0 and w.native.text() == "default" and form.is_unset("min_relative_drop")
    assert "min_relative_drop" not in form.values()
    assert form.parse().min_relative_drop == C.LesionConfig().min_relative_drop
    form.set_values(min_relative_drop=0.25)
    assert form.values()["min_relative_drop"] == 0.25
    with pytest.raises(KeyError, match="unknown key"):
        schema_form(C.LesionConfig, ("alpha",), overrides={"alpha": {"colour": "red"}})
    with pytest.raises(KeyError, match="not a field of this form"):
        schema_form(C.LesionConfig, ("alpha",), overrides={"mode": {"step": 1}})
    with pytest.raises(ValueError, match="only for float fields"):
        schema_form(C.ComputeConfig, ("workers",), overrides={"workers": {"suffix": " w"}})
    with pytest.raises(KeyError, match="no field"):
        schema_form(C.ComputeConfig, ("cores",))


def test_the_widgets_forms_show_the_schema_fields_they_name():
    """The docks' field lists name fields of the tables (with descriptions), and the
    lesion form's element offers the selections' and the sweeps' elements, no other."""
    from napari_lesion_align._widgets import data, model, run
    from napari_lesion_align.core.lesions.vocabulary import ELEMENTS

    for section, fields in ((C.ModelConfig, model.MODEL_FIELDS),
                            (C.LesionConfig, model.LESION_FIELDS),
                            (C.DataConfig, data.DATA_FIELDS),
                            (C.DemoConfig, data.DEMO_FIELDS),
                            (C.ComputeConfig, run.COMPUTE_FIELDS)):
        for name in fields:
            assert section.model_fields[name].description, (section.__name__, name)
    assert set(model.element_choices()) == set(ELEMENTS)
