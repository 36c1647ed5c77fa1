"""No request body gets a 500: hypothesis over the chat request schema, with wrong types, nulls and nested junk in
every field, against the app in-process (aiohttp's test server, the in-memory gateway, no Kafka).

For every body: the status is below 500; anything but a 200 is in OpenAI's error shape; and no Idempotency-Key is left
claimed by a request that was refused.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.policy import KeyRecord
from streams.ingress.app import build_app
from streams.ingress.idempotency import MemoryIdempotencyStore
from tests.streams.ingress.fakes import FakeGateway, auth, make_ingress, pending_claims

URL = "/v1/chat/completions"

# Any JSON value: scalars of every type (big ints, floats at the bounds, odd strings), nested lists and objects.
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=20)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=8)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value for a field, sometimes junk of any type."""
    return st.one_of(valid, valid, junk)


# The fields of the request schema and a valid value for each; the strategies below put junk into them.
text_parts = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)})
VALID_MESSAGE = {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]),
                 "content": st.one_of(st.text(max_size=40), st.none(), st.lists(text_parts, max_size=3))}
VALID_OPTIONS = {
    "tier": st.sampled_from(["interactive", "standard", "batch"]),
    "budget_ms": st.integers(min_value=1, max_value=86_400_000),
    "task_id": st.text(max_size=200), "session_id": st.text(max_size=200),
    "quality_tier": st.sampled_from(["small", "medium", "large", "huge"]),
    "cache": st.fixed_dictionaries({}, optional={"read": st.booleans(), "write": st.booleans(),
                                                 "ttl_s": st.integers(min_value=1, max_value=10**6),
                                                 "no_store": st.booleans()}),
}
VALID_BODY = {
    "model": st.sampled_from(["auto", "", "lite-us", "nano-us", "gpt-17"]),
    "messages": st.lists(st.fixed_dictionaries(VALID_MESSAGE), min_size=1, max_size=3),
    "max_tokens": st.integers(min_value=1, max_value=32_768),
    "max_completion_tokens": st.integers(min_value=1, max_value=32_768),
    "temperature": st.floats(min_value=0, max_value=2),
    "response_format": st.dictionaries(st.text(max_size=5), junk, max_size=2),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": junk}),
    "n": st.just(1),
    "tollway": st.fixed_dictionaries({}, optional=VALID_OPTIONS),
}

roles = maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot", ""]))
parts = maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(["text", "image_url", "input_audio"]))},
                                    optional={"text": junk | st.text(max_size=30)}))
contents = st.one_of(st.text(max_size=40), st.none(), st.lists(parts, max_size=3), junk)
messages = maybe(st.lists(maybe(st.fixed_dictionaries({}, optional={"role": roles, "content": contents,
                                                                     "name": junk, "tool_calls": junk})),
                          max_size=3))
options = maybe(st.fixed_dictionaries({}, optional={**{k: maybe(v) for k, v in VALID_OPTIONS.items()},
                                                    "surprise": junk}))
# Junk anywhere, at any depth.
any_field_wrong = st.fixed_dictionaries({}, optional={
    **{k: maybe(v) for k, v in VALID_BODY.items()}, "messages": messages, "tollway": options})
valid_bodies = st.fixed_dictionaries({"messages": VALID_BODY["messages"]},
                                     optional={k: v for k, v in VALID_BODY.items() if k != "messages"})


@st.composite
def one_field_wrong(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with one field (of the body, a message, a content part or the options) replaced by junk."""
    body: dict[str, Any] = draw(valid_bodies)
    where = draw(st.sampled_from([*VALID_BODY, "message.role", "message.content", "part", "part.type", "part.text",
                                  "tollway.*"]))
    if where.startswith("part"):
        part: dict[str, Any] = {"type": "text", "text": "x"}
        if where == "part":
            part = draw(junk)
        else:
            part[where.split(".")[1]] = draw(junk)
        body["messages"][0]["content"] = [draw(text_parts), part][::draw(st.sampled_from([1, -1]))]
    elif where.startswith("message."):
        body["messages"][0][where.split(".")[1]] = draw(junk)
    elif where == "tollway.*":
        body["tollway"] = {draw(st.sampled_from([*VALID_OPTIONS, "surprise"])): draw(junk)}
    else:
        body[where] = draw(junk)
    return body


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: it refuses integers beyond 64 bits, and a caller may send them


# Objects shaped like a request (valid, one field wrong, junk anywhere), any JSON at all, bytes that are not JSON.
bodies = st.one_of(valid_bodies.map(dumps), one_field_wrong().map(dumps), any_field_wrong.map(dumps),
                   junk.map(dumps), st.binary(max_size=64))
idempotency_keys = st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=300)
tiers = st.none() | st.none() | st.sampled_from(["interactive", "standard", "batch", "gold", ""])


@pytest.fixture
def served(key: tuple[str, KeyRecord]) -> Iterator[tuple[asyncio.Runner, TestClient, MemoryIdempotencyStore]]:  # type: ignore[type-arg]
    """The app on a loopback port, driven from a synchronous test (hypothesis runs each example as a plain call)."""
    runner = asyncio.Runner()
    store = MemoryIdempotencyStore()

    async def start() -> TestClient:  # type: ignore[type-arg]
        client = TestClient(TestServer(build_app(make_ingress(FakeGateway(), key, store=store))))
        await client.start_server()
        return client

    client = runner.run(start())
    try:
        yield runner, client, store
    finally:
        runner.run(client.close())
        runner.close()


async def post(client: TestClient, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:  # type: ignore[type-arg]
    resp = await client.post(URL, data=body, headers={"Content-Type": "application/json", **headers})
    return resp.status, await resp.read()


def test_no_request_body_gets_a_500(served: tuple[asyncio.Runner, TestClient, MemoryIdempotencyStore],  # type: ignore[type-arg]
                                    key: tuple[str, KeyRecord]) -> None:
    runner, client, store = served
    seen: Counter[int] = Counter()

    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies, idempotency_key=idempotency_keys, tier=tiers)
    def check(body: bytes, idempotency_key: str | None, tier: str | None) -> None:
        headers = auth(key)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if tier is not None:
            headers["X-Tollway-Tier"] = tier
        status, payload = runner.run(post(client, body, headers))
        seen[status] += 1
        assert status < 500, payload
        if status != 200:
            assert set(orjson.loads(payload)["error"]) == {"message", "type", "param", "code"}, payload
        assert pending_claims(store) == []

    check()
    assert 200 in seen and 400 in seen  # the strategies reach both the pipeline and the refusals
