from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli.main import _conversation, app


def test_messages_file_then_prompt(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"role": "system", "content": "Be brief."}\n{"role": "user", "content": "Hi"}\n')
    messages = _conversation("And then?", path)
    assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "Hi"), ("user", "And then?")]


@pytest.mark.parametrize("content", ['[{"role": "wizard", "content": "x"}]', "not json"])
def test_bad_messages_file_is_a_usage_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    result = CliRunner().invoke(app, ["submit", "--messages", str(path)])
    assert result.exit_code == 2, result.output


def test_nothing_to_send_is_a_usage_error() -> None:
    assert CliRunner().invoke(app, ["submit"]).exit_code == 2


def test_models_catalog_is_read_from_tollway_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.settings import Settings

    monkeypatch.setenv("TOLLWAY_MODELS", "/etc/tollway/models.yaml")
    assert str(Settings().models_file) == "/etc/tollway/models.yaml"
