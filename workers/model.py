"""Model stage: routes each request to a model, calls it in micro-batches, falls back, and accounts for it.

For a batch from the stream: route every request (:mod:`workers.routing.router`), group the requests by chosen model,
split each group into calls of at most ``max_batch`` requests (one call serves them all on a batch-capable
backend), hold a capacity slot per request in flight, and run the calls concurrently. A failed call or request
moves to the next candidate in its fallback chain (a 429 with Retry-After retries the same model once when the
wait still fits the deadline); nothing is retried once the remaining budget cannot cover the candidate's expected
time. Each backend has a circuit breaker; an open circuit is skipped by the router and by the fallback.

Accounting on ``env.model``: the model, backend, region, tier, the router's reasons, attempts, token usage and the
exact cost in integer micro-dollars (:meth:`workers.routing.catalog.ModelSpec.cost_micros`, rounded half up once).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.envelope import Envelope, ModelResult, Status, Usage
from schemas.errors import BackendError, RateLimitedByBackend
from workers.backends import metrics
from workers.backends.base import ModelBackend, ModelCall, ModelReply
from workers.backends.local import LocalBackend
from workers.budgets import reserved_for_ms
from workers.context import StageContext
from workers.routing import cascade
from workers.routing.auto import route_record
from workers.routing.catalog import ModelCatalog, ModelSpec, get_catalog
from workers.routing.online import OnlineRouter
from workers.routing.router import BreakerBoard, GateBoard, route
from workers.tools import loop as tools

NAME = "model"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelContext(StageContext):
    catalog: ModelCatalog = field(default_factory=get_catalog)
    backends: Mapping[str, ModelBackend] = field(default_factory=lambda: {"local": LocalBackend(latency_scale=0)})
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    gates: GateBoard = field(default_factory=GateBoard)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    micro_batching: bool = True
    max_attempts: int = 3
    # An attempt's timeout follows the request's remaining budget (:func:`attempt_timeout_ms`); the catalog's
    # declared latency only decides how much of it to keep for a fallback: ``timeout_factor`` × the next
    # candidate's expected time (at least ``min_timeout_ms``).
    timeout_factor: float = 3.0
    min_timeout_ms: float = 250.0
    # The learning router (None: the calibrated router or the heuristic decides the auto tier), and the verified
    # cascade (None: off; else the learnt P(needs the tier) below which the tier below is tried first).
    online: OnlineRouter | None = None
    cascade_below: float | None = None
    cascade_verify_served: bool = False  # verify (and escalate) answers served below large without a cascade too
    cascade_self_consistency: bool = False  # the answer being verified is sampled twice; the samples must agree
    eval_grounded_min: float = 0.8


@dataclass
class _Pending:
    env: Envelope
    candidates: list[ModelSpec]
    input_tokens: int
    output_tokens: int
    started_ns: int
    reasons: list[str]
    prior_usage: Usage = field(default_factory=Usage)  # earlier turns of an agent loop
    prior_cost_micros: int = 0
    attempts: int = 0
    retried_after_429: set[str] = field(default_factory=set)
    not_before_ns: int = 0
    escalate_to: list[ModelSpec] = field(default_factory=list)  # a cascade's next tier, until it is verified
    cascade_cost_micros: int = 0
    cascade_failed_tier: str | None = None
    cascade_model: str | None = None

    @property
    def model(self) -> ModelSpec:
        return self.candidates[0]

    def expected_ms(self, model: ModelSpec) -> float:
        return model.latency.expected_ms(self.input_tokens, self.output_tokens)


async def process(batch: list[Envelope], ctx: ModelContext) -> list[Envelope]:
    mctx = ctx
    now_ns = mctx.clock.now_ns()
    planned: dict[str, int] = defaultdict(int)
    pending: list[_Pending] = []
    # Routing the batch changes no breaker and reads them all at ``now_ns``: each backend's answer is read once.
    allows: dict[str, bool] = {}

    def breaker_allows(backend: str, at: int) -> bool:
        allowed = allows.get(backend) if at == now_ns else None
        if allowed is None:
            allowed = mctx.breakers(backend).allows(at)
            if at == now_ns:
                allows[backend] = allowed
        return allowed

    def load(name: str) -> int:
        return mctx.gates.in_flight(name) + planned[name]

    for env in batch:
        if env.cache is not None and env.cache.outcome == "hit" and env.answer is not None:
            continue  # answered from the cache: no model call, no cost
        decision = route(env, mctx.catalog, now_ns, breaker_allows=breaker_allows, load=load,
                         online=mctx.online, cascade_below=mctx.cascade_below,
                         verify_served=mctx.cascade_verify_served)
        # A later turn of an agent loop: the turns before it stay accounted for (the model's usage and cost add up).
        prior = env.model if env.tools is not None and env.tools.calls and env.model is not None else None
        env.model = ModelResult(quality_tier=decision.tier, routing=list(decision.reasons),
                                usage=prior.usage if prior else Usage(), cost_micros=prior.cost_micros if prior else 0,
                                step_cost_micros=list(prior.step_cost_micros) if prior else [],
                                learn=route_record(decision.auto, env) if decision.auto is not None else None)
        if decision.chosen is None:
            status = Status.DEADLINE_EXCEEDED if decision.failure_code == "deadline_exceeded" else Status.FAILED
            env.finish(status, code=decision.failure_code or "no_eligible_model", message=decision.failure_message,
                       stage=NAME)
            continue
        planned[decision.chosen.name] += 1
        pending.append(_Pending(env, list(decision.candidates), decision.input_tokens,
                                decision.expected_output_tokens, now_ns, env.model.routing,
                                prior_usage=env.model.usage, prior_cost_micros=env.model.cost_micros,
                                escalate_to=list(decision.escalate_to)))
    while pending:
        by_model: dict[str, list[_Pending]] = defaultdict(list)
        for item in pending:
            by_model[item.model.name].append(item)
        calls: list[list[_Pending]] = []
        for items in by_model.values():
            size = min(items[0].model.max_batch, items[0].model.capacity) if mctx.micro_batching else 1
            calls += [items[i:i + size] for i in range(0, len(items), size)]
        outcomes = await asyncio.gather(*(_call(chunk, mctx) for chunk in calls))
        pending = []
        for chunk, replies in zip(calls, outcomes, strict=True):
            for item, reply in zip(chunk, replies, strict=True):
                if reply.error is None:
                    if item.escalate_to and _escalate(item, reply, mctx):
                        pending.append(item)
                        continue
                    _settle(item, reply, mctx)
                elif _next_attempt(item, reply.error, mctx):
                    pending.append(item)
    return batch


async def _call(chunk: list[_Pending], ctx: ModelContext) -> list[ModelReply]:
    """One backend call for requests that chose the same model; any failure comes back as per-request errors."""
    spec = chunk[0].model
    backend = ctx.backends.get(spec.backend)
    if backend is None:
        error = BackendError(f"backend {spec.backend!r} of model {spec.name} is not configured", retryable=False)
        return [ModelReply(item.env.request_id, error=error) for item in chunk]
    gate = ctx.gates(spec)
    await gate.acquire(len(chunk))
    try:
        wait_ns = max(item.not_before_ns for item in chunk) - ctx.clock.now_ns()
        if wait_ns > 0:
            await ctx.sleep(wait_ns / 1e9)
        now_ns = ctx.clock.now_ns()
        breaker = ctx.breakers(spec.backend)
        if not breaker.allows(now_ns):
            error = BackendError(f"backend {spec.backend} circuit open", retryable=True)
            return [ModelReply(item.env.request_id, error=error) for item in chunk]
        timeout_ms = min(attempt_timeout_ms(item, now_ns, ctx) for item in chunk)
        requests = [ModelCall(request_id=item.env.request_id, model=spec.served_as, messages=item.env.request.messages,
                              passages=item.env.retrieval.passages if item.env.retrieval else [],
                              max_tokens=item.env.request.params.max_tokens,
                              temperature=_temperature(item, ctx), timeout_s=timeout_ms / 1000,
                              latency=spec.latency,
                              history=item.env.retrieval.session_turns if item.env.retrieval else [],
                              **tools.offer(item.env), **_sampling(item, ctx)) for item in chunk]
        for item in chunk:
            item.attempts += 1
        breaker.before_call(now_ns)
        try:
            with metrics.CALL_SECONDS.labels(spec.name).time():
                replies = await asyncio.wait_for(backend.complete(requests), timeout_ms / 1000)
        except TimeoutError:
            breaker.record_failure(ctx.clock.now_ns())
            metrics.CALLS.labels(spec.name, "timeout").inc(len(chunk))
            error = BackendError(f"{spec.name} timed out after {timeout_ms:.0f} ms")
            return [ModelReply(item.env.request_id, error=error) for item in chunk]
        except BackendError as exc:
            breaker.record_failure(ctx.clock.now_ns())
            metrics.CALLS.labels(spec.name, "error").inc(len(chunk))
            return [ModelReply(item.env.request_id, error=exc) for item in chunk]
        ok = sum(reply.ok for reply in replies)
        metrics.CALLS.labels(spec.name, "ok").inc(ok)
        metrics.CALLS.labels(spec.name, "error").inc(len(replies) - ok)
        if len(replies) != len(chunk):
            breaker.record_failure(ctx.clock.now_ns())
            error = BackendError(f"backend {spec.backend} returned {len(replies)} replies for {len(chunk)} requests")
            return [ModelReply(item.env.request_id, error=error) for item in chunk]
        if any(reply.ok for reply in replies):
            breaker.record_success()
        else:
            breaker.record_failure(ctx.clock.now_ns())
        return replies
    finally:
        await gate.release(len(chunk))


def _sampling(item: _Pending, ctx: ModelContext) -> dict[str, Any]:
    """A cascade's answer awaiting verification with self-consistency on: two samples (a seed from the request id,
    temperature at least 0.7 so the samples can disagree); anything else: one, as asked."""
    if not (ctx.cascade_self_consistency and item.escalate_to):
        return {}
    seed = int.from_bytes(hashlib.blake2b(item.env.request_id.encode(), digest_size=4).digest(), "big")
    return {"samples": 2, "seed": seed}


def _temperature(item: _Pending, ctx: ModelContext) -> float:
    asked = item.env.request.params.temperature
    return max(asked, 0.7) if ctx.cascade_self_consistency and item.escalate_to else asked


def attempt_timeout_ms(item: _Pending, now_ns: int, ctx: ModelContext) -> float:
    """How long this attempt may take: what is left of the request's budget, minus what the stages after the model
    need (their shares, :mod:`workers.budgets`), minus — when a fallback is possible and the current model still
    gets ``timeout_factor`` × its expected time — what the next candidate would need. Never under
    ``min_timeout_ms`` while the deadline allows, never past the deadline."""
    env, spec = item.env, item.model
    remaining_ms = env.remaining_budget_ms(now_ns)
    usable_ms = remaining_ms - _reserved_ms(env)
    own_floor_ms = max(ctx.min_timeout_ms, ctx.timeout_factor * item.expected_ms(spec))
    for candidate in item.candidates[1:]:
        if ctx.breakers(candidate.backend).allows(now_ns):
            keep_ms = max(ctx.min_timeout_ms, ctx.timeout_factor * item.expected_ms(candidate))
            if usable_ms - keep_ms >= own_floor_ms:
                usable_ms -= keep_ms
            break
    return max(0.0, min(remaining_ms, max(usable_ms, ctx.min_timeout_ms)))


def _reserved_ms(env: Envelope) -> float:
    """What the stages after the model on ``env``'s route need of its whole budget (created → deadline)."""
    return _reserved_after_model_ms((env.deadline_at_ns - env.created_at_ns) / 1e6, tuple(env.route))


@functools.lru_cache(maxsize=1024)
def _reserved_after_model_ms(total_ms: float, route: tuple[str, ...]) -> float:
    """What the stages after the model on ``route`` need of a ``total_ms`` budget (:func:`reserved_for_ms`), once
    per budget and route: requests of a tier share both."""
    ahead = route[route.index(NAME) + 1:] if NAME in route else route
    return reserved_for_ms(total_ms, ahead)


def _escalate(item: _Pending, reply: ModelReply, ctx: ModelContext) -> bool:
    """A cascade's cheaper answer is in: verify it; on failure, and when the budget left covers the next tier,
    pay for the cheaper call and move to the next tier (True). False: settle this answer."""
    env, spec = item.env, item.model
    escalate_to, item.escalate_to = item.escalate_to, []
    if reply.tool_calls:
        return False  # an agent loop's turn: its tools run, the loop is not judged mid-way
    second = reply.alternatives[0] if reply.alternatives else None
    verdict = cascade.verify(env, reply.text, grounded_min=ctx.eval_grounded_min, second_answer=second)
    if second is not None:
        item.reasons.append(f"cascade: self-consistency of {spec.name}'s 2 samples (both billed): agreement "
                            f"{cascade.consistency(reply.text, second):.2f} (≥ {cascade.DEFAULT_CONSISTENCY_MIN} "
                            "needed)")
    if verdict.passed:
        item.reasons.append(f"cascade: {spec.name}'s answer {verdict.explain()}; not escalated")
        return False
    now_ns = ctx.clock.now_ns()
    target = escalate_to[0]
    reserved_ms = _reserved_ms(env)
    remaining_ms = env.remaining_budget_ms(now_ns)
    if not cascade.may_escalate(remaining_ms, reserved_ms, item.expected_ms(target)):
        item.reasons.append(f"cascade: {spec.name}'s answer {verdict.explain()}, but {remaining_ms:.0f} ms left "
                            f"cannot cover {target.name} (~{item.expected_ms(target):.0f} ms): served as is")
        return False
    first_cost = spec.cost_micros(reply.usage)
    item.prior_usage = item.prior_usage + reply.usage
    item.prior_cost_micros += first_cost
    item.cascade_cost_micros += first_cost
    item.cascade_failed_tier = spec.quality_tier
    item.cascade_model = spec.name
    item.candidates = list(escalate_to)
    item.reasons.append(f"cascade: {spec.name}'s answer {verdict.explain()} ({first_cost} µ$ paid); escalated "
                        f"to {target.name}")
    metrics.FALLBACKS.labels(spec.name, target.name).inc()
    return True


def _settle(item: _Pending, reply: ModelReply, ctx: ModelContext) -> None:
    spec, env = item.model, item.env
    env.answer = reply.text
    turn_cost = spec.cost_micros(reply.usage)
    # An agent loop keeps each model turn's cost apart (the cost per step of a task); other requests have one turn.
    steps = [*env.model.step_cost_micros, turn_cost] if env.tools is not None and env.model is not None else []
    learn = env.model.learn if env.model is not None else None
    if learn is not None:  # what the learner hears about is the tier that answered (a cascade, a degradation)
        learn = learn.model_copy(update={"tier": spec.quality_tier, "cascade_failed_tier": item.cascade_failed_tier})
    env.model = ModelResult(model=spec.name, backend=spec.backend, region=spec.region, quality_tier=spec.quality_tier,
                            routing=item.reasons, attempts=item.attempts, usage=item.prior_usage + reply.usage,
                            cost_micros=item.prior_cost_micros + turn_cost, step_cost_micros=steps,
                            latency_ms=round((ctx.clock.now_ns() - item.started_ns) / 1e6, 3), learn=learn,
                            cascade_cost_micros=item.cascade_cost_micros, cascade_model=item.cascade_model)
    if reply.tool_calls:
        tools.ask(env, reply.tool_calls, stage=NAME)


def _next_attempt(item: _Pending, error: BackendError, ctx: ModelContext) -> bool:
    """Decide what a failed request does next; False when it has been given its terminal outcome."""
    now_ns = ctx.clock.now_ns()
    env, failed = item.env, item.model
    remaining_ms = env.remaining_budget_ms(now_ns)
    item.reasons.append(f"attempt {item.attempts} on {failed.name} failed: {error}")
    if env.model is not None:
        env.model.attempts = item.attempts
    budget_blocked = False
    if item.attempts < ctx.max_attempts:
        retry_after = error.retry_after_s if isinstance(error, RateLimitedByBackend) else None
        if (retry_after is not None and failed.name not in item.retried_after_429
                and retry_after * 1000 + item.expected_ms(failed) <= remaining_ms):
            item.retried_after_429.add(failed.name)
            item.not_before_ns = now_ns + int(retry_after * 1e9)
            item.reasons.append(f"retrying {failed.name} after its Retry-After of {retry_after:g} s")
            return True
        item.not_before_ns = 0
        rest = item.candidates[1:]
        while rest:
            candidate = rest.pop(0)
            if not ctx.breakers(candidate.backend).allows(now_ns):
                item.reasons.append(f"{candidate.name}: backend {candidate.backend} circuit open")
            elif item.expected_ms(candidate) > remaining_ms:
                budget_blocked = True
                item.reasons.append(f"{candidate.name}: expected {item.expected_ms(candidate):.0f} ms > "
                                    f"{remaining_ms:.0f} ms left")
            else:
                item.candidates = [candidate, *rest]
                item.reasons.append(f"fallback to {candidate.name}")
                metrics.FALLBACKS.labels(failed.name, candidate.name).inc()
                return True
    item.candidates = item.candidates[:1]
    if remaining_ms <= 0 or budget_blocked:
        env.finish(Status.DEADLINE_EXCEEDED, code="deadline_exceeded", stage=NAME,
                   message=f"{failed.name} failed ({error}) and {max(0.0, remaining_ms):.0f} ms of budget left "
                           "cannot cover another attempt")
    else:
        env.finish(Status.FAILED, code="model_error", stage=NAME,
                   message=f"every eligible model failed after {item.attempts} attempt(s); last: {error}",
                   retry_after_s=error.retry_after_s if isinstance(error, RateLimitedByBackend) else None)
    log.warning("request %s: model stage gave up after %d attempt(s): %s", env.request_id, item.attempts, error)
    return False
