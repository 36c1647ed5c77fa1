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
live tables, ``GET /ledger/task/?tenant=acme&task_id=T`` with one task's requests, cost and outcome, and
``GET /ledger/status/`` with recovery times and table sizes, once the tables are recovered and
caught up. One ledger worker holds every partition; with several, each answers for the partitions it owns (not
supported by the CLI yet).

Faust does not create the source topics: :func:`streams.runtime.topics.ensure_topics` does, before the app starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import orjson

from schemas.errors import BadEvent
from schemas.ledger import OutcomeEvent
from streams.ledger.aggregate import ledger_rows
from streams.ledger.client import fetch_snapshot
from streams.ledger.reader import read_topic
from streams.ledger.reconcile import reconcile
from streams.ledger.state import LedgerApp, LedgerState
from streams.runtime.codec import decode_as
from streams.runtime.connections import kafka_security
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from workers.ledger.cells import event_time_ns
from workers.ledger.checkpoints import checkpoint_writes
from workers.ledger.dedup import apply_outcome

log = logging.getLogger(__name__)

# Kept importable from here for callers outside this package (bench/, tests/chaos, tests/integration); they live in
# the role-named modules beside this one.
__all__ = ["CHECKPOINT_TABLES", "CHECKPOINT_TOPIC_CONFIGS", "app_id", "create_app", "fetch_snapshot", "ledger_rows",
           "read_topic", "reconcile", "run_ledger", "run_worker"]


# Only a key's latest value matters (it carries its watermark; a mark its offset): one-minute segments let the log
# cleaner compact all but the last minute or so of checkpoints, so a restart replays about one record per key.
CHECKPOINT_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1",
                            "min.compaction.lag.ms": "0"}
CHECKPOINT_TABLES = ("cells", "tasks")


def app_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}-ledger"


def _credentials(settings: Settings) -> faust.SASLCredentials | None:
    """The ledger principal's SASL credentials on a broker with authentication (streams/runtime/connections.py)."""
    security = kafka_security(settings, "ledger")
    if not security:
        return None
    return faust.SASLCredentials(username=security["sasl_plain_username"],
                                 password=security["sasl_plain_password"], mechanism=security["sasl_mechanism"])


def create_app(settings: Settings, *, web_port: int | None = None) -> LedgerApp:
    topo = topology(settings)
    name = app_id(settings)
    datadir = settings.state_dir / "faust" / name  # Faust creates only the last level
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        name,
        broker=f"kafka://{settings.bootstrap_servers}",
        broker_credentials=_credentials(settings),
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

    @app.page("/ledger/task/")
    async def task_view(web: Any, request: Any) -> Any:
        tenant, task_id = request.query.get("tenant"), request.query.get("task_id")
        if not tenant or not task_id:
            return web.json({"error": "tenant and task_id are required"}, status=400)
        if not state.recovered.is_set():
            return web.json({"error": "the ledger is still recovering"}, status=503)
        return web.json(ledger.task(tenant=tenant, task_id=task_id))

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
