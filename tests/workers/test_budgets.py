import pytest

from schemas.envelope import Hop, Tier
from workers.budgets import Budgets, reserved_for_ms


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


def test_reserved_for_ms_does_not_depend_on_the_order_of_the_stages() -> None:
    # Summed in name order: a set's iteration order follows the hash seed, and float sums' last bits follow the order.
    shares = {"a": 0.1, "b": 0.2, "c": 0.3}
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1  # the order matters to the last bit
    forward = reserved_for_ms(1000.0, ["a", "b", "c"], shares)
    assert all(reserved_for_ms(1000.0, order, shares) == forward for order in (["c", "b", "a"], ["b", "c", "a", "b"]))
    assert forward == 1000.0 * ((0.1 + 0.2) + 0.3)
