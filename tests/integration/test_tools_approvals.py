"""The approval hold through real Kafka: a refund waits on the approvals topic until an operator approves it (the
`tollway approve` path), another until it is denied; both answered, the denied one never run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml

from schemas.envelope import Status
from streams.cli.tools import _approvals, _decide
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings
from tests.conftest import delete_topics_with_prefix
from tests.workers.tools.documents import tools_policy
from workers.tools.builtins import RedisTicketStore, seed_demo_tickets

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    policy = tmp_path / "policy.yaml"
    doc = tools_policy(approval=["issue_refund"], approval_timeout_ms=60_000)
    policy.write_text(yaml.safe_dump(doc.model_dump(mode="json")))
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path,
                        policy_file=policy)
    client = aioredis.Redis.from_url(isolated.redis_url)
    await seed_demo_tickets(RedisTicketStore(client, prefix=isolated.topic_prefix), "acme")
    yield isolated
    tickets = await RedisTicketStore(client, prefix=isolated.topic_prefix).get("acme", "T-1001")
    assert tickets is not None and len(tickets.get("refunds", [])) == 1  # the approved refund only
    keys = [k async for k in client.scan_iter(match=f"{isolated.topic_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await delete_topics_with_prefix(isolated)


async def decide_when_held(settings: Settings, state: str) -> str:
    for _ in range(600):
        pending = [e for e in (await _approvals(settings)).values() if e.state == "pending"]
        if pending:
            await _decide(settings, pending[0].approval_id, state, "ana", "too much" if state == "denied" else "")
            return pending[0].approval_id
        await asyncio.sleep(0.1)
    raise AssertionError("no call was held for approval within 60 s")


async def test_held_refunds_wait_for_the_operator(pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as client:
        for state, expected in [("approved", "Refund rf_1_T-1001 of $40 was issued on ticket T-1001."),
                                ("denied", "The issue_refund call was refused by policy (approval_denied)")]:
            env = new_envelope("Refund $40 on ticket T-1001.", tenant="acme", settings=pipeline)
            response, approval = await asyncio.gather(client.complete_envelopes([env], timeout_s=120),
                                                      decide_when_held(pipeline, state))
            [answer] = response
            assert answer.status is Status.OK, answer.message
            assert answer.answer is not None and answer.answer.startswith(expected), answer.answer
            assert approval.startswith("ap_")
