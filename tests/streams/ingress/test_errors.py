"""Every client error is a 4xx in OpenAI's error shape, and a refused request never keeps its Idempotency-Key."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from schemas.envelope import Status
from schemas.policy import KeyRecord
from schemas.response import Response
from streams.ingress.errors import http_status_for
from streams.ingress.idempotency import MemoryIdempotencyStore
from tests.streams.ingress.fakes import CHAT, FakeGateway, auth, pending_claims

URL = "/v1/chat/completions"


async def openai_error(resp: Any, status: int) -> dict[str, Any]:
    """The response's error object, after checking the status and OpenAI's shape."""
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(await resp.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"]
    return dict(body["error"])


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": 5}], [{"type": "text", "text": None}], [{"type": "text"}],
    [{"type": "text", "text": ["nested"]}], [{"type": "text", "text": "ok"}, "junk"], [{"type": "image_url"}], 7,
    {"text": "x"},
])
async def test_bad_content_parts_are_400_and_release_the_key(client: TestClient, key: tuple[str, KeyRecord],  # type: ignore[type-arg]
                                                             store: MemoryIdempotencyStore, gateway: FakeGateway,
                                                             content: Any) -> None:
    body = {"messages": [{"role": "user", "content": content}]}
    headers = {**auth(key), "Idempotency-Key": "k-1"}
    error = await openai_error(await client.post(URL, json=body, headers=headers), 400)
    assert error["type"] == "invalid_request_error" and error["param"].startswith("messages[0]")
    assert pending_claims(store) == [] and gateway.published == []
    # The key is free: the corrected request with it is worked, not refused as a reused key nor left waiting.
    fixed = await client.post(URL, json=CHAT, headers=headers)
    assert fixed.status == 200 and len(gateway.published) == 1


async def test_a_refused_envelope_releases_the_key(client: TestClient, key: tuple[str, KeyRecord],  # type: ignore[type-arg]
                                                   store: MemoryIdempotencyStore) -> None:
    body = {**CHAT, "tollway": {"task_id": "t" * 500}}  # the envelope refuses task ids over 200 characters
    error = await openai_error(await client.post(URL, json=body, headers={**auth(key), "Idempotency-Key": "k"}), 400)
    assert error["param"] == "tollway.task_id"
    assert pending_claims(store) == []


async def test_a_body_over_the_limit_is_413_in_openai_shape(client: TestClient, key: tuple[str, KeyRecord]) -> None:  # type: ignore[type-arg]
    big = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 3_000_000}]})
    error = await openai_error(await client.post(URL, data=big, headers=auth(key)), 413)
    assert error["code"] == "request_too_large"


@pytest.mark.parametrize("name", ["Authorization", "X-Anything"])
async def test_oversized_headers_are_431_in_openai_shape(client: TestClient, name: str) -> None:  # type: ignore[type-arg]
    error = await openai_error(await client.post(URL, json=CHAT, headers={name: "Bearer " + "x" * 10_000}), 431)
    assert error["code"] == "header_too_large" and error["param"] == name


async def test_unknown_routes_and_methods_answer_in_openai_shape(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await openai_error(await client.get("/v1/nothing"), 404))["code"] == "not_found"
    assert (await openai_error(await client.get(URL), 405))["code"] == "method_not_allowed"


async def raw_request(client: TestClient, head: bytes, body: bytes) -> tuple[int, bytes]:  # type: ignore[type-arg]
    """Send bytes no HTTP client library would (headers that are not UTF-8); the status line and the body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe", b"Idempotency-Key: \xff",
                                    b"X-Tollway-Tier: \xfe"])
async def test_headers_that_are_not_utf8_are_400(client: TestClient, key: tuple[str, KeyRecord],  # type: ignore[type-arg]
                                                 store: MemoryIdempotencyStore, header: bytes) -> None:
    auth_line = b"" if header.startswith(b"Authorization") else b"Authorization: Bearer " + key[0].encode() + b"\r\n"
    head = b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth_line
    status, body = await raw_request(client, head + header + b"\r\n", orjson.dumps(CHAT))
    assert status == 400, body
    assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert pending_claims(store) == []


@pytest.mark.parametrize(("message", "http"), [
    ("no model in the catalog satisfies the policy, tier and context window: nano-us: not allowed by policy", 400),
    ("quality tier 'huge' is not one of small, medium, large", 400),
    ("no model in the catalog satisfies the policy, tier and context window: nano-us: backend local circuit open",
     503),
])
def test_no_eligible_model_is_a_client_error_or_unavailable_never_500(message: str, http: int) -> None:
    response = Response(request_id="r", tenant="t", status=Status.FAILED, code="no_eligible_model", message=message)
    assert http_status_for(response)[0] == http


async def test_no_eligible_model_comes_back_as_400_invalid_request(client: TestClient, gateway: FakeGateway,  # type: ignore[type-arg]
                                                                   key: tuple[str, KeyRecord]) -> None:
    gateway.respond = lambda env: Response(request_id=env.request_id, tenant=env.tenant, status=Status.FAILED,
                                           code="no_eligible_model", message="no model in the catalog satisfies …")
    error = await openai_error(await client.post(URL, json=CHAT, headers=auth(key)), 400)
    assert error == {"message": "no model in the catalog satisfies …", "type": "invalid_request_error",
                     "param": None, "code": "no_eligible_model"}
