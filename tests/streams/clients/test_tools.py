"""The SDK's tool helpers (streams/clients/tools.py): definitions in every shape, the client-executed turn."""

from __future__ import annotations

import pytest

from schemas.envelope import FunctionTool, Status, ToolCall
from schemas.response import Response
from streams.clients.tools import as_function_tools, message_from, run_handlers, tool_turn

OPENAI = {"type": "function", "function": {"name": "lookup_order", "description": "d", "strict": True,
                                           "parameters": {"type": "object", "properties": {}}}}


def test_definitions_in_every_shape() -> None:
    tools = as_function_tools([OPENAI, {"name": "plain"}, "calculator", FunctionTool(name="ours")])
    assert [t.name for t in tools] == ["lookup_order", "plain", "calculator", "ours"]
    assert tools[0].description == "d" and tools[2].parameters == {"type": "object"}
    with pytest.raises(ValueError, match="not a function tool"):
        as_function_tools([{"type": "retrieval"}])


async def test_handlers_answer_every_call_even_when_they_fail() -> None:
    def boom(_args: dict[str, object]) -> object:
        raise RuntimeError("down")

    async def lookup(args: dict[str, object]) -> object:
        return {"order": args["id"], "state": "shipped"}

    calls = [ToolCall(id="a", name="lookup", arguments={"id": "A-1"}), ToolCall(id="b", name="boom"),
             ToolCall(id="c", name="missing")]
    results = await run_handlers(calls, {"lookup": lookup, "boom": boom})
    assert results == {"a": {"order": "A-1", "state": "shipped"},
                       "b": {"error": "tool_error", "message": "RuntimeError: down"},
                       "c": {"error": "unknown_tool", "message": "the client has no tool 'missing'"}}
    response = Response(request_id="r", tenant="t", status=Status.OK, code="tool_calls", requested_tool_calls=calls)
    turn = tool_turn(response, {"a": "text", "b": {"x": 1}})
    assert [(m.role, m.tool_call_id, m.content) for m in turn] == [
        ("assistant", None, ""), ("tool", "a", "text"), ("tool", "b", '{"x":1}'),
        ("tool", "c", '{"error":"no_result","message":"the client returned no result"}')]
    assert turn[0].tool_calls == calls and response.finish_reason == "tool_calls"


def test_messages_in_openai_shape() -> None:
    message = message_from({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]})
    assert message.content == "" and message.tool_calls == [ToolCall(id="c1", name="f", arguments={"a": 1})]
    assert message_from({"role": "tool", "tool_call_id": "c1", "content": "2"}).tool_call_id == "c1"
