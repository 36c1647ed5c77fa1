"""Topic names: each formatted once per topology, the same names as formatting them at every call."""

from __future__ import annotations

import pytest

from schemas.envelope import STAGES, Tier
from streams.runtime.topics import Topology


@pytest.mark.parametrize("tier", [*Tier, "batch", "standard", "interactive", "gold"])
@pytest.mark.parametrize("stage", ["ingress", *STAGES, "custom"])
def test_lane_names_are_the_formatted_names(stage: str, tier: Tier | str) -> None:
    topology = Topology("t9")
    expected = f"t9.{stage}{'.batch' if tier == Tier.BATCH else ''}"
    assert topology.stage(stage, tier) == topology.lanes[stage, tier] == expected
    assert topology.stage(stage, tier) is topology.stage(stage, tier)  # formatted once, then looked up
    if stage == "ingress":
        assert topology.ingress(tier) == expected


def test_a_tier_and_its_value_share_one_name() -> None:
    topology = Topology("t")
    assert topology.stage("cache", Tier.BATCH) is topology.stage("cache", "batch")
    assert topology.stage_lanes("cache") == ("t.cache", "t.cache.batch")
    assert topology.stage("cache") == topology.stage("cache", Tier.STANDARD) == "t.cache"
    assert len(topology.lanes) == 2


def test_fixed_names_and_equality() -> None:
    topology = Topology("p")
    assert (topology.responses, topology.replies_prefix, topology.audit_log, topology.audit_checkpoints,
            topology.deadletter, topology.policy, topology.index, topology.outcomes, topology.tool_approvals,
            topology.routing_snapshots, topology.group("cache")) == (
        "p.responses", "p.replies.", "p.audit.log", "p.audit.checkpoints", "p.deadletter", "p.policy.docs",
        "p.index.chunks", "p.outcomes", "p.tools.approvals", "p.routing.snapshots", "p.cache")
    assert topology.responses is topology.responses
    # The cached names are not part of a topology's identity: one prefix, one topology.
    used, fresh = Topology("p"), Topology("p")
    used.stage("model", Tier.BATCH)
    assert used == fresh and hash(used) == hash(fresh) and repr(used) == "Topology(prefix='p')"
    with pytest.raises(AttributeError):
        used.prefix = "q"  # type: ignore[misc]
