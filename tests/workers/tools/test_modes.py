"""Who runs a request's tool calls (workers/tools/modes.py): the offer per mode, and the caller's results."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.envelope import FunctionTool, Message, Request, ToolCall
from workers.tools.modes import client_results, conversation_problem, results_in, tools_for

REGISTERED = ["calculator", "ticket_lookup", "ticket_update"]


def request(*names: str, **fields: Any) -> Request:
    return Request(messages=[Message(role="user", content="hi")], tools=[FunctionTool(name=n) for n in names],
                   **fields)


@pytest.mark.parametrize(("req", "mode", "offered"), [
    (request(), "server", REGISTERED),  # no tools named: the tenant's registered tools
    (request("calculator"), "server", ["calculator"]),  # only registered names: server, narrowed
    (request("calculator", "lookup_order"), "client", ["calculator", "lookup_order"]),  # one unknown: client
    (request("calculator", tools_mode="client"), "client", ["calculator"]),
    (request("calculator", "lookup_order", tools_mode="server"), "server", ["calculator"]),
    (request("lookup_order", "ticket_update"), "client", ["lookup_order"]),  # denied names are never offered
    (request("calculator", "ticket_lookup", tool_choice="ticket_lookup"), "server", ["ticket_lookup"]),
    (request(tool_choice="calculator"), "server", ["calculator"]),
    (request("lookup_order", tool_choice="required"), "client", ["lookup_order"]),
])
def test_the_mode_and_the_offer(req: Request, mode: str, offered: list[str]) -> None:
    state, line = tools_for(req, REGISTERED, denied=["ticket_update"], max_steps=3)
    assert state is not None and (state.mode, state.offered, state.max_steps) == (mode, offered, 3)
    assert line == f"tools: {mode}-executed {','.join(offered)}"


@pytest.mark.parametrize("req", [request("calculator", tool_choice="none"), request(tool_choice="none"),
                                 request("lookup_order", tools_mode="server")])
def test_nothing_offered(req: Request) -> None:
    state, line = tools_for(req, REGISTERED)
    assert state is None and line.startswith("tools: none offered")


def test_no_tools_anywhere_is_not_a_decision() -> None:
    assert tools_for(request(), []) == (None, "")


def test_without_a_policy_only_the_callers_tools_are_offered() -> None:
    state, _ = tools_for(request("lookup_order"), [])
    assert state is not None and (state.mode, state.offered) == ("client", ["lookup_order"])


def conversation() -> list[Message]:
    return [Message(role="user", content="earlier question"),
            Message(role="assistant", content="", tool_calls=[ToolCall(id="old", name="calculator")]),
            Message(role="tool", content='{"result": 1}', tool_call_id="old"),
            Message(role="assistant", content="1."),
            Message(role="user", content="now"),
            Message(role="assistant", content="", tool_calls=[ToolCall(id="c1", name="lookup_order"),
                                                              ToolCall(id="c2", name="ticket_update")]),
            Message(role="tool", content='{"state": "shipped"}', tool_call_id="c1"),
            Message(role="tool", content='{"error": "tool_denied", "message": "no"}', tool_call_id="c2")]


def test_client_results_are_the_tool_messages_after_the_last_question() -> None:
    records = client_results(conversation())
    assert [(r.call_id, r.name, r.step, r.status, r.code) for r in records] == [
        ("c1", "lookup_order", 1, "ok", ""), ("c2", "ticket_update", 1, "denied", "tool_denied")]
    assert [r.call_id for r in results_in(conversation())] == ["old", "c1", "c2"]


def test_conversation_problems_name_the_message() -> None:
    assert conversation_problem(conversation()) is None
    orphan = [Message(role="user", content="x"), Message(role="tool", content="1", tool_call_id="nope")]
    assert conversation_problem(orphan) == (1, "messages[1].tool_call_id",
                                            "tool_call_id 'nope' answers no tool call of an earlier assistant message")
    twice = [*conversation(), Message(role="tool", content="2", tool_call_id="c1")]
    assert conversation_problem(twice) == (8, "messages[8].tool_call_id", "tool_call_id 'c1' is answered twice")
    missing = [Message(role="user", content="x"), Message(role="tool", content="1")]
    problem = conversation_problem(missing)
    assert problem is not None and problem[1] == "messages[1].tool_call_id"


def test_unused_fields_leave_the_wire_format_as_it_was() -> None:
    plain = Request(messages=[Message(role="user", content="hi")])
    assert plain.model_dump(mode="json") == {
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"max_tokens": 256, "temperature": 0.0, "response_format": None}, "model": None,
        "quality_tier": None, "session_id": None, "task_id": None,
        "cache": {"read": True, "write": True, "ttl_s": None, "no_store": False}, "reply_to": None}
    used = request("lookup_order", tool_choice="required", tools_mode="client")
    assert Request.model_validate_json(used.model_dump_json()) == used
