"""The ingress continues the caller's W3C trace context (passed through as it is while tracing is off here)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from schemas.policy import KeyRecord
from tests.streams.ingress.fakes import CHAT, FakeGateway, auth

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_callers_traceparent_reaches_the_envelope(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                            key: tuple[str, KeyRecord]) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={**auth(key), "traceparent": PARENT, "tracestate": "vendor=1"})
    assert resp.status == 200
    (env,) = gateway.published
    assert env.trace is not None and (env.trace.traceparent, env.trace.tracestate) == (PARENT, "vendor=1")


async def test_a_malformed_traceparent_is_ignored_not_refused(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                              key: tuple[str, KeyRecord]) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={**auth(key), "traceparent": "00-nonsense"})
    assert resp.status == 200
    (env,) = gateway.published
    assert env.trace is None
