"""Structured output: check an answer against the request's ``response_format``, repair it once, or say why not.

Formats (OpenAI's shapes): ``{"type": "json_object"}`` and ``{"type": "json_schema", "json_schema": {"schema": ...}}``.
Repair, tried once and in order: strip a Markdown code fence; extract the first balanced JSON object/array from
prose; for a schema with a single required string property, wrap the prose in it.

The validator covers the JSON Schema keywords structured-output schemas use (type, properties, required,
additionalProperties, items, enum, const, anyOf, min/max length, items and bounds); an unknown keyword is ignored,
as JSON Schema says. The ``jsonschema`` package would be the full validator; it is not a dependency yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
                                       "integer": (int,), "number": (int, float), "null": (type(None),)}


@dataclass
class StructuredResult:
    answer: str | None  # the (possibly repaired) JSON text, or None when it cannot be made valid
    error: str = ""
    actions: list[str] = field(default_factory=list)


def wanted_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema an answer must satisfy, ``{"type": "object"}`` for json_object, or None for free text."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", response_format.get("schema", {}))
        return schema if isinstance(schema, dict) else {}
    return None


def check(answer: str, schema: dict[str, Any]) -> StructuredResult:
    value, parse_error = _parse(answer)
    if parse_error is None:
        problem = validate(value, schema)
        if problem is None:
            return StructuredResult(answer)
    else:
        problem = parse_error
    repaired, how = _repair(answer, schema)
    if repaired is not None:
        value, parse_error = _parse(repaired)
        if parse_error is None and validate(value, schema) is None:
            return StructuredResult(repaired, actions=[f"structured_output_repaired:{how}"])
    return StructuredResult(None, error=f"the answer is not valid for the requested response_format: {problem}")


def _parse(text: str) -> tuple[Any, str | None]:
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({exc})"


def _repair(answer: str, schema: dict[str, Any]) -> tuple[str | None, str]:
    fenced = _FENCE.search(answer)
    if fenced:
        return fenced.group(1).strip(), "code_fence"
    extracted = _first_json_value(answer)
    if extracted is not None:
        return extracted, "extracted"
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    if schema.get("type") == "object" and len(required) == 1 and \
            (properties.get(required[0]) or {}).get("type") == "string":
        return orjson.dumps({required[0]: answer.strip()}).decode(), "wrapped"
    return None, ""


def _first_json_value(text: str) -> str | None:
    """The first balanced {...} or [...] in ``text`` that parses as JSON."""
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        depth, in_string, escaped = 0, False, False
        for end in range(start, len(text)):
            c = text[end]
            if in_string:
                escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
                continue
            if c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    candidate = text[start:end + 1]
                    if _parse(candidate)[1] is None:
                        return candidate
                    break
    return None


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """The first violation as ``"<path>: <why>"``, or None."""
    if "const" in schema and value != schema["const"]:
        return f"{path}: must be {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: must be one of {schema['enum']!r}"
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        if all(validate(value, option, path) is not None for option in options):
            return f"{path}: matches none of the allowed shapes"
    wanted = schema.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        if not any(_is_type(value, name) for name in names):
            return f"{path}: expected {' or '.join(names)}, got {_type_name(value)}"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                return f"{path}: missing required property {name!r}"
        for name, item in value.items():
            if name in properties:
                problem = validate(item, properties[name], f"{path}.{name}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{path}: unexpected property {name!r}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path}: more than {schema['maxItems']} items"
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                problem = validate(item, schema["items"], f"{path}[{i}]")
                if problem:
                    return problem
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: below {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: above {schema['maximum']}"
    return None


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, (object,)))


def _type_name(value: Any) -> str:
    for name in _TYPES:
        if _is_type(value, name):
            return name
    return type(value).__name__
