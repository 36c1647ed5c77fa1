"""The Kafka side of the HTTP ingress: publish an envelope, await its response.

:class:`Gateway` is what the handlers see; :class:`KafkaGateway` is the real one (the SDK client), and tests pass an
in-memory one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from schemas.envelope import Envelope
from schemas.errors import ServiceUnavailable
from schemas.response import Response
from streams.clients.sdk import TollwayClient
from streams.settings import Settings

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
            self._ready = True
            return

    async def publish(self, env: Envelope) -> None:
        if not self._ready:
            raise ServiceUnavailable("not connected to Kafka")
        await self.client.submit_envelopes([env], sign=False)

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        self.client.replies.expect([request_id])
        return await self.client.replies.wait(request_id, timeout_s)

    async def close(self) -> None:
        self._ready = False
        await self.client.close()
