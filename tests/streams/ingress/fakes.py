"""An in-memory gateway and the bits every ingress test needs: a key, its policy, an Ingress over them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.envelope import Envelope, Status, Usage
from schemas.errors import ServiceUnavailable
from schemas.policy import KeyRecord, PolicyDocument, TenantPolicy
from schemas.response import HopSummary, Response
from streams.ingress.app import Ingress
from streams.ingress.idempotency import MemoryIdempotencyStore
from streams.settings import Settings
from workers.policy import StaticPolicy
from workers.routing.catalog import get_catalog

Responder = Callable[[Envelope], Response]
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "What is the refund policy?"}]}


def ok(env: Envelope) -> Response:
    return Response(request_id=env.request_id, tenant=env.tenant, status=Status.OK, model="lite-us",
                    answer=f"echo: {env.request.prompt}", usage=Usage(input_tokens=7, output_tokens=3),
                    cost_micros=12, created_at_ns=env.created_at_ns, completed_at_ns=env.created_at_ns + 5_000_000,
                    hops=[HopSummary(stage="retrieval", queue_ms=1.0, service_ms=0.5)])


@dataclass
class FakeGateway:
    respond: Responder = ok
    ready: bool = True
    down: bool = False
    published: list[Envelope] = field(default_factory=list)
    futures: dict[str, asyncio.Future[Response]] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # when set, responses wait for it (concurrent duplicates)
    any_published: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, env: Envelope) -> None:
        if self.down:
            raise ServiceUnavailable("broker down")
        self.published.append(env)
        self.any_published.set()
        future = self.futures.setdefault(env.request_id, asyncio.get_running_loop().create_future())

        async def answer() -> None:
            if self.hold is not None:
                await self.hold.wait()
            future.set_result(self.respond(env))

        asyncio.get_running_loop().create_task(answer())

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        future = self.futures.setdefault(request_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)


def auth(key: tuple[str, KeyRecord]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key[0]}"}


def make_ingress(gateway: FakeGateway, key: tuple[str, KeyRecord], *,
                 store: MemoryIdempotencyStore | None = None) -> Ingress:
    doc = PolicyDocument(version="v1", tenants={"acme": TenantPolicy(keys=[key[1]], regions=["us"])})
    return Ingress(settings=Settings(), gateway=gateway, policy=StaticPolicy(doc),
                   idempotency=store if store is not None else MemoryIdempotencyStore(), catalog=get_catalog())


def pending_claims(store: MemoryIdempotencyStore) -> list[bytes]:
    """Idempotency records still claimed by a request that is not in flight any more."""
    return [record for _expiry, record in store.records.values() if b'"state":"pending"' in record]
