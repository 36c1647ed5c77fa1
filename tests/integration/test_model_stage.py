"""The model stage on the real broker: the router's choice, usage and exact cost reach the response."""

from __future__ import annotations

from schemas.envelope import Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings
from workers.routing.catalog import price_of


async def test_tier_choice_usage_and_cost_reach_the_response(pipeline: Settings) -> None:
    envs = [new_envelope("Classify this ticket: the invoice total is wrong.", tenant="acme", settings=pipeline),
            new_envelope("hello", tenant="acme", settings=pipeline, quality_tier="medium"),
            new_envelope("hello", tenant="acme", settings=pipeline, model="max-eu")]
    async with TollwayClient(pipeline) as submitter:
        responses = await submitter.complete_envelopes(envs, timeout_s=60)
    assert [r.status for r in responses] == [Status.OK] * 3
    assert [r.model for r in responses] == ["nano-us", "core-us", "max-eu"]
    assert responses[0].answer == "Category: billing. The text mentions invoice, total."
    for response in responses:
        assert response.model is not None and response.usage.output_tokens > 0
        assert response.cost_micros == price_of(response.model, response.usage) > 0
