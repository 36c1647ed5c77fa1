"""The HTTP ingress against an in-memory gateway: OpenAI shapes, keys, idempotency, error mapping."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.envelope import Envelope, Status
from schemas.policy import KeyRecord
from schemas.response import Response
from streams.ingress.app import Ingress, build_app
from streams.ingress.errors import http_status_for
from streams.settings import Settings
from tests.streams.ingress.fakes import CHAT, FakeGateway, auth, ok
from workers.keys import verify_principal
from workers.policy import StaticPolicy
from workers.routing.catalog import get_catalog


async def test_chat_completion_shape_headers_and_signed_principal(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                                  key: tuple[str, KeyRecord]) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: What is the refund policy?"}
    assert body["usage"]["total_tokens"] == 10
    assert body["tollway"]["cost_micros"] == 12
    rid = resp.headers["x-tollway-request-id"]
    assert resp.headers["x-tollway-cost-micros"] == "12"
    assert "retrieval;queue=1.00;service=0.50" in resp.headers["x-tollway-stage-latency"]
    (env,) = gateway.published
    assert env.request_id == rid and env.tenant == "acme" and env.principal is not None
    assert verify_principal(Settings().principal_secret.get_secret_value(), rid, "acme", key[1].key_id,
                            env.principal.signature)
    assert key[0] not in env.model_dump_json()


async def test_streaming_is_server_sent_events_ending_in_done(client: TestClient, key: tuple[str, KeyRecord]) -> None:  # type: ignore[type-arg]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                           "stream_options": {"include_usage": True}},
                             headers=auth(key))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: What is the refund policy?"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(("headers", "code"), [({}, "missing_api_key"),
                                                ({"Authorization": "Bearer tw_k_0123456789abcdef_" + "x" * 40},
                                                 "invalid_api_key")])
async def test_bad_keys_are_401(client: TestClient, gateway: FakeGateway, headers: dict[str, str], code: str) -> None:  # type: ignore[type-arg]
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == code
    assert gateway.published == []


@pytest.mark.parametrize("body", [{"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                                  {**CHAT, "n": 2}, {**CHAT, "temperature": 9}, {**CHAT, "tollway": {"tier": "x"}}])
async def test_invalid_requests_are_400(client: TestClient, key: tuple[str, KeyRecord], body: dict) -> None:  # type: ignore[type-arg]
    resp = await client.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


async def test_unknown_model_is_404_and_models_lists_what_the_tenant_may_reach(client: TestClient,  # type: ignore[type-arg]
                                                                                key: tuple[str, KeyRecord]) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-17"}, headers=auth(key))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
    listed = [m["id"] for m in (await (await client.get("/v1/models", headers=auth(key))).json())["data"]]
    assert listed[0] == "auto" and listed[1:]
    regions = {m.name: m.region for m in get_catalog().models}
    assert all(regions[name] == "us" for name in listed[1:])


async def test_kafka_down_is_503(client: TestClient, gateway: FakeGateway, key: tuple[str, KeyRecord]) -> None:  # type: ignore[type-arg]
    gateway.down = True
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "kafka_unavailable"


async def test_idempotency_key_replays_without_publishing_again(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                                key: tuple[str, KeyRecord]) -> None:
    headers = {**auth(key), "Idempotency-Key": "order-42"}
    first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    again = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert first.status == again.status == 200
    assert len(gateway.published) == 1
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["x-tollway-request-id"] == again.headers["x-tollway-request-id"]
    assert await first.json() == await again.json()
    other = await client.post("/v1/chat/completions", json={**CHAT, "model": "lite-us"}, headers=headers)
    assert other.status == 400 and (await other.json())["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_duplicates_wait_for_the_first(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                        key: tuple[str, KeyRecord]) -> None:
    gateway.hold = asyncio.Event()
    headers = {**auth(key), "Idempotency-Key": "dup"}
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=headers)) for _ in range(5)]
    await asyncio.wait_for(gateway.any_published.wait(), 5)
    gateway.hold.set()
    responses = await asyncio.gather(*posts)
    assert {r.status for r in responses} == {200}
    assert len(gateway.published) == 1
    assert len({r.headers["x-tollway-request-id"] for r in responses}) == 1


async def test_a_rate_limited_attempt_is_retried_under_a_fresh_request_id(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                                          key: tuple[str, KeyRecord]) -> None:
    def limited(env: Envelope) -> Response:
        return Response(request_id=env.request_id, tenant=env.tenant, status=Status.DENIED, code="rate_limited",
                        retry_after_s=2.2, message="rate limit acme rpm is exhausted")

    gateway.respond = limited
    headers = {**auth(key), "Idempotency-Key": "retry-me"}
    first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert first.status == 429 and first.headers["Retry-After"] == "3"
    assert (await first.json())["error"]["type"] == "rate_limit_error"
    gateway.respond = ok
    second = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert second.status == 200
    assert len(gateway.published) == 2
    assert first.headers["x-tollway-request-id"] != second.headers["x-tollway-request-id"]


def response_with(status: Status, code: str = "") -> Response:
    return Response(request_id="r", tenant="t", status=status, code=code)


@pytest.mark.parametrize(("status", "code", "http"), [
    (Status.OK, "", 200), (Status.CACHE_HIT, "", 200),
    (Status.DENIED, "unauthenticated", 401),
    (Status.DENIED, "forbidden_model", 403), (Status.DENIED, "residency_violation", 403),
    (Status.DENIED, "pii_blocked", 403), (Status.DENIED, "injection_blocked", 403),
    (Status.DENIED, "rate_limited", 429), (Status.DENIED, "budget_exceeded", 429),
    (Status.DEADLINE_EXCEEDED, "deadline_exceeded", 504),
    (Status.FAILED, "model_error", 502), (Status.FAILED, "stage_error", 500), (Status.DEAD_LETTERED, "", 500),
])
def test_every_outcome_maps_to_its_http_status(status: Status, code: str, http: int) -> None:
    assert http_status_for(response_with(status, code))[0] == http


async def test_denials_come_back_in_openai_error_shape(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                       key: tuple[str, KeyRecord]) -> None:
    gateway.respond = lambda env: Response(request_id=env.request_id, tenant=env.tenant, status=Status.DENIED,
                                           code="pii_blocked", message="the request contains credit_card")
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == {"message": "the request contains credit_card", "type": "permission_error",
                             "param": None, "code": "pii_blocked"}
    assert body["tollway"]["request_id"] == resp.headers["x-tollway-request-id"]


async def test_no_policy_fails_closed_unless_dev_mode(gateway: FakeGateway) -> None:
    for dev_mode, expected in ((False, 503), (True, 200)):
        ingress = Ingress(settings=Settings(ingress_dev_mode=dev_mode), gateway=gateway, policy=StaticPolicy(None),
                          idempotency=None, catalog=None)
        async with TestClient(TestServer(build_app(ingress))) as test_client:
            resp = await test_client.post("/v1/chat/completions", json=CHAT, headers={"X-Tollway-Tenant": "t1"})
            assert resp.status == expected
            health = await test_client.get("/healthz")
            assert health.status == expected
    assert gateway.published[-1].tenant == "t1" and gateway.published[-1].principal is None


async def test_metrics_endpoint(client: TestClient, key: tuple[str, KeyRecord]) -> None:  # type: ignore[type-arg]
    await client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    text = await (await client.get("/metrics")).text()
    assert "tollway_ingress_requests_total" in text
