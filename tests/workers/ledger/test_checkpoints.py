"""Checkpoints cut anywhere recover exactly."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.response import Response
from tests.workers.ledger.factories import assert_counted_as_without_a_crash, partitioned, records_strategy
from workers.ledger.aggregator import Aggregator
from workers.ledger.checkpoints import LiveTable, checkpoint_writes, load_checkpoint
from workers.ledger.dedup import apply_response


def run_with_checkpoints(records: list[tuple[int, Response]], every: int, crash_at: int,
                         keep: list[int]) -> Aggregator:
    """The worker's scheme: live tables, a checkpoint of a partition every ``every`` of its records; a kill after
    ``crash_at`` records leaves each changelog partition with an arbitrary prefix of its checkpoint writes; the
    restart loads the checkpoints, rebuilds seen from the keys up to the mark and re-applies the rest."""
    live_cells, live_tasks = LiveTable(), LiveTable()
    seen: dict[str, Any] = {}
    logs: dict[str, dict[int, list[tuple[str, Any]]]] = {"cells": {}, "tasks": {}}
    positions: dict[int, int] = {}
    since: dict[int, int] = {}
    topic: list[tuple[int, int, Response]] = []
    for partition, resp in records:
        positions[partition] = positions.get(partition, -1) + 1
        topic.append((partition, positions[partition], resp))
    for partition, offset, resp in topic[:crash_at]:
        live_cells.partition = live_tasks.partition = partition
        apply_response(resp, partition=partition, offset=offset, seen=seen, cells=live_cells, tasks=live_tasks)
        since[partition] = since.get(partition, 0) + 1
        if since[partition] >= every:
            since[partition] = 0
            for name, live in (("cells", live_cells), ("tasks", live_tasks)):
                logs[name].setdefault(partition, []).extend(checkpoint_writes(live, partition=partition,
                                                                              offset=offset))
    choice = iter(keep)
    restored = {"cells": LiveTable(), "tasks": LiveTable()}
    marks: dict[str, dict[int, int]] = {}
    for name, log in logs.items():
        table: dict[str, Any] = {}
        for entries in log.values():
            for key, value in entries[:next(choice, 0) % (len(entries) + 1)]:
                table[key] = value
        marks[name] = load_checkpoint(table, restored[name])
    agg = Aggregator({}, restored["cells"], restored["tasks"], {}, {})
    for partition, offset, resp in topic:  # the catch-up reads every partition to its end
        mark = min(marks["cells"].get(partition, -1), marks["tasks"].get(partition, -1))
        if offset > mark:
            agg.add(resp, partition=partition, offset=offset)
        else:
            agg.seen.setdefault(resp.request_id, [partition, offset, 0])
    return agg


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.integers(1, 5), st.integers(0, 40), st.lists(st.integers(0, 1000), min_size=4,
                                                                          max_size=4))
def test_checkpoints_cut_anywhere_recover_exactly(raw: list[tuple[Any, ...]], every: int, crash: int,
                                                  keep: list[int]) -> None:
    records = partitioned(raw)
    got = run_with_checkpoints(records, every, min(crash, len(records)), keep)
    assert_counted_as_without_a_crash(got, records)
