"""The router: which model serves a request, and why.

Per request, in this order: the quality tier (the request's, else the tenant's from policy, else the auto tier from
:mod:`workers.routing.auto`: the calibrated router, or the heuristic :mod:`workers.routing.difficulty`); the models
policy allows (``allowed_models`` / ``allowed_regions``; none set = all); models at or above the tier whose context
window fits; whose backend's circuit is not open; that are expected to finish within the remaining latency budget;
cheapest expected cost first, and a model at capacity moves to the back of the line. Every model passed over is
recorded with its reason on ``env.model.routing``.

When no model of the tier fits the budget, a faster lower tier is preferred to failing ("degraded"), unless the
tier was fixed by policy; when nothing fits at all the request ends ``deadline_exceeded`` with the fastest
model's expected time in the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from schemas.envelope import Envelope, Usage
from workers.backends.base import context_prompt
from workers.context import Clock
from workers.routing import cascade
from workers.routing.auto import AutoTier, auto_tier
from workers.routing.catalog import QUALITY_TIERS, ModelCatalog, ModelSpec
from workers.routing.online import DEFAULT_TIER_COST, OnlineRouter
from workers.routing.tokens import count_message_tokens, count_tokens


# ---------------------------------------------------------------------------------------------------- breaker
@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls; after ``cooldown_ms`` one trial call is let
    through (half-open): its success closes the circuit, its failure opens it again."""

    failure_threshold: int = 3
    cooldown_ms: float = 5_000
    consecutive_failures: int = 0
    opened_at_ns: int | None = None
    trial_in_flight: bool = False

    def state(self, now_ns: int) -> str:
        if self.opened_at_ns is None:
            return "closed"
        return "half_open" if now_ns - self.opened_at_ns >= self.cooldown_ms * 1e6 else "open"

    def allows(self, now_ns: int) -> bool:
        state = self.state(now_ns)
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def before_call(self, now_ns: int) -> None:
        if self.state(now_ns) == "half_open":
            self.trial_in_flight = True

    def record_success(self) -> None:
        self.consecutive_failures, self.opened_at_ns, self.trial_in_flight = 0, None, False

    def record_failure(self, now_ns: int) -> None:
        self.consecutive_failures += 1
        if self.trial_in_flight or self.consecutive_failures >= self.failure_threshold:
            self.opened_at_ns = now_ns
        self.trial_in_flight = False


@dataclass
class BreakerBoard:
    """One breaker per backend name, created on first use."""

    failure_threshold: int = 3
    cooldown_ms: float = 5_000
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def __call__(self, backend: str) -> CircuitBreaker:
        breaker = self.breakers.get(backend)
        if breaker is None:
            breaker = self.breakers[backend] = CircuitBreaker(self.failure_threshold, self.cooldown_ms)
        return breaker


# ---------------------------------------------------------------------------------------------------- capacity
class CapacityGate:
    """Counts a model's requests in flight; ``acquire(n)`` waits until n more fit (a call larger than the whole
    capacity runs alone rather than never)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight + n <= self.capacity or self.in_flight == 0)
            self.in_flight += n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.in_flight -= n
            self._changed.notify_all()


@dataclass
class GateBoard:
    gates: dict[str, CapacityGate] = field(default_factory=dict)

    def __call__(self, model: ModelSpec) -> CapacityGate:
        gate = self.gates.get(model.name)
        if gate is None:
            gate = self.gates[model.name] = CapacityGate(model.capacity)
        return gate

    def in_flight(self, name: str) -> int:
        gate = self.gates.get(name)
        return gate.in_flight if gate else 0


# ---------------------------------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class RouteDecision:
    candidates: tuple[ModelSpec, ...]  # the choice first, then the fallback chain
    tier: str | None
    tier_source: str
    reasons: tuple[str, ...]
    input_tokens: int
    expected_output_tokens: int
    failure_code: str | None = None
    failure_message: str = ""
    auto: AutoTier | None = None  # when the auto tier decided: its features and learnt probabilities
    escalate_to: tuple[ModelSpec, ...] = ()  # a verified cascade: served by these when the answer fails verification
    cascade: cascade.CascadePlan | None = None

    @property
    def chosen(self) -> ModelSpec | None:
        return self.candidates[0] if self.candidates else None

    def expected_ms(self, model: ModelSpec) -> float:
        return model.latency.expected_ms(self.input_tokens, self.expected_output_tokens)

    def expected_cost_micros(self, model: ModelSpec) -> int:
        return model.cost_micros(Usage(input_tokens=self.input_tokens, output_tokens=self.expected_output_tokens))


def prompt_tokens(env: Envelope) -> int:
    """Prompt tokens as a chat backend will see them: the messages plus the retrieved context."""
    tokens = count_message_tokens(env.request.messages)
    if env.retrieval and env.retrieval.passages:
        tokens += count_tokens(context_prompt(env.retrieval.passages)) + 5
    return tokens


def required_tier(env: Envelope, online: OnlineRouter | None = None) -> tuple[str | None, str, str]:
    """(tier, source, reason): the request's tier, else the tenant's (policy), else the auto estimate."""
    tier, source, reason, _auto = _required_tier(env, online)
    return tier, source, reason


def _required_tier(env: Envelope, online: OnlineRouter | None) -> tuple[str | None, str, str, AutoTier | None]:
    if env.request.quality_tier and env.request.quality_tier != "auto":
        return env.request.quality_tier, "request", f"tier {env.request.quality_tier} (request)", None
    if env.policy and env.policy.quality_tier and env.policy.quality_tier != "auto":
        return env.policy.quality_tier, "policy", f"tier {env.policy.quality_tier} (tenant policy)", None
    auto = auto_tier(env, online=online)
    return auto.tier, "auto", f"tier {auto.explain()}", auto


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


def route(env: Envelope, catalog: ModelCatalog, now_ns: int, *,
          breaker_allows: Callable[[str, int], bool] | None = None,
          load: Callable[[str], int] | None = None, online: OnlineRouter | None = None,
          cascade_below: float | None = None, verify_served: bool = False) -> RouteDecision:
    """Choose the model for ``env``. ``breaker_allows(backend, now_ns)`` and ``load(model) -> requests in flight
    or planned`` come from the stage; without them every backend is healthy and idle. ``online``: the learning
    router decides the auto tier. ``cascade_below``: an auto tier whose learnt P(needs it) is below this is served
    one tier lower first, with the tier's models as ``escalate_to`` (:mod:`workers.routing.cascade`);
    ``verify_served``: an auto tier below large that is not cascaded is verified, the next tier's models its
    ``escalate_to``."""
    tier, source, tier_reason, auto = _required_tier(env, online)
    input_tokens = prompt_tokens(env)  # once per request, whichever tiers are tried
    decision = _route_tier(env, catalog, now_ns, tier, source, tier_reason, breaker_allows, load, input_tokens,
                           auto)
    probabilities = auto.probabilities if auto is not None else None
    if (cascade_below is None or probabilities is None or tier is None or decision.chosen is None
            or (auto is not None and auto.online is not None and auto.online.probe)
            or (env.request.model and env.request.model != "auto")):
        return decision
    step = cascade.plan(tier, *probabilities, DEFAULT_TIER_COST, uncertain_below=cascade_below,
                        verify_served=verify_served)
    if step is None:
        return decision
    if step.first_tier == tier:  # verified where it is served: the next tier up is the escalation
        up = _route_tier(env, catalog, now_ns, step.then_tier, source, tier_reason, breaker_allows, load,
                         input_tokens)
        escalate = tuple(m for m in up.candidates if m.tier_rank > decision.chosen.tier_rank)
        if not escalate:
            return decision
        return replace(decision, escalate_to=escalate, cascade=step,
                       reasons=(*decision.reasons, f"cascade: {step.reason}; escalated to "
                                f"{', '.join(m.name for m in escalate)} when the budget left covers it"))
    cheap = _route_tier(env, catalog, now_ns, step.first_tier, source, f"{tier_reason}; {step.reason}",
                        breaker_allows, load, input_tokens)
    if cheap.chosen is None or cheap.chosen.tier_rank >= decision.chosen.tier_rank:
        return decision  # nothing cheaper fits (budget, policy): serve the tier outright
    escalate = tuple(m for m in decision.candidates if m.tier_rank > cheap.chosen.tier_rank)
    reasons = (*cheap.reasons, f"cascade: {cheap.chosen.name} first (fallbacks below {tier} only), escalated to "
                               f"{', '.join(m.name for m in escalate)} when the evaluators fail its answer and the "
                               "budget left covers it")
    return replace(cheap, auto=auto, tier=tier, escalate_to=escalate, cascade=step, reasons=reasons,
                   candidates=tuple(m for m in cheap.candidates if m.tier_rank < decision.chosen.tier_rank))


def _route_tier(env: Envelope, catalog: ModelCatalog, now_ns: int, tier: str | None, source: str, tier_reason: str,
                breaker_allows: Callable[[str, int], bool] | None,
                load: Callable[[str], int] | None, input_tokens: int,
                auto: AutoTier | None = None) -> RouteDecision:
    reasons = [tier_reason]
    if tier is not None and tier not in QUALITY_TIERS:
        return RouteDecision((), tier, source, (*reasons, f"unknown tier {tier!r}"), 0, 0, "no_eligible_model",
                             f"quality tier {tier!r} is not one of {', '.join(QUALITY_TIERS)}", auto)
    max_tokens = env.request.params.max_tokens
    output_tokens = min(max_tokens, catalog.expected_output_tokens)
    remaining_ms = env.remaining_budget_ms(now_ns)
    policy = env.policy
    models = list(catalog.models)
    if env.request.model and env.request.model != "auto":
        if env.request.model not in catalog:
            return RouteDecision((), tier, source, (*reasons, f"unknown model {env.request.model!r}"), input_tokens,
                                 output_tokens, "no_eligible_model",
                                 f"model {env.request.model!r} is not in the catalog", auto)
        models = [catalog.get(env.request.model)]
        reasons.append(f"model {env.request.model} requested")
        tier = None  # an explicitly named model is served at its own tier
    rank = QUALITY_TIERS.index(tier) if tier else 0
    fits: list[ModelSpec] = []
    fit_ms: dict[str, float] = {}
    below_tier: list[ModelSpec] = []
    too_slow: list[tuple[ModelSpec, float]] = []
    allowed_models = policy.allowed_models if policy else None
    allowed_regions = policy.allowed_regions if policy else None
    prompt_and_reply = input_tokens + max_tokens
    for model in models:
        name = model.name
        if allowed_models and name not in allowed_models:
            reasons.append(f"{name}: not allowed by policy")
            continue
        if allowed_regions and model.region not in allowed_regions:
            reasons.append(f"{name}: region {model.region} not allowed")
            continue
        if prompt_and_reply > model.context_window:
            reasons.append(f"{name}: {input_tokens}+{max_tokens} tokens exceed its {model.context_window} window")
            continue
        if breaker_allows is not None and not breaker_allows(model.backend, now_ns):
            reasons.append(f"{name}: backend {model.backend} circuit open")
            continue
        expected_ms = model.latency.expected_ms(input_tokens, output_tokens)
        if expected_ms > remaining_ms:
            too_slow.append((model, expected_ms))
            continue
        if QUALITY_TIERS.index(model.quality_tier) < rank:  # ``model.tier_rank`` without the property call
            below_tier.append(model)
            continue
        fits.append(model)
        fit_ms[name] = expected_ms
    for model, expected_ms in too_slow:
        if model.tier_rank >= rank:
            reasons.append(f"{model.name}: expected {_ms(expected_ms)} > {_ms(remaining_ms)} left")
    if below_tier:
        reasons.append(f"below tier {tier}: {', '.join(m.name for m in below_tier)}")
    if not fits and below_tier and any(m.tier_rank >= rank for m, _ in too_slow) and source != "policy":
        best_rank = max(m.tier_rank for m in below_tier)
        fits = [m for m in below_tier if m.tier_rank == best_rank]
        reasons.append(f"degraded to {QUALITY_TIERS[best_rank]}: no {tier} model finishes in {_ms(remaining_ms)}")
    if not fits:
        if too_slow:
            fastest, fastest_ms = min(too_slow, key=lambda pair: pair[1])
            return RouteDecision((), tier, source, tuple(reasons), input_tokens, output_tokens, "deadline_exceeded",
                                 f"{_ms(max(0.0, remaining_ms))} of budget left cannot cover any eligible model: the "
                                 f"fastest, {fastest.name}, needs ~{_ms(fastest_ms)}", auto)
        return RouteDecision((), tier, source, tuple(reasons), input_tokens, output_tokens, "no_eligible_model",
                             "no model in the catalog satisfies the policy, tier and context window: "
                             + "; ".join(reasons[1:]), auto)

    # One sort key per model, each part computed once: at capacity (``load`` is read once per model), expected
    # cost, expected time, name — and the model after it: the names are distinct, so sorting these tuples orders
    # the models as sorting them by key would, and never compares two models.
    keyed: list[tuple[bool, int, float, str, ModelSpec]] = []
    for model in fits:
        name = model.name
        busy = load is not None and load(name) >= model.capacity
        prices = model.prices
        cost = prices.input_micros_per_mtok * input_tokens + prices.output_micros_per_mtok * output_tokens
        kept_ms = fit_ms.get(name)  # None for a degraded fit (below the tier): its time was not kept
        model_ms = model.latency.expected_ms(input_tokens, output_tokens) if kept_ms is None else kept_ms
        keyed.append((busy, cost, model_ms, name, model))
    keyed.sort()
    ordered = [key[4] for key in keyed]
    chosen = ordered[0]
    for key in keyed:
        if key[0]:
            reasons.append(f"{key[3]}: at capacity ({key[4].capacity} in flight)")
    reasons.append(f"chose {chosen.name} ({chosen.region}, {chosen.quality_tier}): cheapest eligible, "
                   f"~{_cost_micros(chosen, input_tokens, output_tokens)} µ$ / ~{_ms(keyed[0][2])}; "
                   f"fallbacks: {', '.join(m.name for m in ordered[1:]) or 'none'}")
    return RouteDecision(tuple(ordered), tier, source, tuple(reasons), input_tokens, output_tokens, auto=auto)


def _cost_micros(model: ModelSpec, input_tokens: int, output_tokens: int) -> int:
    """``model.cost_micros(Usage(input_tokens, output_tokens))`` without the Usage: no cached tokens, so the
    uncached input is all of it (the same integers, rounded half up once)."""
    numerator = input_tokens * model.prices.input_micros_per_mtok + output_tokens * model.prices.output_micros_per_mtok
    return (numerator + 500_000) // 1_000_000


@dataclass(frozen=True)
class ExpectedCost:
    model: str | None
    cost_micros: int


def expected_cost_for(env: Envelope, catalog: ModelCatalog, clock: Clock | None = None) -> ExpectedCost:
    """What the router would pick for ``env`` now and its expected cost: for the cache stage's "money saved" and
    the policy stage's budget estimate (``cost_micros`` is 0 when no model would serve it)."""
    now_ns = clock.now_ns() if clock else env.created_at_ns
    decision = route(env, catalog, now_ns)
    chosen = decision.chosen
    return ExpectedCost(chosen.name if chosen else None, decision.expected_cost_micros(chosen) if chosen else 0)
