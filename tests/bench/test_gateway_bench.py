"""The gateway benchmark's arithmetic: CPU per answered request, the sustained rate, the verdict rows."""

from __future__ import annotations

import math

from bench.gateway_bench import Phase, summarise, sustained_rate


def phase(system: str, rate: float | None, latencies: list[float], sent: int, wall_s: float,
          cpu_s: dict[str, float], k: int = 0) -> Phase:
    return Phase(system, "open" if rate else "closed", k, rate, sent, wall_s, latencies, sent - len(latencies), cpu_s)


TOLLWAY_CPU = {"workers": 0.5, "server": 0.1, "broker": 0.2, "redis": 0.0, "model": 0.05}
LITELLM_CPU = {"proxy": 2.0, "broker": 0.1, "redis": 0.0, "model": 0.05}


def test_cpu_per_request_counts_answered_requests_and_none_is_nan() -> None:
    assert phase("tollway", 25, [10.0] * 100, 100, 4.0, TOLLWAY_CPU).cpu_ms_per_request()["workers"] == 5.0
    assert math.isnan(phase("litellm", 25, [], 100, 4.0, LITELLM_CPU).cpu_ms_per_request()["proxy"])


def test_sustained_rate_is_the_highest_rate_every_round_kept_up_with() -> None:
    phases = [phase("tollway", 25, [1.0] * 100, 100, 4.0, TOLLWAY_CPU),
              phase("tollway", 50, [1.0] * 200, 200, 4.0, TOLLWAY_CPU),
              phase("tollway", 75, [1.0] * 150, 300, 6.0, TOLLWAY_CPU)]  # half answered: not sustained
    assert sustained_rate(phases, "tollway") == 50


def test_summary_compares_tollway_with_litellm_in_the_same_run() -> None:
    phases = []
    for k in range(2):
        for rate in (25.0, 50.0):
            phases.append(phase("tollway", rate, [20.0] * int(rate * 4), int(rate * 4), 4.0, TOLLWAY_CPU, k))
            phases.append(phase("litellm", rate, [30.0] * int(rate * 4), int(rate * 4), 4.0, LITELLM_CPU, k))
        phases.append(phase("tollway", None, [100.0] * 300, 300, 3.0, TOLLWAY_CPU, k))
        phases.append(phase("litellm", None, [300.0] * 300, 300, 10.0, LITELLM_CPU, k))
    summary = summarise(phases)
    assert summary["verdict"] == {"p50@25": True, "p99@25": True, "p50@50": True, "p99@50": True,
                                  "saturation": True}
    by = {(e["system"], e["offered_per_s"]): e for e in summary["table"]}
    # tollway's CPU counts its workers, server, broker and Redis; the fake model's is apart
    assert by[("tollway", 25.0)]["cpu_ms_per_request_total"] == 8.0
    assert by[("litellm", 25.0)]["cpu_ms_per_request_total"] == 20.0
    assert summary["closed_per_s"] == {"tollway": [100.0, 100.0], "litellm": [30.0, 30.0]}
