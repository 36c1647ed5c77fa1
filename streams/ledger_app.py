"""The cost ledger as a Faust app: changelog-backed tables fed by ``<prefix>.responses`` and ``<prefix>.outcomes``.

    <prefix>.responses ──agent count──▶ seen   (request_id → [partition, offset, day])    dedup, expires by day
                                      ├▶ cells  ([tenant, model, window, start, partition] → [watermark, *counters])
                                      └▶ tasks  ([tenant, task_id, partition] → [watermark, *counters])
    <prefix>.outcomes  ──agent judge──▶ outcomes ([tenant, task_id] → [outcome, at_ns])

Every table write happens inside ``stream.events()`` iteration (Faust sends it to the changelog partition of the
event being processed); the exactly-once argument — per-partition cells with offset watermarks, so any subset of
writes lost to a kill -9 is repaired by the redelivered record — is in :mod:`workers.ledger`.

Tables use ``store="memory://"``: on start Faust rebuilds them by reading their changelog topics from the
beginning (``bench/ledger_recovery.py`` measures how long that takes). The web server (started after recovery)
answers ``GET /ledger/?tenant=acme&window=day`` with a :class:`~schemas.ledger.LedgerSnapshot` and
``GET /ledger/status/`` with recovery time and table sizes. One ledger worker holds every partition; with several,
each answers for the partitions it owns (not supported by the CLI yet).

Faust does not create the source topics: :func:`streams.topics.ensure_topics` does, before the app starts.
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
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from schemas.errors import BadEvent, ServiceUnavailable
from schemas.ledger import LedgerRow, LedgerSnapshot, OutcomeEvent
from schemas.response import Response
from streams.codec import decode_as
from streams.settings import Settings
from streams.topics import ensure_topics, topology
from workers.ledger import (
    COUNTER_FIELDS,
    WINDOW_MS,
    Aggregator,
    Counters,
    apply_outcome,
    apply_response,
    event_time_ns,
    expired_seen,
    ledger_rows_from,
    outcome_rows_from,
    totals_by_tenant,
    window_start_ms,
)

log = logging.getLogger(__name__)


def app_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}-ledger"


@dataclass
class LedgerState:
    """What the agents keep beside the tables (in memory, rebuilt from the tables after a restart)."""

    started_at: float = field(default_factory=time.monotonic)
    recovered_s: float | None = None
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    positions: dict[int, int] = field(default_factory=dict)  # highest responses offset processed, per partition
    positions_scanned: bool = False
    purged_day_ms: dict[int, int] = field(default_factory=dict)
    counted: int = 0
    duplicates: int = 0
    bad: int = 0


@dataclass
class LedgerApp:
    app: faust.App
    seen: Any
    cells: Any
    tasks: Any
    outcomes: Any
    state: LedgerState

    def positions(self) -> dict[int, int]:
        """Highest applied offset per responses partition; after a restart recovered from the tables' offsets."""
        if not self.state.positions_scanned:
            for partition, offset, _day in list(self.seen.values()):
                self._bump(partition, offset)
            for key, value in list(self.cells.items()):
                self._bump(orjson.loads(key)[-1], value[0])
            self.state.positions_scanned = True
        return dict(sorted(self.state.positions.items()))

    def _bump(self, partition: int, offset: int) -> None:
        if offset > self.state.positions.get(partition, -1):
            self.state.positions[partition] = offset

    def snapshot(self, *, tenant: str | None, window: str | None) -> LedgerSnapshot:
        return LedgerSnapshot(rows=ledger_rows_from(self.cells, tenant=tenant, window=window),
                              outcomes=outcome_rows_from(self.tasks, self.outcomes, tenant=tenant),
                              positions=self.positions())


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

    # Kafka forgets seen ids after the retention too, so a restart does not resurrect what was purged in memory.
    dedup_ms = settings.ledger_dedup_days * WINDOW_MS["day"]
    seen = table("seen", extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": str(dedup_ms)})
    # Cells and tasks are rewritten on every request but have few keys; only their latest value matters (it
    # carries the watermark), so compacting hourly segments keeps the restart's changelog replay short.
    compacted = {"cleanup.policy": "compact", "segment.ms": str(WINDOW_MS["hour"]), "min.cleanable.dirty.ratio": "0.1"}
    cells, tasks = table("cells", extra_topic_configs=compacted), table("tasks", extra_topic_configs=compacted)
    outcomes = table("outcomes")
    ledger = LedgerApp(app=app, seen=seen, cells=cells, tasks=tasks, outcomes=outcomes, state=LedgerState())
    state = ledger.state

    @cells.on_recover  # type: ignore[untyped-decorator]
    async def _recovered() -> None:
        if state.recovered_s is None:
            state.recovered_s = time.monotonic() - state.started_at
            log.info("ledger tables recovered in %.2f s: %d seen, %d cells, %d tasks, %d outcomes",
                     state.recovered_s, len(seen), len(cells), len(tasks), len(outcomes))
        state.recovered.set()

    def purge_expired(partition: int, at_ns: int) -> None:
        """Forget seen ids older than the dedup retention, once per partition and day."""
        today = window_start_ms(at_ns, "day")
        if state.purged_day_ms.get(partition, -1) >= today:
            return
        state.purged_day_ms[partition] = today
        for rid in expired_seen(seen, partition=partition, before_day_ms=today - dedup_ms):
            del seen[rid]

    @app.agent(responses_topic)
    async def count(stream: Any) -> AsyncIterator[None]:
        # events(), not take(): a table can only be written while its event is the stream's current event.
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            try:
                response = decode_as(event.value, Response)
            except BadEvent as exc:
                state.bad += 1
                log.warning("ledger skipped %s[%d]@%d: %s", event.message.topic, partition, offset, exc)
                continue
            purge_expired(partition, event_time_ns(response))
            if apply_response(response, partition=partition, offset=offset, seen=seen, cells=cells, tasks=tasks):
                state.counted += 1
            else:
                state.duplicates += 1
            ledger._bump(partition, offset)
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
        snapshot = ledger.snapshot(tenant=tenant, window=None if window == "all" else window)
        return web.bytes(orjson.dumps(snapshot.model_dump(mode="json")), content_type="application/json")

    @app.page("/ledger/status/")
    async def status_view(web: Any, request: Any) -> Any:
        return web.json({"recovered_s": state.recovered_s, "seen": len(seen), "cells": len(cells),
                         "tasks": len(tasks), "outcomes": len(outcomes), "counted": state.counted,
                         "duplicates": state.duplicates, "bad": state.bad, "positions": ledger.positions()})

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
async def read_topic(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                     timeout_s: float = 60.0) -> list[tuple[int, int, bytes | None]]:
    """Every record of ``topic`` from the beginning as ``(partition, offset, value)``, in offset order per partition:
    up to the end offsets at call time, or up to ``upto[partition]`` inclusive (a partition missing there: none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise ServiceUnavailable(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    try:
        # Without a group, a subscription is assigned every partition once the metadata arrives.
        consumer.subscribe([topic])
        for _ in range(int(timeout_s * 20)):  # aiokafka offers no event for "assigned" without a group
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tps = sorted(consumer.assignment())
        if not tps:
            return []
        await consumer.seek_to_beginning(*tps)
        if upto is None:
            targets = {tp: end - 1 for tp, end in (await consumer.end_offsets(tps)).items()}
        else:
            targets = {tp: upto.get(tp.partition, -1) for tp in tps}
        out: list[tuple[int, int, bytes | None]] = []
        pending = {tp for tp in tps if targets[tp] >= 0}
        for tp in set(tps) - pending:
            consumer.pause(tp)
        while pending:
            if loop.time() > deadline:
                raise ServiceUnavailable(f"reading {topic} did not reach offsets {targets} in {timeout_s:.0f} s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)).items():
                for record in records:
                    if record.offset <= targets[tp]:
                        out.append((tp.partition, record.offset, record.value))
                if records and records[-1].offset >= targets[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        return out
    finally:
        await consumer.stop()


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
    for partition, offset, response in decoded_responses(await read_topic(settings, topo.responses, upto=upto)):
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

    @property
    def ok(self) -> bool:
        return not self.differences and self.ledger_totals == self.source_totals


async def reconcile(settings: Settings, url: str | None = None) -> Reconciliation:
    """Compare every day cell of the running ledger with a second, independent aggregation of the responses topic,
    read up to exactly the offsets the ledger reports having applied (a consistent cut, so traffic may flow)."""
    snapshot = await fetch_snapshot(url or ledger_url(settings), window="day")
    source = await aggregate_topics(settings, upto=snapshot.positions)
    ledger_cells = {(r.tenant, r.model, r.window_start_ms): r for r in snapshot.rows}
    source_cells = {(r.tenant, r.model, r.window_start_ms): r for r in source.rows(window="day")}
    differences = []
    for key in sorted(ledger_cells.keys() | source_cells.keys()):
        mine, theirs = ledger_cells.get(key), source_cells.get(key)
        for name in COUNTER_FIELDS:
            a, b = (getattr(mine, name) if mine else 0), (getattr(theirs, name) if theirs else 0)
            if a != b:
                differences.append(CellDifference(key[0], key[1], key[2], name, a, b))
    return Reconciliation(ledger_totals=totals_by_tenant(snapshot.rows),
                          source_totals=totals_by_tenant(source.rows(window="day")),
                          differences=differences, positions=snapshot.positions)
