"""Typed step parameters: a recipe's ``with:`` mapping becomes a step's parameter dataclass.

Parameters are plain dataclasses; each field carries its help text (``param(default, "help")``)
and a type the converter understands: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``X | None``, ``str | dict[str, int]``, ``list[X]``, ``tuple[str, ...]``, ``dict[str, X]``,
nested parameter dataclasses, and the reference types of :mod:`controller.pipeline.refs`.
Every error is a :class:`ParamError` naming the field path (``lora.r``) and the bad value;
``__post_init__`` checks raise ParamError too, so the recipe loader can say where.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from controller.pipeline import refs


class ParamError(ValueError):
    """A bad parameter: ``field`` is the dotted path inside the step's ``with:`` mapping."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem

    def under(self, prefix: str) -> ParamError:
        return ParamError(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


def param(default: Any = dataclasses.MISSING, help: str = "", *,  # help=: reads like argparse
          factory: Any = dataclasses.MISSING, columns: tuple[str, ...] = ()) -> Any:
    """A dataclass field with help text; no default and no factory = required. ``columns``:
    for a data reference, the fields every JSONL row of the file must have."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"help": help, "columns": columns})


def columns_for(cls: type, field_path: str) -> tuple[str, ...]:
    """The ``columns`` declared for the (data reference) field at ``field_path`` of ``cls``."""
    current: Any = cls
    columns: tuple[str, ...] = ()
    for name in re.sub(r"\[\d+\]", "", field_path).split("."):
        if not dataclasses.is_dataclass(current):
            return ()
        f = next((f for f in dataclasses.fields(current) if f.name == name), None)
        if f is None:
            return ()
        columns = tuple(f.metadata.get("columns", ()))
        nested = _dataclasses_in(typing.get_type_hints(current)[name])
        current = nested[0] if nested else None
    return columns


def build(cls: type, data: Any, path: str = "") -> Any:
    """An instance of the parameter dataclass ``cls`` from a YAML mapping (None = {})."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamError(path, f"expected a mapping of {cls.__name__} fields, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ParamError(_join(path, str(key)), f"unknown field; {_suggest(cls, str(key))}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = _join(path, name)
        if name in data:
            values[name] = convert(hints[name], data[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            help_text = f.metadata.get("help", "")
            raise ParamError(where, "required field missing" + (f" ({help_text})" if help_text else ""))
    try:
        return cls(**values)
    except ParamError as e:
        raise e.under(path) if path else e from None


def convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked against (and converted to) the type ``tp``."""
    if tp in refs.REF_TYPES:
        if not isinstance(value, str):
            raise ParamError(path, f"expected a reference (a string), got {_show(value)}")
        try:
            (refs.parse_data_ref if tp is refs.DataRef else refs.parse_model_ref)(value)
        except refs.RefError as e:
            raise ParamError(path, str(e)) from None
        return value.strip()
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise ParamError(path, f"expected one of {', '.join(map(str, args))}; got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamError(path, f"expected a list, got {_show(value)}")
        items = [convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamError(path, f"expected a mapping, got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise ParamError(path, f"keys must be strings, got {_show(k)}")
        return {k: convert(args[1], v, _join(path, k)) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return _convert_scalar(tp, value, path)


def _convert_union(args: tuple[Any, ...], value: Any, path: str) -> Any:
    options = [a for a in args if a is not type(None)]
    if value is None:
        if type(None) in args:
            return None
        raise ParamError(path, f"expected {' or '.join(type_name(a) for a in options)}, got null")
    if len(options) == 1:
        return convert(options[0], value, path)
    for option in options:  # pick the alternative whose shape the value has
        if _shape_matches(option, value):
            return convert(option, value, path)
    raise ParamError(path, f"expected {' or '.join(type_name(a) for a in options)}, got {_show(value)}")


def _shape_matches(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, Mapping)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if tp in refs.REF_TYPES or tp is str or origin is Literal:
        return isinstance(value, str)
    return not isinstance(value, str | Mapping | list | tuple)


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(path, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamError(path, f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamError(path, f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamError(path, f"expected a string, got {_show(value)}")
    raise TypeError(f"{path}: parameter type {tp!r} is not supported")  # a bug in a step class


def _suggest(cls: type, key: str) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    nested = [n for n in _nested_names(cls, "") if n.rsplit(".", 1)[-1] == key]
    if nested:
        return f"did you mean {nested[0]}?"
    return f"known fields: {', '.join(names)}"


def _nested_names(cls: type, prefix: str) -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for tp in _dataclasses_in(hints[f.name]):
            for sub in dataclasses.fields(tp):
                yield f"{prefix}{f.name}.{sub.name}"


def _dataclasses_in(tp: Any) -> list[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    return [a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)]


def walk_refs(obj: Any, path: str = "") -> Iterator[tuple[str, Any, str]]:
    """(field path, reference type, value) for every reference held by a parameter object."""
    if not dataclasses.is_dataclass(obj):
        return
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        yield from _walk_value(hints[f.name], getattr(obj, f.name), _join(path, f.name))


def _walk_value(tp: Any, value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    if value is None:
        return
    if tp in refs.REF_TYPES:
        yield path, tp, value
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if option is not type(None) and _shape_matches(option, value):
                yield from _walk_value(option, value, path)
                return
    elif origin in (list, tuple):
        for i, item in enumerate(value):
            yield from _walk_value(args[0], item, f"{path}[{i}]")
    elif origin is dict:
        for k, item in value.items():
            yield from _walk_value(args[1], item, _join(path, k))
    elif dataclasses.is_dataclass(tp):
        yield from walk_refs(value, path)


def to_plain(obj: Any) -> Any:
    """A parameter object as JSON-ready data (for lineage's hyperparameters)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def describe(cls: type, indent: str = "  ") -> list[str]:
    """One line per field: ``name: type = default  help``, nested dataclasses indented."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = f" = {to_plain(f.default)!r}"
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            default = " = (defaults below)" if _is_default(value) else f" = {to_plain(value)!r}"
        else:
            default = " (required)"
        help_text = f.metadata.get("help", "")
        note = f"  — {help_text}" if help_text else ""
        lines.append(f"{indent}{f.name}: {type_name(tp)}{default}{note}")
        for nested in _dataclasses_in(tp):
            lines.extend(describe(nested, indent + "    "))
    return lines


def _is_default(value: Any) -> bool:
    """A nested parameter object equal to its class's defaults."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return False
    try:
        return bool(value == type(value)())
    except (ParamError, TypeError):
        return False


def type_name(tp: Any) -> str:
    if tp in refs.REF_TYPES:
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return f"dict[str, {type_name(args[1])}]"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return repr(value)
