"""OpenAI tool calling through the HTTP ingress, the official ``openai`` client in front, every stage's real runner
behind (in-memory topics, no broker): server-executed and client-executed modes, streaming, and the 400s for bad
tool definitions and tool messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from schemas.envelope import Envelope
from schemas.policy import KeyRecord, PolicyDocument, parse_policy
from schemas.response import Response
from streams.ingress.app import Ingress, build_app
from streams.ingress.idempotency import MemoryIdempotencyStore
from streams.settings import Settings, load_settings
from streams.testing import run_pipeline
from tests.workers.tools.documents import TOOLS
from workers.keys import create_key
from workers.policy import PolicyContext, StaticPolicy
from workers.routing.catalog import get_catalog
from workers.tools.builtins import Builtins, MemoryTicketStore, seed_demo_tickets
from workers.tools.stage import ToolsContext

SETTINGS = load_settings(topic_prefix="tt")
LOOKUP_ORDER = {"type": "function", "function": {
    "name": "lookup_order", "description": "an order's state",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
CALCULATOR = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}


def policy(key: KeyRecord) -> PolicyDocument:
    rules = {"visible": ["calculator", "ticket_lookup", "ticket_update"], "allowed": ["calculator", "ticket_lookup"],
             "denied": ["ticket_update"]}
    return parse_policy({"version": "tools-http-v1", "tools": TOOLS,
                         "tenants": {"acme": {"keys": [key.model_dump()], "tools": rules}}})


@dataclass
class PipelineGateway:
    """The ingress's gateway over the whole pipeline in memory: each published envelope is run to its response."""

    doc: PolicyDocument
    tickets: MemoryTicketStore = field(default_factory=MemoryTicketStore)
    published: list[Envelope] = field(default_factory=list)
    responses: dict[str, asyncio.Future[Response]] = field(default_factory=dict)
    ready: bool = True

    async def publish(self, env: Envelope) -> None:
        self.published.append(env)
        contexts: dict[str, Any] = {
            "policy": PolicyContext(stage="policy", policy=StaticPolicy(self.doc), topic_prefix="tt"),
            "tools": ToolsContext(stage="tools", policy=StaticPolicy(self.doc), builtins=Builtins(tickets=self.tickets),
                                  topic_prefix="tt")}
        result = await run_pipeline([env], contexts=contexts, settings=SETTINGS)
        self._future(env.request_id).set_result(result.responses[env.request_id])

    def _future(self, request_id: str) -> asyncio.Future[Response]:
        return self.responses.setdefault(request_id, asyncio.get_running_loop().create_future())

    async def wait(self, request_id: str, timeout_s: float) -> Response:
        return await asyncio.wait_for(asyncio.shield(self._future(request_id)), timeout_s)


@pytest.fixture
def key() -> tuple[str, KeyRecord]:
    return create_key("acme", scrypt_n=2**10)


@pytest.fixture
async def gateway(key: tuple[str, KeyRecord]) -> PipelineGateway:
    gateway = PipelineGateway(policy(key[1]))
    await seed_demo_tickets(gateway.tickets, "acme")
    return gateway


@pytest.fixture
async def oai(gateway: PipelineGateway, key: tuple[str, KeyRecord]) -> AsyncIterator[openai.AsyncOpenAI]:
    ingress = Ingress(settings=Settings(), gateway=gateway, policy=StaticPolicy(gateway.doc),
                      idempotency=MemoryIdempotencyStore(), catalog=get_catalog())
    async with TestServer(build_app(ingress)) as server:
        client = openai.AsyncOpenAI(api_key=key[0], base_url=str(server.make_url("/v1")), max_retries=0)
        yield client
        await client.close()


async def test_server_executed_registered_tools_answer_with_the_final_text(oai: openai.AsyncOpenAI,
                                                                           gateway: PipelineGateway) -> None:
    completion = await oai.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Calculate 17*23 and close ticket T-1001."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content is not None and choice.message.content.startswith("17*23 = 391. The ticket_update "
                                                                                    "call was refused by policy")
    steps = (completion.model_extra or {})["tollway"]["steps"]
    assert [(s["kind"], s["name"], s["status"]) for s in steps] == [
        ("model", completion.model, "ok"), ("tool", "calculator", "ok"), ("tool", "ticket_update", "denied"),
        ("model", completion.model, "ok")]
    (env,) = gateway.published
    assert env.request.tools == [] and env.request.tools_mode == "auto"


async def test_naming_only_registered_tools_narrows_the_offer_and_runs_them(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="auto", tools=[CALCULATOR],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Calculate 2*21 and close ticket T-1001."}])
    assert completion.choices[0].message.content == "2*21 = 42."  # ticket_update was not offered this time


async def test_client_executed_round_trip(oai: openai.AsyncOpenAI, gateway: PipelineGateway) -> None:
    messages: list[Any] = [{"role": "user", "content": 'Use lookup_order with {"order_id": "A-17"}'}]
    first = await oai.chat.completions.create(model="auto", messages=messages, tools=[LOOKUP_ORDER])  # type: ignore[list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A-17"}
    assert [h["stage"] for h in (first.model_extra or {})["tollway"]["hops"]] == ["retrieval", "policy", "cache",
                                                                                  "model"]
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"order_id": "A-17", "state": "shipped"}'}]
    final = await oai.chat.completions.create(model="auto", messages=messages, tools=[LOOKUP_ORDER])  # type: ignore[list-item]
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == 'lookup_order returned {"order_id": "A-17", "state": "shipped"}.'
    assert gateway.published[1].request.messages[1].tool_calls is not None


async def test_client_mode_can_be_forced_for_a_registered_tool(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="auto", tools=[CALCULATOR], messages=[{"role": "user", "content": "Calculate 6*7"}],  # type: ignore[list-item]
        extra_headers={"X-Tollway-Tools": "client"})
    (call,) = completion.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("calculator", {"expression": "6*7"})


async def test_streamed_tool_calls_and_streamed_final_answer(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="auto", tools=[LOOKUP_ORDER], stream=True,  # type: ignore[list-item]
        messages=[{"role": "user", "content": 'use lookup_order with {"order_id": "B-2"}'}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function.name or "") if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("lookup_order", {"order_id": "B-2"})]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name",
     "invalid_request"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "invalid_request"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                               "required": "x"}}}]},
     "tools[0].function.parameters", "invalid_request"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_request"),
    ({"tools": [LOOKUP_ORDER, LOOKUP_ORDER]}, "tools[1].function.name", "invalid_value"),
    ({"tools": [LOOKUP_ORDER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "invalid_value"),
    ({"tool_choice": "sometimes"}, "tool_choice", "invalid_request"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]},
     "messages[1].tool_call_id", "invalid_tool_message"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c9", "content": "42"}]},
     "messages[1].tool_call_id", "invalid_tool_message"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "invalid_request"),
    ({"tools": [LOOKUP_ORDER], "tollway": {"tools_mode": "server"}}, "tools[0].function.name", "unknown_tool"),
])
async def test_bad_tool_definitions_and_tool_messages_are_openai_400s(oai: openai.AsyncOpenAI,
                                                                      gateway: PipelineGateway,
                                                                      body: dict[str, Any], param: str,
                                                                      code: str) -> None:
    request = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **body}
    extension = request.pop("tollway", None)
    with pytest.raises(openai.BadRequestError) as raised:
        await oai.chat.completions.create(**request, extra_body={"tollway": extension} if extension else None)
    error = raised.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert gateway.published == []


async def test_a_legacy_function_message_needs_no_tool_call_id(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="auto", messages=[  # type: ignore[list-item]
        {"role": "user", "content": "What is the refund policy?"}, {"role": "function", "name": "f", "content": "1"}])
    assert completion.choices[0].finish_reason == "stop"


async def test_a_bad_mode_header_is_400(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await oai.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Tollway-Tools": "both"})
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "X-Tollway-Tools"
