"""The lanes figure's rows (pure: no pipeline is started)."""

from __future__ import annotations

from bench.lanes_bench import TARGET_RATIO, _row


def test_the_figure_passes_within_the_target_ratio_only_when_every_request_was_ok() -> None:
    within = _row("p99", 1150.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO)
    assert (within["ratio"], within["pass"]) == (1.15, True)
    assert _row("p99", 1300.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO)["pass"] is False
    assert _row("p99", 900.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO, ok=False)["pass"] is False


def test_rows_without_a_target_carry_no_verdict() -> None:
    row = _row("backfill", 5.0, "req/s", baseline=None)
    assert (row["ratio"], row["pass"]) == (None, None)


def test_the_stage_profile_shows_where_the_slowest_requests_waited() -> None:
    from types import SimpleNamespace
    from typing import Any

    import orjson

    from bench.lanes_bench import stage_profile
    from bench.load import Arrivals

    def hop(stage: str, queue_ms: float, service_ms: float, **extra: Any) -> dict[str, Any]:
        return {"stage": stage, "queue_ms": queue_ms, "service_ms": service_ms, **extra}

    audit, responses = Arrivals(), Arrivals()
    for i in range(100):
        slow = i == 99
        rid = f"r{i}"
        audit.at_ns[rid] = 2_000_000_000
        audit.values[rid] = orjson.dumps({"audited_at_ns": 1_990_000_000, "hops": [
            hop("model", 1400.0 if slow else 300.0, 1000.0 if slow else 250.0), hop("audit", 5.0, 0.0)]})
        responses.values[rid] = orjson.dumps({"hops": [hop("model", 0, 0, batch_size=12)]})
    collector = SimpleNamespace(arrivals={"audit": audit, "responses": responses})
    latencies = {f"r{i}": 2500.0 if i == 99 else 600.0 for i in range(100)}
    profile = stage_profile(collector, "audit", list(latencies), latencies, "responses")  # type: ignore[arg-type]
    model = profile["model"]
    assert model["mean_batch"] == 12.0  # audit records carry no batch size: the responses' hops give it
    assert (model["slow_queue_ms"], model["slow_service_ms"]) == (850.0, 625.0)  # the slowest 2 %: r99 and one more
    assert profile["audit→log"]["mean_queue_ms"] == 10.0  # audited → arrived on the audit log
    assert "slow_queue_ms" in profile["audit"]


def test_the_two_phases_of_a_round_draw_their_prompts_pairwise_from_one_block() -> None:
    from bench.lanes_bench import paired_prompts

    alone, flood = paired_prompts(1000, 200, "run-1")
    assert len(alone) == len(flood) == 200 and sorted(alone + flood) == list(range(1000, 1400))  # distinct, one block
    assert all({a, f} == {1000 + 2 * k, 1001 + 2 * k} for k, (a, f) in enumerate(zip(alone, flood, strict=True)))
    assert 0 < sum(a % 2 for a in alone) < 200  # the coin decides which of a pair each phase gets
    assert paired_prompts(1000, 200, "run-1") == (alone, flood)  # seeded: a run can be repeated


def test_the_slowest_requests_are_listed_with_their_model_and_model_hop() -> None:
    from types import SimpleNamespace

    import orjson

    from bench.lanes_bench import stage_profile
    from bench.load import Arrivals

    audit, responses = Arrivals(), Arrivals()
    for i in range(50):
        rid = f"r{i}"
        audit.values[rid] = orjson.dumps({"hops": [{"stage": "model", "queue_ms": 10.0 * i, "service_ms": 5.0}]})
        responses.values[rid] = orjson.dumps({"model": "core-us" if i == 49 else "nano-us",
                                              "usage": {"output_tokens": 70},
                                              "hops": [{"stage": "model", "queue_ms": 0, "service_ms": 0,
                                                        "batch_size": 3}]})
    collector = SimpleNamespace(arrivals={"audit": audit, "responses": responses})
    latencies = {f"r{i}": float(i) for i in range(50)}
    profile = stage_profile(collector, "audit", list(latencies), latencies, "responses")  # type: ignore[arg-type]
    assert profile["slowest"] == [{"ms": 49, "model": "core-us", "out": 70, "batch": 3, "model_queue_ms": 490,
                                   "model_service_ms": 5}]
