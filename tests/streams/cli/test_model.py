from __future__ import annotations

import orjson
import typer
from typer.testing import CliRunner

from streams.cli import model as cli_model


def app() -> typer.Typer:
    main = typer.Typer()
    cli_model.register(main)
    return main


def test_route_explains_the_choice_as_json() -> None:
    result = CliRunner().invoke(app(), ["models", "route", "hello", "--region", "eu", "--json"])
    assert result.exit_code == 0, result.output
    decision = orjson.loads(result.output)
    assert decision["model"] == "lite-eu" and "nano-us: region us not allowed" in decision["reasons"]


def test_route_with_no_eligible_model_exits_1() -> None:
    result = CliRunner().invoke(app(), ["models", "route", "hello", "--region", "mars", "--json"])
    assert result.exit_code == 1 and orjson.loads(result.output)["failure"] == "no_eligible_model"


def test_list_as_json() -> None:
    result = CliRunner().invoke(app(), ["models", "list", "--json"])
    assert result.exit_code == 0 and len(orjson.loads(result.output)["models"]) >= 6


def test_route_explains_features_score_and_operating_point() -> None:
    result = CliRunner().invoke(app(), ["models", "route", "Summarise this:\n\n" + "The audit found gaps. " * 60,
                                        "--json"])
    assert result.exit_code == 0, result.output
    auto = orjson.loads(result.output)["auto"]
    assert auto["features"]["material_over_long"] == 1.0 and auto["auto_tier"] != "small"
    assert auto["decided_by"] == "calibrated" and auto["operating_point"]["large_at"] > 0


def test_an_slo_tier_or_a_negative_budget_is_a_usage_error() -> None:
    result = CliRunner().invoke(app(), ["models", "route", "hello", "--tier", "interactive"])
    assert result.exit_code == 2 and "quality tier" in result.output, result.output
    assert CliRunner().invoke(app(), ["models", "route", "hello", "--budget-ms", "-5"]).exit_code == 2
    assert CliRunner().invoke(app(), ["models", "route", "hello", "--tier", "large", "--json"]).exit_code == 0
