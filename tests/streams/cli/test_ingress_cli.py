from typer.testing import CliRunner

from streams.cli.main import app


def test_a_port_out_of_range_is_a_usage_error() -> None:
    # 99999 was taken and bound as 99999 mod 65536 = 34463: the ingress listened where nobody looked.
    result = CliRunner().invoke(app, ["serve", "--port", "99999"])
    assert result.exit_code == 2, result.output

