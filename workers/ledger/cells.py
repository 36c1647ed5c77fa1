"""What one response adds to the ledger, and where: :class:`Counters`, the hour and day windows, the cells, and the
keys of the ledger's tables."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

import orjson

from schemas.envelope import Evaluation, Status
from schemas.ledger import CASCADE_PREFIX, TOOL_PREFIX, LedgerWindow
from schemas.response import Response
from workers.evaluators import slo_met

WINDOW_MS: dict[str, int] = {"hour": 3_600_000, "day": 86_400_000}
WINDOWS: tuple[LedgerWindow, ...] = ("hour", "day")
NO_MODEL = "-"  # the model label of requests that never reached a model (denied, cache hits, failures)


@dataclass(frozen=True, slots=True)
class Counters:
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    cache_hits: int = 0
    saved_micros: int = 0
    denials: int = 0
    failures: int = 0
    deadline_misses: int = 0
    # Quality beside cost (workers/evaluators.py): how many responses each evaluator judged, and how many passed.
    # Appended after the cost counters, so table values written before they existed still read (as zeros).
    grounded_evaluated: int = 0
    grounded_passed: int = 0
    structured_evaluated: int = 0
    structured_passed: int = 0
    refusal_evaluated: int = 0
    refusals: int = 0
    slo_evaluated: int = 0
    slo_passed: int = 0
    # Agent loops: tool calls booked in a ``tool:<name>`` cell (requests 0, cost the call's price); appended last.
    tool_calls: int = 0
    # Verified cascades: a cheaper answer that failed verification, booked in a ``cascade:<model>`` cell.
    cascade_calls: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(*map(operator.add, _values(self), _values(other)))

    def as_list(self) -> list[int]:
        return list(_values(self))

    @classmethod
    def from_list(cls, values: Iterable[int]) -> Counters:
        """A table value's counters; a shorter list (written before later counters existed) reads them as zeros."""
        return cls(*values)


COUNTER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Counters))
# dataclasses.astuple deep-copies field by field: it was 90% of the ledger's time per response.
_values = operator.attrgetter(*COUNTER_FIELDS)


def counters_of(response: Response) -> Counters:
    """What one terminal outcome adds to its cells."""
    status = response.status
    verdicts = response.evaluation or Evaluation()
    slo = slo_met(response)
    return Counters(
        requests=1,
        input_tokens=response.usage.input_tokens,
        cached_input_tokens=response.usage.cached_input_tokens,
        output_tokens=response.usage.output_tokens,
        cost_micros=response.cost_micros,
        cache_hits=int(status is Status.CACHE_HIT or response.cache == "hit"),
        saved_micros=response.saved_micros,
        denials=int(status is Status.DENIED),
        failures=int(status in (Status.FAILED, Status.DEAD_LETTERED)),
        deadline_misses=int(status is Status.DEADLINE_EXCEEDED),
        grounded_evaluated=int(verdicts.grounded is not None),
        grounded_passed=int(verdicts.grounded is True),
        structured_evaluated=int(verdicts.structured_valid is not None),
        structured_passed=int(verdicts.structured_valid is True),
        refusal_evaluated=int(verdicts.refusal is not None),
        refusals=int(verdicts.refusal is True),
        slo_evaluated=int(slo is not None),
        slo_passed=int(slo is True),
    )


def event_time_ns(response: Response) -> int:
    return response.created_at_ns or response.completed_at_ns


def window_start_ms(at_ns: int, window: str) -> int:
    size = WINDOW_MS[window]
    return (at_ns // 1_000_000) // size * size


@dataclass(frozen=True, slots=True)
class Cell:
    tenant: str
    model: str
    window: LedgerWindow
    window_start_ms: int


def cells_of(response: Response) -> tuple[Cell, Cell]:
    at_ns = event_time_ns(response)
    model = response.model or NO_MODEL
    return (Cell(response.tenant, model, "hour", window_start_ms(at_ns, "hour")),
            Cell(response.tenant, model, "day", window_start_ms(at_ns, "day")))


def tool_cost_micros(response: Response) -> int:
    """The part of ``response.cost_micros`` that paid for its tool calls (a denied call costs 0)."""
    return sum(step.cost_micros for step in response.steps if step.kind == "tool")


def cell_deltas(response: Response) -> list[tuple[Cell, Counters]]:
    """What one response adds to each of its cells: the response's counters minus its tool calls' cost (and a
    cascade's escalated cheaper call's) to its model's cells, each tool's calls (count and cost, requests 0) to its
    ``tool:<name>`` cells and the cheaper call to its ``cascade:<model>`` cells. The costs sum to
    ``response.cost_micros`` and ``requests`` to 1; one delta per cell (two calls of a tool in one response are summed,
    since a cell's watermark admits one write per record)."""
    counters = counters_of(response)
    tools: dict[str, Counters] = {}
    for step in response.steps:
        if step.kind == "tool":
            label = TOOL_PREFIX + step.name
            tools[label] = tools.get(label, Counters()) + Counters(cost_micros=step.cost_micros, tool_calls=1)
    if response.cascade_model is not None and response.cascade_cost_micros:
        tools[CASCADE_PREFIX + response.cascade_model] = Counters(cost_micros=response.cascade_cost_micros,
                                                                  cascade_calls=1)
    if tools:
        taken = sum(delta.cost_micros for delta in tools.values())
        counters = replace(counters, cost_micros=counters.cost_micros - taken)
    at_ns = event_time_ns(response)
    out: list[tuple[Cell, Counters]] = []
    for window in WINDOWS:
        start = window_start_ms(at_ns, window)
        out.append((Cell(response.tenant, response.model or NO_MODEL, window, start), counters))
        out += [(Cell(response.tenant, label, window, start), delta) for label, delta in sorted(tools.items())]
    return out


def task_counters_of(response: Response) -> Counters:
    """What one response adds to its task: all its counters and cost, and how many tool calls it made."""
    calls = sum(1 for step in response.steps if step.kind == "tool")
    return replace(counters_of(response), tool_calls=calls) if calls else counters_of(response)


# ---------------------------------------------------------------------------------------------- table keys
def cell_key(cell: Cell, partition: int) -> str:
    return orjson.dumps([cell.tenant, cell.model, cell.window, cell.window_start_ms, partition]).decode()


def task_key(tenant: str, task_id: str, partition: int) -> str:
    return orjson.dumps([tenant, task_id, partition]).decode()


def outcome_key(tenant: str, task_id: str) -> str:
    return orjson.dumps([tenant, task_id]).decode()

