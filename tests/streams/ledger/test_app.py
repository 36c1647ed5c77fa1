"""The ledger's CLI wiring and the Faust app's construction, without a broker."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from schemas.errors import ConfigError
from streams.cli.common import parse_time_ns
from streams.cli.main import app
from streams.ledger.app import app_id, create_app
from streams.settings import Settings


def test_parse_time_ns() -> None:
    assert parse_time_ns(None) is None
    assert parse_time_ns("1700000000") == 1_700_000_000 * 10**9
    assert parse_time_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert parse_time_ns("2023-11-14T22:13:20") == 1_700_000_000 * 10**9  # naive means UTC
    with pytest.raises(ConfigError):
        parse_time_ns("last tuesday")


def test_commands_are_registered() -> None:
    runner = CliRunner()
    ledger_help = runner.invoke(app, ["ledger", "--help"])
    assert ledger_help.exit_code == 0
    for command in ("worker", "status", "reconcile", "reprice", "--tenant", "--window", "--csv", "--source"):
        assert command in ledger_help.output
    assert runner.invoke(app, ["outcome", "--help"]).exit_code == 0


def test_app_tables_are_namespaced_by_prefix(tmp_path: object) -> None:
    settings = Settings(topic_prefix="tunit", state_dir=tmp_path)  # type: ignore[arg-type]
    ledger = create_app(settings, web_port=1)
    assert app_id(settings) == "tunit-ledger"
    assert ledger.app.conf.id == "tunit-ledger"
    assert {t.name for t in (ledger.cells, ledger.tasks, ledger.outcomes)} == {"cells", "tasks", "outcomes"}
    assert ledger.cells.changelog_topic.get_topic_name() == "tunit-ledger-cells-changelog"
