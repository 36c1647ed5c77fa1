"""The tools stage's pure process: governed calls, structured errors, deadlines, exactly-once effects."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from schemas.envelope import Envelope, ToolCall, ToolsResult
from schemas.errors import ToolFailure
from schemas.policy import ToolSpec
from streams.clients.envelopes import new_envelope
from tests.workers.tools.documents import tools_policy
from workers.context import FakeClock
from workers.policy import StaticPolicy
from workers.tools.builtins import Builtins, MemoryTicketStore, seed_demo_tickets
from workers.tools.effects import MemoryEffectStore
from workers.tools.stage import ToolsContext, process


async def context(**fields: Any) -> ToolsContext:
    store = MemoryTicketStore()
    await seed_demo_tickets(store, "acme")
    defaults: dict[str, Any] = {"policy": StaticPolicy(tools_policy()), "builtins": Builtins(tickets=store),
                                "effects": MemoryEffectStore()}
    return ToolsContext(stage="tools", **{**defaults, **fields})


def asking(*calls: tuple[str, dict[str, Any]], tenant: str = "acme", budget_ms: int = 10_000,
           request_id: str = "r1") -> Envelope:
    env = new_envelope("do things", tenant=tenant, budget_ms=budget_ms, request_id=request_id)
    env.tools = ToolsResult(offered=["calculator"], steps=1, pending=[
        ToolCall(id=f"c{i}", name=name, arguments=arguments) for i, (name, arguments) in enumerate(calls)])
    return env


async def test_every_call_gets_a_record_a_denied_one_a_structured_error() -> None:
    ctx = await context()
    env = asking(("calculator", {"expression": "17*23"}), ("ticket_update", {"ticket_id": "T-1001",
                                                                             "status": "closed"}))
    [out] = await process([env], ctx)
    assert out.tools is not None and out.tools.pending == []
    ok, denied = out.tools.calls
    assert (ok.status, orjson.loads(ok.content)["result"], ok.cost_micros) == ("ok", 391, 100)
    assert (denied.status, denied.code, denied.cost_micros) == ("denied", "tool_denied", 0)
    assert orjson.loads(denied.content)["error"] == "tool_denied"
    assert out.tools.cost_micros == 100 and out.outcome is None  # a refusal never ends the request
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and ticket["status"] == "open"  # the denied update did not happen


async def test_a_tenant_the_policy_does_not_know_runs_nothing() -> None:
    [out] = await process([asking(("calculator", {"expression": "1+1"}), tenant="stranger")], await context())
    assert out.tools is not None and out.tools.calls[0].code == "tool_denied"


async def test_a_redelivered_batch_does_not_refund_twice() -> None:
    ctx = await context()
    refund = ("issue_refund", {"ticket_id": "T-1001", "amount": 40})
    first = await process([asking(refund)], ctx)
    again = await process([asking(refund)], ctx)  # the same input record, delivered again
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and len(ticket["refunds"]) == 1
    assert first[0].tools is not None and again[0].tools is not None
    original, replayed = first[0].tools.calls[0], again[0].tools.calls[0]
    assert (original.replayed, replayed.replayed) == (False, True)
    assert replayed.content == original.content and replayed.cost_micros == original.cost_micros == 2_000


async def test_an_effect_left_in_doubt_is_not_run_again() -> None:
    ctx = await context()
    refund = ("issue_refund", {"ticket_id": "T-1001", "amount": 40})
    env = asking(refund)
    from workers.tools.effects import effect_key
    assert isinstance(ctx.effects, MemoryEffectStore)
    ctx.effects.entries[effect_key("r1", 1, 0, "issue_refund", refund[1])] = b"pending"  # crashed mid-call
    [out] = await process([env], ctx)
    assert out.tools is not None and out.tools.calls[0].code == "tool_effect_in_doubt"
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and "refunds" not in ticket


async def test_bounds_and_max_calls_per_step() -> None:
    ctx = await context(policy=StaticPolicy(tools_policy(max_calls_per_step=2)))
    env = asking(("issue_refund", {"ticket_id": "T-1001", "amount": 500}), ("calculator", {"expression": "1+1"}),
                 ("calculator", {"expression": "2+2"}))
    [out] = await process([env], ctx)
    assert out.tools is not None
    assert [c.code for c in out.tools.calls] == ["argument_out_of_bounds", "", "too_many_tool_calls"]


class SlowTools(Builtins):
    async def run(self, name: str, arguments: dict[str, Any], tenant: str, *, idempotency_key: str) -> Any:
        if name == "notes":
            await asyncio.Event().wait()  # never answers
        raise RuntimeError("boom")


async def test_a_slow_or_raising_tool_is_a_clear_error_and_still_costs() -> None:
    doc = tools_policy()
    slow = doc.model_copy(update={"tools": {**doc.tools, "notes": ToolSpec(timeout_ms=20, price_micros=10)}})
    ctx = await context(policy=StaticPolicy(slow), builtins=SlowTools())
    [out] = await process([asking(("notes", {"text": "x"}), ("calculator", {"expression": "1+1"}))], ctx)
    assert out.tools is not None
    timeout, raised = out.tools.calls
    assert (timeout.status, timeout.code, timeout.cost_micros) == ("error", "tool_timeout", 10)
    assert (raised.code, orjson.loads(raised.content)["message"]) == ("tool_error", "RuntimeError: boom")


async def test_the_step_deadline_comes_from_the_remaining_budget() -> None:
    clock = FakeClock()
    env = asking(("calculator", {"expression": "1+1"}), budget_ms=1_000)
    env.created_at_ns, env.deadline_at_ns = clock.at_ns, clock.at_ns + 1_000_000_000
    clock.advance_ms(995)  # 5 ms left, post-process and audit need more than that
    [out] = await process([env], await context(clock=clock))
    assert out.tools is not None and out.tools.calls[0].code == "tool_deadline"


async def test_an_http_tool_without_a_client_is_a_tool_error() -> None:
    doc = tools_policy()
    http = doc.model_copy(update={"tools": {**doc.tools, "notes": ToolSpec(kind="http", url="http://127.0.0.1:9/")}})
    [out] = await process([asking(("notes", {"text": "x"}))], await context(policy=StaticPolicy(http)))
    assert out.tools is not None and out.tools.calls[0].code == "tool_unavailable"


def test_tool_failure_is_in_the_error_tree() -> None:
    from schemas.errors import TollwayError
    with pytest.raises(TollwayError):
        raise ToolFailure("x", "y")


async def test_the_same_refund_twice_in_one_batch_runs_once() -> None:
    ctx = await context()
    refund = ("issue_refund", {"ticket_id": "T-1001", "amount": 40})
    first, second = await process([asking(refund), asking(refund)], ctx)
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and len(ticket["refunds"]) == 1
    assert first.tools is not None and second.tools is not None
    assert [first.tools.calls[0].replayed, second.tools.calls[0].replayed] == [False, True]
    assert first.tools.calls[0].content == second.tools.calls[0].content


class CountingEffects(MemoryEffectStore):
    """An effect store that notes how many operations run at once (a Redis pool has a bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0

    async def claim(self, key: str) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.001)
        self.now -= 1
        return await super().claim(key)


async def test_a_large_batch_uses_a_bounded_number_of_connections() -> None:
    effects = CountingEffects()
    ctx = await context(effects=effects, max_concurrent_calls=8)
    batch = [asking(("issue_refund", {"ticket_id": "T-1001", "amount": 1}), request_id=f"r{i}") for i in range(100)]
    out = await process(batch, ctx)
    assert all(e.tools is not None and e.tools.calls[0].status == "ok" for e in out)
    assert effects.peak <= 8


async def test_an_effect_in_doubt_is_resent_when_the_tool_honours_its_idempotency_key() -> None:
    doc = tools_policy()
    honours = doc.tools["issue_refund"].model_copy(update={"honours_idempotency_key": True})
    ctx = await context(policy=StaticPolicy(doc.model_copy(update={"tools": {**doc.tools, "issue_refund": honours}})))
    refund = ("issue_refund", {"ticket_id": "T-1001", "amount": 40})
    from workers.tools.effects import effect_key
    key = effect_key("r1", 1, 0, "issue_refund", refund[1])
    # The crashed attempt had reached the ticket desk: its refund is there under the call's key, no result stored.
    await ctx.builtins.run("issue_refund", refund[1], "acme", idempotency_key=key)
    assert isinstance(ctx.effects, MemoryEffectStore)
    ctx.effects.entries[key] = b"pending"
    [out] = await process([asking(refund)], ctx)
    assert out.tools is not None and out.tools.calls[0].status == "ok"
    assert orjson.loads(out.tools.calls[0].content)["refund_id"] == "rf_1_T-1001"
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and len(ticket["refunds"]) == 1  # resent, deduplicated by the desk: once


async def test_a_held_tool_waits_for_its_approval() -> None:
    from schemas.approvals import ApprovalEvent
    from workers.tools.approvals import MemoryApprovals

    class Watched(MemoryApprovals):
        asked = asyncio.Event()

        async def ask(self, pending: ApprovalEvent) -> None:
            await super().ask(pending)
            self.asked.set()

    approvals = Watched()
    ctx = await context(policy=StaticPolicy(tools_policy(approval=["issue_refund"], approval_timeout_ms=5_000)),
                        approvals=approvals)
    refund = ("issue_refund", {"ticket_id": "T-1001", "amount": 40})

    async def operator(state: str, by: str) -> None:
        await approvals.asked.wait()
        approvals.asked.clear()
        [pending] = approvals.pending()
        assert (pending.tool, pending.tenant, pending.arguments) == ("issue_refund", "acme", refund[1])
        approvals.record(ApprovalEvent(approval_id=pending.approval_id, state=state, by=by))

    [[approved], _] = await asyncio.gather(process([asking(refund, request_id="r1")], ctx),
                                           operator("approved", "ana"))
    assert approved.tools is not None and approved.tools.calls[0].status == "ok"
    assert approved.tools.calls[0].decisions[-1].startswith("approved ap_") and "by ana" in \
        approved.tools.calls[0].decisions[-1]
    [[denied], _] = await asyncio.gather(process([asking(refund, request_id="r2")], ctx), operator("denied", "bo"))
    assert denied.tools is not None
    assert (denied.tools.calls[0].status, denied.tools.calls[0].code) == ("denied", "approval_denied")
    ticket = await ctx.builtins.tickets.get("acme", "T-1001")
    assert ticket is not None and len(ticket["refunds"]) == 1  # only the approved call ran


async def test_an_unanswered_approval_ends_as_a_timeout_not_a_stuck_request() -> None:
    from workers.tools.approvals import MemoryApprovals

    ctx = await context(policy=StaticPolicy(tools_policy(approval=["issue_refund"], approval_timeout_ms=30)),
                        approvals=MemoryApprovals())
    [out] = await process([asking(("issue_refund", {"ticket_id": "T-1001", "amount": 40}))], ctx)
    assert out.tools is not None
    assert (out.tools.calls[0].code, out.tools.calls[0].cost_micros) == ("approval_timeout", 0)


async def test_a_task_may_take_at_most_its_tool_steps_over_all_its_requests() -> None:
    from workers.tools.tasks import MemoryTaskSteps

    steps = MemoryTaskSteps()
    ctx = await context(policy=StaticPolicy(tools_policy(max_steps_per_task=2)), task_steps=steps)

    def step(request_id: str) -> Envelope:
        env = asking(("calculator", {"expression": "1+1"}), request_id=request_id)
        env.request.task_id = "job-7"
        return env

    first, second = await process([step("r1"), step("r2")], ctx)
    [again] = await process([step("r1")], ctx)  # a redelivery of r1's step is not a new step
    [third] = await process([step("r3")], ctx)
    assert [e.tools.calls[0].status for e in (first, second, again) if e.tools] == ["ok", "ok", "ok"]
    assert third.tools is not None
    assert (third.tools.calls[0].status, third.tools.calls[0].code) == ("denied", "task_steps_exhausted")
    assert third.tools.calls[0].cost_micros == 0
