"""The ingress bench's method without a broker: alternating order, paired figures, rows for bench/run.py."""

from __future__ import annotations

from bench.ingress_bench import Phase, order_of_round, summarise


def phase(load: str, k: int, path: str, wall_s: float, latency_ms: float, concurrency: int = 64) -> Phase:
    return Phase(load, k, path, 100, concurrency, wall_s, [latency_ms] * 100, 0,
                 {"workers": 0.5, "server": 0.1 if path == "http" else 0.0, "bench": 0.2})


def test_rounds_alternate_which_path_runs_first() -> None:
    assert [order_of_round(k) for k in range(3)] == [("direct", "http"), ("http", "direct"), ("direct", "http")]


def test_figures_are_medians_of_paired_rounds() -> None:
    # round 1 ran on a machine twice as slow: both paths slowed down, the paired ratio did not
    phases = [phase("concurrent", 0, "direct", 1.0, 10.0), phase("concurrent", 0, "http", 1.25, 14.0),
              phase("concurrent", 1, "http", 2.5, 28.0), phase("concurrent", 1, "direct", 2.0, 20.0),
              phase("serial", 0, "direct", 1.0, 5.0, 1), phase("serial", 0, "http", 1.0, 7.0, 1)]
    summary = summarise(phases)
    concurrent = summary["concurrent"]
    assert summary["rounds"] == 2
    assert concurrent["throughput_ratio"] == 0.8 and concurrent["direct_spread"] == 2.0
    assert concurrent["added_p50_ms"] == 6.0 and concurrent["p50_ratio"] == 1.4
    assert concurrent["cpu_ms_per_request_server"] == {"direct": 0.0, "http": 1.0}
    rows = {row["figure"]: row for row in summary["rows"]}
    assert rows["HTTP ingress added latency p50, one at a time"]["value"] == 2.0
    assert rows["HTTP ingress added latency p50, one at a time"]["pass"] is True
    assert rows["HTTP ingress throughput, 64 in flight"]["ratio"] == 0.8
    assert rows["HTTP ingress server CPU per request, 64 in flight"]["ratio"] == 0.2
    assert all({"figure", "value", "unit", "baseline", "ratio", "target", "pass"} <= set(row) for row in rows.values())


def test_the_mixed_load_reports_latency_only() -> None:
    phases = [phase("mixed", 0, "direct", 1.0, 10.0), phase("mixed", 0, "http", 1.0, 13.0)]
    summary = summarise(phases)
    assert summary["mixed"] == {"direct_p50_ms": 10.0, "http_p50_ms": 13.0, "added_p50_ms": 3.0, "p50_ratio": 1.3,
                                "direct_p99_ms": 10.0, "http_p99_ms": 13.0, "added_p99_ms": 3.0, "p99_ratio": 1.3}
    assert [row["figure"] for row in summary["rows"]] == [
        "HTTP ingress added latency p50, 64 in flight, both paths at once",
        "HTTP ingress added latency p99, 64 in flight, both paths at once"]
