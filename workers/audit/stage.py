"""Audit stage: exactly one chained audit record per request outcome; the last stage (forwards nothing).

One record per request, across redeliveries, restarts and several audit processes, in two layers:

1. a **claim** per dedup key in a shared store (Redis): ``p|owner|ms`` when a chain claims it, ``d|owner`` once the
   record is stored and mirrored. A key claimed ``d`` is never recorded again. A pending claim by another chain is
   left alone unless it is older than ``stale_claim_ms`` (that chain's process died between claim and append);
2. the **chain itself** knows the keys it holds (recovered from disk at start), so a claim that was lost (Redis TTL,
   a flushed Redis) still does not create a second record in that chain.

A key claimed by this chain but not confirmed means we crashed after claiming: if the chain has the record it is
re-mirrored to the audit topic (its acknowledgement was never seen), otherwise it is appended now. Claims are
confirmed at the start of the next batch, in the round trip of its own claims: the runner (and a co-located chain,
whose audit batches wait for the previous cycle's tail) awaits every acknowledgement of a batch before handing over
the next one, so by then the mirror copy is safe on the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from schemas.audit import AuditRecord, ContentMode
from schemas.envelope import Envelope
from schemas.errors import BackendError
from workers.audit.chain import HmacSigner
from workers.audit.claims import ClaimStore, MemoryClaimStore
from workers.audit.record import EncodedRecord, encoded, encoded_from_envelope
from workers.audit.sink import AuditLog, MemoryAuditSink
from workers.context import Publisher, StageContext
from workers.detectors.redaction import BasicRedactor, Redactor
from workers.policy import settlement_for

NAME = "audit"
T = TypeVar("T")
log = logging.getLogger(__name__)


class Settler(Protocol):
    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> list[bool]: ...

def _memory_log() -> AuditLog:
    return AuditLog(MemoryAuditSink(), HmacSigner(b"tollway-test-audit-secret"))


@dataclass(frozen=True)
class AuditContext(StageContext):
    audit_log: AuditLog = field(default_factory=_memory_log)
    claims: ClaimStore = field(default_factory=MemoryClaimStore)
    owner: str = "chain-mem"  # the chain's stable identity in the claim store
    redactor: Redactor = field(default_factory=BasicRedactor)
    content_mode: ContentMode = "hashes"
    audit_topic: str = ""  # defaults to "<topic_prefix>.audit.log"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the runner and the dead-letter consumer share a chain
    unconfirmed: list[str] = field(default_factory=list)  # the runner's previous batch, confirmed on the next
    # Budget settlement: the policy stage reserved each request's estimated cost; the audit stage, which sees every
    # terminal outcome exactly once per request, replaces the reservation by the actual cost (0 = released).
    settler: Settler | None = None

    @property
    def topic(self) -> str:
        return self.audit_topic or f"{self.topic_prefix}.audit.log"


@dataclass
class RecordOutcome:
    appended: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


async def record_batch(records: Sequence[AuditRecord | EncodedRecord], ctx: AuditContext, publisher: Publisher,
                       unconfirmed: list[str]) -> RecordOutcome:
    """Chain, store and mirror each record whose dedup key has no record yet. ``unconfirmed`` holds this caller's
    keys from its previous call (acknowledged by now) and receives this call's."""
    result = RecordOutcome()
    async with ctx.lock:
        unique: dict[str, EncodedRecord] = {}
        for record in records:
            if record.dedup_key in unique:
                result.duplicates.append(record.dedup_key)
            else:
                unique[record.dedup_key] = encoded(record) if isinstance(record, AuditRecord) else record
        keys = list(unique)
        confirm = list(unconfirmed)  # the previous call's keys: confirmed in the claim's round trip
        claims = await _until_reachable(
            lambda: ctx.claims.claim(keys, ctx.owner, now_ms=ctx.clock.now_ns() // 1_000_000, confirm=confirm),
            "claim")
        unconfirmed.clear()
        if not unique:
            return result
        to_append: list[tuple[str, bytes]] = []
        for key, claim in zip(keys, claims, strict=True):
            stored = ctx.audit_log.keys.get(key)
            if stored is not None:
                if claim == "ours":  # stored before a crash, mirror acknowledgement unknown: mirror again
                    publisher.publish(ctx.topic, stored, key=unique[key].kafka_key)
                    result.republished.append(key)
                    unconfirmed.append(key)
                else:
                    result.duplicates.append(key)
            elif claim == "skip":
                result.duplicates.append(key)
            else:
                to_append.append((key, unique[key].data))
        await ctx.audit_log.append_async(to_append, now_ns=ctx.clock.now_ns())
        for key, record_bytes in to_append:
            publisher.publish(ctx.topic, record_bytes, key=unique[key].kafka_key)
            result.appended.append(key)
            unconfirmed.append(key)
    return result


async def _until_reachable(call: Callable[[], Awaitable[T]], what: str) -> T:
    """The claim store being down is no reason to fail a request's audit: wait for it (the batch is uncommitted,
    so a crash while waiting redelivers it)."""
    delay_s = 0.05
    while True:
        try:
            return await call()
        except BackendError as exc:
            log.warning("audit claim store %s failed, retrying in %.2f s: %s", what, delay_s, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)


async def process(batch: list[Envelope], ctx: AuditContext) -> list[Envelope]:
    now_ns = ctx.clock.now_ns()
    records = [encoded_from_envelope(env, redactor=ctx.redactor, content_mode=ctx.content_mode,
                                     auditor=ctx.worker_id, now_ns=now_ns) for env in batch]
    await record_batch(records, ctx, ctx.publisher, ctx.unconfirmed)
    await _settle_budgets(batch, ctx)
    return []  # the last stage: nothing is forwarded


async def _settle_budgets(batch: list[Envelope], ctx: AuditContext) -> None:
    settlements = [s for env in batch if (s := settlement_for(env)) is not None]
    if not settlements or ctx.settler is None:
        return
    try:
        # Idempotent per reservation: a redelivered batch settles nothing twice.
        await ctx.settler.settle_many(settlements)
    except BackendError as exc:
        # The reservation stays until its TTL releases it: spend is over-reserved, never under-counted.
        log.warning("could not settle %d budget reservation(s): %s", len(settlements), exc)
