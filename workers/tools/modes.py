"""Who runs a request's tool calls: tollway (server-executed) or the caller (client-executed, OpenAI's way).

**The mode** (:func:`tools_for`, decided by the policy stage, never taken from a producer's envelope):

* a request without ``tools`` is offered the tenant's registered tools (its ``visible`` ones), server-executed;
* a request with ``tools`` is server-executed when every tool it names is a registered tool of the tenant (the
  offer narrows to those), client-executed otherwise — the model is offered the caller's definitions and a turn that
  asks for them ends the request with the calls in the response (``finish_reason: "tool_calls"``);
* ``Request.tools_mode`` ("server" / "client") overrides the choice: in server mode a name that is not a registered
  tool is not offered; in client mode a registered tool named in the request is the caller's to run;
* ``tool_choice``: "none" offers nothing, a tool's name offers only that tool, "auto" / "required" the rest.

The tenant's ``tools.denied`` list applies to the caller's tools too: a denied name is never offered.

**Client results** (:func:`client_results`): the ``role: tool`` messages after the last user message answer the
assistant turns that asked for them (by ``tool_call_id``); the model stage hands them to the backend like the tools
stage's records, so a client-executed loop ends in an answer from the results.
:func:`conversation_problem` is the check the ingress and the SDK run before publishing.
"""

from __future__ import annotations

from collections.abc import Collection

import orjson

from schemas.envelope import Message, Request, ToolCallRecord, ToolCallStatus, ToolsResult

DEFAULT_MAX_STEPS = 4


def tools_for(request: Request, registered: list[str], *, denied: Collection[str] = (),
              max_steps: int = DEFAULT_MAX_STEPS) -> tuple[ToolsResult | None, str]:
    """The tools the model is offered and who runs them, and a line for the policy decision (``""``: no tools)."""
    named = [tool.name for tool in request.tools]
    if request.tool_choice == "none":
        return None, "tools: none offered (tool_choice none)" if named or registered else ""
    mode = request.tools_mode
    if mode == "auto":
        mode = "server" if set(named) <= set(registered) else "client"
    if mode == "server":
        offered = [name for name in (named or registered) if name in registered]
    else:
        offered = [name for name in named if name not in denied]
    if request.tool_choice not in ("auto", "required"):
        offered = [name for name in offered if name == request.tool_choice]
    if not offered:
        return None, f"tools: none offered ({mode} mode)" if named else ""
    state = ToolsResult(offered=offered, max_steps=max_steps, mode=mode)
    return state, f"tools: {mode}-executed {','.join(offered)}"


def _after_last_user(messages: list[Message]) -> list[Message]:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return messages[last_user + 1:]


def client_results(messages: list[Message]) -> list[ToolCallRecord]:
    """The caller's tool results for the current question: each tool message after the last user message, as the
    record of the call it answers (step n: the n-th assistant turn that asked for tools)."""
    return results_in(_after_last_user(messages))


def results_in(messages: list[Message]) -> list[ToolCallRecord]:
    """Every tool message of ``messages`` as the record of the call it answers; a structured error
    ``{"error": code, "message": …}`` (what the tools stage gives the model) keeps its status and code."""
    names: dict[str, tuple[str, int]] = {}
    records: list[ToolCallRecord] = []
    step = 0
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            step += 1
            names.update({call.id: (call.name, step) for call in message.tool_calls})
        elif message.role == "tool" and message.tool_call_id is not None:
            name, at = names.get(message.tool_call_id, ("tool", max(step, 1)))
            code = _error_code(message.content)
            status: ToolCallStatus = "ok" if not code else "denied" if code in _REFUSALS else "error"
            records.append(ToolCallRecord(call_id=message.tool_call_id, name=name, step=at, status=status,
                                          code=code, content=message.content))
    return records


# Governance's refusals as the model reads them (workers/tools/stage.py DENIAL_CODES, the ones a result may carry).
_REFUSALS = frozenset({"unknown_tool", "tool_denied", "tool_residency_violation", "invalid_arguments",
                       "argument_out_of_bounds", "pii_blocked", "too_many_tool_calls", "tool_result_blocked"})


def _error_code(content: str) -> str:
    if not content.startswith('{"error"'):
        return ""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ""
    return str(parsed.get("error", "")) if isinstance(parsed, dict) and "message" in parsed else ""


def conversation_problem(messages: list[Message], *, legacy: Collection[int] = ()) -> tuple[int, str, str] | None:
    """The first tool message that answers no earlier tool call: ``(index, param, message)``; None when sound.
    ``legacy``: positions of OpenAI's deprecated ``function`` messages, which answer by name, not by id."""
    asked: set[str] = set()
    answered: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            asked.update(call.id for call in message.tool_calls)
        elif message.role == "tool" and index not in legacy:
            if not message.tool_call_id:
                return index, f"messages[{index}].tool_call_id", "a tool message needs the tool_call_id it answers"
            if message.tool_call_id not in asked:
                return (index, f"messages[{index}].tool_call_id",
                        f"tool_call_id {message.tool_call_id!r} answers no tool call of an earlier assistant message")
            if message.tool_call_id in answered:
                return (index, f"messages[{index}].tool_call_id",
                        f"tool_call_id {message.tool_call_id!r} is answered twice")
            answered.add(message.tool_call_id)
    return None
