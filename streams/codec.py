"""Bytes <-> events. orjson on the wire; every failure becomes a :class:`BadEvent` with a reason tag."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.envelope import SCHEMA_VERSION, Envelope
from schemas.errors import BadEvent, UnknownSchemaVersion

M = TypeVar("M", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_defaults=False))


def parse_json(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise BadEvent("empty record (no value)", reason="empty")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 and lone surrogates too, which is what we want on the wire.
        raise BadEvent(f"invalid JSON: {exc}", reason="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, got {type(data).__name__}", reason="not_an_object")
    return data


def decode_as(raw: bytes | None, model: type[M]) -> M:
    data = parse_json(raw)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UnknownSchemaVersion(version)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise BadEvent(f"invalid {model.__name__}: {errors}", reason="schema_violation") from exc


def decode(raw: bytes | None) -> Envelope:
    return decode_as(raw, Envelope)
