from pathlib import Path

from schemas.envelope import Status
from schemas.response import HopSummary, Response
from streams.cli.report import summarise, write_report


def response(i: int, *, replay: bool = False) -> Response:
    hops = [HopSummary(stage=s, queue_ms=1.0 + i, service_ms=0.5) for s in ("retrieval", "policy", "model")]
    return Response(request_id=f"r{i}", tenant="acme", status=Status.OK, hops=hops, created_at_ns=0,
                    completed_at_ns=int((10 + i) * 1e6), replay=replay)


def test_summary_percentiles_per_stage_and_replays_ignored() -> None:
    report = summarise([response(i) for i in range(100)] + [response(1000, replay=True)])
    assert report.requests == 100
    assert [s.stage for s in report.stages] == ["retrieval", "policy", "model"]
    assert report.stages[0].queue_ms[50] == 50.5
    assert report.end_to_end_ms[99] < 1000


def test_write_report_renders_png_and_html(tmp_path: Path) -> None:
    png, page = write_report([response(i) for i in range(20)], tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per-stage latency waterfall" in page.read_text()


def test_a_bad_or_missing_responses_file_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streams.cli.main import app

    junk = tmp_path / "junk.jsonl"
    junk.write_text("junk\n")
    for path in (junk, tmp_path / "missing.jsonl"):
        result = CliRunner().invoke(app, ["report", "--responses", str(path), "--out", str(tmp_path)])
        assert result.exit_code == 2 and "cannot read responses" in result.output, result.output
