from pathlib import Path

import orjson

from schemas.export import WIRE_EVENTS, export


def test_export_writes_one_schema_per_event(tmp_path: Path) -> None:
    paths = export(tmp_path)
    assert len(paths) == len(WIRE_EVENTS)
    envelope = orjson.loads((tmp_path / "envelope.v1.schema.json").read_bytes())
    assert "request_id" in envelope["properties"]
    assert envelope["properties"]["schema_version"]["const"] == 1


def test_committed_schemas_are_current(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[2] / "schemas" / "json"
    for path in export(tmp_path):
        assert (committed / path.name).read_bytes() == path.read_bytes(), f"run `make schemas`: {path.name} is stale"
