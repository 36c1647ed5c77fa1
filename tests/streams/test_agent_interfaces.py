"""Agent interfaces through every stage's real runner (in-memory topics): a client-executed round trip, and the
conversation memory carrying tool results into a later turn of the session."""

from __future__ import annotations

from typing import Any

from schemas.envelope import FunctionTool, Message, Status
from streams.clients.envelopes import new_envelope
from streams.clients.tools import tool_turn
from streams.settings import load_settings
from streams.testing import run_pipeline
from tests.workers.tools.documents import tools_policy
from workers.decisions import DecisionKeys, response_verifies
from workers.memory import MemoryConversationMemory, append_turns
from workers.policy import PolicyContext, StaticPolicy
from workers.postprocess import PostprocessContext
from workers.retrieval import RetrievalContext
from workers.tools.builtins import Builtins, MemoryTicketStore, seed_demo_tickets
from workers.tools.stage import ToolsContext

SETTINGS = load_settings(topic_prefix="ta")
ORDER = FunctionTool(name="lookup_order", parameters={"type": "object", "properties": {"id": {"type": "string"}}})


def contexts(memory: MemoryConversationMemory, tickets: MemoryTicketStore) -> dict[str, Any]:
    doc = tools_policy()

    async def remember(batch: list[Any], _ctx: Any) -> None:
        await append_turns(batch, memory)

    return {"policy": PolicyContext(stage="policy", policy=StaticPolicy(doc), topic_prefix="ta"),
            "retrieval": RetrievalContext(stage="retrieval", memory=memory, topic_prefix="ta"),
            "postprocess": PostprocessContext(stage="postprocess", after_finish=(remember,), topic_prefix="ta"),
            "tools": ToolsContext(stage="tools", policy=StaticPolicy(doc), builtins=Builtins(tickets=tickets),
                                  topic_prefix="ta")}


async def test_client_executed_round_trip_and_its_memory() -> None:
    memory, tickets = MemoryConversationMemory(), MemoryTicketStore()
    question = [Message(role="user", content='use lookup_order with {"id": "A-1"}')]
    first = new_envelope(question, tenant="acme", settings=SETTINGS, request_id="c-1", tools=[ORDER],
                         session_id="s1")
    asked = (await run_pipeline([first], contexts=contexts(memory, tickets), settings=SETTINGS)).responses["c-1"]
    assert (asked.status, asked.code, asked.answer) == (Status.OK, "tool_calls", None)
    assert [(c.name, c.arguments) for c in asked.requested_tool_calls] == [("lookup_order", {"id": "A-1"})]
    assert [h.stage for h in asked.hops] == ["retrieval", "policy", "cache", "model"]  # nothing ran server-side
    assert [(s.kind, s.name) for s in asked.steps] == [("model", asked.model)]  # the calls are the caller's
    assert memory.sessions == {}  # a turn is remembered once it is answered

    conversation = [*question, *tool_turn(asked, {asked.requested_tool_calls[0].id: {"state": "lost"}})]
    second = new_envelope(conversation, tenant="acme", settings=SETTINGS, request_id="c-2", tools=[ORDER],
                          session_id="s1")
    answered = (await run_pipeline([second], contexts=contexts(memory, tickets), settings=SETTINGS)).responses["c-2"]
    assert answered.answer == 'lookup_order returned {"state":"lost"}.' and answered.requested_tool_calls == []
    assert (asked.cache, answered.cache) == ("bypass", "bypass")  # a tool conversation is live data
    assert [m.role for m in memory.sessions[("acme", "s1")]] == ["user", "assistant", "tool", "assistant"]


async def test_memory_carries_server_tool_results_into_the_next_turn() -> None:
    memory, tickets = MemoryConversationMemory(), MemoryTicketStore()
    await seed_demo_tickets(tickets, "acme")
    task = new_envelope("Look up ticket T-1002, then close ticket T-1002.", tenant="acme", settings=SETTINGS,
                        request_id="m-1", session_id="s2")
    done = (await run_pipeline([task], contexts=contexts(memory, tickets), settings=SETTINGS)).responses["m-1"]
    assert done.status is Status.OK and done.tool_calls == 2
    remembered = memory.sessions[("acme", "s2")]
    assert [(m.role, m.tool_call_id) for m in remembered] == [
        ("user", None), ("assistant", None), ("tool", "call_0_0"), ("tool", "call_0_1"), ("assistant", None)]
    later = new_envelope("What did you find earlier?", tenant="acme", settings=SETTINGS, request_id="m-2",
                         session_id="s2")
    recalled = (await run_pipeline([later], contexts=contexts(memory, tickets), settings=SETTINGS)).responses["m-2"]
    assert recalled.answer == ("Earlier: Ticket T-1002 (\"API returns 500 on login\") is pending. The ticket_update "
                               "call was refused by policy (tool_denied): the policy does not allow tool "
                               "'ticket_update' for this tenant.")
    assert recalled.tool_calls == 0


async def test_a_response_with_priced_tool_calls_verifies_for_the_ledger() -> None:
    """The outcome's signature covers what the response says it cost — model turns plus tool calls — so the ledger
    counts an agent task instead of skipping it as forged."""
    tickets = MemoryTicketStore()
    await seed_demo_tickets(tickets, "acme")
    env = new_envelope("Calculate 17*23 and look up ticket T-1001.", tenant="acme", settings=SETTINGS,
                       request_id="v-1")
    response = (await run_pipeline([env], contexts=contexts(MemoryConversationMemory(), tickets),
                                   settings=SETTINGS)).responses["v-1"]
    assert response.tool_cost_micros == 150 and response.cost_micros > 150
    assert response.cost_micros == sum(step.cost_micros for step in response.steps)
    assert response_verifies(response, DecisionKeys.parse(SETTINGS.decision_keys.get_secret_value()))
