"""The SDK against the real broker: submit/result/complete, signed principals, reply topics, the sync wrapper."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from schemas.envelope import Status, Tier
from schemas.errors import PolicyDenied
from schemas.policy import PolicyDocument, TenantPolicy
from streams.clients.sdk import SyncTollwayClient, TollwayClient
from streams.followers.policy import publish_policy
from streams.settings import Settings
from workers.keys import create_key

pytestmark = pytest.mark.integration


@pytest.fixture
async def keyed(settings: Settings) -> tuple[Settings, str]:
    """A policy whose tenant requires a signed principal, published before the pipeline starts; the raw key."""
    raw_key, record = create_key("acme", scrypt_n=2**10)
    doc = PolicyDocument(version=f"sdk-{uuid.uuid4().hex[:6]}", tenants={"acme": TenantPolicy(keys=[record])})
    await publish_policy(settings, doc)
    return settings, raw_key


async def test_complete_submit_result_with_a_signed_principal(keyed: tuple[Settings, str], pipeline: Settings) -> None:
    settings, raw_key = keyed
    async with TollwayClient(settings, api_key=raw_key) as client:
        response = await client.complete("What is the refund policy?", timeout=30)
        assert response.status is Status.OK, response
        ids = [await client.submit(f"question {i}", tier=Tier.BATCH if i % 2 else Tier.STANDARD) for i in range(6)]
        results = await asyncio.gather(*(client.result(rid, timeout=30) for rid in ids))
    assert [r.request_id for r in results] == ids
    assert all(r.status is Status.OK for r in results)


async def test_requests_without_the_key_are_refused_by_the_policy(keyed: tuple[Settings, str],
                                                                   pipeline: Settings) -> None:
    settings, raw_key = keyed
    async with TollwayClient(settings) as anonymous:
        response = await anonymous.complete("hello", timeout=30)
    assert (response.status, response.code) == (Status.DENIED, "unauthenticated")
    with pytest.raises(PolicyDenied):
        await TollwayClient(settings, api_key=raw_key[:-4] + "AAAA").start()


async def test_reply_topic_receives_only_this_clients_replies(pipeline: Settings) -> None:
    reply_topic = f"{pipeline.topic_prefix}.replies.sdk-test"
    async with TollwayClient(pipeline, reply_to=reply_topic, delete_reply_topic=True) as mine, \
            TollwayClient(pipeline) as other:
        others = [await other.submit(f"other {i}") for i in range(5)]
        response = await mine.complete("mine", timeout=30)
        await asyncio.gather(*(other.result(rid, timeout=30) for rid in others))
        assert response.status is Status.OK
        assert mine.replies.seen == 1, "the reply topic carries this client's replies only"


async def test_sync_client(pipeline: Settings) -> None:
    def script() -> tuple[str, Status, str]:  # what a user's blocking script does, off the pipeline's event loop
        with SyncTollwayClient(pipeline) as client:
            rid = client.submit("sync hello")
            response = client.result(rid, timeout=30)
        return rid, response.status, response.request_id

    rid, status, answered = await asyncio.to_thread(script)
    assert (status, answered) == (Status.OK, rid)
