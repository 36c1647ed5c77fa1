"""`tollway ledger` without a reachable ledger worker: one clear line naming the URL and how to start one, exit 3."""

from __future__ import annotations

import csv
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from typer.testing import CliRunner

from streams.cli.common import EXIT_UNAVAILABLE
from streams.cli.main import app
from streams.settings import get_settings


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on a free loopback port in a thread, for as long as the block runs: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_no_worker_at_the_default_url_is_one_line_with_the_url_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("TOLLWAY_LEDGER_PORT", str(port))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["ledger", "--tenant", "acme"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    (line,) = lines(result.output)
    assert f"http://127.0.0.1:{port}" in line
    assert "tollway ledger worker" in line and "--source topic" in line
    assert "make up" not in line  # Kafka and Redis are not what is missing


@pytest.fixture
def not_a_ledger() -> Iterator[str]:
    """Something else listening where the ledger worker was expected (answers 404 to everything)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>\n<h1>Not Found</h1>\n</body></html>\n")

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url


def test_something_else_at_the_url_is_one_line_too(not_a_ledger: str) -> None:
    result = CliRunner().invoke(app, ["ledger", "--tenant", "acme", "--url", not_a_ledger])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    (line,) = lines(result.output)
    assert not_a_ledger in line and "404" in line and "tollway ledger worker" in line


def test_status_and_reconcile_say_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    for command in (["ledger", "status", "--url", url], ["ledger", "reconcile", "--url", url]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == EXIT_UNAVAILABLE, result.output
        (line,) = lines(result.output)
        assert url in line and "tollway ledger worker" in line


def test_tool_rows_print_in_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    from schemas.ledger import LedgerRow, LedgerSnapshot
    from streams.cli.ledger import _print_snapshot, ledger_table, quality_table

    rows = [LedgerRow(tenant="acme", model="small", window="day", window_start_ms=0, requests=1, cost_micros=60),
            LedgerRow(tenant="acme", model="tool:search", window="day", window_start_ms=0, cost_micros=30,
                      tool_calls=1)]
    snapshot = LedgerSnapshot(rows=rows)
    _print_snapshot(snapshot, window="day", as_json=True, as_csv=False)
    document = orjson.loads(capsys.readouterr().out)
    assert [(r["model"], r["cost_micros"], r["tool_calls"]) for r in document["rows"]] == [
        ("small", 60, 0), ("tool:search", 30, 1)]
    _print_snapshot(snapshot, window="day", as_json=False, as_csv=True)
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], r["tool_calls"]) for r in parsed] == [("small", "0"), ("tool:search", "1")]
    assert ledger_table(rows, "t").columns[-1].header == "tool calls" and ledger_table(rows, "t").row_count == 2
    assert quality_table(rows, "q").row_count == 1  # a tool's row has nothing an evaluator judged


def test_reprice_over_an_empty_window_is_a_usage_error(tmp_path: object) -> None:
    from pathlib import Path

    prices = Path(str(tmp_path)) / "prices.yaml"
    prices.write_text("nano-us: {input: 1, output: 1}\n")
    result = CliRunner().invoke(app, ["ledger", "reprice", "--prices", str(prices), "--since", "2026-12-04",
                                      "--until", "2026-12-03", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not before" in result.output, result.output
    assert not list(Path(str(tmp_path)).glob("*.json"))


@pytest.mark.parametrize(("args", "named"), [
    (["--json", "--csv"], "--json and --csv are mutually exclusive"),
    (["--source", "topic", "--url", "http://127.0.0.1:1/"], "--url and --source topic are mutually exclusive"),
])
def test_options_that_exclude_each_other_are_a_usage_error(args: list[str], named: str) -> None:
    # `--json --csv` printed JSON: one option silently won. Refused before anything is read (no ledger runs here).
    result = CliRunner().invoke(app, ["ledger", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert named in result.output


@pytest.fixture
def ledger_counting() -> Iterator[tuple[str, list[str]]]:
    """A stand-in ledger worker that counted 2 requests of task `t1` (tenant acme) and none of anything else; the
    paths it was asked are recorded."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            known = "task_id=t1" in self.path and "tenant=acme" in self.path
            body = orjson.dumps({"tenant": "acme", "task_id": "?", "requests": 2 if known else 0,
                                 "cost_micros": 0, "outcome": None, "positions": {}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url, asked


def test_an_outcome_for_a_task_no_request_carried_is_refused(ledger_counting: tuple[str, list[str]]) -> None:
    url, asked = ledger_counting
    result = CliRunner().invoke(app, ["outcome", "t-typo", "resolved", "--tenant", "acme", "--url", url])
    assert result.exit_code == 2, result.output
    (line,) = lines(result.output)
    assert line == ("task 't-typo' of tenant 'acme' is unknown: no request carried it (the ledger counted none); "
                    "check the id and --tenant, or publish anyway with --unseen")
    assert asked == ["/ledger/task/?tenant=acme&task_id=t-typo"]
    # another tenant's task is unknown to this one too
    other = CliRunner().invoke(app, ["outcome", "t1", "failed", "--tenant", "globex", "--url", url])
    assert other.exit_code == 2 and "task 't1' of tenant 'globex' is unknown" in other.output


def test_an_outcome_needs_the_ledger_or_the_topic_to_check_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("TOLLWAY_LEDGER_PORT", str(port))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["outcome", "t1", "resolved"])
        both = CliRunner().invoke(app, ["outcome", "t1", "resolved", "--unseen", "--source", "topic"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    (line,) = lines(result.output)
    assert f"no ledger worker at http://127.0.0.1:{port}" in line and "--source topic" in line
    assert both.exit_code == 2 and "--unseen and --source topic are mutually exclusive" in both.output
