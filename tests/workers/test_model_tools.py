"""The model stage's side of the agent loop: tool calls reroute the request, turns add up, steps are bounded."""

from __future__ import annotations

from schemas.envelope import Status, ToolCallRecord, ToolsResult
from streams.clients.envelopes import new_envelope
from workers.model import ModelContext, process


async def test_tool_calls_route_to_tools_then_back_and_usage_adds_up() -> None:
    ctx = ModelContext(stage="model")
    env = new_envelope("calculate 17*23", tenant="acme", request_id="r1")
    env.route = ["postprocess", "audit"]  # as the runner hands it to the model stage
    env.tools = ToolsResult(offered=["calculator"])
    [env] = await process([env], ctx)
    assert env.outcome is None and env.answer is None
    assert env.route == ["tools", "model", "postprocess", "audit"]
    assert env.tools is not None and env.tools.steps == 1 and [c.name for c in env.tools.pending] == ["calculator"]
    assert env.model is not None
    first_usage = env.model.usage
    # the tools stage's part
    env.tools.calls.append(ToolCallRecord(call_id=env.tools.pending[0].id, name="calculator", step=1, status="ok",
                                          content='{"expression":"17*23","result":391}', cost_micros=100))
    env.tools.pending = []
    env.route = ["postprocess", "audit"]
    [env] = await process([env], ctx)
    assert env.answer == "17*23 = 391." and env.route == ["postprocess", "audit"]
    assert env.model is not None
    assert env.model.usage.input_tokens > first_usage.input_tokens  # both turns counted
    assert env.model.usage.output_tokens > first_usage.output_tokens


async def test_no_tools_are_offered_once_the_steps_are_spent() -> None:
    env = new_envelope("calculate 17*23", tenant="acme", request_id="r2")
    env.route = ["postprocess", "audit"]
    env.tools = ToolsResult(offered=["calculator"], steps=1, max_steps=1)
    [env] = await process([env], ModelContext(stage="model"))
    assert env.route == ["postprocess", "audit"] and env.answer  # answered in text, no more tool calls


async def test_tool_calls_when_none_were_offered_end_the_request() -> None:
    from schemas.envelope import ToolCall
    from workers.tools.loop import ask
    env = new_envelope("x", tenant="acme", request_id="r3")
    ask(env, [ToolCall(id="a", name="calculator")], stage="model")
    assert env.outcome is not None and (env.outcome.status, env.outcome.code) == (Status.FAILED,
                                                                                  "unexpected_tool_calls")
