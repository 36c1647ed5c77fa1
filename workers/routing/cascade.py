"""The verified cascade: for an uncertain request, try the cheaper tier first and escalate when its answer fails
verification — only when the remaining latency budget still covers the escalation.

When (:func:`plan`): the auto tier chose ``t`` > small and the router's own probability that the request needs
``t`` is below ``uncertain_below`` (the calibrated or online P(≥ medium) for medium, P(large) for large), and the
expected cost of the cascade beats serving ``t`` outright: c(t−1) + P(needs t) × c(t) < c(t). With
``verify_served`` a request served below large without a cascade is verified too, and escalated to t+1 when an
evaluator fails its answer. A tier fixed by the request or the tenant's policy is never cascaded.

Verification (:func:`verify`) uses the online evaluators on the cheaper answer, before anyone sees it:

* **refusal** — the answer declines (:func:`workers.evaluators.is_refusal`);
* **structured** — a ``response_format`` was asked and the answer is not valid even after repair
  (:func:`workers.structured_output.check`);
* **grounded** — passages were retrieved and the share of supported sentences is below ``grounded_min``;
* **self-consistency** — when a second sample was drawn, the two answers share less than ``consistency_min`` of
  their content words (Jaccard), i.e. the cheap model is unsure of its own answer;
* an empty answer fails.

Escalation (:func:`may_escalate`): the first call's time is spent; the escalation runs only if the next tier's
expected time fits what is left of the budget after the stages still ahead. Both calls are priced and recorded
(``env.model.cascade``), and the request's cost is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from schemas.envelope import Envelope
from workers import evaluators, structured_output
from workers.routing.catalog import QUALITY_TIERS

DEFAULT_UNCERTAIN_BELOW: Final = 0.6
DEFAULT_CONSISTENCY_MIN: Final = 0.35


@dataclass(frozen=True)
class CascadePlan:
    first_tier: str  # served first
    then_tier: str  # escalated to when verification fails
    p_needs_then: float
    reason: str


def plan(tier: str, p_medium: float, p_large: float, tier_cost: Sequence[float], *,
         uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, verify_served: bool = False) -> CascadePlan | None:
    """Whether to cascade a request the auto tier sent to ``tier`` (None: serve ``tier`` outright).

    ``verify_served``: a request that is not cascaded down but served below large is still verified, and escalated
    one tier up when an evaluator fails its answer (``first_tier == tier``): the router's own under-routing is
    caught the way a cascade's cheaper answer is."""
    rank = QUALITY_TIERS.index(tier)
    step = _down(rank, p_medium, p_large, tier_cost, uncertain_below) if rank > 0 else None
    if step is not None or not verify_served or rank == 2:
        return step
    p_more = p_medium if rank == 0 else p_large
    up = QUALITY_TIERS[rank + 1]
    return CascadePlan(tier, up, round(p_more, 4), f"verified {tier}: escalated to {up} when an evaluator fails its "
                                                   f"answer (P(needs {up}) {p_more:.2f})")


def _down(rank: int, p_medium: float, p_large: float, tier_cost: Sequence[float],
          uncertain_below: float) -> CascadePlan | None:
    tier = QUALITY_TIERS[rank]
    p_needs = p_large if rank == 2 else p_medium
    if p_needs >= uncertain_below:
        return None
    cheap, full = tier_cost[rank - 1], tier_cost[rank]
    if cheap + p_needs * full >= full:
        return None
    first = QUALITY_TIERS[rank - 1]
    return CascadePlan(first, tier, round(p_needs, 4),
                       f"cascade {first}→{tier}: P(needs {tier}) {p_needs:.2f} < {uncertain_below:.2f}, expected "
                       f"cost {cheap + p_needs * full:.2f} vs {full:.2f} (relative)")


@dataclass(frozen=True)
class Verification:
    passed: bool
    failed_checks: tuple[str, ...]  # refusal, structured, grounded, inconsistent, empty

    def explain(self) -> str:
        return "verified" if self.passed else "failed " + ", ".join(self.failed_checks)


def consistency(first: str, second: str) -> float:
    """Jaccard overlap of the two answers' content words (1.0 when both have none)."""
    if " ".join(first.lower().split()) == " ".join(second.lower().split()):
        return 1.0  # the same text once normalised
    a, b = evaluators.content_words(first), evaluators.content_words(second)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def verify(env: Envelope, answer: str | None, *, grounded_min: float, second_answer: str | None = None,
           consistency_min: float = DEFAULT_CONSISTENCY_MIN) -> Verification:
    """The evaluators' verdict on the cheaper tier's answer to ``env``."""
    if answer is None or not answer.strip():
        return Verification(False, ("empty",))
    failed: list[str] = []
    if evaluators.is_refusal(answer):
        failed.append("refusal")
    schema = structured_output.wanted_schema(env.request.params.response_format)
    if schema is not None and structured_output.check(answer, schema).answer is None:
        failed.append("structured")
    passages = env.retrieval.passages if env.retrieval is not None else []
    share = evaluators.grounded_share(answer, passages)
    if share is not None and share < grounded_min:
        failed.append("grounded")
    if second_answer is not None and consistency(answer, second_answer) < consistency_min:
        failed.append("inconsistent")
    return Verification(not failed, tuple(failed))


def may_escalate(remaining_ms: float, reserved_after_ms: float, expected_ms: float) -> bool:
    """The escalation's expected time fits what is left after the stages still ahead."""
    return expected_ms <= remaining_ms - reserved_after_ms


__all__ = ["CascadePlan", "Verification", "consistency", "may_escalate", "plan", "verify"]
