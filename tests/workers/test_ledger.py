"""The ledger's pure logic: cells, exactly-once under lost writes, cost per outcome, pricing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import Status, Usage
from schemas.errors import ConfigError
from schemas.response import Response
from workers.ledger import (
    Aggregator,
    Counters,
    Price,
    apply_outcome,
    apply_response,
    cells_of,
    counters_of,
    expired_seen,
    load_prices,
    outcome_key,
    price_usage,
    reprice,
    totals_by_tenant,
    window_start_ms,
)

HOUR_NS = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


def response(rid: str, *, tenant: str = "acme", model: str | None = "small", cost: int = 100,
             status: Status = Status.OK, at_ns: int = T0, task_id: str | None = None,
             usage: Usage | None = None, saved: int = 0, cache: str | None = None) -> Response:
    return Response(request_id=rid, tenant=tenant, status=status, model=model, cost_micros=cost,
                    usage=usage or Usage(input_tokens=10, cached_input_tokens=2, output_tokens=5),
                    created_at_ns=at_ns, completed_at_ns=at_ns + 1, task_id=task_id, saved_micros=saved,
                    cache=cache)


def test_windows_are_tumbling_utc() -> None:
    assert window_start_ms(T0, "hour") == 1_699_999_200_000
    assert window_start_ms(T0, "day") == 1_699_920_000_000
    hour, day = cells_of(response("r"))
    assert (hour.window, day.window) == ("hour", "day")
    assert hour.window_start_ms >= day.window_start_ms


def test_counters_of_each_outcome() -> None:
    assert counters_of(response("a")) == Counters(requests=1, input_tokens=10, cached_input_tokens=2,
                                                  output_tokens=5, cost_micros=100)
    assert counters_of(response("b", status=Status.DENIED, model=None, cost=0)).denials == 1
    assert counters_of(response("c", status=Status.DEAD_LETTERED)).failures == 1
    assert counters_of(response("d", status=Status.DEADLINE_EXCEEDED)).deadline_misses == 1
    hit = counters_of(response("e", status=Status.CACHE_HIT, cost=0, saved=70, cache="hit"))
    assert (hit.cache_hits, hit.saved_micros) == (1, 70)


def test_rows_per_tenant_model_window_and_duplicates_counted_once() -> None:
    agg = Aggregator.empty()
    assert agg.add(response("r1"))
    assert agg.add(response("r2", model="large", cost=900))
    assert agg.add(response("r3", at_ns=T0 + HOUR_NS))
    assert agg.add(response("r4", tenant="globex"))
    assert not agg.add(response("r1", cost=5))  # a replayed response: same request_id, new record
    day = agg.rows(tenant="acme", window="day")
    assert [(r.model, r.requests, r.cost_micros) for r in day] == [("large", 1, 900), ("small", 2, 200)]
    hours = agg.rows(tenant="acme", window="hour")
    assert sum(r.requests for r in hours) == 3 and len(hours) == 3
    assert totals_by_tenant(agg.rows(window="day"))["globex"].requests == 1


def test_cost_per_outcome() -> None:
    agg = Aggregator.empty()
    for i in range(3):
        agg.add(response(f"a{i}", task_id="t1", cost=100))
    agg.add(response("b0", task_id="t2", cost=50))
    agg.add(response("c0", task_id="t3", cost=7))
    agg.add(response("d0", cost=1000))  # no task
    apply_outcome(agg.outcomes, tenant="acme", task_id="t1", outcome="resolved", at_ns=2)
    apply_outcome(agg.outcomes, tenant="acme", task_id="t2", outcome="resolved", at_ns=2)
    apply_outcome(agg.outcomes, tenant="acme", task_id="t3", outcome="resolved", at_ns=1)
    assert not apply_outcome(agg.outcomes, tenant="acme", task_id="t2", outcome="failed", at_ns=1)  # older: ignored
    assert apply_outcome(agg.outcomes, tenant="acme", task_id="t3", outcome="failed", at_ns=3)  # corrected
    rows = {r.outcome: r for r in agg.outcome_rows(tenant="acme")}
    assert (rows["resolved"].tasks, rows["resolved"].requests, rows["resolved"].cost_micros) == (2, 4, 350)
    assert rows["resolved"].cost_per_task_micros == 175
    assert rows["failed"].cost_per_task_micros == 7
    assert "open" not in rows
    assert agg.outcomes[outcome_key("acme", "t3")][0] == "failed"


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


request_ids = st.sampled_from([f"r{i}" for i in range(12)])
records_strategy = st.lists(
    st.tuples(request_ids, st.sampled_from(["acme", "globex"]), st.sampled_from(["small", "large"]),
              st.integers(0, 1000), st.sampled_from([None, "t1", "t2"]), st.integers(0, 30)),
    min_size=1, max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.integers(0, 40), st.lists(st.integers(0, 1000), min_size=6, max_size=6))
def test_any_lost_writes_after_a_kill_are_repaired_exactly(raw: list[tuple[Any, ...]], crash: int,
                                                           keep: list[int]) -> None:
    records: list[tuple[int, Response]] = []
    for rid, tenant, model, cost, task, hours in raw:
        # Responses are keyed by request_id, so a replay lands in the same partition.
        partition = int(rid[1:]) % 2
        records.append((partition, response(rid, tenant=tenant, model=model, cost=cost, task_id=task,
                                            at_ns=T0 + hours * HOUR_NS)))
    # The same request's records can differ (a replay); the first one in partition order is the one counted.
    expected = Aggregator.empty()
    for partition, resp in records:
        expected.add(resp, partition=partition)
    got = run_with_crash(records, min(crash, len(records)), keep)
    for window in ("hour", "day"):
        assert got.rows(window=window) == expected.rows(window=window)
    assert got.outcome_rows() == expected.outcome_rows()
    assert set(got.seen) == set(expected.seen)


# ------------------------------------------------------------------------------------ pricing
def test_price_usage_integer_round_up() -> None:
    price = Price(input=3_000_000, cached_input=300_000, output=15_000_000)  # $3 / $0.30 / $15 per Mtok
    assert price_usage(price, Usage(input_tokens=1000, cached_input_tokens=0, output_tokens=1000)) == 18_000
    assert price_usage(price, Usage(input_tokens=1, cached_input_tokens=1, output_tokens=0)) == 4  # 3.3 → 4
    assert price_usage(price, Usage()) == 0


def test_load_prices(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  small: {input: 100000, output: 400000}\n  large: {input: 1, cached_input: 0, "
                    "output: 2}\n")
    prices = load_prices(path)
    assert prices["small"] == Price(input=100_000, cached_input=100_000, output=400_000)
    assert prices["large"].cached_input == 0
    path.write_text("small: {input: 1.5, output: 2}\n")
    with pytest.raises(ConfigError, match=r"small\.input"):
        load_prices(path)


def test_reprice_old_vs_new_per_tenant_and_window_range() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=0)
    records = [
        (0, 0, response("a", cost=1_000, usage=usage)),
        (0, 1, response("b", cost=1_000, usage=usage, model="unknown")),
        (1, 0, response("c", tenant="globex", cost=5, usage=usage)),
        (1, 1, response("c", tenant="globex", cost=5, usage=usage)),  # replay: once
        (1, 2, response("late", cost=1, usage=usage, at_ns=T0 + 10 * HOUR_NS)),
    ]
    rows, version = reprice(records, {"small": Price(input=2_000, cached_input=0, output=0)},
                            since_ns=T0, until_ns=T0 + HOUR_NS)
    by_tenant = {r.tenant: r for r in rows}
    assert (by_tenant["acme"].old_cost_micros, by_tenant["acme"].new_cost_micros) == (2_000, 3_000)
    assert by_tenant["acme"].unpriced_requests == 1 and by_tenant["acme"].requests == 2
    assert (by_tenant["globex"].old_cost_micros, by_tenant["globex"].new_cost_micros) == (5, 2_000)
    assert by_tenant["globex"].delta_micros == 1_995
    assert sum(r.cost_micros for r in version.rows(window="day")) == 5_000


def test_evaluations_are_aggregated_beside_cost() -> None:
    from schemas.envelope import Evaluation

    agg = Aggregator.empty()
    verdicts = [Evaluation(grounded_share=1.0, grounded=True, refusal=False, structured_valid=True),
                Evaluation(grounded_share=0.5, grounded=False, refusal=False),
                Evaluation(refusal=True),
                None]  # not sampled: judged by none of the content evaluators
    for i, verdict in enumerate(verdicts):
        late = i == 1  # completed after its deadline
        agg.add(response(f"q{i}", cost=250).model_copy(update={
            "evaluation": verdict, "deadline_at_ns": T0 + (0 if late else 10**9)}))
    agg.add(response("q0", cost=999).model_copy(update={"evaluation": verdicts[2]}))  # a replay: ignored
    (row,) = agg.rows()
    assert (row.requests, row.cost_micros, row.cost_per_1k_requests_micros) == (4, 1000, 250_000)
    assert (row.grounded_evaluated, row.grounded_passed) == (2, 1)
    assert (row.structured_evaluated, row.structured_passed) == (1, 1)
    assert (row.refusal_evaluated, row.refusals) == (3, 1)
    assert (row.slo_evaluated, row.slo_passed) == (4, 3)
    assert row.pass_rates() == {"grounded": 0.5, "structured_output": 1.0, "no_refusal": 0.6667, "slo_met": 0.75}


def test_cell_values_written_before_the_quality_counters_still_read() -> None:
    legacy = [7, 1, 10, 2, 5, 100, 0, 0, 0, 0, 0]  # [watermark, *the ten cost counters]
    assert Counters.from_list(legacy[1:]) == Counters(requests=1, input_tokens=10, cached_input_tokens=2,
                                                      output_tokens=5, cost_micros=100)


# ------------------------------------------------------------------------------------ checkpoints
def run_with_checkpoints(records: list[tuple[int, Response]], every: int, crash_at: int,
                         keep: list[int]) -> Aggregator:
    """The worker's scheme: live tables, a checkpoint of a partition every ``every`` of its records; a kill after
    ``crash_at`` records leaves each changelog partition with an arbitrary prefix of its checkpoint writes; the
    restart loads the checkpoints, rebuilds seen from the keys up to the mark and re-applies the rest."""
    from workers.ledger import LiveTable, checkpoint_writes, load_checkpoint

    live_cells, live_tasks, seen = LiveTable(), LiveTable(), {}
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
    records = [(int(rid[1:]) % 2, response(rid, tenant=tenant, model=model, cost=cost, task_id=task,
                                           at_ns=T0 + hours * HOUR_NS))
               for rid, tenant, model, cost, task, hours in raw]
    expected = Aggregator.empty()
    for partition, resp in records:
        expected.add(resp, partition=partition)
    got = run_with_checkpoints(records, every, min(crash, len(records)), keep)
    for window in ("hour", "day"):
        assert got.rows(window=window) == expected.rows(window=window)
    assert got.outcome_rows() == expected.outcome_rows()
    assert set(got.seen) == set(expected.seen)


def test_first_record_of_a_request_decides_even_when_unreadable() -> None:
    agg = Aggregator.empty()
    assert agg.add_unreadable("r1", partition=0, offset=0)
    assert not agg.add(response("r1"), partition=0, offset=1)  # a later, readable record of r1 is a duplicate
    assert agg.rows() == []


# ------------------------------------------------------------------------------------ vs the audit log
def test_compare_with_audit_per_tenant() -> None:
    from workers.ledger import compare_with_audit

    counted = {"a1": ("acme", 100), "a2": ("acme", 50), "a3": ("acme", 7), "g1": ("globex", 10)}
    audited = {"a1": ("acme", 100), "a2": ("acme", 50), "g1": ("globex", 10), "g9": ("globex", 3)}
    acme, globex = compare_with_audit(counted, audited, {"acme": 157, "globex": 10})
    assert (acme.requests, acme.audited_requests, acme.audited_cost_micros) == (3, 2, 150)
    assert (acme.unaudited_requests, acme.unaudited_cost_micros, acme.difference_micros) == (1, 7, 0)
    assert (globex.audited_elsewhere, globex.difference_micros) == (1, 0)  # g9: audited after the ledger's cut


def test_compare_with_audit_finds_a_wrong_cost() -> None:
    from workers.ledger import compare_with_audit

    (acme,) = compare_with_audit({"a1": ("acme", 100)}, {"a1": ("acme", 90)}, {"acme": 100})
    assert (acme.mismatched, acme.difference_micros) == (1, 10)
