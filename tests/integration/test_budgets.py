"""Latency budgets on the real pipeline: degrade to a faster model when the budget demands it, or fail fast."""

from __future__ import annotations

from schemas.envelope import Status, Tier
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings
from workers.routing.catalog import load_catalog


async def test_a_tight_budget_degrades_and_an_impossible_one_fails_fast(pipeline: Settings) -> None:
    catalog = {m.name: m for m in load_catalog(None).models}
    roomy = new_envelope("Compare the two plans.", tenant="acme", tier=Tier.INTERACTIVE, budget_ms=60_000,
                         settings=pipeline, quality_tier="large")
    tight = new_envelope("Compare the two plans.", tenant="acme", tier=Tier.INTERACTIVE, budget_ms=2_000,
                         settings=pipeline, quality_tier="large")
    hopeless = new_envelope("Compare the two plans.", tenant="acme", tier=Tier.INTERACTIVE, budget_ms=1,
                            settings=pipeline)
    async with TollwayClient(pipeline) as submitter:
        responses = await submitter.complete_envelopes([roomy, tight, hopeless])
    by_id = {r.request_id: r for r in responses}
    assert catalog[by_id[roomy.request_id].model or ""].quality_tier == "large"
    degraded = by_id[tight.request_id]
    assert degraded.status is Status.OK
    assert catalog[degraded.model or ""].quality_tier != "large", "degraded to a tier that fits the budget"
    late = by_id[hopeless.request_id]
    assert (late.status, late.code) == (Status.DEADLINE_EXCEEDED, "deadline_exceeded"), "never a silently late answer"
    assert late.answer is None
