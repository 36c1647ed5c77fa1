"""Wiring for the audit stage: the chain on disk, the Redis claim store, checkpoints on a timer (also published, with
their leaves, to ``<prefix>.audit.checkpoints``: a witness outside the disk), and a companion consumer that audits
dead letters.

Chains are per process (``FileAuditSink.lease``), not per source partition: the runner hands the stage a batch
without partitions, and a leased chain gives the same guarantees — one writer per chain, chains that survive
restarts — while the shared claim store keeps one record per request across processes and rebalances.

Dead letters never reach the audit stage as envelopes, so :class:`DeadLetterAuditor` reads ``<prefix>.deadletter``
in its own consumer group ``<prefix>.audit.deadletter`` and records each as a ``dead_lettered`` outcome. A
``stage_error`` letter from another stage is skipped: the runner also forwards that request, failed, to audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from schemas.errors import BadEvent, ConfigError
from schemas.response import DeadLetter
from streams.runtime.codec import decode_as
from streams.runtime.connections import new_consumer, new_producer, redis_client
from streams.runtime.lanes import owned_offsets
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.topics import topology
from streams.settings import Settings
from streams.stages.policy import open_limits
from workers.audit.chain import Ed25519Signer, HmacSigner, Signer
from workers.audit.claims import RedisClaimStore
from workers.audit.record import record_from_deadletter
from workers.audit.sink import AuditLog, FileAuditSink
from workers.audit.stage import AuditContext, Settler, record_batch
from workers.context import StageContext, derive
from workers.detectors.redaction import BasicRedactor, ChainedRedactor, MemoRedactor, PiiRedactor

log = logging.getLogger(__name__)


def audit_dir(settings: Settings) -> Path:
    """Chains of one deployment (topic prefix) live together: ``<state_dir>/audit/<prefix>/chain-NNN``."""
    return settings.state_dir / "audit" / settings.topic_prefix


def signer_from_settings(settings: Settings, *, verify_only: bool = False) -> Signer:
    """Ed25519 when ``TOLLWAY_AUDIT_ED25519_KEY_FILE`` names a PEM key (a public key is enough to verify), else
    HMAC-SHA256 with ``TOLLWAY_AUDIT_SECRET``."""
    path = settings.audit_ed25519_key_file
    if path is None:
        return HmacSigner(settings.audit_secret.get_secret_value().encode())
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"TOLLWAY_AUDIT_ED25519_KEY_FILE {path} cannot be read: {exc}") from exc
    if b"PUBLIC KEY" in pem:
        public = load_pem_public_key(pem)
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        if not verify_only:
            raise ConfigError(f"{path} holds only a public key; the audit stage needs the private key to sign")
        return Ed25519Signer(public)
    private = load_pem_private_key(pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return Ed25519Signer.from_private(private)


class DeadLetterAuditor:
    def __init__(self, settings: Settings, ctx: AuditContext) -> None:
        self.settings, self.ctx = settings, ctx
        self.topology = topology(settings)
        self.unconfirmed: list[str] = []
        self.redactor = ChainedRedactor(PiiRedactor(), BasicRedactor())
        self._stopping = asyncio.Event()
        self.consumer = new_consumer(
            settings, self.topology.deadletter, role="stage-audit",
            group_id=f"{self.topology.group('audit')}.deadletter",
            client_id=f"{settings.worker_id}-audit-deadletter", auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.batch_wait_ms)
        self.producer = new_producer(settings, role="stage-audit")
        self.publisher = KafkaPublisher(self.producer)

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=100, max_records=self.settings.batch_max_records)
            if not batches:
                continue
            now_ns = self.ctx.clock.now_ns()
            records = []
            for batch in batches.values():
                for raw in batch:
                    try:
                        letter = decode_as(raw.value, DeadLetter)
                    except BadEvent as exc:  # nothing to audit: it names no request and no source
                        log.warning("unreadable dead letter %s[%d]@%d: %s", raw.topic, raw.partition, raw.offset, exc)
                        continue
                    if (letter.reason == "stage_error" or letter.reason.startswith("unverified_")) \
                            and letter.stage != "audit" and letter.request_id:
                        continue  # the failed (or refused) request itself reaches the audit stage
                    records.append(record_from_deadletter(letter, redactor=self.ctx.redactor,
                                                          auditor=self.ctx.worker_id, now_ns=now_ns))
            try:
                await record_batch(records, self.ctx, self.publisher, self.unconfirmed)
                await self.publisher.flush()
                # Only partitions still owned: a rebalance may have moved some since the poll (their new owner
                # redelivers them, and the chain and the claims deduplicate).
                offsets = owned_offsets(self.consumer, {tp: recs[-1].offset + 1 for tp, recs in batches.items()})
                if offsets:
                    await self.consumer.commit(offsets)
            except Exception:
                # Never die silently: log, rewind to the batch's start and try it again (at-least-once; the
                # chain and the claims deduplicate what was already recorded).
                log.exception("auditing %d dead letter(s) failed; retrying the batch", len(records))
                owned = self.consumer.assignment()
                for tp, recs in batches.items():
                    if tp in owned:
                        self.consumer.seek(tp, recs[0].offset)
                await asyncio.sleep(1.0)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()


class WitnessPublisher:
    """Checkpoint witness messages for ``<prefix>.audit.checkpoints``, kept until the broker acknowledges them (a
    failed flush keeps them for the next one). Its own producer: the timer flushes it whether or not traffic flows."""

    def __init__(self, settings: Settings) -> None:
        self.producer = new_producer(settings, role="stage-audit")
        self.pending: list[tuple[str, bytes, bytes | None]] = []

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            deliveries = [await self.producer.send(topic, value, key=key) for topic, value, key in batch]
            await asyncio.gather(*deliveries)
        except Exception:
            self.pending[:0] = batch
            raise


async def _checkpoint_on_timer(ctx: AuditContext, witness: WitnessPublisher, interval_s: float) -> None:
    """Sign a checkpoint once the oldest unsigned record waited an interval, even when traffic stops, so the unsigned
    tail stays short; and send the witness messages to the topic within a second of signing."""
    while True:
        await asyncio.sleep(min(interval_s, 1.0))
        async with ctx.lock:
            ctx.audit_log.maybe_checkpoint(now_ns=ctx.clock.now_ns())
        try:
            await witness.flush()
        except Exception as exc:  # the broker is away: the messages wait for the next tick
            log.warning("audit checkpoints not yet on the topic (%d waiting): %s", len(witness.pending), exc)


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[AuditContext]:
    async with open_limits(settings) as limits, _open_audit_context(settings, base, limits) as ctx:
        yield ctx


@asynccontextmanager
async def _open_audit_context(settings: Settings, base: StageContext, limits: Settler) -> AsyncIterator[AuditContext]:
    sink = FileAuditSink.lease(audit_dir(settings), segment_records=settings.audit_segment_records)
    redis = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 2000))
    witness = WitnessPublisher(settings)
    try:
        await witness.producer.start()
        interval_ns = int(settings.audit_checkpoint_interval_s * 1e9)
        audit_log = AuditLog(sink, signer_from_settings(settings), checkpoint_every=settings.audit_checkpoint_records,
                             checkpoint_interval_ns=interval_ns, now_ns=base.clock.now_ns(), witness=witness,
                             witness_topic=topology(settings).audit_checkpoints,
                             republish_window_ns=max(60 * 1_000_000_000, 6 * interval_ns))
        claims = RedisClaimStore(redis, namespace=settings.topic_prefix, ttl_s=settings.audit_claim_ttl_days * 86_400)
        ctx = derive(AuditContext, base, audit_log=audit_log, claims=claims, owner=sink.owner,
                           redactor=MemoRedactor(ChainedRedactor(PiiRedactor(), BasicRedactor())),
                           content_mode=settings.audit_content,
                           audit_topic=topology(settings).audit_log, settler=limits)
        log.info("audit chain %s at %s (%d records)", sink.chain_id, sink.dir, audit_log.size)
        deadletters = DeadLetterAuditor(settings, ctx)
        await deadletters.start()
        tasks = [asyncio.create_task(deadletters.run(), name="audit-deadletters"),
                 asyncio.create_task(_checkpoint_on_timer(ctx, witness, settings.audit_checkpoint_interval_s),
                                     name="audit-checkpoints")]
        try:
            yield ctx
        finally:
            deadletters.stop()
            await asyncio.wait(tasks[:1], timeout=5)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await deadletters.close()
            async with ctx.lock:
                audit_log.close(now_ns=base.clock.now_ns())
            try:
                await asyncio.wait_for(witness.flush(), timeout=10)
            except Exception as exc:  # on disk already; a restart publishes recent checkpoints again
                log.warning("the last audit checkpoints did not reach the topic: %s", exc)
    finally:
        sink.close()
        with contextlib.suppress(Exception):  # never started when the broker was away: nothing to stop
            await witness.producer.stop()
        await redis.aclose()
