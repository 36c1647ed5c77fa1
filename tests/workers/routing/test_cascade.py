"""The verified cascade: when to cascade, verification by the evaluators, the budget check, and the model stage
paying for both calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from schemas.envelope import Envelope, Passage, RetrievalResult, Usage
from workers.backends.base import ModelCall, ModelReply
from workers.model import ModelContext, process
from workers.routing import cascade
from workers.routing.catalog import load_catalog
from workers.routing.online import DEFAULT_TIER_COST, LearnerConfig, OnlineRouter

MakeEnvelope = Callable[..., Envelope]


def test_plan_cascades_only_uncertain_tiers_above_small_that_pay_off() -> None:
    assert cascade.plan("small", 0.1, 0.0, DEFAULT_TIER_COST) is None
    step = cascade.plan("large", 0.9, 0.3, DEFAULT_TIER_COST, uncertain_below=0.6)
    assert step is not None and (step.first_tier, step.then_tier) == ("medium", "large")
    assert cascade.plan("large", 0.9, 0.7, DEFAULT_TIER_COST, uncertain_below=0.6) is None  # likely needs large
    # Medium costs 4× small: a cascade with P(needs medium) 0.8 would cost more than medium outright.
    assert cascade.plan("medium", 0.8, 0.0, DEFAULT_TIER_COST, uncertain_below=0.9) is None


def test_verify_fails_refusals_invalid_json_ungrounded_and_inconsistent_answers(make_envelope: MakeEnvelope) -> None:
    env = make_envelope("What is the refund window?")
    assert cascade.verify(env, "Refunds are possible within 30 days.", grounded_min=0.8).passed
    assert cascade.verify(env, "I'm sorry, but I can't help with that.", grounded_min=0.8).failed_checks == \
        ("refusal",)
    assert cascade.verify(env, "  ", grounded_min=0.8).failed_checks == ("empty",)
    wants_json = make_envelope("Give me JSON", params={"response_format": {"type": "json_object"}})
    assert "structured" in cascade.verify(wants_json, "not json at all", grounded_min=0.8).failed_checks
    env.retrieval = RetrievalResult(confidence=0.9, passages=[
        Passage(doc_id="refunds.md", score=0.9, text="Annual plans are refunded in full within 30 days.")])
    assert "grounded" in cascade.verify(env, "Shipping to Mars takes forty years.", grounded_min=0.8).failed_checks
    assert "inconsistent" in cascade.verify(make_envelope("q"), "The answer is blue sky.", grounded_min=0.8,
                                            second_answer="Completely different green grass.").failed_checks
    assert cascade.consistency("same words here", "same words here") == 1.0


def test_may_escalate_needs_the_budget_after_the_stages_ahead() -> None:
    assert cascade.may_escalate(1000, 200, 700)
    assert not cascade.may_escalate(1000, 200, 900)


@pytest.fixture(autouse=True)
def no_calibrated_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold learner without the shipped calibrated router as its offset."""
    monkeypatch.setattr("workers.routing.auto.load_params", lambda *_args, **_kw: None)


class TierBackend:
    """Refuses on the models named in ``refuse``, answers elsewhere; counts calls per model."""

    name = "local"

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.calls: list[str] = []

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]:
        self.calls += [r.model for r in requests]
        return [ModelReply(r.request_id, "I'm sorry, but I can't help with that." if r.model in self.refuse
                           else "Here is a careful answer to the question.", Usage(input_tokens=50, output_tokens=40))
                for r in requests]

    async def aclose(self) -> None:
        return None


def cold_context(backend: TierBackend, **fields: object) -> ModelContext:
    # A frozen cold learner: P = ½ everywhere, so the auto tier is large and a cascade starts at medium.
    return ModelContext(stage="model", catalog=load_catalog(), backends={"local": backend},  # type: ignore[arg-type]
                        online=OnlineRouter(frozen=True), cascade_below=0.99, **fields)  # type: ignore[arg-type]


async def test_a_failed_cheaper_answer_escalates_and_both_calls_are_paid(make_envelope: MakeEnvelope) -> None:
    backend = TierBackend(refuse={"core-us"})
    (env,) = await process([make_envelope("Plan a phased migration with rollback, risks and owners.")],
                           cold_context(backend))
    catalog = load_catalog()
    assert backend.calls == ["core-us", "max-us"]
    result = env.model
    assert result is not None and result.model == "max-us" and env.answer == "Here is a careful answer to the question."
    usage = Usage(input_tokens=50, output_tokens=40)
    first = catalog.get("core-us").cost_micros(usage)
    assert result.cascade_cost_micros == first
    assert result.cost_micros == first + catalog.get("max-us").cost_micros(usage)
    assert result.usage.output_tokens == 80
    assert result.learn is not None and result.learn.tier == "large" and result.learn.cascade_failed_tier == "medium"
    assert any("escalated to max-us" in r for r in result.routing)


async def test_a_verified_cheaper_answer_is_served(make_envelope: MakeEnvelope) -> None:
    backend = TierBackend(refuse=set())
    (env,) = await process([make_envelope("Plan a phased migration with rollback, risks and owners.")],
                           cold_context(backend))
    assert backend.calls == ["core-us"] and env.model is not None and env.model.model == "core-us"
    assert env.model.cascade_cost_micros == 0 and env.model.learn is not None and env.model.learn.tier == "medium"


async def test_no_escalation_when_the_budget_cannot_cover_it(make_envelope: MakeEnvelope) -> None:
    backend = TierBackend(refuse={"core-us"})
    env = make_envelope("Plan a phased migration with rollback, risks and owners.", budget_ms=3_000)
    (out,) = await process([env], cold_context(backend))
    # max-us needs ~150 + 45×prefill + 22×160 ms ≈ 3.7 s: the cascade itself never starts (the router found no
    # large model within budget and degraded), or it cannot escalate; either way one call is made.
    assert len(backend.calls) == 1 and out.model is not None and out.model.cascade_cost_micros == 0


def test_plan_verifies_served_tiers_below_large_when_asked() -> None:
    assert cascade.plan("medium", 0.9, 0.3, DEFAULT_TIER_COST, uncertain_below=0.5) is None  # sure: served outright
    step = cascade.plan("medium", 0.9, 0.3, DEFAULT_TIER_COST, uncertain_below=0.5, verify_served=True)
    assert step is not None and (step.first_tier, step.then_tier) == ("medium", "large")
    step = cascade.plan("small", 0.1, 0.0, DEFAULT_TIER_COST, verify_served=True)
    assert step is not None and (step.first_tier, step.then_tier) == ("small", "medium")
    assert cascade.plan("large", 0.9, 0.9, DEFAULT_TIER_COST, uncertain_below=0.5, verify_served=True) is None


async def test_a_served_tier_that_fails_verification_escalates_one_tier_up(make_envelope: MakeEnvelope) -> None:
    # A cold learner with λ = 1: P = ½ sends the request to medium; with the cascade threshold below ½ it is not
    # cascaded down, but its answer is verified; a refusal escalates it to large and both calls are paid.
    backend = TierBackend(refuse={"core-us"})
    context = ModelContext(stage="model", catalog=load_catalog(), backends={"local": backend},  # type: ignore[dict-item]
                           online=OnlineRouter(LearnerConfig(lambda_start=1.0, threshold_cap=1.0), frozen=True),
                           cascade_below=0.1, cascade_verify_served=True)
    (env,) = await process([make_envelope("Plan a phased migration with rollback, risks and owners.")], context)
    assert backend.calls == ["core-us", "max-us"] and env.model is not None and env.model.model == "max-us"
    assert env.model.cascade_cost_micros > 0 and env.model.cost_micros > env.model.cascade_cost_micros
    assert env.model.learn is not None and env.model.learn.cascade_failed_tier == "medium"
    assert env.model.cascade_model == "core-us"
    assert any("verified medium" in r for r in env.model.routing)


class TwoSampleBackend(TierBackend):
    """Answers; on ``unsure`` models the second sample says something else entirely."""

    def __init__(self, unsure: set[str]) -> None:
        super().__init__(refuse=set())
        self.unsure, self.samples = unsure, []  # type: ignore[var-annotated]

    async def complete(self, requests: list[ModelCall]) -> list[ModelReply]:
        replies = await super().complete(requests)
        self.samples += [(r.model, r.samples) for r in requests]
        return [ModelReply(reply.request_id, reply.text, reply.usage + Usage(output_tokens=40), alternatives=[
                    "Bananas are yellow fruit grown in tropical climates." if r.model in self.unsure else reply.text])
                if r.samples == 2 else reply for r, reply in zip(requests, replies, strict=True)]


async def test_self_consistency_samples_the_cheaper_answer_twice_and_escalates_when_they_disagree(
        make_envelope: MakeEnvelope) -> None:
    backend = TwoSampleBackend(unsure={"core-us"})
    (env,) = await process([make_envelope("Plan a phased migration with rollback, risks and owners.")],
                           cold_context(backend, cascade_self_consistency=True))  # type: ignore[arg-type]
    assert backend.samples == [("core-us", 2), ("max-us", 1)]  # only the answer being verified is sampled twice
    assert env.model is not None and env.model.model == "max-us" and env.model.cascade_model == "core-us"
    assert env.model.cascade_cost_micros > 0 and any("self-consistency" in r and "both billed" in r
                                                     for r in env.model.routing)
    assert any("failed inconsistent" in r for r in env.model.routing)


async def test_agreeing_samples_pass_and_both_are_billed(make_envelope: MakeEnvelope) -> None:
    backend = TwoSampleBackend(unsure=set())
    (env,) = await process([make_envelope("Plan a phased migration with rollback, risks and owners.")],
                           cold_context(backend, cascade_self_consistency=True))  # type: ignore[arg-type]
    assert backend.samples == [("core-us", 2)] and env.model is not None and env.model.model == "core-us"
    assert env.model.usage.output_tokens == 80  # both samples' output
