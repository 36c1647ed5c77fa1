"""Windows, cells and what each outcome adds to them."""

from __future__ import annotations

from typing import Any

from schemas.envelope import Status
from tests.workers.ledger.factories import T0, agent_steps, response
from workers.ledger.cells import Counters, cell_deltas, cells_of, counters_of, task_counters_of, window_start_ms
from workers.ledger.dedup import _add_with_watermark


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


def test_cell_values_written_before_the_quality_counters_still_read() -> None:
    legacy = [7, 1, 10, 2, 5, 100, 0, 0, 0, 0, 0]  # [watermark, *the ten cost counters]
    assert Counters.from_list(legacy[1:]) == Counters(requests=1, input_tokens=10, cached_input_tokens=2,
                                                      output_tokens=5, cost_micros=100)


def test_cell_values_written_before_tool_calls_still_read() -> None:
    before = Counters(requests=1, cost_micros=100, slo_evaluated=1, slo_passed=1).as_list()[:-1]  # no tool_calls
    assert Counters.from_list(before) == Counters(requests=1, cost_micros=100, slo_evaluated=1, slo_passed=1)
    cells: dict[str, Any] = {"k": [3, *before]}
    assert _add_with_watermark(cells, "k", 4, Counters(cost_micros=5, tool_calls=1).as_list())
    assert Counters.from_list(cells["k"][1:]) == Counters(requests=1, cost_micros=105, slo_evaluated=1, slo_passed=1,
                                                          tool_calls=1)


def test_tool_calls_are_booked_apart_from_the_model_turns() -> None:
    steps = agent_steps("small", 100, [("search", 20, "ok"), ("search", 15, "ok"), ("shell", 0, "denied")])
    deltas = cell_deltas(response("a", cost=100, steps=steps))
    day = {cell.model: counters for cell, counters in deltas if cell.window == "day"}
    assert set(day) == {"small", "tool:search", "tool:shell"}
    assert day["small"] == Counters(requests=1, input_tokens=10, cached_input_tokens=2, output_tokens=5,
                                    cost_micros=65)
    assert day["tool:search"] == Counters(cost_micros=35, tool_calls=2)
    assert day["tool:shell"] == Counters(tool_calls=1)  # denied: no price, still a call
    for window in ("hour", "day"):
        mine = [c for cell, c in deltas if cell.window == window]
        assert sum(c.cost_micros for c in mine) == 100 and sum(c.requests for c in mine) == 1
    assert task_counters_of(response("a", cost=100, steps=steps)).tool_calls == 3
    assert cell_deltas(response("b")) == [(cell, counters_of(response("b"))) for cell in cells_of(response("b"))]


def test_a_cascades_cheaper_call_is_booked_on_its_own_row() -> None:
    escalated = response("a", model="max-us", cost=1000).model_copy(
        update={"cascade_model": "core-us", "cascade_cost_micros": 120})
    deltas = cell_deltas(escalated)
    day = {cell.model: counters for cell, counters in deltas if cell.window == "day"}
    assert set(day) == {"max-us", "cascade:core-us"}
    assert day["max-us"].cost_micros == 880 and day["max-us"].requests == 1
    assert day["cascade:core-us"] == Counters(cost_micros=120, cascade_calls=1)
    for window in ("hour", "day"):  # the ledger still sums to what the audit records: cost_micros, one request
        mine = [c for cell, c in deltas if cell.window == window]
        assert sum(c.cost_micros for c in mine) == 1000 and sum(c.requests for c in mine) == 1
    assert task_counters_of(escalated).cost_micros == 1000
