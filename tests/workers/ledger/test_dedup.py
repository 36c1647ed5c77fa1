"""Counted once: seen retention, any lost writes after a kill repaired exactly, the first record decides."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.response import Response
from tests.workers.ledger.factories import (
    HOUR_NS,
    T0,
    agent_steps,
    assert_counted_as_without_a_crash,
    partitioned,
    records_strategy,
    response,
)
from workers.ledger.aggregator import Aggregator, ledger_rows_from, outcome_rows_from
from workers.ledger.cells import window_start_ms
from workers.ledger.dedup import apply_response, expired_seen


def test_seen_retention_only_touches_its_partition() -> None:
    agg = Aggregator.empty()
    agg.add(response("old0"), partition=0)
    agg.add(response("old1"), partition=1)
    agg.add(response("new0", at_ns=T0 + 48 * HOUR_NS), partition=0)
    cutoff = window_start_ms(T0 + 48 * HOUR_NS, "day")
    assert expired_seen(agg.seen, partition=0, before_day_ms=cutoff) == ["old0"]


# ------------------------------------------------------------------------------------ crash simulation
class LoggedTable(dict[str, Any]):
    """A dict whose assignments are appended to a per-partition changelog, like a Faust table's."""

    def __init__(self, log: dict[int, list[tuple[str, Any]]], current: list[int]) -> None:
        super().__init__()
        self.log, self.current = log, current

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.log.setdefault(self.current[0], []).append((key, value))


def run_with_crash(records: list[tuple[int, Response]], crash_at: int, keep: list[int]) -> Aggregator:
    """Process records; crash after ``crash_at`` of them with the consumer's commit at an earlier point and each
    changelog partition keeping an arbitrary prefix (at least what the committed records wrote); recover; finish."""
    logs: dict[str, dict[int, list[tuple[str, Any]]]] = {"seen": {}, "cells": {}, "tasks": {}}
    current = [0]
    tables = {name: LoggedTable(log, current) for name, log in logs.items()}
    offsets: list[tuple[int, int]] = []
    next_offset: dict[int, int] = {}
    for partition, _ in records:
        offsets.append((partition, next_offset.get(partition, 0)))
        next_offset[partition] = offsets[-1][1] + 1
    committed = crash_at // 2  # records [0, committed) had their writes flushed before the commit
    flushed: dict[str, dict[int, int]] = {name: {} for name in logs}
    for i, ((partition, offset), (_, resp)) in enumerate(zip(offsets, records, strict=True)):
        if i >= crash_at:
            break
        current[0] = partition
        apply_response(resp, partition=partition, offset=offset, seen=tables["seen"], cells=tables["cells"],
                       tasks=tables["tasks"])
        if i + 1 == committed:
            flushed = {name: {p: len(entries) for p, entries in log.items()} for name, log in logs.items()}
    # Recovery: each changelog partition keeps a prefix no shorter than what was flushed before the commit.
    recovered: dict[str, dict[str, Any]] = {}
    choice = iter(keep)
    for name, log in logs.items():
        table: dict[str, Any] = {}
        for partition, entries in log.items():
            floor = flushed[name].get(partition, 0)
            kept = floor + next(choice, 0) % (len(entries) - floor + 1)
            for key, value in entries[:kept]:
                table[key] = value
        recovered[name] = table
    agg = Aggregator(recovered["seen"], recovered["cells"], recovered["tasks"], {}, {})
    # Redelivery: every partition resumes at its first uncommitted offset.
    for i, ((partition, offset), (_, resp)) in enumerate(zip(offsets, records, strict=True)):
        if i >= committed:
            agg.add(resp, partition=partition, offset=offset)
    return agg


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.integers(0, 40), st.lists(st.integers(0, 1000), min_size=6, max_size=6))
def test_any_lost_writes_after_a_kill_are_repaired_exactly(raw: list[tuple[Any, ...]], crash: int,
                                                           keep: list[int]) -> None:
    records = partitioned(raw)
    got = run_with_crash(records, min(crash, len(records)), keep)
    assert_counted_as_without_a_crash(got, records)


def test_first_record_of_a_request_decides_even_when_unreadable() -> None:
    agg = Aggregator.empty()
    assert agg.add_unreadable("r1", partition=0, offset=0)
    assert not agg.add(response("r1"), partition=0, offset=1)  # a later, readable record of r1 is a duplicate
    assert agg.rows() == []


def test_a_redelivered_agent_step_books_its_tool_calls_once() -> None:
    steps = agent_steps("small", 90, [("search", 30, "ok"), ("shell", 0, "denied")])
    seen: dict[str, Any] = {}
    cells: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    for _ in range(2):  # the same record redelivered
        assert apply_response(response("r1", cost=90, steps=steps, task_id="t1"), partition=0, offset=5,
                              seen=seen, cells=cells, tasks=tasks)
    rows = {row.model: row for row in ledger_rows_from(cells)}
    assert {m: (r.requests, r.cost_micros, r.tool_calls) for m, r in rows.items()} == {
        "small": (1, 60, 0), "tool:search": (0, 30, 1), "tool:shell": (0, 0, 1)}
    assert [(r.requests, r.cost_micros) for r in outcome_rows_from(tasks, {})] == [(1, 90)]
