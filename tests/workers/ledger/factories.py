"""Responses, records and checks shared by the ledger's tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas.envelope import Status, Usage
from schemas.response import Response, StepSummary
from workers.ledger.aggregator import Aggregator

HOUR_NS = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


def response(rid: str, *, tenant: str = "acme", model: str | None = "small", cost: int = 100,
             status: Status = Status.OK, at_ns: int = T0, task_id: str | None = None,
             usage: Usage | None = None, saved: int = 0, cache: str | None = None,
             steps: list[StepSummary] | None = None) -> Response:
    return Response(request_id=rid, tenant=tenant, status=status, model=model, cost_micros=cost,
                    usage=usage or Usage(input_tokens=10, cached_input_tokens=2, output_tokens=5),
                    created_at_ns=at_ns, completed_at_ns=at_ns + 1, task_id=task_id, saved_micros=saved,
                    cache=cache, steps=steps or [])


def agent_steps(model: str, cost: int, tools: list[tuple[str, int, str]]) -> list[StepSummary]:
    """One model turn and the tool calls ``(name, cost, status)`` it asked for; ``cost`` is the response's whole
    cost (the model turn gets what the tools did not)."""
    turn = StepSummary(kind="model", step=1, name=model, cost_micros=cost - sum(c for _n, c, _s in tools))
    return [turn, *(StepSummary(kind="tool", step=1, name=name, status=status, cost_micros=price, call_id=f"c{i}")
                    for i, (name, price, status) in enumerate(tools))]


request_ids = st.sampled_from([f"r{i}" for i in range(12)])
records_strategy = st.lists(
    st.tuples(request_ids, st.sampled_from(["acme", "globex"]), st.sampled_from(["small", "large"]),
              st.integers(0, 1000), st.sampled_from([None, "t1", "t2"]), st.integers(0, 30)),
    min_size=1, max_size=40,
)


def partitioned(raw: list[tuple[Any, ...]]) -> list[tuple[int, Response]]:
    """Drawn ``records_strategy`` rows as (partition, response). Responses are keyed by request_id, so a replay
    lands in the same partition. A cost divisible by 3 makes an agent step (two calls of one tool and a denied call),
    so the crash tests cover a record that writes several cells."""
    def steps(model: str, cost: int) -> list[StepSummary]:
        tools = [("search", cost // 3, "ok"), ("search", cost // 3, "ok"), ("shell", 0, "denied")]
        return agent_steps(model, cost, tools) if cost % 3 == 0 else []
    return [(int(rid[1:]) % 2, response(rid, tenant=tenant, model=model, cost=cost, task_id=task,
                                        at_ns=T0 + hours * HOUR_NS, steps=steps(model, cost)))
            for rid, tenant, model, cost, task, hours in raw]


def assert_counted_as_without_a_crash(got: Aggregator, records: list[tuple[int, Response]]) -> None:
    """``got`` holds the ledger of ``records`` read once, in partition order, with nothing lost."""
    # The same request's records can differ (a replay); the first one in partition order is the one counted.
    expected = Aggregator.empty()
    for partition, resp in records:
        expected.add(resp, partition=partition)
    for window in ("hour", "day"):
        assert got.rows(window=window) == expected.rows(window=window)
    assert got.outcome_rows() == expected.outcome_rows()
    assert set(got.seen) == set(expected.seen)
