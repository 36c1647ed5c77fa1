"""`tollway policy check|apply` and `tollway keys create` without Kafka: validation and exit codes."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml
from typer.testing import CliRunner

from streams.cli.main import app
from streams.cli.policy import next_version

EXAMPLE = Path(__file__).resolve().parents[3] / "infra" / "policy.example.yaml"
runner = CliRunner()


def test_check_the_example() -> None:
    result = runner.invoke(app, ["policy", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_invalid_document_exits_2_with_field_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\ntenants:\n  acme:\n    regions: eu\n    pii: {email: shred}\n")
    for command in ("check", "apply"):
        result = runner.invoke(app, ["policy", command, str(bad)])
        assert result.exit_code == 2
        assert "tenants.acme.regions" in result.output and "tenants.acme.pii.email" in result.output


def test_keys_create_adds_the_record_and_prints_the_key_once(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE.read_text())
    result = runner.invoke(app, ["keys", "create", "--tenant", "globex", "--add-to", str(policy), "--json"])
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    stored = yaml.safe_load(policy.read_text())["tenants"]["globex"]["keys"]
    assert [k["key_id"] for k in stored] == [out["record"]["key_id"]]
    # a changed document gets the next version, so `policy apply` publishes it (the same version would be refused)
    assert yaml.safe_load(policy.read_text())["version"] == "example-2026-11-29.2"
    assert out["key"] not in policy.read_text()
    unknown = runner.invoke(app, ["keys", "create", "--tenant", "nobody", "--add-to", str(policy)])
    assert unknown.exit_code == 2


def test_next_version_increments_the_trailing_number() -> None:
    assert next_version("2026-11-29.1") == "2026-11-29.2"
    assert next_version("v9") == "v10"
    assert next_version("stable") == "stable.2"
