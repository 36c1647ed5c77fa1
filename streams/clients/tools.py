"""Tool use from the SDK and ``tollway submit``: tool definitions in either shape, and the client-executed turn.

    tools = as_function_tools([{"type": "function", "function": {"name": "lookup_order", "parameters": {...}}}])
    response = await client.complete(messages, tools=tools)            # client-executed: tollway does not know it
    if response.requested_tool_calls:                                   # finish_reason "tool_calls"
        messages += tool_turn(response, {call.id: run(call) for call in response.requested_tool_calls})
        response = await client.complete(messages, tools=tools)         # the final answer from the results

``TollwayClient.complete_with_tools`` runs that loop with a handler per tool name. Server-executed tools need none of
this: name registered tools (or none, to be offered all of the tenant's) and the response is the final answer, with
each call on ``response.steps``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from schemas.envelope import FunctionTool, Message, ToolCall
from schemas.response import Response
from workers.tools.modes import conversation_problem

ToolHandler = Callable[[dict[str, Any]], Any | Awaitable[Any]]


def as_function_tools(tools: Iterable[FunctionTool | Mapping[str, Any] | str]) -> list[FunctionTool]:
    """Tool definitions as the envelope carries them, from ours, OpenAI's ``{"type": "function", "function": …}``,
    a plain ``{"name", "parameters"}`` mapping, or a bare name (a registered tool: the registry has its schema)."""
    out: list[FunctionTool] = []
    for tool in tools:
        if isinstance(tool, FunctionTool):
            out.append(tool)
        elif isinstance(tool, str):
            out.append(FunctionTool(name=tool))
        else:
            spec = tool.get("function", tool) if tool.get("type", "function") == "function" else None
            if not isinstance(spec, Mapping):
                raise ValueError(f"not a function tool definition: {dict(tool)!r}")
            out.append(FunctionTool.model_validate({k: v for k, v in spec.items() if k != "strict"}))
    return out


def check_conversation(messages: list[Message]) -> None:
    """Refuse a conversation whose tool messages answer no earlier call (what the ingress answers with a 400)."""
    problem = conversation_problem(messages)
    if problem is not None:
        raise ValueError(f"{problem[1]}: {problem[2]}")


def result_text(result: Any) -> str:
    """A tool's result as the tool message's content: text as it is, anything else as JSON."""
    return result if isinstance(result, str) else orjson.dumps(result, default=str).decode()


def tool_turn(response: Response, results: Mapping[str, Any]) -> list[Message]:
    """The messages that answer a ``tool_calls`` response: the assistant turn that asked, then one tool message per
    call (``results`` by call id; a call without a result is answered with an error the model can read)."""
    calls = response.requested_tool_calls
    messages = [Message(role="assistant", content="", tool_calls=list(calls))]
    for call in calls:
        content = (result_text(results[call.id]) if call.id in results else
                   orjson.dumps({"error": "no_result", "message": "the client returned no result"}).decode())
        messages.append(Message(role="tool", content=content, tool_call_id=call.id))
    return messages


async def run_handlers(calls: list[ToolCall], handlers: Mapping[str, ToolHandler]) -> dict[str, Any]:
    """Run each call with its handler (sync or async); an unknown tool or a raising handler is a structured error."""
    results: dict[str, Any] = {}
    for call in calls:
        handler = handlers.get(call.name)
        if handler is None:
            results[call.id] = {"error": "unknown_tool", "message": f"the client has no tool {call.name!r}"}
            continue
        try:
            value = handler(call.arguments)
            results[call.id] = await value if inspect.isawaitable(value) else value
        except Exception as exc:  # a failing tool is an answer the model reads, never a crashed loop
            results[call.id] = {"error": "tool_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
    return results


def message_from(data: Mapping[str, Any]) -> Message:
    """A chat message from ours or OpenAI's shape (``tool_calls[].function.arguments`` as a JSON string, ``content``
    null on an assistant turn that only asked for tools)."""
    raw = dict(data)
    if raw.get("content") is None:
        raw["content"] = ""
    calls = raw.get("tool_calls")
    if calls:
        raw["tool_calls"] = [
            {"id": c["id"], "name": c["function"]["name"],
             "arguments": orjson.loads(c["function"].get("arguments") or "{}")} if "function" in c else c
            for c in calls]
    return Message.model_validate(raw)
