"""The agent loop as the model stage sees it: what to offer the model, and what to do when it asks for tools.

The policy stage puts the tools a tenant's model may be offered on ``env.tools`` (``offered``, ``max_steps``); the
model stage passes them to the backend with the results of earlier calls (:func:`offer`) and, when the reply asks
for tools, :func:`ask` queues the calls and routes the request ``tools → model → …`` (the rest of its route kept).
Once ``max_steps`` turns have asked for tools, no tool is offered any more: the next turn must answer. In
client-executed mode (:mod:`workers.tools.modes`) a turn that asks for tools ends the request with the calls on
``env.tools.pending`` (the response's ``requested_tool_calls``) instead of visiting the tools stage.
"""

from __future__ import annotations

from typing import Any

from schemas.envelope import Envelope, FunctionTool, Status, ToolCall
from workers.tools.modes import client_results


def offer(env: Envelope) -> dict[str, Any]:
    """``ModelCall`` keyword arguments: the tools the model may ask for now, and the results it has so far (the
    tools stage's records, or the caller's ``role: tool`` messages in client-executed mode)."""
    state = env.tools
    client = client_results(env.request.messages) if env.request.tools or env.request.tools_mode == "client" else []
    if state is None:
        return {"tool_results": client} if client else {}
    offered = list(state.offered) if state.steps < state.max_steps else []
    defined = {tool.name: tool for tool in env.request.tools}
    return {"tools": offered, "tool_results": [*state.calls, *client],
            "tool_definitions": [defined.get(name, FunctionTool(name=name)) for name in offered]}


def ask(env: Envelope, calls: list[ToolCall], *, stage: str) -> None:
    """The model answered with tool calls: queue them for the tools stage, or end the request when it may not."""
    state = env.tools
    env.answer = None
    if state is None or not state.offered:
        env.finish(Status.FAILED, code="unexpected_tool_calls", stage=stage,
                   message="the model asked for tools although none were offered to it")
        return
    if state.steps >= state.max_steps:
        env.finish(Status.FAILED, code="tool_steps_exhausted", stage=stage,
                   message=f"the model still asked for tools after {state.max_steps} tool steps")
        return
    state.steps += 1
    if state.mode == "client":
        # The caller runs these: the request ends here with the calls in its response (finish_reason "tool_calls");
        # the caller posts their results back as a new request. Nothing runs, so there is nothing to post-process.
        state.pending = list(calls)
        env.finish(Status.OK, code="tool_calls", stage=stage)
        return
    used = {record.call_id for record in state.calls}
    pending: list[ToolCall] = []
    for call in calls:
        # Call ids identify a call within the request (its record, its effect key): make a reused id unique.
        unique = call if call.id not in used else call.model_copy(update={"id": f"{call.id}~{state.steps}"})
        used.add(unique.id)
        pending.append(unique)
    state.pending = pending
    env.route = ["tools", "model", *env.route]
