"""The agent loop through real Kafka and Redis: every stage in this process (``tollway worker all``), the tool
registry and tenant rules from the policy file, tickets and tool effects in Redis.

Exactly-once effect: the tools stage's input record for a refund is produced again after it was worked (what a crash
between produce and commit, or a rebalance, makes the stage consume); the refund happens once (the effect's claim in
Redis) and both deliveries answer alike.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from schemas.envelope import PolicyDecision, Status, ToolCall, ToolsResult
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import decode_as, encode
from streams.runtime.topics import topology
from streams.settings import Settings
from streams.testing import decide
from tests.conftest import delete_topics_with_prefix
from tests.kafka_helpers import produce_raw, read_until
from tests.workers.tools.documents import tools_policy
from workers.tools.builtins import RedisTicketStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(tools_policy().model_dump(mode="json")))
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path,
                        policy_file=policy)
    yield isolated
    await delete_topics_with_prefix(isolated)



async def test_a_two_tool_task_with_one_denied_call_through_kafka(tickets: RedisTicketStore,
                                                                   pipeline: Settings) -> None:
    envs = [new_envelope("Calculate 17*23 and close ticket T-1001.", tenant="acme", settings=pipeline),
            new_envelope("Refund $40 on ticket T-1002.", tenant="acme", settings=pipeline)]
    async with TollwayClient(pipeline) as client:
        task, refund = await client.complete_envelopes(envs, timeout_s=60)
    assert task.status is Status.OK, task.message
    assert task.answer is not None and task.answer.startswith("17*23 = 391. The ticket_update call was refused")
    assert [h.stage for h in task.hops] == ["retrieval", "policy", "cache", "model", "tools", "model", "postprocess"]
    assert (task.tool_calls, task.tool_cost_micros) == (2, 100)
    assert refund.answer == "Refund rf_1_T-1002 of $40 was issued on ticket T-1002."
    closed, refunded = await tickets.get("acme", "T-1001"), await tickets.get("acme", "T-1002")
    assert closed is not None and closed["status"] == "open"
    assert refunded is not None and len(refunded["refunds"]) == 1


async def test_a_redelivered_refund_is_executed_once(tickets: RedisTicketStore, pipeline: Settings) -> None:
    env = new_envelope("Refund $40 on ticket T-1001.", tenant="acme", settings=pipeline)
    # The record the model stage hands the tools stage once it asked for the refund.
    env.route = ["tools", "model", "postprocess", "audit"]
    env.policy = PolicyDecision(policy_version="tools-v1")
    env.tools = ToolsResult(offered=["issue_refund"], steps=1, pending=[
        ToolCall(id="call_0_0", name="issue_refund", arguments={"ticket_id": "T-1001", "amount": 40})])
    decide(env, pipeline)  # sealed as the policy stage would have (the stages verify, zero trust)
    topo = topology(pipeline)
    lane = topo.stage("tools", env.tier)
    await produce_raw(pipeline, lane, [encode(env)])
    await read_until(pipeline, topo.responses, lambda got: len(got) >= 1, timeout_s=60)
    await produce_raw(pipeline, lane, [encode(env)])  # redelivered after the first was worked: the Redis claim
    records = await read_until(pipeline, topo.responses, lambda got: len(got) >= 2, timeout_s=60)
    responses = [decode_as(r.value, Response) for r in records]
    assert [(r.request_id, r.replay) for r in responses] == [(env.request_id, False), (env.request_id, True)]
    assert {r.answer for r in responses} == {"Refund rf_1_T-1001 of $40 was issued on ticket T-1001."}
    assert [r.tool_cost_micros for r in responses] == [2_000, 2_000]
    ticket = await tickets.get("acme", "T-1001")
    assert ticket is not None and len(ticket["refunds"]) == 1
