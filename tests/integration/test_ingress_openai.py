"""The official `openai` client against `tollway serve` on a loopback port, with every stage running in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from schemas.policy import Budgets, ModelSpec, PiiRules, PolicyDocument, RateLimits, TenantPolicy
from streams.followers.policy import publish_policy
from streams.ingress.server import serving
from streams.settings import Settings
from workers.keys import create_key

pytestmark = pytest.mark.integration

TENANTS = ("acme", "tight", "broke")


@pytest.fixture
async def keys(settings: Settings) -> dict[str, str]:
    """A policy published before the pipeline starts: one key per tenant; raw keys by tenant."""
    raw: dict[str, str] = {}
    tenants: dict[str, TenantPolicy] = {}
    for name in TENANTS:
        raw[name], record = create_key(name, scrypt_n=2**10)
        tenants[name] = TenantPolicy(
            keys=[record], regions=["us"], allowed_models=["nano-us", "lite-eu"],
            pii=PiiRules(credit_card="block"),
            rate_limits=RateLimits(requests_per_minute=1) if name == "tight" else RateLimits(),
            budgets=Budgets(daily_micros=0) if name == "broke" else Budgets())
    doc = PolicyDocument(version=f"ingress-{uuid.uuid4().hex[:6]}", tenants=tenants,
                         models={"nano-us": ModelSpec(region="us", input_micros_per_mtok=100_000,
                                                      output_micros_per_mtok=400_000),
                                 "lite-eu": ModelSpec(region="eu", input_micros_per_mtok=165_000,
                                                      output_micros_per_mtok=660_000)})
    await publish_policy(settings, doc)
    return raw


@pytest.fixture
async def base_url(keys: dict[str, str], pipeline: Settings) -> AsyncIterator[str]:
    async with serving(pipeline, port=0, wait_ready_s=30) as (_, port):
        yield f"http://127.0.0.1:{port}/v1"


def client(base_url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


USER = [{"role": "user", "content": "What is the refund policy?"}]


async def test_chat_streaming_models_and_idempotency(base_url: str, keys: dict[str, str]) -> None:
    acme = client(base_url, keys["acme"])
    raw = await acme.chat.completions.with_raw_response.create(model="auto", messages=USER)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model == "nano-us" and completion.usage is not None
    assert raw.headers["x-tollway-request-id"] and int(raw.headers["x-tollway-cost-micros"]) >= 0
    assert "policy;queue=" in raw.headers["x-tollway-stage-latency"]
    assert (completion.model_extra or {})["tollway"]["status"] == "ok"

    stream = await acme.chat.completions.create(model="auto", messages=USER, stream=True,  # type: ignore[arg-type]
                                                stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage is not None

    models = [m.id async for m in acme.models.list()]
    assert models == ["auto", "nano-us"], "only what the tenant may reach: allowed and in its region"

    headers = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = await acme.chat.completions.with_raw_response.create(model="auto", messages=USER,  # type: ignore[arg-type]
                                                                 extra_headers=headers)
    again = await acme.chat.completions.with_raw_response.create(model="auto", messages=USER,  # type: ignore[arg-type]
                                                                 extra_headers=headers)
    assert first.headers["x-tollway-request-id"] == again.headers["x-tollway-request-id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.parse().choices[0].message.content == again.parse().choices[0].message.content


async def test_each_error_class_end_to_end(base_url: str, keys: dict[str, str]) -> None:
    acme = client(base_url, keys["acme"])
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        await client(base_url, keys["acme"][:-4] + "AAAA").chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
    assert unauthenticated.value.status_code == 401

    with pytest.raises(openai.BadRequestError):
        await acme.chat.completions.create(model="auto", messages=[])

    cases = {"forbidden_model": ("core-us", "hello"), "residency_violation": ("lite-eu", "hello"),
             "pii_blocked": ("auto", "charge my card 4111 1111 1111 1111 please")}
    for code, (model, prompt) in cases.items():
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await acme.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
        assert denied.value.status_code == 403
        assert denied.value.code == code, denied.value.body

    tight = client(base_url, keys["tight"])
    await tight.chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as limited:
        await tight.chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
    assert limited.value.code == "rate_limited" and int(limited.value.response.headers["retry-after"]) >= 1

    with pytest.raises(openai.RateLimitError) as broke:
        await client(base_url, keys["broke"]).chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
    assert broke.value.code == "budget_exceeded"

    with pytest.raises(openai.APIStatusError) as late:
        await acme.chat.completions.create(model="auto", messages=USER,  # type: ignore[arg-type]
                                           extra_body={"tollway": {"budget_ms": 1}})
    assert late.value.status_code == 504


async def test_kafka_unreachable_is_503(settings: Settings) -> None:
    dead = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1", "ingress_dev_mode": True})
    async with serving(dead, port=0) as (_, port):
        with pytest.raises(openai.APIStatusError) as unavailable:
            await client(f"http://127.0.0.1:{port}/v1", "dev").chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
    assert unavailable.value.status_code == 503


async def test_client_errors_are_4xx_in_openai_shape_on_the_real_server(settings: Settings) -> None:
    """The server `tollway serve` runs (its parser limits and middleware), not only the app: no 500, no plain text."""
    dev = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1", "ingress_dev_mode": True})
    async with serving(dev, port=0) as (_, port):
        dev_client = client(f"http://127.0.0.1:{port}/v1", "dev")
        with pytest.raises(openai.BadRequestError) as bad_part:
            await dev_client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])  # type: ignore[list-item]
        assert bad_part.value.body["param"] == "messages[0].content"  # type: ignore[index]
        with pytest.raises(openai.APIStatusError) as too_large:
            await dev_client.chat.completions.create(model="auto", messages=[{"role": "user",
                                                                               "content": "x" * 3_000_000}])
        assert too_large.value.status_code == 413 and too_large.value.code == "request_too_large"
        with pytest.raises(openai.APIStatusError) as header:
            await dev_client.chat.completions.create(model="auto", messages=USER,  # type: ignore[arg-type]
                                                     extra_headers={"X-Note": "n" * 10_000})
        assert header.value.status_code == 431 and header.value.code == "header_too_large"
