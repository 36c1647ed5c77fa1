"""Publishing requests and waiting for their responses (used by the CLI, the demo and tests).

The waiter reads ``tollway.responses`` from its end without a consumer group (no commits, no rebalances) and
resolves futures by request_id, so any number of callers can wait in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.envelope import Envelope, Message, Request, Tier
from schemas.errors import BadEvent, ServiceUnavailable
from schemas.response import Response
from streams.codec import decode_as, encode
from streams.settings import Settings
from streams.topics import ensure_topics, topology
from workers.policy import route_for


def new_envelope(prompt: str | list[Message], *, tenant: str, tier: Tier = Tier.STANDARD,
                 budget_ms: int | None = None, settings: Settings | None = None,
                 request_id: str | None = None, **request_fields: object) -> Envelope:
    messages = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
    now = time.time_ns()
    s = settings or Settings()
    if budget_ms is None:
        budget_ms = {Tier.INTERACTIVE: s.budget_interactive_ms, Tier.STANDARD: s.budget_standard_ms,
                     Tier.BATCH: s.budget_batch_ms}[tier]
    return Envelope(
        # The route is data: with a remote embedder the policy stage redacts before retrieval sees the prompt.
        route=route_for(None, s),
        request_id=request_id or uuid.uuid4().hex,
        tenant=tenant,
        tier=tier,
        created_at_ns=now,
        deadline_at_ns=now + budget_ms * 1_000_000,
        request=Request(messages=messages, **request_fields),
    )


@dataclass
class ResponseWaiter:
    settings: Settings
    _consumer: AIOKafkaConsumer | None = None
    _waiting: dict[str, asyncio.Future[Response]] = field(default_factory=dict)
    _early: dict[str, Response] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = topology(self.settings).responses
        # Without a group, a subscribing consumer is assigned every partition of the topic: no rebalances.
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.settings.bootstrap_servers,
                                          enable_auto_commit=False, group_id=None, fetch_max_wait_ms=5,
                                          auto_offset_reset="latest")
        await self._consumer.start()
        for _ in range(150):  # a topic created a moment ago takes a little while to show in the metadata
            if self._consumer.assignment():
                break
            await asyncio.sleep(0.1)
        tps = sorted(self._consumer.assignment())
        if not tps:
            raise ServiceUnavailable(f"topic {topic} has no partitions; start a worker or run `tollway topics`")
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, so nothing published after start() is missed
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    try:
                        response = decode_as(record.value, Response)
                    except BadEvent:
                        continue
                    future = self._waiting.get(response.request_id)
                    if future is None:
                        if len(self._early) < 100_000:
                            self._early[response.request_id] = response
                    elif not future.done():
                        future.set_result(response)

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        if request_id in self._early:
            return self._early.pop(request_id)
        future = self._waiting.setdefault(request_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        finally:
            self._waiting.pop(request_id, None)

    def expect(self, request_ids: Iterable[str]) -> None:
        loop = asyncio.get_running_loop()
        for rid in request_ids:
            self._waiting.setdefault(rid, loop.create_future())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()


class Submitter:
    """Publishes envelopes to the ingress topic with an idempotent producer and waits for their responses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = topology(settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True,
                                         linger_ms=2, max_request_size=settings.max_message_bytes * 2)
        self.waiter = ResponseWaiter(settings)

    async def __aenter__(self) -> Submitter:
        try:
            await asyncio.wait_for(self.producer.start(), 15)
        except Exception as exc:
            raise ServiceUnavailable(f"Kafka is not reachable at {self.settings.bootstrap_servers}: {exc}") from exc
        await ensure_topics(self.settings)
        await self.waiter.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.waiter.stop()
        await self.producer.stop()

    async def publish(self, envs: Iterable[Envelope]) -> list[str]:
        deliveries, ids = [], []
        for env in envs:
            self.waiter.expect([env.request_id])
            deliveries.append(await self.producer.send(self.topology.ingress(env.tier), encode(env),
                                                       key=env.request_id.encode()))
            ids.append(env.request_id)
        await asyncio.gather(*deliveries)
        return ids

    async def complete(self, envs: list[Envelope], timeout_s: float = 30.0) -> list[Response]:
        ids = await self.publish(envs)
        return list(await asyncio.gather(*(self.waiter.wait(rid, timeout_s) for rid in ids)))
