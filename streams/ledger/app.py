"""The cost ledger as a Faust app: live tables fed by ``<prefix>.responses`` and ``<prefix>.outcomes``, checkpointed
to changelog-backed Faust tables.

    <prefix>.responses ──agent count──▶ seen   (request_id → [partition, offset, day])    in memory, dedup
                                      ├▶ cells  ([tenant, model, window, start, partition] → [watermark, *counters])
                                      └▶ tasks  ([tenant, task_id, partition] → [watermark, *counters])
                                           └─ every N records or T s per partition ─▶ Faust tables cells, tasks
    <prefix>.outcomes  ──agent judge──▶ outcomes ([tenant, task_id] → [outcome, at_ns])      Faust table

Why checkpoints and not a table write per record: Faust replays a changelog at roughly 1,000–3,000 records/s here
(its recovery handles each record through several tasks and queues), and a write per record meant one changelog
record per request for ``seen`` (unique keys: compaction cannot shrink it) and three more for cells and tasks — a
restart after 1M updates took tens of minutes. Now the changelogs hold only checkpoints (the cells and tasks changed
since the last one, then a mark), and a restart (:meth:`LedgerApp.catch_up`) rebuilds ``seen`` from the keys of the
responses topic with a plain consumer (~100k records/s) and re-applies, with the same :func:`apply_response`, only
the records after each partition's checkpoint mark. The exactly-once argument is in :mod:`workers.ledger.dedup`.

Checkpoint writes happen inside ``stream.events()`` iteration, so Faust sends them to the changelog partition of the
event being processed — the partition every key written carries.

The web server answers ``GET /ledger/?tenant=acme&window=day`` with a :class:`~schemas.ledger.LedgerSnapshot` of the
live tables and ``GET /ledger/status/`` with recovery times and table sizes, once the tables are recovered and
caught up. One ledger worker holds every partition; with several, each answers for the partitions it owns (not
supported by the CLI yet).

Faust does not create the source topics: :func:`streams.runtime.topics.ensure_topics` does, before the app starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import faust
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.audit import AuditRecord
from schemas.errors import BadEvent, ServiceUnavailable
from schemas.ledger import LedgerRow, LedgerSnapshot, OutcomeEvent
from schemas.response import Response
from streams.runtime.codec import decode_as
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from workers.ledger.aggregator import Aggregator, ledger_rows_from, outcome_rows_from, totals_by_tenant
from workers.ledger.cells import COUNTER_FIELDS, WINDOW_MS, Counters, event_time_ns, window_start_ms
from workers.ledger.checkpoints import LiveTable, checkpoint_writes, load_checkpoint
from workers.ledger.dedup import apply_outcome, apply_response, claim_unreadable, expired_seen
from workers.ledger.reconcile import AuditComparison, compare_with_audit

log = logging.getLogger(__name__)


# Only a key's latest value matters (it carries its watermark; a mark its offset): one-minute segments let the log
# cleaner compact all but the last minute or so of checkpoints, so a restart replays about one record per key.
CHECKPOINT_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1",
                            "min.compaction.lag.ms": "0"}
CHECKPOINT_TABLES = ("cells", "tasks")


def app_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}-ledger"


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

    def snapshot(self, *, tenant: str | None, window: str | None) -> LedgerSnapshot:
        return LedgerSnapshot(rows=ledger_rows_from(self.state.cells, tenant=tenant, window=window),
                              outcomes=outcome_rows_from(self.state.tasks, self.outcomes, tenant=tenant),
                              positions=self.positions())

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


def create_app(settings: Settings, *, web_port: int | None = None) -> LedgerApp:
    topo = topology(settings)
    name = app_id(settings)
    datadir = settings.state_dir / "faust" / name  # Faust creates only the last level
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        name,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        producer_acks=-1,
        datadir=str(datadir),
        web_enabled=True,
        web_host=settings.ledger_host,
        web_bind=settings.ledger_host,
        web_port=web_port or settings.ledger_port,
        consumer_auto_offset_reset="earliest",
        # A worker killed with -9 keeps its partitions until the broker gives up on it: a short session lets the
        # restarted worker take over in seconds rather than a minute (the default).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
    )
    responses_topic = app.topic(topo.responses, key_serializer="raw", value_serializer="raw")
    outcomes_topic = app.topic(topo.outcomes, key_serializer="raw", value_serializer="raw")

    json_schema: Any = faust.Schema(key_serializer="json", value_serializer="json")

    def table(table_name: str, **extra: Any) -> Any:
        # Recovery applies the changelog in batches of recovery_buffer_size (Faust's default: 1,000).
        return app.Table(table_name, partitions=settings.partitions, schema=json_schema,
                         recovery_buffer_size=10_000, **extra)

    cells = table("cells", extra_topic_configs=dict(CHECKPOINT_TOPIC_CONFIGS))
    tasks = table("tasks", extra_topic_configs=dict(CHECKPOINT_TOPIC_CONFIGS))
    outcomes = table("outcomes")
    ledger = LedgerApp(app=app, settings=settings, cells=cells, tasks=tasks, outcomes=outcomes, state=LedgerState())
    state = ledger.state

    @cells.on_recover  # type: ignore[untyped-decorator]
    async def _recovered() -> None:
        # Runs before Faust resumes the agents' partitions, so the agent starts on caught-up tables.
        state.recovered.clear()
        state.changelog_s = time.monotonic() - state.started_at
        partitions = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topo.responses)
        await ledger.catch_up(partitions)
        state.recovered_s = time.monotonic() - state.started_at
        log.info("ledger recovered in %.2f s (changelogs %.2f s, catch-up %.2f s: %d keys, %d re-applied): "
                 "%d seen, %d cells, %d tasks, %d outcomes", state.recovered_s, state.changelog_s,
                 state.catch_up_s or 0.0, state.caught_up_keys, state.reapplied, len(state.seen),
                 len(state.cells), len(state.tasks), len(outcomes))
        state.recovered.set()

    def maybe_checkpoint(partition: int, offset: int) -> None:
        """Write the partition's changed cells and tasks, then its mark, every N records or T seconds."""
        pending = state.since_checkpoint[partition] = state.since_checkpoint.get(partition, 0) + 1
        now = time.monotonic()
        if (pending < settings.ledger_checkpoint_records
                and now - state.checkpointed_at.setdefault(partition, now) < settings.ledger_checkpoint_interval_s):
            return
        for live, durable in ((state.cells, cells), (state.tasks, tasks)):
            for key, value in checkpoint_writes(live, partition=partition, offset=offset):
                durable[key] = value
        state.since_checkpoint[partition] = 0
        state.checkpointed_at[partition] = now
        state.checkpoints += 1

    @app.agent(responses_topic)
    async def count(stream: Any) -> AsyncIterator[None]:
        # events(), not take(): a table can only be written while its event is the stream's current event.
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            if offset <= state.positions.get(partition, -1):
                yield None  # applied already (by the catch-up, or before a redelivery)
                continue
            response = ledger.apply(partition, offset, event.message.key, event.value)
            if response is not None:
                ledger.purge_expired(partition, event_time_ns(response))
            maybe_checkpoint(partition, offset)
            yield None

    @app.agent(outcomes_topic)
    async def judge(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            try:
                verdict = decode_as(event.value, OutcomeEvent)
            except BadEvent as exc:
                log.warning("ledger skipped outcome %d@%d: %s", event.message.partition, event.message.offset, exc)
                continue
            apply_outcome(outcomes, tenant=verdict.tenant, task_id=verdict.task_id, outcome=verdict.outcome,
                          at_ns=verdict.at_ns)
            yield None

    @app.page("/ledger/")
    async def ledger_view(web: Any, request: Any) -> Any:
        tenant = request.query.get("tenant") or None
        window = request.query.get("window", "day")
        if window not in ("hour", "day", "all"):
            return web.json({"error": f"window must be hour, day or all, not {window!r}"}, status=400)
        if not state.recovered.is_set():
            return web.json({"error": "the ledger is still recovering"}, status=503)
        snapshot = ledger.snapshot(tenant=tenant, window=None if window == "all" else window)
        return web.bytes(orjson.dumps(snapshot.model_dump(mode="json")), content_type="application/json")

    @app.page("/ledger/status/")
    async def status_view(web: Any, request: Any) -> Any:
        return web.json({"recovered_s": state.recovered_s if state.recovered.is_set() else None,
                         "changelog_s": state.changelog_s, "catch_up_s": state.catch_up_s,
                         "caught_up_keys": state.caught_up_keys, "reapplied": state.reapplied,
                         "seen": len(state.seen), "cells": len(state.cells), "tasks": len(state.tasks),
                         "outcomes": len(outcomes), "checkpoints": state.checkpoints, "counted": state.counted,
                         "duplicates": state.duplicates, "bad": state.bad,
                         # what the answers include; empty until they can be asked (after the catch-up)
                         "positions": ledger.positions() if state.recovered.is_set() else {}})

    return ledger


async def run_ledger(settings: Settings, *, stop: asyncio.Event, ready: asyncio.Event | None = None,
                     web_port: int | None = None) -> None:
    """Run the ledger app in this event loop (tests, the demo) until ``stop`` is set."""
    await ensure_topics(settings)
    ledger = create_app(settings, web_port=web_port)
    await ledger.app.start()
    try:
        if ready is not None:
            recovered = asyncio.create_task(ledger.state.recovered.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([recovered, stopped], return_when=asyncio.FIRST_COMPLETED)
            recovered.cancel()
            stopped.cancel()
            ready.set()
        await stop.wait()
    finally:
        await ledger.app.stop()


def run_worker(settings: Settings, *, loglevel: str = "warn") -> None:
    """``tollway ledger worker``: the Faust worker in the foreground (signals, logging and loop owned by Faust)."""
    asyncio.run(ensure_topics(settings))
    ledger = create_app(settings)
    worker = faust.Worker(ledger.app, loglevel=loglevel)
    worker.execute_from_commandline()


# ------------------------------------------------------------------------------ without a ledger worker
Record = tuple[int, int, bytes | None, bytes | None, int]  # partition, offset, key, value, timestamp (ms)


async def iter_records(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                       partitions: list[int] | None = None, timeout_s: float = 60.0) -> AsyncIterator[list[Record]]:
    """Every record of ``topic`` (or of ``partitions``) from the beginning, a fetch at a time, in offset order per
    partition: up to the end offsets at call time, or up to ``upto[partition]`` inclusive (a partition missing
    there: none).

    ``timeout_s`` bounds a wait without progress, not the whole read (a large topic takes as long as it takes).
    """
    # Large fetches: this reader is for whole-topic scans (reconcile, restart catch-up), not latency.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise ServiceUnavailable(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    try:
        # Without a group, a subscription is assigned every partition once the metadata arrives; then only the
        # partitions asked for are assigned.
        consumer.subscribe([topic])
        for _ in range(int(timeout_s * 20)):  # aiokafka offers no event for "assigned" without a group
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        known = {tp.partition for tp in consumer.assignment()}
        consumer.unsubscribe()
        tps = [TopicPartition(topic, p) for p in sorted(known if partitions is None else set(partitions) & known)]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if upto is None:
            targets = {tp: end - 1 for tp, end in (await consumer.end_offsets(tps)).items()}
        else:
            targets = {tp: upto.get(tp.partition, -1) for tp in tps}
        pending = {tp for tp in tps if targets[tp] >= 0}
        for tp in set(tps) - pending:
            consumer.pause(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending:
            if loop.time() > deadline:
                raise ServiceUnavailable(f"reading {topic} did not reach offsets {targets}: no progress in "
                                         f"{timeout_s:.0f} s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=200, max_records=50_000)).items():
                deadline = loop.time() + timeout_s
                target = targets[tp]
                yield [(tp.partition, r.offset, r.key, r.value, r.timestamp) for r in records if r.offset <= target]
                if records and records[-1].offset >= target:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()


async def read_records(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                       partitions: list[int] | None = None, timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topic`` in one list (see :func:`iter_records`)."""
    out: list[Record] = []
    async for batch in iter_records(settings, topic, upto=upto, partitions=partitions, timeout_s=timeout_s):
        out.extend(batch)
    return out


async def read_topic(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                     timeout_s: float = 60.0) -> list[tuple[int, int, bytes | None]]:
    """Every record of ``topic`` as ``(partition, offset, value)`` (see :func:`read_records`)."""
    return [(p, o, value) for p, o, _key, value, _ts in await read_records(settings, topic, upto=upto,
                                                                           timeout_s=timeout_s)]


def decoded_responses(records: list[tuple[int, int, bytes | None]]) -> list[tuple[int, int, Response]]:
    out = []
    for partition, offset, value in records:
        try:
            out.append((partition, offset, decode_as(value, Response)))
        except BadEvent:
            continue  # the ledger agent skips the same records
    return out


async def aggregate_topics(settings: Settings, *, upto: dict[int, int] | None = None) -> Aggregator:
    """The ledger rebuilt from ``<prefix>.responses`` (and ``<prefix>.outcomes``) by a reader of its own."""
    await ensure_topics(settings)
    topo = topology(settings)
    agg = Aggregator.empty()
    for partition, offset, key, value, _ts in await read_records(settings, topo.responses, upto=upto):
        try:
            response = decode_as(value, Response)
        except BadEvent:
            if key:  # the first record of a request id decides, as in the worker (workers/ledger/dedup.py)
                agg.add_unreadable(key.decode(errors="replace"), partition=partition, offset=offset)
            continue
        agg.add(response, partition=partition, offset=offset)
    for _partition, _offset, value in await read_topic(settings, topo.outcomes):
        try:
            verdict = decode_as(value, OutcomeEvent)
        except BadEvent:
            continue
        apply_outcome(agg.outcomes, tenant=verdict.tenant, task_id=verdict.task_id, outcome=verdict.outcome,
                      at_ns=verdict.at_ns)
    return agg


async def ledger_rows(settings: Settings, tenant: str | None = None, window: str = "day") -> list[LedgerRow]:
    """The cost ledger's rows without a running ledger worker (the demo prints these)."""
    return (await aggregate_topics(settings)).rows(tenant=tenant, window=window)


async def ledger_snapshot(settings: Settings, tenant: str | None = None, window: str | None = "day") -> LedgerSnapshot:
    agg = await aggregate_topics(settings)
    return LedgerSnapshot(rows=agg.rows(tenant=tenant, window=window), outcomes=agg.outcome_rows(tenant=tenant),
                          positions=agg.positions)


def ledger_url(settings: Settings) -> str:
    return f"http://{settings.ledger_host}:{settings.ledger_port}"


async def fetch_snapshot(url: str, *, tenant: str | None = None, window: str = "day",
                         timeout_s: float = 30.0) -> LedgerSnapshot:
    """Ask a running ledger worker (``GET {url}/ledger/``)."""
    params = {"window": window, **({"tenant": tenant} if tenant else {})}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            reply = await client.get(f"{url.rstrip('/')}/ledger/", params=params)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"no ledger worker answers at {url} ({exc}); start one with "
                                 f"`tollway ledger worker`, or read the topic with `--source topic`") from exc
    if reply.status_code != 200:
        raise ServiceUnavailable(f"ledger worker at {url} answered {reply.status_code}: {reply.text[:200]}")
    return LedgerSnapshot.model_validate_json(reply.content)


@dataclass(frozen=True)
class CellDifference:
    tenant: str
    model: str
    window_start_ms: int
    field: str
    ledger: int
    source: int

    @property
    def difference(self) -> int:
        return self.ledger - self.source


@dataclass
class Reconciliation:
    ledger_totals: dict[str, Counters]
    source_totals: dict[str, Counters]
    differences: list[CellDifference]
    positions: dict[int, int]
    audit: list[AuditComparison] = field(default_factory=list)

    @property
    def audit_difference_micros(self) -> int:
        return sum(abs(row.difference_micros) for row in self.audit)

    @property
    def unaudited(self) -> int:
        return sum(row.unaudited_requests for row in self.audit)

    @property
    def ok(self) -> bool:
        return (not self.differences and self.ledger_totals == self.source_totals
                and self.audit_difference_micros == 0 and not any(row.mismatched for row in self.audit))


async def audited_costs(settings: Settings) -> dict[str, tuple[str, int]]:
    """request_id → (tenant, cost) from ``<prefix>.audit.log`` (the first record of a request; dead letters of
    undecodable bytes have no request and are left out)."""
    out: dict[str, tuple[str, int]] = {}
    for partition, offset, _key, value, _ts in await read_records(settings, topology(settings).audit_log):
        try:
            record = decode_as(value, AuditRecord)
        except BadEvent as exc:
            log.warning("reconcile skipped audit record %d@%d: %s", partition, offset, exc)
            continue
        if record.request_id is not None and record.tenant is not None:
            out.setdefault(record.request_id, (record.tenant, record.cost_micros))
    return out


async def reconcile(settings: Settings, url: str | None = None) -> Reconciliation:
    """Compare every day cell of the running ledger with a second, independent aggregation of the responses topic,
    read up to exactly the offsets the ledger reports having applied (a consistent cut, so traffic may flow), and
    the cost of the requests in that cut with the audit log's.

    The audit log has no offsets in common with the ledger, so the cut is by request: the requests the ledger
    counted are looked up in the audit log read afterwards; those not audited yet (the audit stage follows the
    response) are reported apart, not as a difference.
    """
    snapshot = await fetch_snapshot(url or ledger_url(settings), window="day")
    source = await aggregate_topics(settings, upto=snapshot.positions)
    audited = await audited_costs(settings)
    ledger_cells = {(r.tenant, r.model, r.window_start_ms): r for r in snapshot.rows}
    source_cells = {(r.tenant, r.model, r.window_start_ms): r for r in source.rows(window="day")}
    differences = []
    for key in sorted(ledger_cells.keys() | source_cells.keys()):
        mine, theirs = ledger_cells.get(key), source_cells.get(key)
        for name in COUNTER_FIELDS:
            a, b = (getattr(mine, name) if mine else 0), (getattr(theirs, name) if theirs else 0)
            if a != b:
                differences.append(CellDifference(key[0], key[1], key[2], name, a, b))
    ledger_totals = totals_by_tenant(snapshot.rows)
    audit = compare_with_audit(source.counted, audited, {t: c.cost_micros for t, c in ledger_totals.items()})
    return Reconciliation(ledger_totals=ledger_totals, source_totals=totals_by_tenant(source.rows(window="day")),
                          differences=differences, positions=snapshot.positions, audit=audit)
