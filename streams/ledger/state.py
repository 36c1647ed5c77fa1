"""The ledger worker's live state: the in-memory tables the agents update (:class:`LedgerState`) and the operations
on them — apply a responses record, forget expired ids, rebuild after a restart (:class:`LedgerApp`).

The Faust app around it is in streams/ledger/app.py; the exactly-once argument in :mod:`workers.ledger`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust

from schemas.errors import BadEvent
from schemas.ledger import LedgerSnapshot
from schemas.response import Response
from streams.ledger.reader import iter_records
from streams.runtime.codec import decode_as
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.decisions import DecisionKeys, response_verifies
from workers.ledger.aggregator import ledger_rows_from, outcome_rows_from, task_totals
from workers.ledger.cells import WINDOW_MS, window_start_ms
from workers.ledger.checkpoints import LiveTable, load_checkpoint
from workers.ledger.dedup import apply_response, claim_unreadable, expired_seen

log = logging.getLogger(__name__)


@dataclass
class LedgerState:
    """The live tables and what the agents keep beside them (rebuilt by :meth:`LedgerApp.catch_up` after a restart)."""

    started_at: float = field(default_factory=time.monotonic)
    recovered_s: float | None = None  # start → changelogs recovered and responses caught up (ready to answer)
    changelog_s: float | None = None  # of which: Faust's changelog recovery
    catch_up_s: float | None = None  # of which: rebuilding seen and re-applying records after the checkpoints
    caught_up_keys: int = 0
    reapplied: int = 0
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[str, Any] = field(default_factory=dict)
    cells: LiveTable = field(default_factory=LiveTable)
    tasks: LiveTable = field(default_factory=LiveTable)
    positions: dict[int, int] = field(default_factory=dict)  # highest responses offset applied, per partition
    since_checkpoint: dict[int, int] = field(default_factory=dict)  # records applied since the last checkpoint
    checkpointed_at: dict[int, float] = field(default_factory=dict)
    checkpoints: int = 0
    purged_day_ms: dict[int, int] = field(default_factory=dict)
    counted: int = 0
    duplicates: int = 0
    bad: int = 0
    unverified: int = 0  # responses whose outcome signature did not verify: never counted


@dataclass
class LedgerApp:
    app: faust.App
    settings: Settings
    cells: Any  # Faust tables: the checkpoints of the live cells and tasks
    tasks: Any
    outcomes: Any
    state: LedgerState

    def positions(self) -> dict[int, int]:
        """Highest applied offset per responses partition (what the live tables include, exactly)."""
        return dict(sorted(self.state.positions.items()))

    def _bump(self, partition: int, offset: int) -> None:
        if offset > self.state.positions.get(partition, -1):
            self.state.positions[partition] = offset

    @functools.cached_property
    def decision_keys(self) -> DecisionKeys:
        return DecisionKeys.parse(self.settings.decision_keys.get_secret_value())

    def snapshot(self, *, tenant: str | None, window: str | None) -> LedgerSnapshot:
        return LedgerSnapshot(rows=ledger_rows_from(self.state.cells, tenant=tenant, window=window),
                              outcomes=outcome_rows_from(self.state.tasks, self.outcomes, tenant=tenant),
                              positions=self.positions())

    def task(self, *, tenant: str, task_id: str) -> dict[str, Any]:
        """One task's counted requests, cost and outcome (``GET /ledger/task/``)."""
        return {**task_totals(self.state.tasks, self.outcomes, tenant=tenant, task_id=task_id),
                "positions": self.positions()}

    def apply(self, partition: int, offset: int, key: bytes | None, value: bytes | None, *,
              live: bool = True) -> Response | None:
        """Apply one responses record to the live tables (records of a partition in offset order); ``live=False``
        for the catch-up's re-applies, which are not new counts."""
        state = self.state
        try:
            response = decode_as(value, Response)
        except BadEvent as exc:
            state.bad += 1
            log.warning("ledger skipped responses[%d]@%d: %s", partition, offset, exc)
            if key:
                claim_unreadable(state.seen, key.decode(errors="replace"), partition=partition, offset=offset,
                                 day_ms=0)
            self._bump(partition, offset)
            return None
        if not response_verifies(response, self.decision_keys):
            # A forged or altered outcome (written by something that is not a stage): not counted, and the id is
            # not claimed either, so the genuine response for it still counts when it comes.
            state.unverified += 1
            if state.unverified & (state.unverified - 1) == 0:  # 1st, 2nd, 4th, 8th…: a flood cannot flood the log
                log.warning("ledger skipped responses[%d]@%d: request %s's outcome signature does not verify "
                            "(%d such so far)", partition, offset, response.request_id, state.unverified)
            self._bump(partition, offset)
            return None
        state.cells.partition = state.tasks.partition = partition
        applied = apply_response(response, partition=partition, offset=offset, seen=state.seen, cells=state.cells,
                                 tasks=state.tasks)
        if live:
            state.counted += applied
            state.duplicates += not applied
        self._bump(partition, offset)
        return response

    def purge_expired(self, partition: int, at_ns: int) -> None:
        """Forget seen ids older than the dedup retention, once per partition and day."""
        state = self.state
        today = window_start_ms(at_ns, "day")
        if state.purged_day_ms.get(partition, -1) >= today:
            return
        state.purged_day_ms[partition] = today
        before = today - self.settings.ledger_dedup_days * WINDOW_MS["day"]
        for rid in expired_seen(state.seen, partition=partition, before_day_ms=before):
            del state.seen[rid]

    def reset(self) -> dict[int, int]:
        """Live tables from the recovered checkpoints; returns each partition's checkpoint mark (cells and tasks)."""
        state = self.state
        state.seen.clear()
        state.cells, state.tasks = LiveTable(), LiveTable()
        state.positions.clear()
        cell_marks, task_marks = load_checkpoint(self.cells, state.cells), load_checkpoint(self.tasks, state.tasks)
        return {p: min(cell_marks.get(p, -1), task_marks.get(p, -1)) for p in cell_marks.keys() | task_marks.keys()}

    async def catch_up(self, partitions: list[int]) -> None:
        """Rebuild ``seen`` from the keys of the responses topic and re-apply what the checkpoints do not cover.

        Reads each partition up to its end at call time; the agent then skips records at or below that position
        (they are applied) and goes on from there.
        """
        started = time.monotonic()
        marks = self.reset()
        topic = topology(self.settings).responses
        seen = self.state.seen
        async for batch in iter_records(self.settings, topic, partitions=partitions):
            for partition, offset, key, value, timestamp_ms in batch:
                if offset > marks.get(partition, -1):
                    self.apply(partition, offset, key, value, live=False)
                    self.state.reapplied += 1
                    continue
                rid = key.decode(errors="replace") if key is not None else _request_id_of(value)
                if rid is not None and rid not in seen:
                    seen[rid] = [partition, offset, window_start_ms(timestamp_ms * 1_000_000, "day")]
                self.state.caught_up_keys += 1
            if batch:
                self._bump(batch[-1][0], batch[-1][1])
        for partition in partitions:
            self.state.positions.setdefault(partition, -1)
        self.state.catch_up_s = time.monotonic() - started


def _request_id_of(value: bytes | None) -> str | None:
    """A keyless record's request id (the runner always keys responses by request id; others might not)."""
    try:
        return decode_as(value, Response).request_id
    except BadEvent:
        return None
