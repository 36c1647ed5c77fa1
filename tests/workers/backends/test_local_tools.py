from __future__ import annotations

from schemas.envelope import Message, ToolCallRecord
from workers.backends.base import ModelCall
from workers.backends.local import LocalBackend
from workers.backends.local_tools import answer_from_results, plan

ALL = ["calculator", "ticket_lookup", "ticket_update", "issue_refund", "notes"]


def test_the_local_model_plans_the_calls_a_prompt_asks_for_in_order() -> None:
    calls = plan("Calculate 17*23, then refund $40 on ticket T-1001 and close ticket t-1002.", ALL, step=0)
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_0_0", "calculator", {"expression": "17*23"}),
        ("call_0_1", "issue_refund", {"ticket_id": "T-1001", "amount": 40}),
        ("call_0_2", "ticket_update", {"ticket_id": "T-1002", "status": "closed"}),
    ]
    assert [c.name for c in plan("What is the status of ticket T-1001?", ALL, step=0)] == ["ticket_lookup"]
    assert plan('Please use notes with {"text": "hi"}', ALL, step=0)[0].arguments == {"text": "hi"}


def test_only_offered_tools_and_only_real_requests() -> None:
    assert plan("calculate 17*23", ["notes"], step=0) == []
    assert plan("What is the refund policy?", ALL, step=0) == []
    assert plan("what is 42", ALL, step=0) == []  # a number, no arithmetic


def test_the_answer_names_results_and_refusals() -> None:
    records = [ToolCallRecord(call_id="a", name="calculator", step=1, status="ok",
                              content='{"expression":"17*23","result":391}'),
               ToolCallRecord(call_id="b", name="ticket_update", step=1, status="denied", code="tool_denied",
                              content='{"error":"tool_denied","message":"not allowed"}')]
    assert answer_from_results(records) == ("17*23 = 391. The ticket_update call was refused by policy "
                                            "(tool_denied): not allowed.")


async def test_the_backend_asks_then_answers() -> None:
    backend = LocalBackend(latency_scale=0)
    messages = [Message(role="user", content="calculate 17*23")]
    [ask] = await backend.complete([ModelCall(request_id="r", model="m", messages=messages, tools=ALL)])
    assert ask.finish_reason == "tool_calls" and ask.tool_calls[0].name == "calculator" and ask.text == ""
    assert ask.usage.output_tokens > 0
    record = ToolCallRecord(call_id="call_0_0", name="calculator", step=1, status="ok",
                            content='{"expression":"17*23","result":391}')
    [final] = await backend.complete([ModelCall(request_id="r", model="m", messages=messages, tools=ALL,
                                                tool_results=[record])])
    assert (final.text, final.tool_calls) == ("17*23 = 391.", [])
    [plain] = await backend.complete([ModelCall(request_id="r", model="m", messages=messages)])
    assert plain.tool_calls == []  # no tools offered: a text answer as before
