"""Forms generated from the config schema with magicgui: one owner of every choice, range,
default and help text (the pydantic tables of :mod:`..core.config`).

:func:`schema_form` makes a magicgui ``Container`` (a :class:`SchemaForm`) with one widget per
field of a config table:

=====================================  ===========================================
field type                             widget
=====================================  ===========================================
``Literal[...]``                       ``ComboBox`` with those choices
``bool``                               ``CheckBox``
``int`` (``ge`` / ``gt`` / ``le`` /    ``SpinBox`` with those bounds (open sides:
``lt``)                                +- :data:`OPEN_RANGE`)
``float`` (same constraints)           ``FloatSpinBox`` (:data:`DECIMALS` decimals;
                                       ``gt`` / ``lt``: one step inside the bound)
``str`` (optional or not)              ``LineEdit`` (``FileEdit`` when ``overrides``
                                       say ``widget_type="FileEdit"``)
``tuple[str, ...]``                    ``LineEdit`` of comma-separated values
=====================================  ===========================================

The value shown first is the field's default and the tooltip its ``description``.
:meth:`SchemaForm.values` returns the form as a config table (the keys of the TOML file) and
:meth:`SchemaForm.parse` validates it with the table's own class, so a wrong value in a form
is refused with the message a config file would get. No Qt here beyond what magicgui builds,
and no analysis rule: the schema owns them.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from magicgui import widgets as mw
from magicgui.widgets import Container

#: decimals of a float field's spin box: its resolution, and how far inside an open bound
#: (``gt`` / ``lt``) the spin box stops
DECIMALS = 3
#: the spin box's limit on a side the schema leaves open (a whole number, any sign)
OPEN_RANGE = 1_000_000

#: what an override may set (besides the widget's own keyword arguments ``label``...)
_OVERRIDE_KEYS = {"choices", "min", "max", "step", "suffix", "special", "unset",
                  "widget_type", "mode", "filter", "placeholder", "tooltip", "label"}


# --------------------------------------------------------------------------- the schema
def _field(section, name: str):
    try:
        return section.model_fields[name]
    except KeyError:
        raise KeyError(f"{section.__name__} has no field {name!r}; fields: "
                       f"{sorted(section.model_fields)}") from None


def _unwrap(annotation) -> tuple[Any, bool, list]:
    """``(type, optional, metadata)`` of an annotation: ``Annotated`` layers peeled (their
    metadata kept), ``X | None`` -> ``(X, True, ...)``."""
    optional, meta = False, []
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = get_args(annotation)
            meta.extend(extra)
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, optional, meta
            optional = optional or len(args) < len(get_args(annotation))
            annotation = args[0]
        else:
            return annotation, optional, meta


def field_kind(section, name: str) -> str:
    """``choice``, ``bool``, ``int``, ``float``, ``text`` or ``texts`` (the widget family
    of a field); anything else raises ``TypeError``."""
    tp, _, _ = _unwrap(_field(section, name).annotation)
    if get_origin(tp) is Literal:
        return "choice"
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "text"
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and _unwrap(args[0])[0] is str:
            return "texts"
    raise TypeError(f"{section.__name__}.{name}: no form widget for {tp!r}")


def choices(section, name: str) -> tuple:
    """The values a ``Literal`` field allows, in the schema's order."""
    tp, _, _ = _unwrap(_field(section, name).annotation)
    if get_origin(tp) is not Literal:
        raise TypeError(f"{section.__name__}.{name} is not a Literal field")
    return tuple(get_args(tp))


def bounds(section, name: str) -> dict:
    """The field's numeric constraints: ``{"ge": 0, "lt": 1}`` (``annotated_types`` Ge / Gt /
    Le / Lt in the field's metadata, its type's included)."""
    f = _field(section, name)
    _, _, meta = _unwrap(f.annotation)
    out: dict = {}
    for m in [*f.metadata, *meta]:
        for cls, key in ((at.Ge, "ge"), (at.Gt, "gt"), (at.Le, "le"), (at.Lt, "lt")):
            if isinstance(m, cls):
                out[key] = getattr(m, key)
        if isinstance(m, at.Interval):
            out.update({k: getattr(m, k) for k in ("ge", "gt", "le", "lt")
                        if getattr(m, k) is not None})
    return out


def spin_range(section, name: str) -> tuple[float, float]:
    """The smallest and largest value a spin box of the field can show: the schema's
    bounds (open bounds one resolution step inside), else +- :data:`OPEN_RANGE`."""
    kind = field_kind(section, name)
    if kind not in ("int", "float"):
        raise TypeError(f"{section.__name__}.{name} is not a number")
    b = bounds(section, name)
    eps = 1 if kind == "int" else 10.0 ** -DECIMALS
    lo = b["ge"] if "ge" in b else b["gt"] + eps if "gt" in b else -OPEN_RANGE
    hi = b["le"] if "le" in b else b["lt"] - eps if "lt" in b else OPEN_RANGE
    if kind == "float":
        lo, hi = round(float(lo), DECIMALS), round(float(hi), DECIMALS)
    return lo, hi


# --------------------------------------------------------------------------- the form
def _make_widget(section, name: str, label: str | None, ov: dict):
    f = _field(section, name)
    kind = field_kind(section, name)
    default = f.get_default(call_default_factory=True)
    label = ov.get("label", label if label is not None else name.replace("_", " "))
    tooltip = ov.get("tooltip", f.description)
    common = {"name": name, "label": label, "tooltip": tooltip}
    if kind == "choice":
        return mw.ComboBox(choices=tuple(ov.get("choices", choices(section, name))),
                           value=default, **common)
    if kind == "bool":
        return mw.CheckBox(value=bool(default), **common)  # the label is its text
    if kind in ("int", "float"):
        lo, hi = spin_range(section, name)
        lo, hi = ov.get("min", lo), ov.get("max", hi)
        if kind == "int":
            shown = {"suffix", "special", "unset"} & set(ov)
            if shown:  # magicgui's SpinBox (superqt's QLargeIntSpinBox) shows plain numbers
                raise ValueError(f"{section.__name__}.{name}: {sorted(shown)} only for "
                                 "float fields; say it in the label")
            w = mw.SpinBox(step=int(ov.get("step", 1)), **common)
        else:
            w = mw.FloatSpinBox(step=ov.get("step", 10.0 ** -DECIMALS), **common)
            w.native.setDecimals(DECIMALS)  # before the range: Qt rounds it to the decimals
        if "unset" in ov:  # one step below the minimum: "leave the key out"
            lo = lo - (1 if kind == "int" else 10.0 ** -DECIMALS)
            w.native.setSpecialValueText(str(ov["unset"]))
        elif "special" in ov:
            w.native.setSpecialValueText(str(ov["special"]))
        w.range = (lo, hi)
        w.value = default if default is not None else lo
        if "suffix" in ov:
            w.native.setSuffix(str(ov["suffix"]))
        return w
    text = "" if default is None else (", ".join(str(v) for v in default)
                                       if kind == "texts" else str(default))
    if ov.get("widget_type") == "FileEdit":
        w = mw.FileEdit(mode=ov.get("mode", "r"), filter=ov.get("filter"), nullable=True,
                        **common)
        w.line_edit.value = text
        w.choose_btn.text = "…"  # compact, like the docks' other path buttons
        edit = w.line_edit
    else:
        w = mw.LineEdit(value=text, **common)
        edit = w
    if "placeholder" in ov:
        edit.native.setPlaceholderText(str(ov["placeholder"]))
    return w


def schema_form(section, fields=None, labels: dict | None = None,
                overrides: dict | None = None, **container_kwargs) -> "SchemaForm":
    """A magicgui form of ``fields`` (default: every field) of the config table ``section``.

    ``labels``: field -> the label shown (default: the name with spaces). ``overrides``:
    field -> presentation settings: ``choices`` (another list, e.g. the union with a
    related field's), ``min`` / ``max`` (a narrower range known at run time), ``step``,
    ``widget_type="FileEdit"`` with ``mode`` / ``filter``, ``placeholder``, ``tooltip``;
    for float fields also ``suffix``, ``special`` (text shown at the minimum) and ``unset``
    (an extra step below the minimum, shown as this text, that leaves the key out of
    :meth:`SchemaForm.values` so the config's default applies). Other keyword arguments
    go to the ``Container``.
    """
    fields = tuple(section.model_fields) if fields is None else tuple(fields)
    labels, overrides = dict(labels or {}), dict(overrides or {})
    for name, ov in overrides.items():
        if name not in fields:
            raise KeyError(f"override for {name!r}: not a field of this form {fields}")
        unknown = set(ov) - _OVERRIDE_KEYS
        if unknown:
            raise KeyError(f"override for {name!r}: unknown key(s) {sorted(unknown)}; "
                           f"allowed: {sorted(_OVERRIDE_KEYS)}")
    widgets = [_make_widget(section, n, labels.get(n), overrides.get(n, {})) for n in fields]
    unset = {n for n in fields if "unset" in overrides.get(n, {})}
    return SchemaForm(section, fields, widgets, unset, **container_kwargs)


class SchemaForm(Container):
    """A magicgui ``Container`` whose widgets are fields of a config table (see
    :func:`schema_form`). ``form["<field>"]`` is a field's widget (``form.<field>`` too,
    unless the name is one of the Container's own attributes: ``name``, ``label``...)."""

    def __init__(self, section, fields, widgets, unset, **kwargs):
        kwargs.setdefault("labels", True)
        super().__init__(widgets=widgets, **kwargs)
        self.margins = (0, 0, 0, 0)
        self._section = section
        self._fields = tuple(fields)
        self._unset = frozenset(unset)

    @property
    def section(self):
        """The config table class the form edits."""
        return self._section

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    def is_unset(self, name: str) -> bool:
        """Whether an ``unset`` field shows its "leave it out" value."""
        w = self[name]
        return name in self._unset and w.value <= w.min

    def values(self) -> dict:
        """The form as a config table: the fields' values (texts without surrounding
        spaces); an empty optional text or path and an ``unset`` field are left out (the
        config's default applies)."""
        out: dict = {}
        for name in self._fields:
            w = self[name]
            kind = field_kind(self._section, name)
            if self.is_unset(name):
                continue
            v = w.value
            if kind == "texts":
                v = [t.strip() for t in str(v).split(",") if t.strip()]
            elif kind == "text":
                v = str(v).strip() if v is not None else None
                if v is None or (v == "" and _unwrap(_field(self._section, name)
                                                     .annotation)[1]):
                    continue
            elif kind == "int":
                v = int(v)
            elif kind == "float":
                v = float(v)
            elif kind == "bool":
                v = bool(v)
            out[name] = v
        return out

    def parse(self, where: str | None = None):
        """The form validated by its table's class (``Section.parse``): a wrong value raises
        :class:`~..core.base.errors.LesionAlignError` with the config file's message."""
        return self._section.parse(self.values(), where)

    def set_values(self, **values) -> None:
        """Set fields by name (``None`` for an ``unset`` field: its "leave out" value; a
        list for a comma-separated field)."""
        for name, v in values.items():
            if name not in self._fields:
                raise KeyError(f"{name!r} is not a field of this form {self._fields}")
            w = self[name]
            kind = field_kind(self._section, name)
            if v is None and name in self._unset:
                w.value = w.min
            elif kind == "texts":
                w.value = v if isinstance(v, str) else ", ".join(str(x) for x in v)
            elif kind == "text" and hasattr(w, "line_edit"):  # a FileEdit: the text as is
                w.line_edit.value = "" if v is None else str(v)
            elif kind == "text":
                w.value = "" if v is None else str(v)
            else:
                w.value = v
