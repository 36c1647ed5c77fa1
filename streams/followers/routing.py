"""The learning router's state, rebuilt from topics: follow ``<prefix>.responses`` and ``<prefix>.outcomes``.

Each model worker with ``TOLLWAY_ROUTER_LEARNING=learn`` (or ``frozen``) first loads the latest round of snapshots
from ``<prefix>.routing.snapshots`` (:mod:`workers.routing.snapshot`: per tenant, the learner and the pending
outcome joins, with the responses/outcomes offsets they cover), then reads both topics from those offsets — from
the beginning when there is no usable snapshot (none, an unknown version, one that fails validation: logged, then
a full rebuild) — responses first, then outcomes, so every outcome finds the responses of its task, feeding
:class:`workers.routing.online.OutcomeJoin` and the worker's :class:`~workers.routing.online.OnlineRouter`; then
it keeps tailing them. A learning follower writes a new round every ``TOLLWAY_ROUTER_SNAPSHOT_EVERY``
observations or ``TOLLWAY_ROUTER_SNAPSHOT_INTERVAL_S`` seconds (when anything changed). ``frozen`` replays nothing
new into the learner after the catch-up (the learnt state stays as the topics had it at start-up) and writes no
snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from schemas.ledger import OutcomeEvent
from schemas.response import Response
from streams.followers.base import TopicFollower, read_to_end
from streams.runtime.connections import new_producer, start
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.routing.online import Observation, OnlineRouter, OutcomeJoin
from workers.routing.snapshot import (
    MANIFEST_KEY,
    Offsets,
    SnapshotError,
    TenantSnapshot,
    decode_manifest,
    decode_tenant,
    encode_manifest,
    encode_tenant,
    restore,
)

log = logging.getLogger(__name__)


@dataclass
class RebuildStats:
    """What a start read: the snapshot round restored (None: a full rebuild) and the records replayed."""

    snapshot_round: int | None = None
    start_offsets: Offsets | None = None
    records_read: int = 0
    observations: int = 0
    snapshots_written: int = 0
    seconds: float = 0.0


class _Snapshots:
    """Loads the latest round at start; writes a new round when due."""

    def __init__(self, settings: Settings, role: str, router: OnlineRouter, join: OutcomeJoin) -> None:
        self.settings, self.role, self.router, self.join = settings, role, router, join
        self.topic = topology(settings).routing_snapshots
        self.feeds: dict[str, _Feed] = {}
        self.armed = False
        self.round_id = 0
        self.learnt_since = 0
        self.changed = False
        self.last_at = time.monotonic()
        self.written = 0
        self._producer: AIOKafkaProducer | None = None

    async def load(self) -> tuple[int | None, Offsets, dict[str, Offsets]]:
        """Restore the latest round: (its id, the offsets to replay from, each tenant's own offsets)."""
        records = await read_to_end(self.settings, self.topic, role=self.role, timeout_s=120, consumer_options={
            "max_partition_fetch_bytes": self.settings.router_snapshot_max_bytes * 2})
        latest: dict[str, bytes | None] = {}
        for record in records:
            if record.key is not None:
                latest[record.key.decode(errors="replace")] = record.value
        raw_manifest = latest.pop(MANIFEST_KEY, None)
        tenants: dict[str, TenantSnapshot] = {}
        for tenant, raw in latest.items():
            if raw is None:
                continue
            try:
                snap = decode_tenant(raw, self.router.config)
            except SnapshotError as exc:
                log.warning("routing snapshot of tenant %r ignored: %s", tenant, exc)
                continue
            tenants[snap.tenant] = snap
            self.round_id = max(self.round_id, snap.round_id)  # the next round is newer than any stored
        if raw_manifest is None:
            return None, {}, {}
        try:
            manifest = decode_manifest(raw_manifest)
            self.round_id = max(self.round_id, manifest.round_id)
            floors = restore(self.router, self.join, manifest, tenants)
        except SnapshotError as exc:
            log.warning("routing snapshots ignored, rebuilding from the topics' beginning: %s", exc)
            return None, {}, {}
        return manifest.round_id, manifest.offsets, floors

    def offsets(self) -> Offsets:
        return {name: dict(feed.next) for name, feed in self.feeds.items()}

    async def applied(self, records: int, observations: int) -> None:
        self.learnt_since += observations
        self.changed = self.changed or records > 0
        if not self.armed or self.router.frozen or not self.changed:
            return
        every = self.settings.router_snapshot_every
        if self.learnt_since >= every or time.monotonic() - self.last_at >= self.settings.router_snapshot_interval_s:
            await self.write()

    async def write(self) -> None:
        """One round: every tenant's snapshot at the same offsets (encoded now, between batches), then the
        manifest."""
        self.round_id += 1
        offsets = self.offsets()
        tenants = sorted({*self.router._tenants, *(t for t, _ in self.join.waiting)})
        payloads = [(t, encode_tenant(self.router, self.join, t, round_id=self.round_id, offsets=offsets))
                    for t in tenants]
        payloads.append((MANIFEST_KEY, encode_manifest(self.round_id, offsets, tenants)))
        self.learnt_since, self.changed, self.last_at = 0, False, time.monotonic()
        try:
            if self._producer is None:
                producer = new_producer(self.settings, role=self.role, client_id=f"{self.settings.worker_id}-router",
                                        max_request_size=self.settings.router_snapshot_max_bytes, linger_ms=0)
                await start(producer, self.settings, "routing snapshot producer")
                self._producer = producer
            for key, value in payloads:
                await self._producer.send_and_wait(self.topic, value, key=key.encode())
            self.written += 1
        except Exception as exc:  # a snapshot is an optimisation: a failed write loses nothing
            log.warning("routing snapshot round %d not written: %r", self.round_id, exc)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class _Feed(TopicFollower):
    def __init__(self, settings: Settings, topic: str, role: str, router: OnlineRouter, join: OutcomeJoin,
                 outcomes: bool, *, floors: dict[str, Offsets], snapshots: _Snapshots | None,
                 start: dict[int, int]) -> None:
        super().__init__(settings, topic, role=role, start_at="beginning", catch_up=True)
        self.router, self.join, self.outcomes = router, join, outcomes
        self.name = "outcomes" if outcomes else "responses"
        self.floors, self.snapshots = floors, snapshots
        self.next: dict[int, int] = dict(start)  # partition → next offset not applied
        self.start_offsets = dict(start)
        self.learnt = 0
        self.read = 0

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        learnt = 0
        for record in records:
            self.next[record.partition] = record.offset + 1
            if record.value is None:
                continue
            try:
                observations = self._observations(record)
            except (orjson.JSONDecodeError, ValidationError) as exc:
                log.debug("routing learner skips %s@%d: %s", self.topic, record.offset, exc)
                continue
            for obs in observations:
                self.router.observe(obs)
            learnt += len(observations)
        self.read += len(records)
        self.learnt += learnt
        if self.snapshots is not None:
            await self.snapshots.applied(len(records), learnt)

    def _covered(self, tenant: str, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Already in the tenant's restored snapshot."""
        floor = self.floors.get(tenant)
        return floor is not None and record.offset < floor.get(self.name, {}).get(record.partition, 0)

    def _observations(self, record: ConsumerRecord[bytes, bytes]) -> list[Observation]:
        assert record.value is not None
        data = orjson.loads(record.value)
        if self.outcomes:
            event = OutcomeEvent.model_validate(data)
            if self._covered(event.tenant, record):
                return []
            return self.join.on_outcome(event.tenant, event.task_id, event.outcome)
        if not isinstance(data, dict) or data.get("route") is None:
            return []  # most responses: nothing routed automatically (skip validating them)
        if self._covered(str(data.get("tenant")), record):
            return []
        return self.join.on_response(Response.model_validate(data))


@asynccontextmanager
async def follow_outcomes(settings: Settings, router: OnlineRouter, *, role: str,
                          stats: RebuildStats | None = None) -> AsyncIterator[OnlineRouter]:
    """Restore ``router`` from the latest snapshot and the topics' tail (or the whole topics), then keep it
    learning while the context is open (writing snapshots when it learns)."""
    began = time.monotonic()
    stats = stats if stats is not None else RebuildStats()
    topo = topology(settings)
    join = OutcomeJoin()
    frozen, router.frozen = router.frozen, False  # the catch-up rebuilds the learnt state even when frozen
    snapshots = _Snapshots(settings, role, router, join) if settings.router_snapshot_every else None
    start_at: Offsets = {}
    floors: dict[str, Offsets] = {}
    if snapshots is not None:
        stats.snapshot_round, start_at, floors = await snapshots.load()
        stats.start_offsets = start_at or None
    responses = _Feed(settings, topo.responses, role, router, join, outcomes=False, floors=floors,
                      snapshots=snapshots, start=start_at.get("responses", {}))
    outcomes = _Feed(settings, topo.outcomes, role, router, join, outcomes=True, floors=floors,
                     snapshots=snapshots, start=start_at.get("outcomes", {}))
    if snapshots is not None:
        snapshots.feeds = {"responses": responses, "outcomes": outcomes}
    try:
        await responses.start(timeout_s=120)
        try:
            await outcomes.start(timeout_s=120)
            try:
                router.frozen = frozen
                stats.records_read = responses.read + outcomes.read
                stats.observations = responses.learnt + outcomes.learnt
                stats.seconds = time.monotonic() - began
                log.info("learning router %s: %d records read, %d observations in %.1f s (%s)",
                         "rebuilt from scratch" if stats.snapshot_round is None
                         else f"restored from snapshot round {stats.snapshot_round}", stats.records_read,
                         stats.observations, stats.seconds, "frozen" if frozen else "learning")
                if snapshots is not None and not frozen:
                    snapshots.armed = True
                    await snapshots.applied(0, 0)
                yield router
            finally:
                await outcomes.stop()
        finally:
            await responses.stop()
    finally:
        if snapshots is not None:
            stats.snapshots_written = snapshots.written
            await snapshots.close()
