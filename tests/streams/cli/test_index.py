from pathlib import Path

from typer.testing import CliRunner

from streams.cli.main import app


def test_a_file_that_is_not_text_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    result = CliRunner().invoke(app, ["index", "add", "--tenant", "acme", str(path)])
    assert result.exit_code == 2 and "picture.png" in result.output, result.output
    assert not isinstance(result.exception, UnicodeDecodeError)


def test_two_documents_with_one_name_are_a_usage_error(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n\ntext of {folder}\n")
    result = CliRunner().invoke(app, ["index", "add", "--tenant", "acme", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2 and "two documents named README.md" in result.output, result.output


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["index", "add", "--tenant", "acme", str(tmp_path / "nope.md")])
    assert result.exit_code == 2, result.output
