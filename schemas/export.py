"""Writes the JSON Schema of every wire event, for producers and consumers in other languages."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.envelope import Envelope
from schemas.response import DeadLetter, Response

WIRE_EVENTS: dict[str, type[BaseModel]] = {
    "envelope": Envelope,
    "response": Response,
    "deadletter": DeadLetter,
}


def schema_of(model: type[BaseModel]) -> bytes:
    return orjson.dumps(model.model_json_schema(mode="validation"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def export(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in WIRE_EVENTS.items():
        path = out / f"{name}.v1.schema.json"
        path.write_bytes(schema_of(model) + b"\n")
        written.append(path)
    return written
