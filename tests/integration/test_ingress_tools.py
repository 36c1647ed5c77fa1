"""OpenAI tool calling end to end: the official `openai` client against `tollway serve`, every stage in-process on
the real broker, tickets and tool effects in Redis. Server-executed (tollway runs the registered tools, one call
refused by policy), client-executed (the caller runs the tool and posts the result back, plain and streamed), and the
SDK's client-executed loop."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import AsyncOpenAI

from schemas.envelope import Status
from streams.clients.sdk import TollwayClient
from streams.ingress.server import serving
from streams.settings import Settings
from tests.conftest import delete_topics_with_prefix
from tests.workers.tools.documents import tools_policy
from workers.keys import create_key
from workers.tools.builtins import RedisTicketStore

pytestmark = pytest.mark.integration

LOOKUP_ORDER: Any = {"type": "function", "function": {
    "name": "lookup_order", "description": "an order's state",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}


@pytest.fixture
def key() -> tuple[str, Any]:
    return create_key("acme", scrypt_n=2**10)


@pytest.fixture
async def settings(tmp_path: Path, key: tuple[str, Any]) -> AsyncIterator[Settings]:
    doc = tools_policy().model_dump(mode="json")
    doc["tenants"]["acme"].update(require_principal=True, keys=[key[1].model_dump(mode="json")])
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path,
                        policy_file=policy)
    yield isolated
    await delete_topics_with_prefix(isolated)



@pytest.fixture
async def oai(pipeline: Settings, key: tuple[str, Any], tickets: RedisTicketStore) -> AsyncIterator[AsyncOpenAI]:
    async with serving(pipeline, port=0, wait_ready_s=30) as (_, port):
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key[0], max_retries=0, timeout=60)
        yield client
        await client.close()


async def test_server_executed_tools_through_kafka(oai: AsyncOpenAI, tickets: RedisTicketStore) -> None:
    completion = await oai.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Look up ticket T-1001, then close ticket T-1001."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content == (
        "Ticket T-1001 (\"Invoice charged twice\") is open. The ticket_update call was refused by policy "
        "(tool_denied): the policy does not allow tool 'ticket_update' for this tenant.")
    extension = (completion.model_extra or {})["tollway"]
    assert [h["stage"] for h in extension["hops"]] == ["retrieval", "policy", "cache", "model", "tools", "model",
                                                       "postprocess"]
    tools = [(s["name"], s["status"], s["cost_micros"]) for s in extension["steps"] if s["kind"] == "tool"]
    assert tools == [("ticket_lookup", "ok", 50), ("ticket_update", "denied", 0)]
    assert extension["cost_micros"] == sum(s["cost_micros"] for s in extension["steps"])
    ticket = await tickets.get("acme", "T-1001")
    assert ticket is not None and ticket["status"] == "open"


async def test_client_executed_round_trip_through_kafka(oai: AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": 'Use lookup_order with {"order_id": "A-17"}'}]
    first = await oai.chat.completions.create(model="auto", messages=messages, tools=[LOOKUP_ORDER],
                                              tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup_order", {"order_id": "A-17"})

    streamed = await oai.chat.completions.create(model="auto", messages=messages, tools=[LOOKUP_ORDER], stream=True)
    chunks = [chunk async for chunk in streamed]
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert [(d.function.name, d.function.arguments) for d in deltas if d.function] == [
        ("lookup_order", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"state": "shipped"}'}]
    final = await oai.chat.completions.create(model="auto", messages=messages, tools=[LOOKUP_ORDER])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == 'lookup_order returned {"state": "shipped"}.'


async def test_sdk_runs_client_tools_and_names_registered_ones(pipeline: Settings, key: tuple[str, Any],
                                                               tickets: RedisTicketStore) -> None:
    async with TollwayClient(pipeline, api_key=key[0]) as client:
        final, messages = await client.complete_with_tools(
            'Use lookup_order with {"order_id": "B-9"}', {"lookup_order": lambda args: {"state": "lost"}},
            tools=[LOOKUP_ORDER], timeout=60)
        server = await client.complete("Calculate 6*7 and close ticket T-1002.", tools=["calculator"], timeout=60)
    assert final.status is Status.OK and final.answer == 'lookup_order returned {"state":"lost"}.'
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert server.answer == "6*7 = 42." and server.tool_calls == 1  # only the calculator was offered
