"""The cost ledger's pure logic, shared by the Faust agent, ``ledger_rows``, reconcile and reprice.

Each response adds one :class:`Counters` to two cells (tenant × model × hour window, and × day window; windows are
tumbling, UTC, taken from the request's ``created_at_ns`` so a replayed response lands in the same cell) and, when
the request carried a ``task_id``, to its task.

**Counted once.** :func:`apply_response` works on three mutable mappings (the ledger worker's tables, plain
dicts elsewhere) and is written so that *any* subset of its writes can be lost by a kill -9 and the redelivered record
repairs exactly what was lost:

* every counter key includes the source partition, so a key is only ever written while processing its own
  partition, and its changelog is written in offset order (Faust sends a table write to the partition of the event
  being processed; aiokafka keeps one batch in flight per partition, so what survives a crash is a prefix);
* every counter value starts with a *watermark*: the offset of the last record applied to it. A record at offset
  ``o`` is applied to a cell only when the cell's watermark is ``< o``; a surviving later write implies the earlier
  ones survived, so a cell is never counted twice and never skipped;
* ``seen[request_id] = [partition, offset, day]`` rejects a *different* record carrying the same request_id (a
  replayed response). The same record redelivered is not a duplicate: it re-applies the cells it missed.

So the order in which the seen and counter changelogs reach the broker does not matter. Either fixed order alone
would be wrong: counters first then seen double-counts when only the counters survive; seen first then counters
loses the request when only the seen mark survives. The watermark makes each write idempotent on its own.

**Where the state lives** (``streams/ledger/app.py``): the worker keeps the tables live in memory
(:class:`LiveTable`) and writes only *checkpoints* to the Faust changelogs: every cell and task written since the
partition's last checkpoint, then the partition's checkpoint mark (:func:`checkpoint_writes`). The responses topic is
the source of truth and the state a pure function of it, so after a restart the worker rebuilds ``seen`` from the
topic's keys and re-applies the records after the checkpoint mark (:func:`apply_response` again — the watermarks make
a record already in a checkpointed cell a no-op). A checkpoint mark that survived implies the cells written before it
in the same changelog partition survived; any later, partial checkpoint is repaired by the same re-apply.

**The first record of a request id decides**: when it cannot be decoded the request is reported as bad and not
counted, and later records of that id are duplicates (:func:`claim_unreadable`). That keeps ``seen`` a function of
the topic's keys alone, so rebuilding it never decodes a record.

Tokens: ``input_tokens`` are the uncached prompt tokens and ``cached_input_tokens`` the prompt tokens served from a
prompt cache (disjoint, as :class:`schemas.envelope.Usage` adds them).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
import yaml

from schemas.envelope import Evaluation, Status, Usage
from schemas.errors import ConfigError
from schemas.ledger import LedgerRow, LedgerWindow, OutcomeRow, RepriceRow
from schemas.response import Response
from workers.evaluators import slo_met

WINDOW_MS: dict[str, int] = {"hour": 3_600_000, "day": 86_400_000}
NO_MODEL = "-"  # the model label of requests that never reached a model (denied, cache hits, failures)

# Table values are plain JSON lists (orjson on the changelog): [watermark_offset, *Counters] and so on.
Table = MutableMapping[str, Any]


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

    def __add__(self, other: Counters) -> Counters:
        return Counters(*map(operator.add, _values(self), _values(other)))

    def as_list(self) -> list[int]:
        return list(_values(self))

    @classmethod
    def from_list(cls, values: Iterable[int]) -> Counters:
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


# ---------------------------------------------------------------------------------------------- table keys
def cell_key(cell: Cell, partition: int) -> str:
    return orjson.dumps([cell.tenant, cell.model, cell.window, cell.window_start_ms, partition]).decode()


def task_key(tenant: str, task_id: str, partition: int) -> str:
    return orjson.dumps([tenant, task_id, partition]).decode()


def outcome_key(tenant: str, task_id: str) -> str:
    return orjson.dumps([tenant, task_id]).decode()


def _add_with_watermark(table: Table, key: str, offset: int, delta: list[int]) -> bool:
    current = table.get(key)
    if current is None:
        table[key] = [offset, *delta]
        return True
    if current[0] >= offset:
        return False  # this record already reached this cell (the write survived the crash)
    base = current[1:]
    if len(base) < len(delta):  # written before later counters existed
        base += [0] * (len(delta) - len(base))
    table[key] = [offset, *map(operator.add, base, delta)]  # a new list: Faust only logs assignments
    return True


def apply_response(response: Response, *, partition: int, offset: int, seen: Table, cells: Table,
                   tasks: Table, task_id: str | None = None) -> bool:
    """Count one record of the responses topic, exactly once; returns False for a duplicate request_id.

    Must be called for the records of a partition in offset order (a redelivery restarts from an earlier offset).
    """
    prior = seen.get(response.request_id)
    if prior is not None and (prior[0], prior[1]) != (partition, offset):
        return False
    delta = counters_of(response).as_list()
    for cell in cells_of(response):
        _add_with_watermark(cells, cell_key(cell, partition), offset, delta)
    task = task_id if task_id is not None else response.task_id
    if task:
        _add_with_watermark(tasks, task_key(response.tenant, task, partition), offset, delta)
    if prior is None:
        seen[response.request_id] = [partition, offset, window_start_ms(event_time_ns(response), "day")]
    return True


def claim_unreadable(seen: Table, request_id: str, *, partition: int, offset: int, day_ms: int) -> bool:
    """An undecodable record still claims its request id when it is the id's first record (see the module doc)."""
    if request_id in seen:
        return False
    seen[request_id] = [partition, offset, day_ms]
    return True


class LiveTable(dict[str, Any]):
    """A table kept in memory that remembers, per partition, the keys written since that partition's last checkpoint.

    Set :attr:`partition` before writing (keys always carry the partition of the record that wrote them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.partition = 0
        self.dirty: dict[int, set[str]] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.dirty.setdefault(self.partition, set()).add(key)


CHECKPOINT = "@checkpoint"


def checkpoint_key(partition: int) -> str:
    return orjson.dumps([CHECKPOINT, partition]).decode()


def is_checkpoint_key(key: str) -> bool:
    return key.startswith(f'["{CHECKPOINT}"')


def checkpoint_writes(live: LiveTable, *, partition: int, offset: int) -> list[tuple[str, Any]]:
    """What a checkpoint of ``partition`` at ``offset`` writes to the changelog-backed table, in this order: every
    key written since the last checkpoint, then the mark (so a surviving mark vouches for the writes before it)."""
    writes = [(key, live[key]) for key in sorted(live.dirty.pop(partition, ()))]
    writes.append((checkpoint_key(partition), [offset]))
    return writes


def load_checkpoint(table: Mapping[str, Any], live: LiveTable) -> dict[int, int]:
    """Fill ``live`` from a recovered table; returns each partition's checkpoint mark (the last offset it covers)."""
    marks: dict[int, int] = {}
    for key, value in list(table.items()):
        if is_checkpoint_key(key):
            marks[orjson.loads(key)[1]] = value[0]
        else:
            dict.__setitem__(live, key, value)  # recovered, not dirty
    return marks


def apply_outcome(outcomes: Table, *, tenant: str, task_id: str, outcome: str, at_ns: int) -> bool:
    """Record a task's outcome; the latest ``at_ns`` wins, so redelivery and out-of-order arrival are harmless."""
    key = outcome_key(tenant, task_id)
    current = outcomes.get(key)
    if current is not None and current[1] > at_ns:
        return False
    outcomes[key] = [outcome, at_ns]
    return True


def expired_seen(seen: Mapping[str, Any], *, partition: int, before_day_ms: int) -> list[str]:
    """Seen request ids of one partition whose day window started before ``before_day_ms`` (to delete).

    Deleting is done while processing an event of the same partition, so the tombstone lands in the changelog
    partition that holds the key.
    """
    return [rid for rid, (part, _offset, day) in list(seen.items()) if part == partition and day < before_day_ms]


# ---------------------------------------------------------------------------------------------- read side
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


# ---------------------------------------------------------------------------------------------- vs the audit log
@dataclass(frozen=True, slots=True)
class AuditComparison:
    """One tenant's ledger cost against the audit log, over the requests the ledger counted.

    ``difference_micros`` = ledger cost − audited cost − cost not audited yet: zero unless a request's audited cost
    differs from the cost the ledger counted (``mismatched``). Requests not audited yet (the audit stage runs after
    the response is published) are listed apart; ``audited_elsewhere`` are audited requests the ledger has not
    counted (answered after its cut, or never answered).
    """

    tenant: str
    requests: int
    ledger_cost_micros: int
    audited_requests: int
    audited_cost_micros: int
    unaudited_requests: int
    unaudited_cost_micros: int
    mismatched: int
    audited_elsewhere: int

    @property
    def difference_micros(self) -> int:
        return self.ledger_cost_micros - self.audited_cost_micros - self.unaudited_cost_micros


def compare_with_audit(counted: Mapping[str, tuple[str, int]], audited: Mapping[str, tuple[str, int]],
                       ledger_cost: Mapping[str, int]) -> list[AuditComparison]:
    """Per tenant: the ledger's cost (``ledger_cost``, its own totals) against the audited cost of the requests it
    counted (``counted``: request_id → (tenant, cost) from the responses up to the ledger's positions)."""
    tenants = sorted({t for t, _ in counted.values()} | {t for t, _ in audited.values()} | set(ledger_cost))
    rows = []
    for tenant in tenants:
        requests = audited_n = audited_cost = unaudited_n = unaudited_cost = mismatched = 0
        for rid, (owner, cost) in counted.items():
            if owner != tenant:
                continue
            requests += 1
            record = audited.get(rid)
            if record is None:
                unaudited_n, unaudited_cost = unaudited_n + 1, unaudited_cost + cost
                continue
            audited_n, audited_cost = audited_n + 1, audited_cost + record[1]
            mismatched += int(record != (owner, cost))
        elsewhere = sum(1 for rid, (owner, _) in audited.items() if owner == tenant and rid not in counted)
        rows.append(AuditComparison(tenant, requests, ledger_cost.get(tenant, 0), audited_n, audited_cost,
                                    unaudited_n, unaudited_cost, mismatched, elsewhere))
    return rows


# ---------------------------------------------------------------------------------------------- re-pricing
@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million tokens."""

    input: int
    cached_input: int
    output: int


def load_prices(path: Path) -> dict[str, Price]:
    """A YAML price file: ``model: {input: µ$/Mtok, cached_input: µ$/Mtok, output: µ$/Mtok}`` (integers).

    ``cached_input`` defaults to ``input`` when missing. A top-level ``models:`` mapping is accepted too.
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read price file {path}: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
        doc = doc["models"]
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"price file {path}: expected a mapping of model name to prices")
    prices: dict[str, Price] = {}
    for model, entry in doc.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"price file {path}: {model}: expected a mapping with input/cached_input/output")
        values: dict[str, int] = {}
        for name in ("input", "cached_input", "output"):
            raw = entry.get(name, entry.get("input") if name == "cached_input" else None)
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                raise ConfigError(f"price file {path}: {model}.{name} must be a non-negative integer "
                                  f"(micro-dollars per million tokens), got {raw!r}")
            values[name] = raw
        prices[str(model)] = Price(**values)
    return prices


def price_usage(price: Price, usage: Usage) -> int:
    """Cost in micro-dollars: one exact integer sum over the three token kinds, divided by a million once and
    rounded up (a partial micro-dollar is billed as a whole one; rounding per kind would drift on sums)."""
    numerator = (usage.input_tokens * price.input + usage.cached_input_tokens * price.cached_input
                 + usage.output_tokens * price.output)
    return -(-numerator // 1_000_000)


def reprice(responses: Iterable[tuple[int, int, Response]], prices: Mapping[str, Price], *,
            since_ns: int | None = None, until_ns: int | None = None) -> tuple[list[RepriceRow], Aggregator]:
    """Recompute costs from retained usage: ``(partition, offset, response)`` in partition order → old vs new per
    tenant, and the new ledger version (an :class:`Aggregator` over the repriced responses).

    Only requests whose event time is in ``[since_ns, until_ns)`` are taken; a model missing from the price file
    keeps its recorded cost and is counted in ``unpriced_requests``.
    """
    old, new = Aggregator.empty(), Aggregator.empty()
    unpriced: dict[str, int] = {}
    for partition, offset, response in responses:
        at_ns = event_time_ns(response)
        if (since_ns is not None and at_ns < since_ns) or (until_ns is not None and at_ns >= until_ns):
            continue
        if not old.add(response, partition=partition, offset=offset):
            continue
        price = prices.get(response.model or "")
        if price is None:
            repriced = response
            if response.model:  # requests without a model cost nothing either way
                unpriced[response.tenant] = unpriced.get(response.tenant, 0) + 1
        else:
            repriced = response.model_copy(update={"cost_micros": price_usage(price, response.usage)})
        new.add(repriced, partition=partition, offset=offset)
    before, after = totals_by_tenant(old.rows(window="day")), totals_by_tenant(new.rows(window="day"))
    rows = [
        RepriceRow(tenant=tenant, requests=before[tenant].requests, old_cost_micros=before[tenant].cost_micros,
                   new_cost_micros=after[tenant].cost_micros, unpriced_requests=unpriced.get(tenant, 0))
        for tenant in sorted(before)
    ]
    return rows, new
