"""Publishing requests and waiting for their responses (the SDK, the CLI, the demo and tests build on this).

:class:`ReplyReader` reads a reply topic (``tollway.responses`` or a client's own ``tollway.replies.*``) from its end
without a consumer group (no commits, no rebalances) and resolves one future per request id registered before
publishing, so any number of callers can wait in one process and no reply is missed or hoarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.errors import BadEvent, ServiceUnavailable
from schemas.response import Response
from streams.runtime.codec import decode_as
from streams.settings import Settings

log = logging.getLogger(__name__)

# With fetch_min_bytes=1 the broker answers a fetch as soon as a reply arrives, so the wait only sets how often an idle
# reader asks again. Measured alternated in one run (3 rounds, 60 replies each): 5 ms kept 11–12 % of a
# core busy per idle reader, 500 ms 0.4–0.5 %; send→reply p50 4.6 vs 4.3 ms (medians of rounds), within the noise.
REPLY_FETCH_WAIT_MS = 500


class ReplyReader:
    """Reads a reply topic from a chosen point and resolves one future per registered request id.

    Memory is bounded: replies nobody has claimed yet are kept for the newest ``keep_results`` ids, and at most
    ``max_pending`` ids wait for a reply. Past that, ids nobody is waiting on right now (a wait that timed out, a
    submit never followed by a result) are dropped oldest first; if every one has a caller waiting, registering more
    fails with a clear error instead of growing without end. Should the reader itself stop (the broker gone for good),
    every wait fails at once with the reason rather than running into its timeout.
    """

    def __init__(self, settings: Settings, topic: str, *, keep_results: int = 10_000,
                 max_pending: int = 100_000, fetch_max_wait_ms: int = REPLY_FETCH_WAIT_MS) -> None:
        self.settings = settings
        self.topic = topic
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.keep_results = keep_results
        self.max_pending = max_pending
        self._futures: OrderedDict[str, asyncio.Future[Response]] = OrderedDict()  # in registration order
        self._unclaimed: OrderedDict[str, None] = OrderedDict()  # ids whose reply came and was not yet taken
        self._waiters: dict[str, int] = {}  # ids a caller is in wait() for right now
        self._failure: ServiceUnavailable | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.seen = 0  # replies read, ours or not

    async def start(self, *, since_ms: int | None = None) -> None:
        """Start reading at the end of the topic, or at the first reply at or after ``since_ms`` (epoch ms)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=self.fetch_max_wait_ms,
                                    auto_offset_reset="latest")
        try:
            await asyncio.wait_for(consumer.start(), 15)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise ServiceUnavailable(f"Kafka is not reachable at {self.settings.bootstrap_servers}: {exc}") from exc
        self._consumer = consumer
        # The consumer has no subscription, so ask for the whole cluster's metadata (aiokafka has no public call
        # that returns a topic's partitions before the consumer follows it).
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(self.topic) or set()
        if not partitions:
            await consumer.stop()
            raise ServiceUnavailable(f"topic {self.topic} has no partitions; run `tollway topics`")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp, at in found.items():
                if at is not None:
                    consumer.seek(tp, at.offset)
        for tp in tps:  # resolve positions now, so nothing published after start() is missed
            await consumer.position(tp)
        self._failure = None
        self._task = asyncio.create_task(self._pump(), name=f"replies-{self.topic}")

    def expect(self, request_ids: Iterable[str]) -> None:
        """Register ids before publishing them: a reply that arrives first is then never dropped."""
        if self._failure is not None:
            raise self._failure
        fresh = [rid for rid in dict.fromkeys(request_ids) if rid not in self._futures]
        if self.pending() + len(fresh) > self.max_pending:
            self._drop_abandoned(self.pending() + len(fresh) - self.max_pending)
            if self.pending() + len(fresh) > self.max_pending:
                raise ServiceUnavailable(
                    f"{self.pending()} requests are already waiting for replies on {self.topic} (at most "
                    f"{self.max_pending}); wait for their results before submitting more")
        loop = asyncio.get_running_loop()
        for rid in fresh:
            self._futures[rid] = loop.create_future()

    def forget(self, request_id: str) -> None:
        future = self._futures.pop(request_id, None)
        self._unclaimed.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def pending(self) -> int:
        """Registered ids still waiting for their reply."""
        return len(self._futures) - len(self._unclaimed)

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        """The reply for a registered id (KeyError for an id never registered, TimeoutError when none comes in time,
        ServiceUnavailable when the reader has stopped). After a timeout the id stays registered: wait again, or
        ``forget`` it."""
        if self._failure is not None:
            raise self._failure
        future = self._futures[request_id]
        self._waiters[request_id] = self._waiters.get(request_id, 0) + 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no reply to request {request_id} on {self.topic} within {timeout_s:g} s") from None
        finally:
            if self._waiters[request_id] <= 1:
                del self._waiters[request_id]
            else:
                self._waiters[request_id] -= 1
            if future.done() and self._futures.get(request_id) is future:
                del self._futures[request_id]
                self._unclaimed.pop(request_id, None)

    def _drop_abandoned(self, count: int) -> None:
        abandoned = [rid for rid, future in self._futures.items()
                     if not future.done() and rid not in self._waiters][:count]
        for rid in abandoned:
            self.forget(rid)

    def _resolve(self, request_id: str, value: bytes | None) -> None:
        future = self._futures.get(request_id)
        if future is None or future.done():
            return
        try:
            future.set_result(decode_as(value, Response))
        except BadEvent:
            return
        self._unclaimed[request_id] = None
        while len(self._unclaimed) > self.keep_results:  # replies nobody asked for: the oldest go first
            oldest, _ = self._unclaimed.popitem(last=False)
            self._futures.pop(oldest, None)

    async def _pump(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self.seen += 1
                        if record.key is not None:
                            self._resolve(record.key.decode(), record.value)
        except Exception as exc:  # aiokafka raises many types; whatever it is, no reply will come any more
            self._failure = ServiceUnavailable(f"replies on {self.topic} are no longer read: {exc!r}")
            log.error("%s", self._failure)
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(self._failure)
                    future.exception()  # retrieved here: a waiter re-raises it, nobody else has to

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for future in self._futures.values():
            if not future.done():
                future.cancel()
