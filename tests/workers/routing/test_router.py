from __future__ import annotations

from collections.abc import Callable

from schemas.envelope import Envelope, Message, PolicyDecision
from workers.context import FakeClock
from workers.routing.catalog import load_catalog
from workers.routing.router import CircuitBreaker, expected_cost_for, route

CATALOG = load_catalog()
NOW = 1_700_000_000_000_000_000
MakeEnvelope = Callable[..., Envelope]


def at(env: Envelope) -> int:
    return env.created_at_ns


def test_no_policy_picks_the_cheapest_model_of_the_auto_tier(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("What is the refund policy?")
    decision = route(env, CATALOG, at(env))
    assert decision.chosen is not None and decision.chosen.name == "nano-us"
    assert decision.reasons[0].startswith("tier auto small")
    assert decision.reasons[-1].startswith("chose nano-us")
    assert [m.name for m in decision.candidates][:3] == ["nano-us", "lite-us", "lite-eu"]


def test_request_tier_then_policy_tier_then_auto(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi", quality_tier="large")
    env.policy = PolicyDecision(quality_tier="medium")
    assert route(env, CATALOG, at(env)).chosen.name == "max-us"  # type: ignore[union-attr]
    env.request.quality_tier = None
    decision = route(env, CATALOG, at(env))
    assert decision.chosen.name == "core-us" and decision.tier_source == "policy"  # type: ignore[union-attr]


def test_policy_models_and_regions_are_respected_and_explained(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    env.policy = PolicyDecision(allowed_regions=["eu"])
    decision = route(env, CATALOG, at(env))
    assert decision.chosen.name == "lite-eu"  # type: ignore[union-attr]
    assert "nano-us: region us not allowed" in decision.reasons
    assert all(m.region == "eu" for m in decision.candidates)
    env.policy = PolicyDecision(allowed_models=["core-eu", "max-eu"])
    decision = route(env, CATALOG, at(env))
    assert decision.chosen.name == "core-eu" and "lite-us: not allowed by policy" in decision.reasons  # type: ignore


def test_nothing_allowed_is_no_eligible_model(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    env.policy = PolicyDecision(allowed_models=["retired-model"])
    decision = route(env, CATALOG, at(env))
    assert decision.chosen is None and decision.failure_code == "no_eligible_model"
    assert "not allowed by policy" in decision.failure_message


def test_unknown_tier_or_model(make_envelope: MakeEnvelope) -> None:
    assert route(make_envelope("hi", quality_tier="huge"), CATALOG, NOW).failure_code == "no_eligible_model"
    env = make_envelope("hi", model="gpt-17")
    assert route(env, CATALOG, at(env)).failure_message == "model 'gpt-17' is not in the catalog"
    env = make_envelope("hi", model="max-eu")
    assert [m.name for m in route(env, CATALOG, at(env)).candidates] == ["max-eu"]


def test_a_tight_budget_degrades_to_a_faster_tier(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi", quality_tier="large", budget_ms=2_000)
    decision = route(env, CATALOG, at(env))
    assert decision.chosen is not None and decision.chosen.quality_tier == "medium"
    assert any(r.startswith("degraded to medium") for r in decision.reasons)
    assert any(r.startswith("max-us: expected") for r in decision.reasons)


def test_a_policy_tier_is_not_degraded_and_no_budget_is_deadline_exceeded(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi", budget_ms=2_000)
    env.policy = PolicyDecision(quality_tier="large")
    decision = route(env, CATALOG, at(env))
    assert decision.failure_code == "deadline_exceeded"
    assert "the fastest, max-us, needs" in decision.failure_message
    env = make_envelope("hi", budget_ms=50)
    assert "nano-us, needs" in route(env, CATALOG, at(env)).failure_message


def test_context_window_and_open_breakers_skip_models(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("word " * 20_000)
    decision = route(env, CATALOG, at(env))
    assert decision.chosen.name != "nano-us"  # type: ignore[union-attr]
    assert any("exceed its 16384 window" in r for r in decision.reasons)
    env = make_envelope("hi")
    decision = route(env, CATALOG, at(env), breaker_allows=lambda backend, now: False)
    assert decision.chosen is None and "circuit open" in decision.failure_message


def test_a_model_at_capacity_goes_to_the_back(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    decision = route(env, CATALOG, at(env), load=lambda name: 64 if name == "nano-us" else 0)
    assert decision.chosen.name == "lite-us" and decision.candidates[-1].name == "nano-us"  # type: ignore
    assert "nano-us: at capacity (64 in flight)" in decision.reasons


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_ms=100)
    breaker.record_failure(NOW)
    assert breaker.allows(NOW)
    breaker.record_failure(NOW)
    assert not breaker.allows(NOW) and breaker.state(NOW) == "open"
    later = NOW + 100_000_000
    assert breaker.allows(later) and breaker.state(later) == "half_open"
    breaker.before_call(later)
    assert not breaker.allows(later)  # one trial at a time
    breaker.record_failure(later)
    assert breaker.state(later) == "open"
    breaker.before_call(later + 100_000_000)
    breaker.record_success()
    assert breaker.state(later) == "closed"


def test_expected_cost_for_names_the_model_the_router_would_pick(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("hi")
    expected = expected_cost_for(env, CATALOG, FakeClock(env.created_at_ns))
    assert expected.model == "nano-us" and expected.cost_micros > 0
    env.request.messages = [Message(role="user", content="hi")]
    env.policy = PolicyDecision(allowed_models=["nothing"])
    assert expected_cost_for(env, CATALOG).cost_micros == 0
