"""``tollway serve``: the ingress application on a TCP port, wired to Kafka, Redis, the policy in force and the model
catalog (streams/ingress/app.py has the routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from schemas.errors import ConfigError, ServiceUnavailable
from schemas.policy import PolicyDocument
from streams.followers.policy import PolicyStore, load_policy_file
from streams.ingress.app import Ingress, build_app
from streams.ingress.gateway import KafkaGateway
from streams.ingress.idempotency import RedisIdempotencyStore
from streams.runtime import connections
from streams.runtime.worker_process import tune_gc
from streams.settings import Settings
from workers.routing.catalog import ModelCatalog, get_catalog

log = logging.getLogger(__name__)


def load_catalog_or_none(settings: Settings) -> ModelCatalog | None:
    try:
        return get_catalog(settings.models_file)
    except ConfigError as exc:
        log.warning("no model catalog (%s): /v1/models lists only `auto` and any model name is accepted", exc)
        return None


class _Followed:
    """The policy in force: a fixed document from the policy file, or the policy topic's follower once started."""

    def __init__(self, settings: Settings) -> None:
        self.fixed = load_policy_file(settings.policy_file) if settings.policy_file else None
        self.store = None if self.fixed else PolicyStore(settings)
        self.started = False

    def current(self) -> PolicyDocument | None:
        if self.fixed is not None:
            return self.fixed
        return self.store.current() if self.store is not None and self.started else None

    async def connect(self) -> None:
        if self.store is None:
            return
        delay = 0.5
        while True:
            try:
                await self.store.start()
            except ServiceUnavailable as exc:
                log.warning("policy topic not readable yet (%s); retrying in %.1f s", exc, delay)
                await self.store.stop()
                self.store = PolicyStore(self.store.settings)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.started = True
            return

    async def stop(self) -> None:
        if self.store is not None and self.started:
            await self.store.stop()


@contextlib.asynccontextmanager
async def serving(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080,
                  reply_topic: str | None = None, wait_ready_s: float | None = None,
                  ) -> AsyncIterator[tuple[Ingress, int]]:
    """Run the ingress on ``host:port`` (0: a free port) until the block exits; yields it and the bound port.

    It serves at once (503 until Kafka and the policy are reached); ``wait_ready_s`` waits for both first.
    """
    gateway = KafkaGateway(settings, reply_topic=reply_topic)
    policy = _Followed(settings)
    redis_client = connections.redis_client(settings, timeout_ms=2000)
    ingress = Ingress(settings=settings, gateway=gateway, policy=policy,
                      idempotency=RedisIdempotencyStore(redis_client, prefix=settings.topic_prefix,
                                                        ttl_s=settings.idempotency_ttl_s),
                      catalog=load_catalog_or_none(settings))
    connecting = [asyncio.create_task(gateway.connect(), name="ingress-kafka"),
                  asyncio.create_task(policy.connect(), name="ingress-policy")]
    runner = web.AppRunner(build_app(ingress), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound = runner.addresses[0][1]
        if wait_ready_s is not None:
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(t) for t in connecting)), wait_ready_s)
        if settings.ingress_dev_mode:
            log.warning("ingress dev mode: while no policy is in force, requests need no API key")
        tune_gc()  # as a worker does: the start-up heap out of every collection, fewer passes over live requests
        yield ingress, bound
    finally:
        await _stop_connecting(connecting)
        async with contextlib.AsyncExitStack() as closing:  # each one closed even if another fails to
            closing.push_async_callback(redis_client.aclose)
            closing.push_async_callback(policy.stop)
            closing.push_async_callback(gateway.close)
            closing.push_async_callback(runner.cleanup)


async def _stop_connecting(tasks: list[asyncio.Task[None]], timeout_s: float = 10.0) -> None:
    """Cancel the reconnect loops and wait for them to end, cancelling again whatever survived a cancel.

    A cancel can be lost in a client library (Python 3.11's ``wait_for`` returns a start's own failure when the
    cancel and the failure coincide); a loop that retries on that failure would otherwise keep a failed start-up
    (the port taken while Kafka is down) alive forever.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            log.error("ingress start-up tasks still running after %.0f s: %s", timeout_s,
                      ", ".join(task.get_name() for task in pending))
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.5, remaining))
    for task in tasks:  # retrieve the outcomes (a failed start-up is logged where it happened)
        if not task.cancelled():
            task.exception()
