"""Ledger rows per tenant × model × window, cost per task outcome, quality beside cost."""

from __future__ import annotations

from schemas.envelope import Evaluation
from tests.workers.ledger.factories import HOUR_NS, T0, response
from workers.ledger.aggregator import Aggregator, task_totals, totals_by_tenant
from workers.ledger.cells import outcome_key
from workers.ledger.dedup import apply_outcome


def test_rows_per_tenant_model_window_and_duplicates_counted_once() -> None:
    agg = Aggregator.empty()
    assert agg.add(response("r1"))
    assert agg.add(response("r2", model="large", cost=900))
    assert agg.add(response("r3", at_ns=T0 + HOUR_NS))
    assert agg.add(response("r4", tenant="globex"))
    assert not agg.add(response("r1", cost=5))  # a replayed response: same request_id, new record
    day = agg.rows(tenant="acme", window="day")
    assert [(r.model, r.requests, r.cost_micros) for r in day] == [("large", 1, 900), ("small", 2, 200)]
    hours = agg.rows(tenant="acme", window="hour")
    assert sum(r.requests for r in hours) == 3 and len(hours) == 3
    assert totals_by_tenant(agg.rows(window="day"))["globex"].requests == 1


def test_cost_per_outcome() -> None:
    agg = Aggregator.empty()
    for i in range(3):
        agg.add(response(f"a{i}", task_id="t1", cost=100))
    agg.add(response("b0", task_id="t2", cost=50))
    agg.add(response("c0", task_id="t3", cost=7))
    agg.add(response("d0", cost=1000))  # no task
    apply_outcome(agg.outcomes, tenant="acme", task_id="t1", outcome="resolved", at_ns=2)
    apply_outcome(agg.outcomes, tenant="acme", task_id="t2", outcome="resolved", at_ns=2)
    apply_outcome(agg.outcomes, tenant="acme", task_id="t3", outcome="resolved", at_ns=1)
    assert not apply_outcome(agg.outcomes, tenant="acme", task_id="t2", outcome="failed", at_ns=1)  # older: ignored
    assert apply_outcome(agg.outcomes, tenant="acme", task_id="t3", outcome="failed", at_ns=3)  # corrected
    rows = {r.outcome: r for r in agg.outcome_rows(tenant="acme")}
    assert (rows["resolved"].tasks, rows["resolved"].requests, rows["resolved"].cost_micros) == (2, 4, 350)
    assert rows["resolved"].cost_per_task_micros == 175
    assert rows["failed"].cost_per_task_micros == 7
    assert "open" not in rows
    assert agg.outcomes[outcome_key("acme", "t3")][0] == "failed"


def test_evaluations_are_aggregated_beside_cost() -> None:
    agg = Aggregator.empty()
    verdicts = [Evaluation(grounded_share=1.0, grounded=True, refusal=False, structured_valid=True),
                Evaluation(grounded_share=0.5, grounded=False, refusal=False),
                Evaluation(refusal=True),
                None]  # not sampled: judged by none of the content evaluators
    for i, verdict in enumerate(verdicts):
        late = i == 1  # completed after its deadline
        agg.add(response(f"q{i}", cost=250).model_copy(update={
            "evaluation": verdict, "deadline_at_ns": T0 + (0 if late else 10**9)}))
    agg.add(response("q0", cost=999).model_copy(update={"evaluation": verdicts[2]}))  # a replay: ignored
    (row,) = agg.rows()
    assert (row.requests, row.cost_micros, row.cost_per_1k_requests_micros) == (4, 1000, 250_000)
    assert (row.grounded_evaluated, row.grounded_passed) == (2, 1)
    assert (row.structured_evaluated, row.structured_passed) == (1, 1)
    assert (row.refusal_evaluated, row.refusals) == (3, 1)
    assert (row.slo_evaluated, row.slo_passed) == (4, 3)
    assert row.pass_rates() == {"grounded": 0.5, "structured_output": 1.0, "no_refusal": 0.6667, "slo_met": 0.75}


def test_one_task_totals_over_partitions_and_its_outcome() -> None:
    agg = Aggregator.empty()
    agg.add(response("a0", task_id="t1", cost=100), partition=0)
    agg.add(response("a1", task_id="t1", cost=30), partition=1)
    agg.add(response("b0", task_id="t1", tenant="globex", cost=5))
    apply_outcome(agg.outcomes, tenant="acme", task_id="t1", outcome="resolved", at_ns=2)
    assert task_totals(agg.tasks, agg.outcomes, tenant="acme", task_id="t1") == {
        "tenant": "acme", "task_id": "t1", "requests": 2, "cost_micros": 130, "outcome": "resolved"}
    # what `tollway outcome` refuses: an id no request carried (or another tenant's)
    assert task_totals(agg.tasks, agg.outcomes, tenant="acme", task_id="t2")["requests"] == 0
    assert task_totals(agg.tasks, agg.outcomes, tenant="initech", task_id="t1") == {
        "tenant": "initech", "task_id": "t1", "requests": 0, "cost_micros": 0, "outcome": None}
