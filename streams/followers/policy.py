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
from aiokafka import ConsumerRecord

from schemas.errors import ConfigError
from schemas.policy import PolicyDocument, load_policy_yaml, parse_policy
from streams.followers.base import TopicFollower
from streams.runtime.connections import new_producer, start
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
    producer = new_producer(settings, role="policy-admin", client_id=f"{settings.worker_id}-policy-admin")
    await start(producer, settings, "policy publisher")
    try:
        metadata = await producer.send_and_wait(topology(settings).policy, encode_policy(doc), key=POLICY_KEY)
        return int(metadata.offset)
    finally:
        await producer.stop()


async def apply_policy(settings: Settings, doc: PolicyDocument) -> tuple[int, bool]:
    """Publish ``doc`` unless it is already in force; returns its offset and whether it was published now.

    A version names one document: the decisions and audit records carry only the version, so a different document
    under the version in force is refused (:class:`ConfigError`; bump ``version``), and the identical document is
    not published again. (Two operators applying at the same instant can still race; the policy store logs it.)
    """
    store = PolicyStore(settings)
    await store.start()
    await store.stop()
    current = store.current()
    if current is not None and current.version == doc.version:
        if current != doc:
            raise ConfigError(f"policy version {doc.version!r} is already in force with a different document: "
                              f"bump `version` to publish a change")
        assert store.offset is not None
        return store.offset, False
    return await publish_policy(settings, doc), True


class PolicyStore(TopicFollower):
    """Follows the policy topic; ``current()`` is the document in force (None until one is published)."""

    def __init__(self, settings: Settings, *, initial: PolicyDocument | None = None, role: str = "producer") -> None:
        super().__init__(settings, topology(settings).policy, role=role, start_at="beginning", catch_up=True)
        self._doc = initial
        self._changed = asyncio.Condition()
        self.reloads = 0
        self.rejected = 0
        self.offset: int | None = None  # where the document in force was read (None: initial or none)

    def current(self) -> PolicyDocument | None:
        return self._doc

    @property
    def version(self) -> str | None:
        return self._doc.version if self._doc else None

    async def start(self, *, since_ms: int | None = None, timeout_s: float = 30.0) -> None:
        await ensure_topics(self.settings)
        await super().start(since_ms=since_ms, timeout_s=timeout_s)
        log.info("policy store following %s; policy in force: %s", self.topic, self.version or "none")

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
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
        if self._doc is not None and doc.version == self._doc.version and doc != self._doc:
            # Taken anyway, so every worker agrees on the latest record (compaction keeps only it for new ones).
            log.error("policy %s republished with a different document under the same version (%s@%d): decisions "
                      "recorded as %s before and after it differ; bump `version` with every change", doc.version,
                      self.topic, offset, doc.version)
        elif self._doc is None or doc.version != self._doc.version:
            log.info("policy %s in force (was %s)", doc.version, self.version or "none")
        self._doc = doc
        self.offset = offset
        self.reloads += 1
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_version(self, version: str, timeout_s: float = 10.0) -> PolicyDocument:
        """Wait until the document in force has ``version`` (tests and `tollway policy apply --wait`)."""
        async def reached() -> PolicyDocument:
            async with self._changed:
                await self._changed.wait_for(lambda: self.version == version)
            assert self._doc is not None
            return self._doc

        return await asyncio.wait_for(reached(), timeout_s)


@contextlib.asynccontextmanager
async def open_policy_store(settings: Settings, *, role: str = "producer") -> AsyncIterator[PolicyStore]:
    initial = load_policy_file(settings.policy_file) if settings.policy_file else None
    store = PolicyStore(settings, initial=initial, role=role)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
