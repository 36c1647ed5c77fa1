import pytest

from schemas.envelope import Hop, Tier
from workers.budgets import Budgets


def hop(stage: str, queue_ms: float, service_ms: float) -> Hop:
    start = 1_000_000_000
    return Hop(stage=stage, worker_id="w", produced_at_ns=start - int(queue_ms * 1e6), received_at_ns=start,
               started_at_ns=start, finished_at_ns=start + int(service_ms * 1e6))


def test_allocation_is_a_share_of_the_tier_total() -> None:
    budgets = Budgets.from_totals(2_000, 10_000, 3_600_000)
    assert budgets.for_tier(Tier.INTERACTIVE).allocation_ms("model") == pytest.approx(1_500)
    assert budgets.for_tier(Tier.STANDARD).allocation_ms("cache") == pytest.approx(300)


def test_violation_counts_queue_and_service_time() -> None:
    interactive = Budgets.from_totals(2_000, 10_000, 3_600_000).for_tier(Tier.INTERACTIVE)
    assert not interactive.violated_by(hop("cache", 30, 20))  # 50 ms of a 60 ms allocation
    assert interactive.violated_by(hop("cache", 50, 20))
    assert not interactive.violated_by(hop("unknown-stage", 10_000, 0))
