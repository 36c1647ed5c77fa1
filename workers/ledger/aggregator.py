"""The read side: per-partition cells summed into ledger rows, tasks into cost per outcome, and the
:class:`Aggregator` that keeps the whole ledger in plain dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.ledger import LedgerRow, OutcomeRow
from schemas.response import Response
from workers.ledger.cells import COUNTER_FIELDS, Counters, outcome_key
from workers.ledger.dedup import apply_response, claim_unreadable


def ledger_rows_from(cells: Mapping[str, Any], *, tenant: str | None = None,
                     window: str | None = "day") -> list[LedgerRow]:
    """Sum the per-partition cells into ledger rows, sorted by tenant, window start, model."""
    totals: dict[tuple[str, str, str, int], Counters] = {}
    for key, value in list(cells.items()):
        cell_tenant, model, cell_window, start_ms, _partition = orjson.loads(key)
        if (tenant is not None and cell_tenant != tenant) or (window is not None and cell_window != window):
            continue
        group = (cell_tenant, model, cell_window, start_ms)
        totals[group] = totals.get(group, Counters()) + Counters.from_list(value[1:])
    return [
        LedgerRow(tenant=t, model=m, window=w, window_start_ms=s, **dict(zip(COUNTER_FIELDS, c.as_list(), strict=True)))
        for (t, m, w, s), c in sorted(totals.items(), key=lambda kv: (kv[0][0], kv[0][3], kv[0][2], kv[0][1]))
    ]


def task_totals(tasks: Mapping[str, Any], outcomes: Mapping[str, Any], *, tenant: str,
                task_id: str) -> dict[str, Any]:
    """One task's requests and cost over every partition, and its outcome (``None`` until one is published): what
    `tollway outcome` asks before publishing a verdict (``requests`` 0: no counted response carried the task id).
    A scan of the tasks table — an operator's question, not the hot path."""
    total = Counters()
    for key, value in list(tasks.items()):
        task_tenant, key_task_id, _partition = orjson.loads(key)
        if task_tenant == tenant and key_task_id == task_id:
            total += Counters.from_list(value[1:])
    verdict = outcomes.get(outcome_key(tenant, task_id))
    return {"tenant": tenant, "task_id": task_id, "requests": total.requests, "cost_micros": total.cost_micros,
            "outcome": verdict[0] if verdict is not None else None}


def _round_div(numerator: int, denominator: int) -> int:
    """Integer division rounded half up (for non-negative values)."""
    return (2 * numerator + denominator) // (2 * denominator)


def outcome_rows_from(tasks: Mapping[str, Any], outcomes: Mapping[str, Any], *,
                      tenant: str | None = None) -> list[OutcomeRow]:
    """Cost per task outcome per tenant: every request's cost summed under its task, grouped by the task's outcome."""
    per_task: dict[tuple[str, str], Counters] = {}
    for key, value in list(tasks.items()):
        task_tenant, task_id, _partition = orjson.loads(key)
        if tenant is not None and task_tenant != tenant:
            continue
        per_task[(task_tenant, task_id)] = per_task.get((task_tenant, task_id), Counters()) + Counters.from_list(
            value[1:])
    groups: dict[tuple[str, str], tuple[int, int, int]] = {}
    for (task_tenant, task_id), counters in per_task.items():
        verdict = outcomes.get(outcome_key(task_tenant, task_id))
        label = verdict[0] if verdict is not None else "open"
        tasks_n, requests, cost = groups.get((task_tenant, label), (0, 0, 0))
        groups[(task_tenant, label)] = (tasks_n + 1, requests + counters.requests, cost + counters.cost_micros)
    return [
        OutcomeRow(tenant=t, outcome=label, tasks=n, requests=r, cost_micros=c,
                   cost_per_task_micros=_round_div(c, n))
        for (t, label), (n, r, c) in sorted(groups.items())
    ]


@dataclass
class Aggregator:
    """The ledger in plain dicts: feed it the responses topic in partition order and read rows out.

    Used where no ledger worker is needed (``ledger_rows``, reconcile, reprice) — the same :func:`apply_response`
    the Faust agent runs, on a second, independent read of the topic.
    """

    seen: dict[str, Any]
    cells: dict[str, Any]
    tasks: dict[str, Any]
    outcomes: dict[str, Any]
    positions: dict[int, int]
    counted: dict[str, tuple[str, int]] = field(default_factory=dict)  # request_id → (tenant, cost) as counted

    @classmethod
    def empty(cls) -> Aggregator:
        return cls({}, {}, {}, {}, {})

    def add(self, response: Response, *, partition: int = 0, offset: int | None = None) -> bool:
        if offset is None:
            offset = self.positions.get(partition, -1) + 1
        self.positions[partition] = max(self.positions.get(partition, -1), offset)
        applied = apply_response(response, partition=partition, offset=offset, seen=self.seen, cells=self.cells,
                                 tasks=self.tasks)
        if applied:
            self.counted.setdefault(response.request_id, (response.tenant, response.cost_micros))
        return applied

    def add_unreadable(self, request_id: str, *, partition: int, offset: int) -> bool:
        self.positions[partition] = max(self.positions.get(partition, -1), offset)
        return claim_unreadable(self.seen, request_id, partition=partition, offset=offset, day_ms=0)

    def rows(self, *, tenant: str | None = None, window: str | None = "day") -> list[LedgerRow]:
        return ledger_rows_from(self.cells, tenant=tenant, window=window)

    def outcome_rows(self, *, tenant: str | None = None) -> list[OutcomeRow]:
        return outcome_rows_from(self.tasks, self.outcomes, tenant=tenant)


def totals_by_tenant(rows: Iterable[LedgerRow]) -> dict[str, Counters]:
    """Sum rows of one window kind per tenant (pass rows of a single window, or totals double)."""
    out: dict[str, Counters] = {}
    for row in rows:
        counters = Counters.from_list(getattr(row, name) for name in COUNTER_FIELDS)
        out[row.tenant] = out.get(row.tenant, Counters()) + counters
    return out
