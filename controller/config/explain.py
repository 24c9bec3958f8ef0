"""Turning YAML and pydantic errors into messages: the bad value and what is allowed instead."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from controller.config.problems import ConfigProblem, show_value
from controller.config.schema import BOOL_AS_NUMBER, RULE_BROKEN, TEXT_ERRORS, VigilConfig

KeyPath = tuple[str, ...]


def yaml_problem(err: yaml.YAMLError, text: str, filename: str) -> ConfigProblem:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
        if err.context and err.context_mark is not None:
            message += f" ({err.context} on line {err.context_mark.line + 1})"
        return ConfigProblem(filename, mark.line + 1, "", None, message)
    if isinstance(err, yaml.reader.ReaderError):
        line = text[: err.position].count("\n") + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        character = f"#x{code:04x}"
        message = f"invalid YAML at line {line}: unacceptable character {character}: {err.reason}"
        return ConfigProblem(filename, line, "", None, message)
    return ConfigProblem(filename, None, "", None, f"invalid YAML: {err}")


def line_for(path: KeyPath, key_lines: Mapping[KeyPath, int]) -> int | None:
    """The line of `path`, else of its nearest ancestor written in the file (not the root)."""
    for length in range(len(path), 0, -1):
        line = key_lines.get(path[:length])
        if line is not None:
            return line
    return None


_TYPE_ERRORS: dict[str, str] = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    BOOL_AS_NUMBER: "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "path_type": "a path",
    "list_type": "a list",
}
_MAPPING_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
)


def problem_from_error(
    error: ErrorDetails, filename: str, key_lines: Mapping[KeyPath, int]
) -> ConfigProblem:
    path: KeyPath = tuple(str(part) for part in error["loc"])
    value: object = error.get("input")
    if error["type"] == RULE_BROKEN:
        context = error.get("ctx") or {}
        path = (*path, context["key"])
        value = context["value"]
        message = str(context["message"])
    else:
        message = _explain(error["type"], path, value, error["msg"])
    return ConfigProblem(filename, line_for(path, key_lines), ".".join(path), value, message)


def _explain(kind: str, path: KeyPath, value: object, pydantic_message: str) -> str:
    owner, name, field = _locate(path)
    shown = show_value(value)
    if kind in {"extra_forbidden", "invalid_key"}:
        return "unknown key; " + _allowed_keys(owner, path[:-1], typo=path[-1] if path else "")
    if kind in _MAPPING_ERRORS and field is not None:
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            return f"{shown} is not a mapping; " + _allowed_keys(section, path, typo="")
    if kind == "literal_error" and field is not None:
        allowed = ", ".join(str(choice) for choice in typing.get_args(field.annotation))
        return f"{shown} is not allowed; allowed values: {allowed}"
    requirement = _requirement(name, field)
    if kind in _TYPE_ERRORS:
        expected = _TYPE_ERRORS[kind]
        if kind == BOOL_AS_NUMBER and field is not None and field.annotation is int:
            expected = "a whole number"
        if value is None:
            return "no value given; " + (requirement or f"{name} must be {expected}")
        if kind == "string_type":
            return f"{shown} is not text; put it in quotes to use it as text"
        return f"{shown} is not {expected}" + (f"; {requirement}" if requirement else "")
    if kind in _RANGE_ERRORS:
        verdict = "is not supported" if kind == "multiple_of" else "is out of range"
        return f"{shown} {verdict}" + (f"; {requirement}" if requirement else "")
    if kind in TEXT_ERRORS:
        return f"{shown} is not allowed; {name} {pydantic_message}"
    return f"{shown} is not valid: {pydantic_message}"


def _inner_model(annotation: object) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """(the model a field holds, or the model its list items are), looking through Optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple):
        item = args[0] if args else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            return None, item
        return None, None
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, None
    return None, None


def _holds_a_list(annotation: object) -> bool:
    return typing.get_origin(annotation) in (list, tuple)


def _locate(path: KeyPath) -> tuple[type[BaseModel], str, FieldInfo | None]:
    """The model that owns the field at `path`, the field's name and its definition.

    Sequence indexes below a field resolve to that field, or into the list's item model;
    an unknown key resolves to no field.
    """
    owner: type[BaseModel] = VigilConfig
    model: type[BaseModel] | None = VigilConfig
    item_model: type[BaseModel] | None = None
    name, field = "", None
    for part in path:
        if str(part).isdigit() and field is not None and _holds_a_list(field.annotation):
            if item_model is not None:
                model, item_model = item_model, None
            continue
        if model is None:
            break
        owner = model
        field = model.model_fields.get(part)
        if field is None:
            return owner, part, None
        name = part
        model, item_model = _inner_model(field.annotation)
    return owner, name, field


def _allowed_keys(model: type[BaseModel], section: KeyPath, *, typo: str) -> str:
    keys = list(model.model_fields)
    where = f"in {'.'.join(section)}" if section else "at the top level"
    text = f"allowed keys {where}: {', '.join(keys)}"
    close = difflib.get_close_matches(typo, keys, n=1) if typo else []
    return text + (f"; did you mean '{close[0]}'?" if close else "")


def _requirement(name: str, field: FieldInfo | None) -> str | None:
    """What a numeric field accepts, e.g. "width must be an even number from 64 to 4096"."""
    if field is None or field.annotation not in (int, float):
        return None
    bounds: dict[str, Any] = {}
    for constraint in field.metadata:
        for attribute in ("gt", "ge", "lt", "le", "multiple_of"):
            if hasattr(constraint, attribute):
                bounds[attribute] = getattr(constraint, attribute)
    if bounds.get("multiple_of") == 2:
        kind = "an even number"
    else:
        kind = "a whole number" if field.annotation is int else "a number"
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if "ge" in bounds and "le" in bounds:
        span = f"from {show_value(low)} to {show_value(high)}"
    else:
        parts = []
        if low is not None:
            parts.append(("at least " if "ge" in bounds else "greater than ") + show_value(low))
        if high is not None:
            parts.append(("at most " if "le" in bounds else "less than ") + show_value(high))
        span = " and ".join(parts)
    return f"{name} must be {kind}" + (f" {span}" if span else "")


