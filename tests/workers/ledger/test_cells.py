"""Windows, cells and what each outcome adds to them."""

from __future__ import annotations

from schemas.envelope import Status
from tests.workers.ledger.factories import T0, response
from workers.ledger.cells import Counters, cells_of, counters_of, window_start_ms


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
