"""Tools stage: runs the tool calls a model asked for, governed, costed, and at most once when they have effects.

A request reaches this stage only when the model answered with tool calls (``env.tools.pending``); the model stage
then routed it ``tools → model → …``. Per call, concurrently across the batch:

1. governance (:mod:`workers.tools.governance`): registered, allowed for the tenant, region, JSON Schema, bounds,
   PII in the arguments; at most ``tools.max_calls_per_step`` calls per model turn;
2. the step's deadline: the tool's own ``timeout_ms``, cut to a share of what is left of the request's budget once
   post-process and audit have their shares (the rest is kept for the model's next turn); too little left is a
   ``tool_deadline`` error, not a call that would make the request late;
3. a side-effecting tool claims its effect key first (:mod:`workers.tools.effects`): a redelivered batch reuses the
   stored result instead of running the tool again; a call a crash left in doubt is not run again — unless the tool
   honours the idempotency key it is sent (``honours_idempotency_key``), then it is resent with the same key;
4. execution (a built-in, plain HTTP, or a tool of an MCP server); a timeout, an unreachable tool or a raising one
   is a structured error;
5. the result's checks (size, PII, indirect injection) before the model reads it.

Every call — run, refused or failed — becomes a :class:`~schemas.envelope.ToolCallRecord` on ``env.tools.calls``
(the model reads its ``content`` on the next turn, the audit stage records it, the response costs it); a call never
disappears and never ends the request by itself. The price of a tool is charged whenever it was invoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.approvals import ApprovalEvent
from schemas.envelope import Envelope, ToolCall, ToolCallRecord
from schemas.errors import BackendError, ToolFailure
from schemas.policy import PolicyDocument, TenantPolicy, ToolSpec
from workers.budgets import reserved_for_ms
from workers.context import StageContext
from workers.policy import PolicySource, StaticPolicy
from workers.tools.approvals import ApprovalBook, NoApprovals, approval_id
from workers.tools.builtins import Builtins
from workers.tools.effects import Claim, EffectStore, MemoryEffectStore, arguments_digest, effect_key
from workers.tools.governance import admit, inspect_result
from workers.tools.http import HttpTools, NoHttpTools
from workers.tools.mcp import McpTools, NoMcpTools
from workers.tools.tasks import MemoryTaskSteps, TaskSteps

NAME = "tools"
log = logging.getLogger(__name__)

# Refusals by governance: the call was never run. Every other code is an error of a call that was attempted.
DENIAL_CODES = frozenset({"unknown_tool", "tool_denied", "tool_residency_violation", "invalid_arguments",
                          "argument_out_of_bounds", "pii_blocked", "too_many_tool_calls", "tool_result_blocked",
                          "approval_denied", "approval_timeout", "task_steps_exhausted"})
_AFTER_TOOLS = ("postprocess", "audit")


@dataclass(frozen=True)
class ToolsContext(StageContext):
    policy: PolicySource = field(default_factory=StaticPolicy)
    builtins: Builtins = field(default_factory=Builtins)
    http: HttpTools = field(default_factory=NoHttpTools)
    effects: EffectStore = field(default_factory=MemoryEffectStore)
    mcp: McpTools = field(default_factory=NoMcpTools)
    approvals: ApprovalBook = field(default_factory=NoApprovals)
    task_steps: TaskSteps = field(default_factory=MemoryTaskSteps)
    # Of the budget left once post-process and audit have their shares, what the model's next turn keeps.
    model_keep_share: float = 0.5
    min_call_ms: float = 5.0
    # Calls of one batch that talk to the effect store or a tool at once (a redelivered batch of hundreds of
    # calls otherwise exhausts the Redis pool: "Too many connections", seen in the kill -9 chaos scenario).
    max_concurrent_calls: int = 32


async def process(batch: list[Envelope], ctx: ToolsContext) -> list[Envelope]:
    doc = ctx.policy.current()
    owners: list[Envelope] = []
    work: list[Awaitable[ToolCallRecord]] = []
    effects: dict[str, asyncio.Future[ToolCallRecord]] = {}  # a duplicate in the same batch waits for the first
    slots = asyncio.Semaphore(ctx.max_concurrent_calls)
    for env in batch:
        state = env.tools
        if state is None or not state.pending:
            continue  # nothing asked: the route hands the request back to the model as it is
        tenant = doc.tenant(env.tenant) if doc is not None else None
        calls, state.pending = state.pending, []
        refusal = await _task_refusal(env, tenant, ctx)
        for position, call in enumerate(calls):
            owners.append(env)
            work.append(_refused(call, state.steps, refusal) if refusal is not None else
                        _run_call(env, call, state.steps, position, doc, tenant, ctx, effects, slots))
    records = await asyncio.gather(*work)
    for env, record in zip(owners, records, strict=True):
        assert env.tools is not None
        env.tools.calls.append(record)
        env.tools.cost_micros += record.cost_micros
    return batch


async def _task_refusal(env: Envelope, tenant: TenantPolicy | None, ctx: ToolsContext) -> ToolFailure | None:
    """A step over the task's ``max_steps_per_task`` runs none of its calls (the step is counted once, by its id)."""
    limit = tenant.tools.max_steps_per_task if tenant is not None else None
    task_id = env.request.task_id
    if limit is None or not task_id or env.tools is None:
        return None
    try:
        taken = await ctx.task_steps.count(env.tenant, task_id, f"{env.request_id}:{env.tools.steps}")
    except BackendError as exc:  # governance fails closed
        return ToolFailure("tool_unavailable", f"the task's step count cannot be checked, so no call runs: {exc}")
    if taken > limit:
        return ToolFailure("task_steps_exhausted", f"task {task_id} has taken {taken} tool steps, over its "
                                                   f"{limit}")
    return None


async def _refused(call: ToolCall, step: int, failure: ToolFailure) -> ToolCallRecord:
    status = "denied" if failure.code in DENIAL_CODES else "error"
    return ToolCallRecord(call_id=call.id, name=call.name, step=step, status=status, code=failure.code,
                          arguments_sha256=arguments_digest(call.arguments),
                          content=orjson.dumps({"error": failure.code, "message": str(failure)}).decode(),
                          decisions=[f"{status} {failure.code}"])


def step_timeout_ms(env: Envelope, now_ns: int, spec: ToolSpec, model_keep_share: float) -> float:
    """How long this call may take: its own timeout, or less when the request's budget says so."""
    total_ms = (env.deadline_at_ns - env.created_at_ns) / 1e6
    usable_ms = env.remaining_budget_ms(now_ns) - reserved_for_ms(total_ms, _AFTER_TOOLS)
    return min(float(spec.timeout_ms), usable_ms * (1.0 - model_keep_share))


async def _run_call(env: Envelope, call: ToolCall, step: int, position: int, doc: PolicyDocument | None,
                    tenant: TenantPolicy | None, ctx: ToolsContext,
                    effects: dict[str, asyncio.Future[ToolCallRecord]], slots: asyncio.Semaphore) -> ToolCallRecord:
    started_ns = ctx.clock.now_ns()
    record = ToolCallRecord(call_id=call.id, name=call.name, step=step, status="ok",
                            arguments_sha256=arguments_digest(call.arguments))
    claimed: str | None = None  # the effect key this attempt claimed in the store
    owned: str | None = None  # the effect key this call answers for in the batch
    invoked = False
    spec: ToolSpec | None = None
    try:
        if doc is None or tenant is None:
            raise ToolFailure("tool_denied", "no policy covers this tenant: no tool may run")
        if position >= tenant.tools.max_calls_per_step:
            raise ToolFailure("too_many_tool_calls", f"at most {tenant.tools.max_calls_per_step} tool calls per "
                                                     "model turn")
        admitted = admit(call.name, call.arguments, doc, tenant,
                         env.policy.principal_key_id if env.policy is not None else None)
        spec = admitted.spec
        record.decisions = admitted.decisions
        record.side_effects, record.region = spec.side_effects, spec.region
        record.arguments_sha256 = arguments_digest(admitted.arguments)
        timeout_ms = step_timeout_ms(env, started_ns, spec, ctx.model_keep_share)
        if timeout_ms < ctx.min_call_ms:
            raise ToolFailure("tool_deadline", f"{max(0.0, timeout_ms):.0f} ms of the request's budget is left for "
                                               "this call: not started")
        key = effect_key(env.request_id, step, position, call.name, admitted.arguments)
        if call.name in tenant.tools.approval:
            timeout_ms = await _hold_for_approval(env, call.name, admitted.arguments, record, key, timeout_ms,
                                                  tenant, spec, ctx)
        if spec.side_effects:
            first = effects.get(key)
            if first is not None:  # the same call twice in one batch (a redelivery next to the original)
                return (await first).model_copy(update={"call_id": call.id, "step": step, "replayed": True})
            effects[key] = asyncio.get_running_loop().create_future()
            owned = key
            async with slots:  # never held while waiting for a duplicate's first (no slot waits on a slot)
                replay = await _claim(key, ctx, resend=spec.honours_idempotency_key)
            if replay is not None:
                effects[key].set_result(replay)
                return replay.model_copy(update={"call_id": call.id, "step": step, "replayed": True})
            claimed = key
        invoked = True
        arguments = admitted.arguments
        if spec.tenant_argument is not None:  # whose data a tool reads is the request's, never the model's choice
            arguments = {**arguments, spec.tenant_argument: env.tenant}
        async with slots:
            result = await _execute(spec, call.name, arguments, env.tenant, timeout_ms, key, doc, ctx)
        record.content = inspect_result(result, spec, tenant, record.decisions)
        record.result_sha256 = hashlib.sha256(record.content.encode()).hexdigest()
    except ToolFailure as failure:
        record.status = "denied" if failure.code in DENIAL_CODES else "error"
        record.code = failure.code
        record.content = orjson.dumps({"error": failure.code, "message": str(failure)}).decode()
        record.decisions.append(f"{record.status} {failure.code}")
        if failure.code not in DENIAL_CODES:
            log.info("request %s: tool %s failed: %s: %s", env.request_id, call.name, failure.code, failure)
    record.cost_micros = spec.price_micros if spec is not None and invoked else 0
    record.latency_ms = round((ctx.clock.now_ns() - started_ns) / 1e6, 3)
    if owned is not None and not effects[owned].done():
        effects[owned].set_result(record)  # whatever became of the call, a duplicate in the batch shares it
    if claimed is not None:
        try:
            async with slots:
                await ctx.effects.complete(claimed, record)
        except BackendError as exc:
            # The claim stays "pending": a redelivery answers in doubt rather than running the effect again.
            log.warning("request %s: the result of tool call %s was not stored: %s", env.request_id, call.id, exc)
    return record


async def _hold_for_approval(env: Envelope, name: str, arguments: dict[str, Any], record: ToolCallRecord, key: str,
                             timeout_ms: float, tenant: TenantPolicy, spec: ToolSpec, ctx: ToolsContext) -> float:
    """Wait for an operator's decision; returns the call's timeout from what is left, raises when denied or late."""
    now_ns = ctx.clock.now_ns()
    # The hold may use the budget the call would have had, bounded by the tenant's approval timeout.
    hold_ms = min(float(tenant.tools.approval_timeout_ms),
                  step_timeout_ms(env, now_ns, spec.model_copy(update={"timeout_ms": 3_600_000}),
                                  ctx.model_keep_share) - timeout_ms)
    aid = approval_id(key)
    await ctx.approvals.ask(ApprovalEvent(
        approval_id=aid, state="pending", request_id=env.request_id, tenant=env.tenant, tool=name,
        arguments=arguments, arguments_sha256=record.arguments_sha256, at_ns=now_ns,
        deadline_ns=now_ns + int(max(0.0, hold_ms) * 1e6)))
    record.decisions.append(f"held for approval {aid}")
    decided = await ctx.approvals.wait(aid, max(0.0, hold_ms) / 1000)
    if decided is None:
        raise ToolFailure("approval_timeout", f"approval {aid} was not decided within {max(0.0, hold_ms):.0f} ms; "
                                              "the call did not run")
    if decided.state == "denied":
        raise ToolFailure("approval_denied", f"approval {aid} was denied by {decided.by or 'an operator'}"
                                             + (f": {decided.reason}" if decided.reason else ""))
    record.decisions.append(f"approved {aid} by {decided.by or 'an operator'}")
    left_ms = step_timeout_ms(env, ctx.clock.now_ns(), spec, ctx.model_keep_share)
    if left_ms < ctx.min_call_ms:
        raise ToolFailure("tool_deadline", f"approved, but {max(0.0, left_ms):.0f} ms of the request's budget is "
                                           "left for this call: not started")
    return left_ms


async def _claim(key: str, ctx: ToolsContext, *, resend: bool) -> ToolCallRecord | None:
    """None when this attempt owns the effect; the stored record when it already happened; raises when in doubt —
    unless the tool honours the idempotency key (``resend``): then sending the call again is safe."""
    try:
        claim, stored = await ctx.effects.claim(key)
    except BackendError as exc:
        raise ToolFailure("tool_unavailable", f"the effect store is unreachable, so the call was not run: {exc}") \
            from exc
    if claim is Claim.DONE:
        assert stored is not None
        return stored
    if claim is Claim.IN_DOUBT and resend:
        log.info("effect %s was left in doubt; sent again with the same idempotency key", key)
        return None
    if claim is Claim.IN_DOUBT:
        raise ToolFailure("tool_effect_in_doubt", f"an earlier attempt of this call started and left no result (effect "
                                                  f"key {key}); it is not run again")
    return None


async def _execute(spec: ToolSpec, name: str, arguments: dict[str, Any], tenant: str, timeout_ms: float,
                   key: str, doc: PolicyDocument, ctx: ToolsContext) -> Any:
    try:
        if spec.kind == "mcp":
            assert spec.server is not None  # validated by the policy document
            return await asyncio.wait_for(
                ctx.mcp.run(spec.server, doc.mcp_servers[spec.server], spec.tool or name, arguments,
                            timeout_s=timeout_ms / 1000), timeout_ms / 1000)
        if spec.kind == "http":
            return await asyncio.wait_for(
                ctx.http.run(spec, arguments, timeout_s=timeout_ms / 1000,
                             idempotency_key=key if spec.side_effects else None), timeout_ms / 1000)
        return await asyncio.wait_for(ctx.builtins.run(spec.builtin or name, arguments, tenant, idempotency_key=key),
                                      timeout_ms / 1000)
    except TimeoutError as exc:
        raise ToolFailure("tool_timeout", f"no result within {timeout_ms:.0f} ms") from exc
    except ToolFailure:
        raise
    except Exception as exc:  # a tool that raises is a tool error, never a failed batch
        raise ToolFailure("tool_error", f"{type(exc).__name__}: {exc}"[:500]) from exc
