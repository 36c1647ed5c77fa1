"""Scenario 6 (economics) on a tiny workload: the JSON contract bench/run.py reads, and that the harness would see a
wrong cache hit if the near-miss guard let one through (no timing, no figure thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.economics_bench import SYSTEMS, run
from bench.economics_workload import generate

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"figure", "value", "unit", "baseline", "ratio", "target", "pass"}


def test_json_line_has_the_rows_bench_run_reads() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.economics_bench", "--requests", "120", "--batch", "16",
                           "--json"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert set(SYSTEMS) <= result.keys()
    assert result["workload"]["requests"] == 120
    rows = result["rows"]
    assert rows and all(row.keys() >= ROW_KEYS for row in rows)
    figures = {row["figure"] for row in rows}
    assert {"cost per 1,000 requests (routing + caches)", "quality retained (sufficient tier, or a correct cache hit)",
            "wrong cache hits, share of hits"} <= figures
    for row in rows:
        assert isinstance(row["value"], int | float)
        assert row["pass"] in (True, False, None)
    baseline = result["all_large"]
    assert baseline["quality_retained_pct"] == 100.0 and baseline["hits"] == 0
    assert baseline["routing_mix"]["large"] == 120


async def test_a_hit_on_another_meaning_is_counted_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    asks = generate(300, seed=5)
    guarded = (await run(asks, "tollway", batch=16)).figures()
    monkeypatch.setattr("workers.cache.stage.near_miss", lambda *_args: None)  # no guard at all
    unguarded = (await run(asks, "tollway", batch=16)).figures()

    assert guarded["wrong_hits"] == 0
    assert unguarded["wrong_hits"] > 0
    assert unguarded["hits_by_kind"]["near_miss"] > 0
