"""The hot-path targets in ``make bench``'s table: each a ratio against a peer measured in the same run."""

from __future__ import annotations

from typing import Any

from bench.run import rows


def _lat(p50: float, p99: float) -> dict[str, Any]:
    return {"overhead": {"count": 100, "p50_ms": p50, "p99_ms": p99}}


def _results(floor_rate: float) -> dict[str, Any]:
    relay = {"throughput": {"req_per_s": 2000.0, "cpu_ms_per_request": 0.3},
             "latency": {r: _lat(30.0, 60.0) for r in ("10", "50", "100")}}
    floor = {"throughput": {"req_per_s": floor_rate, "cpu_ms_per_request": 2.0},
             "latency": {"10": _lat(12.0, 20.0), "50": _lat(13.0, 22.0), "100": _lat(20.0, 60.0)}}
    colocated = {"throughput": {"req_per_s": 700.0, "cpu_ms_per_request": 0.9},
                 "latency": {"10": _lat(9.0, 30.0), "50": _lat(9.5, 70.0), "100": _lat(30.0, 150.0)}}
    return {"scenarios": {"1_physical_limit": {"6p": relay}, "0_floor": {"6p": floor},
                          "2_3_tollway_colocated": {"6p": colocated}}}


def test_targets_against_the_floor_and_the_route_itself() -> None:
    found = {row.figure: row for row in rows(_results(floor_rate=500.0))}
    label = "tollway co-located (worker all+)"
    p50 = found[f"{label} p50 @ 100 req/s ÷ floor's (6 processes)"]
    assert (p50.ratio, p50.passed, p50.note) == (1.5, True, "")
    p99 = found[f"{label} p99 @ 100 req/s ÷ floor's (6 processes)"]
    assert (p99.ratio, p99.passed) == (2.5, True)
    assert found[f"{label} overhead p50 @ 100 req/s (6 processes)"].passed is False  # 30 ms > 10 ms
    cliff = found[f"{label} p99 @ 50 req/s ÷ p99 @ 10 req/s, no cliff (6 processes)"]
    assert (round(cliff.ratio or 0, 3), cliff.passed) == (2.333, False)
    assert found[f"{label} CPU per request at saturation (6 processes)"].passed is True  # 0.9 ms


def test_a_floor_that_queues_at_the_rate_is_said_so() -> None:
    found = {row.figure: row for row in rows(_results(floor_rate=150.0))}
    row = found["tollway co-located (worker all+) p50 @ 100 req/s ÷ floor's (6 processes)"]
    assert "saturates at 150 req/s" in row.note
