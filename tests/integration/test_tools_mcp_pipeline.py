"""The agent loop through real Kafka and a real MCP server process: every stage in this process (``tollway worker
all``), the demo tools served by ``python -m workers.tools.mcp_server`` over stdio (launched by the tools stage),
tickets in Redis and the tenant's documents on the index topic."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml

from schemas.envelope import Status
from schemas.index import IndexChunkEvent
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.index import publish
from streams.settings import Settings
from tests.conftest import delete_topics_with_prefix
from tests.workers.tools.documents import mcp_policy
from workers.tools.builtins import RedisTicketStore, seed_demo_tickets

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(mcp_policy().model_dump(mode="json", exclude_defaults=True)))
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path,
                        policy_file=policy)
    client = aioredis.Redis.from_url(isolated.redis_url)
    await seed_demo_tickets(RedisTicketStore(client, prefix=isolated.topic_prefix), "acme")
    from streams.runtime.topics import ensure_topics
    await ensure_topics(isolated)
    await publish(isolated, [IndexChunkEvent(tenant="acme", doc_id="refunds.md", chunk_id="refunds.md#0", seq=0,
                                             text="Refunds above 100 dollars need a manager's approval."),
                             IndexChunkEvent(tenant="other", doc_id="x.md", chunk_id="x.md#0", seq=0,
                                             text="Refunds of the other tenant: confidential.")])
    yield isolated
    keys = [k async for k in client.scan_iter(match=f"{isolated.topic_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await delete_topics_with_prefix(isolated)


async def test_a_task_through_kafka_and_a_real_mcp_server(pipeline: Settings) -> None:
    envs = [new_envelope("Calculate 17*23 and close ticket T-1001.", tenant="acme", settings=pipeline),
            new_envelope('Look up ticket T-1002, then use search with {"query": "who approves refunds"}',
                         tenant="acme", settings=pipeline)]
    async with TollwayClient(pipeline) as client:
        task, lookup = await client.complete_envelopes(envs, timeout_s=120)
    assert task.status is Status.OK, task.message
    assert task.answer is not None and task.answer.startswith("17*23 = 391. The ticket_update call was refused")
    assert [h.stage for h in task.hops] == ["retrieval", "policy", "cache", "model", "tools", "model", "postprocess"]
    assert (task.tool_calls, task.tool_cost_micros) == (2, 100)
    assert lookup.status is Status.OK, lookup.message
    assert lookup.answer is not None and 'Ticket T-1002 ("API returns 500 on login") is pending.' in lookup.answer
    assert "need a manager" in lookup.answer and "confidential" not in lookup.answer  # only its own tenant's index
    assert lookup.tool_cost_micros == 50 + 30
