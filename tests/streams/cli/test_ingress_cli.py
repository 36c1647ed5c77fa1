from pathlib import Path

from typer.testing import CliRunner

from streams.cli.main import app


def test_a_port_out_of_range_is_a_usage_error() -> None:
    # 99999 was taken and bound as 99999 mod 65536 = 34463: the ingress listened where nobody looked.
    result = CliRunner().invoke(app, ["serve", "--port", "99999"])
    assert result.exit_code == 2, result.output



def test_a_missing_backfill_input_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backfill", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2 and not isinstance(result.exception, FileNotFoundError), result.output
