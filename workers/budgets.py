"""Latency budgets per SLO tier: a total and a per-stage allocation (shares of the total).

A hop whose queue + service time exceeds its stage's allocation is a *violation* (recorded on the hop and counted
by tier and stage); the request goes on while its overall deadline allows. The overall deadline is what ends a
request (``deadline_exceeded``) — a stage never hands on a request it already knows is late.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from schemas.envelope import Hop, Tier

# Shares of the tier's total budget; the model gets most of it, the rest is pipeline overhead.
DEFAULT_SHARES: Mapping[str, float] = MappingProxyType({
    "retrieval": 0.08, "policy": 0.04, "cache": 0.03, "model": 0.75, "postprocess": 0.05, "audit": 0.05,
})


def reserved_for_ms(total_ms: float, stages: Iterable[str], shares: Mapping[str, float] = DEFAULT_SHARES) -> float:
    """What ``stages`` (those still ahead of a request) need of a ``total_ms`` budget: the sum of their shares.

    The model stage keeps this back from a call's timeout, so a slow model cannot eat the time post-process and
    audit need to deliver the answer before the deadline. Summed in name order: a set's order follows the process's
    hash seed, and float addition's last bits follow the order (two processes would time the same call out apart)."""
    return total_ms * sum(shares.get(stage, 0.0) for stage in sorted(set(stages)))


@dataclass(frozen=True)
class TierBudget:
    tier: Tier
    total_ms: int
    shares: Mapping[str, float] = field(default_factory=lambda: DEFAULT_SHARES)

    def allocation_ms(self, stage: str) -> float:
        return self.total_ms * self.shares.get(stage, 0.0)

    def violated_by(self, hop: Hop) -> bool:
        allocation = self.allocation_ms(hop.stage)
        return allocation > 0 and hop.queue_ms + hop.service_ms > allocation


@dataclass(frozen=True)
class Budgets:
    tiers: Mapping[Tier, TierBudget]

    @classmethod
    def from_totals(cls, interactive_ms: int, standard_ms: int, batch_ms: int) -> Budgets:
        return cls(MappingProxyType({
            Tier.INTERACTIVE: TierBudget(Tier.INTERACTIVE, interactive_ms),
            Tier.STANDARD: TierBudget(Tier.STANDARD, standard_ms),
            Tier.BATCH: TierBudget(Tier.BATCH, batch_ms),
        }))

    def for_tier(self, tier: Tier) -> TierBudget:
        return self.tiers[tier]
