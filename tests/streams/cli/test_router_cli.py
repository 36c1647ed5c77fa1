from __future__ import annotations

from pathlib import Path

import orjson
import typer
from typer.testing import CliRunner

from streams.cli import router as cli_router
from tests.workers.routing.test_calibrate import write_labels


def app() -> typer.Typer:
    main = typer.Typer()
    cli_router.register(main)
    return main


def test_calibrate_prints_the_frontier_and_writes_params(tmp_path: Path) -> None:
    labels, out, png = write_labels(tmp_path / "labels.jsonl"), tmp_path / "params.json", tmp_path / "f.png"
    result = CliRunner().invoke(app(), ["router", "calibrate", "--labels", str(labels), "--out", str(out),
                                        "--plot", str(png)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "operating point" in text and "meets the 97 % target" in text
    assert orjson.loads(out.read_bytes())["schema_version"] == 1 and png.stat().st_size > 0
    shown = CliRunner().invoke(app(), ["router", "show", "--path", str(out)])
    assert shown.exit_code == 0 and "held-out saving" in shown.output


def test_calibrate_with_bad_labels_exits_2(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "hi"}\n')
    result = CliRunner().invoke(app(), ["router", "calibrate", "--labels", str(labels), "--dry-run"])
    assert result.exit_code == 2 and "cannot calibrate" in result.output
