"""The Kafka side of the HTTP ingress: publish an envelope, await its response.

:class:`Gateway` is what the handlers see; :class:`KafkaGateway` is the real one (the SDK client), and tests pass an
in-memory one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from schemas.envelope import Envelope
from schemas.errors import ServiceUnavailable
from schemas.response import Response
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import encode
from streams.runtime.publisher import KafkaPublisher
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.runtime.rdkafka import RdKafkaProducer
    from streams.runtime.runner import BatchPublisher

log = logging.getLogger(__name__)


class Gateway(Protocol):
    """Publish an envelope (ServiceUnavailable when Kafka is down), await its response (TimeoutError)."""

    @property
    def ready(self) -> bool: ...

    async def publish(self, env: Envelope) -> None: ...

    async def wait(self, request_id: str, timeout_s: float) -> Response: ...


class KafkaGateway:
    """The SDK client as the ingress's gateway. It connects in the background and keeps retrying, so the server is
    up (answering 503 and failing /healthz) while Kafka is not, instead of crash-looping."""

    def __init__(self, settings: Settings, *, reply_topic: str | None = None) -> None:
        self.client = TollwayClient(settings, reply_to=reply_topic)
        self._ready = False
        self._publisher: BatchPublisher | None = None
        self._rdkafka: RdKafkaProducer | None = None
        self._flush: asyncio.Future[None] | None = None  # the flush the records published this loop turn ride on
        self._flushing: set[asyncio.Future[None]] = set()

    @property
    def ready(self) -> bool:
        return self._ready

    async def connect(self, *, first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
        delay = first_delay_s
        while True:
            try:
                await self.client.start()
            except ServiceUnavailable as exc:
                log.warning("Kafka not reachable yet (%s); retrying in %.1f s", exc, delay)
                await self.client.close()
                await asyncio.sleep(delay)  # reconnect backoff, not synchronisation
                delay = min(delay * 2, max_delay_s)
                continue
            assert self.client.producer is not None
            settings = self.client.settings
            if settings.kafka_client == "librdkafka":
                from streams.runtime.rdkafka import RdKafkaProducer, RdKafkaPublisher

                self._rdkafka = RdKafkaProducer(settings, role="producer", client_id=f"{settings.worker_id}-ingress")
                try:
                    await self._rdkafka.start()
                except ServiceUnavailable as exc:
                    log.warning("Kafka not reachable yet (%s); retrying in %.1f s", exc, delay)
                    await self._rdkafka.stop()
                    await self.client.close()
                    await asyncio.sleep(delay)  # reconnect backoff, not synchronisation
                    delay = min(delay * 2, max_delay_s)
                    continue
                self._publisher = RdKafkaPublisher(self._rdkafka)
            else:
                self._publisher = KafkaPublisher(self.client.producer)
            self._ready = True
            return

    async def publish(self, env: Envelope) -> None:
        """Publish ``env`` and return once Kafka acknowledged it.

        The requests of every handler that publishes in the same turn of the event loop go out together, one batch
        per partition (streams/runtime/publisher.py), instead of one ``send`` each — fewer produce requests for the
        broker and no per-record coroutine, metadata wait and delivery future here.
        """
        if not self._ready or self._publisher is None:
            raise ServiceUnavailable("not connected to Kafka")
        client = self.client
        if client.reply_to:
            env.request.reply_to = client.reply_to
        client.replies.expect([env.request_id])
        self._publisher.publish(client.topology.ingress(env.tier), encode(env), key=env.request_id.encode())
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._start_flush)
        flush = self._flush
        try:
            await asyncio.wait_for(asyncio.shield(flush), self.client.settings.ingress_publish_timeout_s)
        except (TimeoutError, ServiceUnavailable) as exc:
            client.replies.forget(env.request_id)
            raise ServiceUnavailable(f"Kafka did not acknowledge the request within "
                                     f"{client.settings.ingress_publish_timeout_s:g} s: {exc!r}") from exc

    def _start_flush(self) -> None:
        flush, self._flush = self._flush, None
        assert flush is not None and self._publisher is not None
        task = asyncio.ensure_future(self._publisher.flush())
        self._flushing.add(task)  # a reference until it is done (the loop keeps only a weak one)

        def settle(done: asyncio.Future[None]) -> None:
            self._flushing.discard(done)
            if flush.done():
                return
            if done.cancelled():
                flush.set_exception(ServiceUnavailable("publishing was cancelled"))
            elif (exc := done.exception()) is not None:  # whatever the client raised: Kafka did not take it
                flush.set_exception(ServiceUnavailable(repr(exc)))
            else:
                flush.set_result(None)
                return
            flush.exception()  # retrieved here: every waiter re-raises it itself

        task.add_done_callback(settle)

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        self.client.replies.expect([request_id])
        return await self.client.replies.wait(request_id, timeout_s)

    async def close(self) -> None:
        self._ready = False
        if self._rdkafka is not None:
            await self._rdkafka.stop()
        await self.client.close()
