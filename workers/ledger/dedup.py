"""Counted once: :func:`apply_response` and the other writes to the ledger worker's tables.

:func:`apply_response` works on three mutable mappings (the ledger worker's tables, plain
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

**The first record of a request id decides**: when it cannot be decoded the request is reported as bad and not
counted, and later records of that id are duplicates (:func:`claim_unreadable`). That keeps ``seen`` a function of
the topic's keys alone, so rebuilding it never decodes a record.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, MutableMapping
from typing import Any

from schemas.response import Response
from workers.ledger.cells import (
    cell_deltas,
    cell_key,
    event_time_ns,
    outcome_key,
    task_counters_of,
    task_key,
    window_start_ms,
)

# Table values are plain JSON lists (orjson on the changelog): [watermark_offset, *Counters] and so on.
Table = MutableMapping[str, Any]


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
    for cell, counters in cell_deltas(response):
        _add_with_watermark(cells, cell_key(cell, partition), offset, counters.as_list())
    task = task_id if task_id is not None else response.task_id
    if task:
        _add_with_watermark(tasks, task_key(response.tenant, task, partition), offset,
                            task_counters_of(response).as_list())
    if prior is None:
        seen[response.request_id] = [partition, offset, window_start_ms(event_time_ns(response), "day")]
    return True


def claim_unreadable(seen: Table, request_id: str, *, partition: int, offset: int, day_ms: int) -> bool:
    """An undecodable record still claims its request id when it is the id's first record (see the module doc)."""
    if request_id in seen:
        return False
    seen[request_id] = [partition, offset, day_ms]
    return True


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
