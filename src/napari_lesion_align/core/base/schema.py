"""The building blocks of the configuration schema (pydantic v2), and its error messages.

Every table of a config file is a frozen :class:`Section`: unknown keys are errors and
values are checked for their type *as they are written* (TOML and JSON carry types):
``random_control = "no"`` is not a boolean, ``layer = "last"`` not a whole number,
``selections = "shared"`` not a list. :func:`explain` turns pydantic's report into one
line per problem that names the key, the value and what is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from .errors import LesionAlignError

#: a number (an integer is fine, text and booleans are not)
Number = Annotated[float, Strict()]
PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
Int = Annotated[int, Strict()]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
LABEL_PATTERN = r"^[A-Za-z0-9]+$"
#: letters and digits only: labels become parts of file names
Label = Annotated[str, Strict(), Field(pattern=LABEL_PATTERN)]

#: what to say when a text does not match a pattern (pattern -> message)
PATTERN_MESSAGES = {
    LABEL_PATTERN: "must contain only letters and digits (it becomes part of the output "
                   "file names)",
}


class Section(BaseModel):
    """A table of the config: frozen, no unknown keys, typed values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TABLE: ClassVar[str] = ""

    @classmethod
    def parse(cls, table: dict, where: str | None = None):
        """Validate ``table``; a wrong value raises :class:`~.errors.LesionAlignError` naming
        ``where`` (default: the class' ``TABLE``) and the key."""
        try:
            return cls.model_validate(table)
        except ValidationError as err:
            raise LesionAlignError(explain(err, cls.TABLE if where is None else where,
                                           cls)) from None

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied and validated again."""
        return type(self).model_validate({**self.model_dump(), **changes})


class Table(Section):
    """A top-level table (``[model]``, ``[features]``...). Built directly
    (``FeatureOptions(stride_tokens=0)``), a wrong value raises
    :class:`~.errors.LesionAlignError` naming the table and the key. (Tables nested in
    others are plain :class:`Section` s, so that their errors carry the whole path.)
    """

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise LesionAlignError(explain(err, self.TABLE, type(self))) from None


def _where(prefix: str, loc: tuple) -> str:
    """``[lesions].random_control``, ``[languages.EN].bold``, ``[lesions].manual[0].element``;
    a table's key that is wrong itself: ``[languages.EN].bold['0 1'] (the key)``."""
    import re

    head = prefix
    for k in loc:
        k = str(k)
        if k == "[key]":
            head += " (the key)"
        elif k.isdigit() and head:
            head += f"[{k}]"
        elif re.fullmatch(r"[A-Za-z0-9_]+", k):
            head += f".{k}" if head else k
        else:
            head += f"[{k!r}]"
    return head or "config"


def _allowed_keys(model: type[BaseModel] | None, loc: tuple) -> list[str] | None:
    """The keys allowed at ``loc`` (the location of an unknown key) in ``model``."""
    cls = model
    for k in loc[:-1]:
        if cls is None or isinstance(k, int):
            continue
        field = cls.model_fields.get(str(k))
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return sorted(cls.model_fields) if cls is not None else None


def _model_in(annotation) -> type[BaseModel] | None:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        m = _model_in(a)
        if m is not None:
            return m
    return None


_HINTS = {
    "bool_type": "write true or false, without quotes",
    "int_type": "write a whole number, without quotes",
    "float_type": "write a number, without quotes",
    "string_type": "write text in quotes",
    "tuple_type": "write a list in brackets, e.g. [\"a\", \"b\"]",
    "list_type": "write a list in brackets, e.g. [\"a\", \"b\"]",
    "dict_type": "write a table",
    "model_type": "write a table",
}


def explain(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``<key> = <value>: <what is wrong>; <what to write>``."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e.get("loc", ()))
        where = _where(prefix, loc)
        kind = e.get("type", "")
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            lines.append(f"{where}: unknown key" + (f"; allowed: {allowed}" if allowed else ""))
            continue
        if kind == "missing":
            lines.append(f"{where}: required key missing")
            continue
        if kind == "string_pattern_mismatch":
            msg = PATTERN_MESSAGES.get((e.get("ctx") or {}).get("pattern"), msg)
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a table"
        hint = _HINTS.get(kind)
        lines.append(f"{where} = {shown}: {msg}" + (f" ({hint})" if hint else ""))
    return "; ".join(lines)
