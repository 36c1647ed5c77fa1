"""Policy as data on the real pipeline: hot reload without restart, denials as audited terminal responses."""

from __future__ import annotations

import asyncio
import time

import orjson

from schemas.envelope import Principal, Status
from schemas.policy import PolicyDocument, parse_policy
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.policy import publish_policy
from streams.runtime.topics import topology
from streams.settings import Settings
from tests.kafka_helpers import read_until
from workers.keys import sign_principal

MODELS = {"lite-us": {"region": "us", "input_micros_per_mtok": 150_000, "output_micros_per_mtok": 600_000},
          "lite-eu": {"region": "eu", "input_micros_per_mtok": 165_000, "output_micros_per_mtok": 660_000}}


def policy(version: str, regions: list[str]) -> PolicyDocument:
    return parse_policy({"version": version, "models": MODELS,
                         "tenants": {"acme": {"require_principal": False, "regions": regions,
                                              "allowed_models": ["lite-us"]}}})


async def test_hot_reload_changes_the_next_decision(pipeline: Settings) -> None:
    settings = pipeline
    await publish_policy(settings, policy("v1", ["us"]))
    async with TollwayClient(settings) as submitter:
        # the worker started before v1 was published: wait until it decides under v1 (bounded, no sleeps)
        deadline = time.monotonic() + 15
        while True:
            (first,) = await submitter.complete_envelopes([new_envelope("hello", tenant="acme", settings=settings)])
            if first.status is Status.OK or time.monotonic() > deadline:
                break
        assert first.status is Status.OK, first

        published_at = time.monotonic()
        await publish_policy(settings, policy("v2", ["eu"]))  # lite-us is the only allowed model: not in the EU
        while True:
            again = new_envelope("hello again", tenant="acme", settings=settings)
            (after,) = await submitter.complete_envelopes([again])
            if after.status is not Status.OK or time.monotonic() - published_at > 15:
                break
        reload_s = time.monotonic() - published_at
        assert after.status is Status.DENIED and after.code == "residency_violation", after
        assert "(policy v2)" in after.message
        assert reload_s < 15
        # from then on every request is decided under v2
        responses = await submitter.complete_envelopes([new_envelope(f"q{i}", tenant="acme", settings=settings)
                                              for i in range(5)])
        assert {(r.status, r.code) for r in responses} == {(Status.DENIED, "residency_violation")}
        assert all([h.stage for h in r.hops] == ["retrieval", "policy"] for r in responses)

    audit = await read_until(settings, topology(settings).audit_log,
                             lambda rs: after.request_id in {orjson.loads(r.value)["request_id"] for r in rs})
    assert after.request_id in {orjson.loads(r.value)["request_id"] for r in audit}, "denials are audited"


async def test_forged_principal_is_unauthenticated(pipeline: Settings) -> None:
    settings = pipeline
    doc = parse_policy({"version": "p1", "tenants": {"acme": {"require_principal": True}}})
    await publish_policy(settings, doc)
    async with TollwayClient(settings) as submitter:
        deadline = time.monotonic() + 15
        while True:
            env = new_envelope("hi", tenant="acme", settings=settings)
            env.principal = Principal(key_id="k_0123456789abcdef",
                                      signature=sign_principal("wrong-secret", env.request_id, "acme",
                                                               "k_0123456789abcdef"))
            (response,) = await submitter.complete_envelopes([env])
            if response.code == "unauthenticated" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0)
    assert response.status is Status.DENIED and response.code == "unauthenticated"
    assert "signature" in response.message
