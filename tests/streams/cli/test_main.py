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


def test_a_client_executed_turn_in_openai_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('[{"role": "user", "content": "use f with {}"}, {"role": "assistant", "content": null, '
                    '"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, '
                    '{"role": "tool", "tool_call_id": "c1", "content": "42"}]')
    messages = _conversation(None, path)
    assert [(m.role, m.tool_call_id) for m in messages] == [("user", None), ("assistant", None), ("tool", "c1")]
    assert messages[1].tool_calls is not None and messages[1].tool_calls[0].name == "f"


@pytest.mark.parametrize("args", [["--tools-mode", "sometimes"], ["--tools", "missing.json"]])
def test_bad_tool_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["submit", "hi", *args])
    assert result.exit_code == 2, result.output


def test_a_tool_message_answering_no_call_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c9", "content": "1"}]')
    result = CliRunner().invoke(app, ["submit", "--messages", str(path)])
    assert result.exit_code == 2 and "c9" in result.output, result.output


def test_nothing_to_send_is_a_usage_error() -> None:
    assert CliRunner().invoke(app, ["submit"]).exit_code == 2


def test_models_catalog_is_read_from_tollway_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.settings import Settings

    monkeypatch.setenv("TOLLWAY_MODELS", "/etc/tollway/models.yaml")
    assert str(Settings().models_file) == "/etc/tollway/models.yaml"


@pytest.mark.parametrize(("args", "says"), [
    (["--tool", "calculator", "--tool-choice", "lookup_order"], "not one of the request's tools"),
    (["--tool-choice", "maybe so"], "--tool-choice must be"),
    (["--tool", "calculator", "--tool", "calculator"], "defined twice"),
])
def test_a_bad_tool_choice_or_a_tool_named_twice_is_a_usage_error(args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["submit", "hi", *args])
    assert result.exit_code == 2 and says in result.output, result.output


@pytest.mark.parametrize("argv", [["submit", "hi"], ["cache", "spaces"], ["ledger"], ["index", "ls"]])
def test_a_bad_setting_is_one_line_and_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli.main import main
    from streams.settings import get_settings

    monkeypatch.setenv("TOLLWAY_PARTITIONS", "abc")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(argv)
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "TOLLWAY_PARTITIONS" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", [["--tool", "nosuch"], ["--tool", "calculator", "--tool", "nosuch"],
                                  ["--tools", "CLIENT_TOOL", "--tools-mode", "server"]])
def test_a_tool_the_tenant_has_not_registered_cannot_be_run_by_tollway(args: list[str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As the HTTP ingress answers 400 unknown_tool; the request used to go out offering nothing (exit 0)."""
    import yaml

    from streams.settings import get_settings
    from tests.workers.tools.documents import tools_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(tools_policy().model_dump(mode="json")))
    client_tool = tmp_path / "tools.json"
    client_tool.write_text('[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]')
    monkeypatch.setenv("TOLLWAY_POLICY_FILE", str(policy))
    get_settings.cache_clear()
    try:
        argv = [str(client_tool) if a == "CLIENT_TOOL" else a for a in args]
        result = CliRunner().invoke(app, ["submit", "hi", "--tenant", "acme", *argv])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "is not a registered tool of tenant 'acme'" in result.output and "calculator" in result.output
