"""Run-time values beyond plain data (functions, schemas, branches, states) and the attribute sandbox."""

from __future__ import annotations

import _string  # the parser behind str.format's fields
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sgl_lang import nodes
from sgl_lang.errors import SglError, SglTypeError, SglValueError
from sgl_lang.limits import check_format_spec, check_num_items, check_text_len
from sgl_lang.limits import current as current_limits
from sgl_lang.values import to_str, type_name


@dataclass(eq=False)
class Function:
    """A `def`: its node and the scope it was defined in (closures work like Python's)."""

    node: nodes.FuncDef
    scope: Any  # interpreter.Scope; typed loosely to avoid an import cycle
    defaults: dict[str, Any]

    type_name = "function"

    @property
    def name(self) -> str:
        return self.node.name

    def __str__(self) -> str:
        return f"<function {self.name}>"

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's local variables: arguments matched to parameters, then defaults."""
        params = self.node.params
        if len(args) > len(params):
            raise SglTypeError(
                f"{self.name}() takes {len(params)} arguments but {len(args)} were given"
            )
        bound = {param.name: value for param, value in zip(params, args, strict=False)}
        names = {param.name for param in params}
        for name, value in kwargs.items():
            if name not in names:
                raise SglTypeError(f"{self.name}() got an unexpected keyword argument `{name}`")
            if name in bound:
                raise SglTypeError(f"{self.name}() got multiple values for argument `{name}`")
            bound[name] = value
        for param in params:
            if param.name not in bound:
                if param.name not in self.defaults:
                    raise SglTypeError(f"{self.name}() missing required argument `{param.name}`")
                bound[param.name] = self.defaults[param.name]
        return bound


class Record:
    """A value with named attributes: a fork branch, a `run` state or an imported program."""

    def __init__(self, type_name: str, attributes: dict[str, Any]) -> None:
        self.type_name = type_name
        self.attributes = attributes

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self.attributes.items())
        return f"<{self.type_name} {inner}>"


def _short(value: Any) -> str:
    text = to_str(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(eq=False)
class Schema:
    """A `schema` declaration: usable as `json=` and via `.json_schema()`."""

    name: str
    json: dict[str, Any]

    type_name = "schema"
    sgl_attributes = frozenset({"json_schema", "name"})

    def json_schema(self) -> dict[str, Any]:
        return _deep_copy(self.json)

    def __str__(self) -> str:
        return f"<schema {self.name}>"


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def schema_to_json(decl: nodes.SchemaDecl, schemas: dict[str, Schema]) -> dict[str, Any]:
    """The JSON Schema of a declaration; `schemas` resolves references to earlier schemas."""
    properties = {field.name: _type_json(field.type, schemas) for field in decl.fields}
    required = [field.name for field in decl.fields if not field.optional]
    return {
        "title": decl.name,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def _type_json(node: nodes.SchemaType, schemas: dict[str, Schema]) -> dict[str, Any]:
    if isinstance(node, nodes.ListType):
        return {"type": "array", "items": _type_json(node.item, schemas)}
    if isinstance(node, nodes.DictType):
        return {"type": "object", "additionalProperties": _type_json(node.value, schemas)}
    if isinstance(node, nodes.EnumType):
        return {"type": "string", "enum": list(node.options)}
    if node.name in _SCALARS:
        return {"type": _SCALARS[node.name]}
    if node.name in schemas:
        return schemas[node.name].json_schema()
    raise SglTypeError(f"unknown type `{node.name}` in schema", node.span)


# ---------------------------------------------------------------- the attribute sandbox

STR_METHODS = frozenset(
    "strip lstrip rstrip split splitlines join lower upper title startswith endswith "
    "replace find rfind count format isdigit".split()
)
LIST_METHODS = frozenset("append extend pop index count insert remove".split())
DICT_METHODS = frozenset("get keys values items".split())


def get_attribute(value: Any, name: str) -> Any:
    """`value.name` as programs may see it: documented attributes only, never dunders."""
    if name.startswith("_"):
        raise SglTypeError(f"`{type_name(value)}` has no attribute `{name}`")
    if isinstance(value, Record):
        if name in value.attributes:
            return value.attributes[name]
        names = ", ".join(sorted(value.attributes)) or "none"
        raise SglValueError(f"{value.type_name} has no attribute `{name}` (it has: {names})")
    if isinstance(value, dict):
        if name in value:
            return value[name]
        if name in DICT_METHODS:
            return _dict_method(value, name)
        raise SglValueError(f"dict has no key `{name}`")
    if isinstance(value, str) and name in STR_METHODS:
        return _str_method(value, name)
    if isinstance(value, list) and name in LIST_METHODS:
        return _list_method(value, name)
    known: frozenset[str] = getattr(value, "sgl_attributes", frozenset[str]())
    if name in known:
        return getattr(value, name)
    owner = (
        f"{type_name(value)} `{value.name}`" if hasattr(value, "name") else f"`{type_name(value)}`"
    )
    listing = f" (it has: {', '.join(sorted(known))})" if known else ""
    raise SglTypeError(f"{owner} has no attribute `{name}`{listing}")


def _dict_method(value: dict[Any, Any], name: str) -> Callable[..., Any]:
    if name == "get":
        return value.get
    if name == "keys":
        return lambda: list(value.keys())
    if name == "values":
        return lambda: list(value.values())
    return lambda: [[k, v] for k, v in value.items()]


def _list_method(value: list[Any], name: str) -> Callable[..., Any]:
    """A list method; the ones that grow the list check `max_items` first."""
    if name in ("append", "insert"):
        return _growing(value, name)
    if name == "extend":
        return lambda items: _extend(value, items)
    method: Callable[..., Any] = getattr(value, name)
    return method


def _growing(value: list[Any], name: str) -> Callable[..., None]:
    method = getattr(value, name)

    def grow(*args: Any) -> None:
        check_num_items(len(value) + 1, f"{name}()")
        method(*args)

    return grow


def _extend(value: list[Any], items: Any) -> None:
    if isinstance(items, (list, str, dict)):
        check_num_items(len(value) + len(items), "extend()")
    value.extend(items)


def _str_method(value: str, name: str) -> Callable[..., Any]:
    """A str method; the ones that build text check `max_text_len` first."""
    if name == "format":
        return lambda *args, **kwargs: _format(value, args, kwargs)
    if name == "join":
        return lambda items: _join(value, _joinable(items))
    if name == "replace":
        return lambda old, new, count=-1: _replace(value, old, new, count)
    if name == "split":
        return _sized_split(value)
    method: Callable[..., Any] = getattr(value, name)
    return method


def _sized_split(value: str) -> Callable[..., list[str]]:
    """`str.split`, refusing a list of more than `max_items` pieces: it cuts at most that many
    times, so the list is never built larger."""

    def split(*args: Any, **kwargs: Any) -> list[str]:
        if (bounded := _bounded_maxsplit(args, kwargs)) is not None:
            args, kwargs = args[:1], {**kwargs, "maxsplit": bounded}
        pieces: list[str] = value.split(*args, **kwargs)
        check_num_items(len(pieces), "str.split()")
        return pieces

    return split


def _bounded_maxsplit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The `maxsplit` to split with: the caller's, cut to `max_items` (None: leave the call
    as it is, e.g. a wrong argument Python reports itself)."""
    maxsplit = kwargs.get("maxsplit", args[1] if len(args) > 1 else -1)
    if len(args) > 2 or not isinstance(maxsplit, int) or isinstance(maxsplit, bool):
        return None
    limit = current_limits.get().max_items
    return limit if maxsplit < 0 or maxsplit > limit else maxsplit


def _format(template: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return _SizedFormatter().vformat(
        template, tuple(map(_formattable, args)), {k: _formattable(v) for k, v in kwargs.items()}
    )


class _SizedFormatter(string.Formatter):
    """`str.format` under the language's rules: `{0.name}` is `get_attribute` (no dunders, no
    private names), `{0[key]}` indexes as Python does; each field's spec, and the text of the
    fields so far, are checked against `max_text_len` before more is built."""

    def __init__(self) -> None:
        self.num_chars = 0

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            value = get_attribute(value, key) if is_attribute else value[key]
        return value, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        check_format_spec(format_spec, "format()")
        text = super().format_field(value, format_spec)
        self.num_chars += len(text)
        check_text_len(self.num_chars, "format()")
        return text


def _join(separator: str, items: list[str]) -> str:
    num_chars = sum(map(len, items)) + len(separator) * max(len(items) - 1, 0)
    check_text_len(num_chars, "join()")
    return separator.join(items)


def _replace(text: str, old: Any, new: Any, count: Any = -1) -> str:
    if isinstance(old, str) and isinstance(new, str) and isinstance(count, int):
        num_found = len(text) + 1 if old == "" else text.count(old)
        if count >= 0:
            num_found = min(num_found, count)
        check_text_len(len(text) + num_found * (len(new) - len(old)), "replace()")
    return text.replace(old, new, count)


def _formattable(value: Any) -> Any:
    return (
        value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
        else to_str(value)
    )


def _joinable(items: Any) -> list[str]:
    if not isinstance(items, list):
        raise SglTypeError(f"join() takes a list, not `{type_name(items)}`")
    for item in items:
        if not isinstance(item, str):
            raise SglTypeError(f"join() needs a list of strings; found `{type_name(item)}`")
    return items


def format_value(value: Any, spec: str | None) -> str:
    """An interpolation `{value:spec}`."""
    if not spec:
        return to_str(value)
    check_format_spec(spec, "the format spec")
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise SglValueError(f"cannot format `{type_name(value)}` with `:{spec}`: {exc}") from None


def check_error(exc: Exception) -> SglError:
    """A Python exception raised by a built-in or an operator, as the language's error."""
    if isinstance(exc, SglError):
        return exc
    if isinstance(exc, ZeroDivisionError):
        return SglValueError("division by zero")
    if isinstance(exc, IndexError):
        return SglValueError(str(exc))
    if isinstance(exc, KeyError):
        return SglValueError(f"key {exc} not found")
    if isinstance(exc, (ValueError, OverflowError, RecursionError)):
        return SglValueError(str(exc))
    return SglTypeError(str(exc))
