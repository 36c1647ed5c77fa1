"""The policy document on Kafka: published to the compacted ``<prefix>.policy.docs`` topic, followed by every worker.

The topic has one partition and one key (``policy``), so compaction keeps the latest document and a worker that
starts reads it back from the beginning. :class:`PolicyStore` reads up to the end offset before ``start()``
returns (a worker never decides with a stale or missing policy when one exists), then keeps following in the
background: a new document takes effect for the next batch, no restart. A record that does not validate is logged
and skipped, the previous document stays in force; a tombstone is ignored for the same reason (deleting the policy
must not silently allow everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.errors import ConfigError, ServiceUnavailable
from schemas.policy import PolicyDocument, load_policy_yaml, parse_policy
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings

log = logging.getLogger(__name__)

POLICY_KEY = b"policy"


def encode_policy(doc: PolicyDocument) -> bytes:
    return orjson.dumps(doc.model_dump(mode="json"))


def decode_policy(raw: bytes) -> PolicyDocument:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"policy record is not JSON: {exc}") from exc
    return parse_policy(data)


def load_policy_file(path: Path) -> PolicyDocument:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
    return load_policy_yaml(text)


async def publish_policy(settings: Settings, doc: PolicyDocument) -> int:
    """Publish ``doc`` as the current policy; returns its offset on the policy topic."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), 15)
    except Exception as exc:
        raise ServiceUnavailable(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    try:
        metadata = await producer.send_and_wait(topology(settings).policy, encode_policy(doc), key=POLICY_KEY)
        return int(metadata.offset)
    finally:
        await producer.stop()


class PolicyStore:
    """Follows the policy topic; ``current()`` is the document in force (None until one is published)."""

    def __init__(self, settings: Settings, *, initial: PolicyDocument | None = None) -> None:
        self.settings = settings
        self.topic = topology(settings).policy
        self._doc = initial
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.reloads = 0
        self.rejected = 0

    def current(self) -> PolicyDocument | None:
        return self._doc

    @property
    def version(self) -> str | None:
        return self._doc.version if self._doc else None

    async def start(self, *, timeout_s: float = 30.0) -> None:
        await ensure_topics(self.settings)
        tp = TopicPartition(self.topic, 0)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest",
                                          fetch_max_wait_ms=100)
        try:
            await asyncio.wait_for(self._consumer.start(), timeout_s)
        except Exception as exc:
            raise ServiceUnavailable(f"Kafka is not reachable at {self.settings.bootstrap_servers}: {exc}") from exc
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        end = (await self._consumer.end_offsets([tp]))[tp]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self._consumer.position(tp) < end:
            if loop.time() > deadline:
                raise ServiceUnavailable(f"could not read the policy topic {self.topic} to its end in {timeout_s} s")
            await self._poll(timeout_ms=200)
        self._task = asyncio.create_task(self._follow(), name="policy-store")
        log.info("policy store following %s; policy in force: %s", self.topic, self.version or "none")

    async def _poll(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                self._apply(record.value, record.offset)

    def _apply(self, raw: bytes | None, offset: int) -> None:
        if raw is None:
            log.warning("ignoring a tombstone on %s@%d: the policy in force stays %s", self.topic, offset,
                        self.version)
            return
        try:
            doc = decode_policy(raw)
        except ConfigError as exc:
            self.rejected += 1
            log.error("ignoring an invalid policy on %s@%d (the policy in force stays %s): %s", self.topic, offset,
                      self.version, exc)
            return
        if self._doc is None or doc.version != self._doc.version or doc != self._doc:
            log.info("policy %s in force (was %s)", doc.version, self.version or "none")
        self._doc = doc
        self.reloads += 1
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not stop reloads for the life of the worker
                log.exception("policy store poll failed; retrying")
                await asyncio.sleep(1.0)

    async def wait_for_version(self, version: str, timeout_s: float = 10.0) -> PolicyDocument:
        """Wait until the document in force has ``version`` (tests and `tollway policy apply --wait`)."""
        async def reached() -> PolicyDocument:
            async with self._changed:
                await self._changed.wait_for(lambda: self.version == version)
            assert self._doc is not None
            return self._doc

        return await asyncio.wait_for(reached(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


@contextlib.asynccontextmanager
async def open_policy_store(settings: Settings) -> AsyncIterator[PolicyStore]:
    initial = load_policy_file(settings.policy_file) if settings.policy_file else None
    store = PolicyStore(settings, initial=initial)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
