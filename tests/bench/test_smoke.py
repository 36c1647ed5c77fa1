"""The benchmark harness end to end, tiny and in-process: it produces the result structure (no timed assertion)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.report import write_results
from bench.run import Options, run_all

pytestmark = pytest.mark.integration


async def test_harness_produces_every_figure(tmp_path: Path) -> None:
    opts = Options(requests=20, warmup=5, rates=(40.0,), rate_seconds=0.5, layouts=(0,), latency_layouts=(0,),
                   extras="none", out_dir=tmp_path, systems=("relay", "shell"), micro_batch=5, micro_repeat=1)
    results = await run_all(opts, log=lambda _line: None)

    relay = results["scenarios"]["1_physical_limit"]["0p"]
    shell = results["scenarios"]["2_3_shell"]["0p"]
    for system in (relay, shell):
        assert "error" not in system, system
        assert system["throughput"]["delivered"] == 20
        assert system["throughput"]["req_per_s"] > 0
        latency = system["latency"]["40"]
        assert latency["sent"] == 20 and latency["missing"] == 0
        assert latency["overhead"]["count"] == 20 and latency["overhead"]["p99_ms"] >= latency["overhead"]["p50_ms"]
    assert shell["throughput"]["statuses"] == {"ok": 20}

    micro = results["scenarios"]["2b_cpu_per_record"]
    assert [hop["stage"] for hop in micro["hops"]] == ["retrieval", "policy", "cache", "model", "postprocess", "audit"]
    assert micro["total"]["relay"] > 0 and micro["total"]["runner"] > 0

    figures = {row["figure"] for row in results["rows"]}
    assert "relay throughput (in the harness)" in figures
    assert "tollway shell (pass-through stages) throughput (in the harness)" in figures

    paths = write_results(results, tmp_path)
    assert orjson.loads(paths["json"].read_bytes())["rows"] == results["rows"]
    table = paths["md"].read_text()
    assert "| figure | value | baseline | ratio | target | pass |" in table
    assert "relay throughput (in the harness)" in table
