"""An agent task through every stage's real runner (in-memory topics): two tool calls, one denied by policy.

"Calculate 17*23 and close ticket T-1001": the local model asks for the calculator and ticket_update; the tenant
may calculate but not update tickets. Expected: the route model → tools → model → postprocess → audit, an answer
that gives the result and says the update was refused, the calculator's price on the response, and one audit entry
per call — the denied one included.
"""

from __future__ import annotations

from typing import Any

from schemas.audit import AuditRecord
from schemas.envelope import Envelope, Status
from streams.clients.envelopes import new_envelope
from streams.runtime.codec import decode_as
from streams.settings import load_settings
from streams.testing import PipelineResult, run_pipeline
from tests.workers.tools.documents import tools_policy
from workers.policy import PolicyContext, StaticPolicy
from workers.tools.builtins import Builtins, MemoryTicketStore, seed_demo_tickets
from workers.tools.stage import ToolsContext

SETTINGS = load_settings(topic_prefix="tp")


async def run(envs: list[Envelope], tickets: MemoryTicketStore) -> PipelineResult:
    doc = tools_policy()
    contexts: dict[str, Any] = {
        "policy": PolicyContext(stage="policy", policy=StaticPolicy(doc), topic_prefix="tp"),
        "tools": ToolsContext(stage="tools", policy=StaticPolicy(doc), builtins=Builtins(tickets=tickets),
                              topic_prefix="tp"),
    }
    return await run_pipeline(envs, contexts=contexts, settings=SETTINGS)


async def test_a_two_tool_task_with_one_call_denied() -> None:
    tickets = MemoryTicketStore()
    await seed_demo_tickets(tickets, "acme")
    env = new_envelope("Calculate 17*23 and close ticket T-1001.", tenant="acme", settings=SETTINGS,
                       request_id="agent-1")
    result = await run([env], tickets)
    response = result.responses["agent-1"]
    assert response.status is Status.OK, response.message
    assert response.answer == ("17*23 = 391. The ticket_update call was refused by policy (tool_denied): the policy "
                               "does not allow tool 'ticket_update' for this tenant.")
    assert [h.stage for h in response.hops] == ["retrieval", "policy", "cache", "model", "tools", "model",
                                                "postprocess"]
    assert (response.tool_calls, response.tool_cost_micros) == (2, 100)
    assert response.cost_micros > 100  # both model turns plus the calculator's 100 µ$
    ticket = await tickets.get("acme", "T-1001")
    assert ticket is not None and ticket["status"] == "open"
    [record] = [decode_as(v, AuditRecord) for v in result.on(result.topology.audit_log)]
    assert [(c.tool, c.status, c.code) for c in record.tool_calls] == [("calculator", "ok", ""),
                                                                         ("ticket_update", "denied", "tool_denied")]
    assert (record.cost_micros, record.tool_cost_micros) == (response.cost_micros, 100)
    assert record.tool_calls[1].decisions == ["denied tool_denied"]


async def test_requests_without_tool_use_keep_the_default_route() -> None:
    env = new_envelope("What is the refund policy?", tenant="plain", settings=SETTINGS, request_id="plain-1")
    result = await run([env], MemoryTicketStore())
    response = result.responses["plain-1"]
    assert [h.stage for h in response.hops] == ["retrieval", "policy", "cache", "model", "postprocess"]
    assert (response.tool_calls, response.tool_cost_micros) == (0, 0)


async def test_a_refund_over_the_bound_is_refused_and_within_it_runs_once() -> None:
    tickets = MemoryTicketStore()
    await seed_demo_tickets(tickets, "acme")
    over = new_envelope("Refund $500 on ticket T-1001.", tenant="acme", settings=SETTINGS, request_id="big")
    within = new_envelope("Refund $40 on ticket T-1002.", tenant="acme", settings=SETTINGS, request_id="small")
    result = await run([over, within], tickets)
    assert "argument_out_of_bounds" in (result.responses["big"].answer or "")
    assert result.responses["small"].answer == "Refund rf_1_T-1002 of $40 was issued on ticket T-1002."
    assert result.responses["small"].tool_cost_micros == 2_000
    big, small = await tickets.get("acme", "T-1001"), await tickets.get("acme", "T-1002")
    assert big is not None and "refunds" not in big
    assert small is not None and len(small["refunds"]) == 1
