"""Tools of MCP servers: what the model reads from a reply, the demo server's logic, and — against real server
processes (the project's demo server over stdio and streamable HTTP, a misbehaving one over stdio) — the tools
stage's calls, with every bad output ending as a clear tool error."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from mcp_types import CallToolResult, ImageContent, TextContent

from schemas.envelope import Envelope, ToolCall, ToolsResult
from schemas.errors import ToolFailure
from schemas.policy import PolicyDocument
from streams.clients.envelopes import new_envelope
from streams.settings import Settings
from streams.stages.tools import mcp_server_environment
from tests.workers.tools.documents import demo_server, mcp_policy
from workers.policy import StaticPolicy
from workers.tools.builtins import MemoryTicketStore, RedisTicketStore, seed_demo_tickets
from workers.tools.effects import MemoryEffectStore
from workers.tools.mcp import McpSessions, result_value
from workers.tools.mcp_server import DemoTools, DocumentSearch
from workers.tools.stage import ToolsContext, process

REPO = Path(__file__).resolve().parents[3]


def text(value: str, *, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value)], is_error=error)


def test_what_the_model_reads_from_a_reply() -> None:
    structured = CallToolResult(content=[TextContent(type="text", text="{}")], structured_content={"result": 391})
    assert result_value(structured) == {"result": 391}
    assert result_value(text('{"a": 1}')) == {"a": 1}
    assert result_value(text("plain words")) == "plain words"
    with pytest.raises(ToolFailure) as coded:
        result_value(text("Error executing tool ticket_lookup: not_found: ticket 'X' does not exist", error=True))
    assert (coded.value.code, str(coded.value)) == ("not_found", "ticket 'X' does not exist")
    with pytest.raises(ToolFailure) as other:
        result_value(text("Error executing tool raising", error=True))
    assert other.value.code == "tool_error"
    with pytest.raises(ToolFailure) as image:
        result_value(CallToolResult(content=[ImageContent(type="image", data="eA==", mime_type="image/png")]))
    assert image.value.code == "invalid_result"
    with pytest.raises(ToolFailure) as empty:
        result_value(CallToolResult(content=[]))
    assert empty.value.code == "invalid_result"


async def test_the_demo_servers_tools() -> None:
    store = MemoryTicketStore()
    await seed_demo_tickets(store, "acme")
    tools = DemoTools(store)
    tools._index = DocumentSearch({"acme": [("refunds.md#0", "Refunds above 100 dollars need a manager."),
                                            ("vpn.md#0", "The VPN needs a token.")],
                                   "other": [("secret.md#0", "Refunds are secret here.")]})
    tools._index_read_at = float("inf")  # never re-read in this test
    assert (await tools.calculator("2*(3+4)"))["result"] == 14
    hits = (await tools.search("acme", "who approves refunds", 3))["hits"]
    assert [h["doc_id"] for h in hits] == ["refunds.md#0"]  # another tenant's documents are never searched
    assert (await tools.ticket_update("acme", "T-1001", "closed"))["status"] == "closed"
    assert (await tools.ticket_lookup("acme", "T-1001"))["status"] == "closed"
    with pytest.raises(ToolFailure):
        await tools.ticket_lookup("other", "T-1001")


def test_the_policy_refuses_an_mcp_tool_without_its_server() -> None:
    from schemas.errors import ConfigError
    from schemas.policy import parse_policy

    with pytest.raises(ConfigError, match="undeclared mcp_servers"):
        parse_policy({"version": "v", "tools": {"t": {"kind": "mcp", "server": "nowhere"}}})
    with pytest.raises(ConfigError, match="names its server"):
        parse_policy({"version": "v", "tools": {"t": {"kind": "mcp"}}})


# ------------------------------------------------------------------ against real MCP server processes
def asking(*calls: tuple[str, dict[str, Any]], request_id: str = "r1") -> Envelope:
    env = new_envelope("do things", tenant="acme", budget_ms=60_000, request_id=request_id)
    env.tools = ToolsResult(offered=["calculator"], steps=1, pending=[
        ToolCall(id=f"c{i}", name=name, arguments=arguments) for i, (name, arguments) in enumerate(calls)])
    return env


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}")
    client = aioredis.Redis.from_url(isolated.redis_url)
    await seed_demo_tickets(RedisTicketStore(client, prefix=isolated.topic_prefix), "acme")
    yield isolated
    keys = [k async for k in client.scan_iter(match=f"{isolated.topic_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def http_server(settings: Settings) -> Iterator[str]:
    """The demo server as its own process on streamable HTTP (loopback)."""
    port = free_port()
    env = {**os.environ, **mcp_server_environment(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "workers.tools.mcp_server", "--transport", "streamable-http",
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "the MCP server process ended"
            import time
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def run_calls(doc: PolicyDocument, settings: Settings, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    sessions = McpSessions(mcp_server_environment(settings))
    try:
        ctx = ToolsContext(stage="tools", policy=StaticPolicy(doc), effects=MemoryEffectStore(), mcp=sessions)
        assert await sessions.warm(doc.mcp_servers) == []  # launched before the calls, as a worker's start does
        [out] = await process([asking(*calls)], ctx)
        assert out.tools is not None
        return list(out.tools.calls)
    finally:
        await sessions.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_the_demo_tools_through_a_real_mcp_server(transport: str, settings: Settings,
                                                        request: pytest.FixtureRequest) -> None:
    demo = demo_server() if transport == "stdio" else demo_server("streamable-http", request.getfixturevalue(
        "http_server"))
    doc = mcp_policy(demo)
    doc = doc.model_copy(update={"mcp_servers": {"demo": doc.mcp_servers["demo"]}})
    calc, lookup, update, other = await run_calls(
        doc, settings, ("calculator", {"expression": "17*23"}), ("ticket_lookup", {"ticket_id": "T-1002"}),
        ("ticket_update", {"ticket_id": "T-1001", "status": "closed"}), ("ticket_lookup", {"ticket_id": "T-9"}))
    assert (calc.status, orjson.loads(calc.content)["result"], calc.cost_micros) == ("ok", 391, 100)
    assert lookup.status == "ok" and orjson.loads(lookup.content)["subject"] == "API returns 500 on login"
    assert (update.status, update.code) == ("denied", "tool_denied")  # governed before any server sees it
    assert (other.status, other.code) == ("error", "not_found")


@pytest.mark.integration
async def test_bad_tool_output_ends_as_a_clear_tool_error(settings: Settings) -> None:
    doc = mcp_policy()
    calls = await run_calls(doc, settings, ("slow", {"seconds": 30}), ("raising", {"text": "x"}),
                            ("huge", {"text": "x", "chars": 5000}), ("picture", {"text": "x"}),
                            ("prose", {"text": "hello"}))
    codes = {c.name: (c.status, c.code) for c in calls}
    assert codes == {"slow": ("error", "tool_timeout"), "raising": ("error", "tool_error"),
                     "huge": ("error", "result_too_large"), "picture": ("error", "invalid_result"),
                     "prose": ("ok", "")}
    assert all(orjson.loads(c.content)["error"] == c.code for c in calls if c.status != "ok")
    assert all(c.cost_micros == 10 for c in calls)  # every one of them was invoked


@pytest.mark.integration
async def test_a_server_that_dies_mid_call_is_an_error_and_is_relaunched(settings: Settings) -> None:
    doc = mcp_policy()
    sessions = McpSessions(mcp_server_environment(settings))
    try:
        ctx = ToolsContext(stage="tools", policy=StaticPolicy(doc), effects=MemoryEffectStore(), mcp=sessions)
        await asyncio.wait_for(asyncio.shield(sessions.connect("bad", doc.mcp_servers["bad"]).ready), 120)
        [died] = await process([asking(("die", {"text": "x"}), request_id="r1")], ctx)
        assert died.tools is not None
        assert died.tools.calls[0].status == "error"
        assert died.tools.calls[0].code in {"tool_unavailable", "tool_error", "tool_timeout"}
        await asyncio.wait_for(asyncio.shield(sessions.connect("bad", doc.mcp_servers["bad"]).ready), 120)
        [again] = await process([asking(("prose", {"text": "back"}), request_id="r2")], ctx)
        assert again.tools is not None and orjson.loads(again.tools.calls[0].content) == {"result": "not JSON: back"}
    finally:
        await sessions.aclose()
