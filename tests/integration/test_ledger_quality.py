"""Through the real pipeline: the evaluators' verdicts reach the ledger's cells, and the ledger reconciles with
the audit log's costs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas.envelope import GenerationParams, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.index import chunk_file, publish
from streams.ledger.app import ledger_rows, reconcile, run_ledger
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from tests.integration.test_ledger_outcomes import free_port
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[2] / "infra" / "corpus"


async def test_evaluators_verdicts_are_counted_per_tenant_model_window(settings: Settings) -> None:
    from streams.runtime.worker_process import run_workers
    from streams.stages.registry import resolve as resolve_stages

    await ensure_topics(settings)
    # Indexed before the workers start, so retrieval has the passages from its first request on.
    await publish(settings, [c for f in sorted((CORPUS / "acme").glob("*.md")) for c in chunk_file(f, tenant="acme")])
    stop, ready = asyncio.Event(), asyncio.Event()
    workers = asyncio.create_task(run_workers(settings, resolve_stages(["all"]), ready=ready, stop=stop))
    try:
        await asyncio.wait([workers, asyncio.create_task(ready.wait())], timeout=60,
                           return_when=asyncio.FIRST_COMPLETED)
        if workers.done():
            workers.result()
        grounded = new_envelope("How long do I have to get a refund on an annual plan?", tenant="acme",
                                settings=settings)
        declined = new_envelope("What is the airspeed velocity of an unladen swallow?", tenant="acme",
                                settings=settings)
        as_json = new_envelope("What is the refund window?", tenant="acme", settings=settings,
                               params=GenerationParams(response_format={"type": "json_object"}))
        late = new_envelope("too late", tenant="acme", settings=settings)
        late.deadline_at_ns = late.created_at_ns - 1
        async with TollwayClient(settings) as submitter:
            answered = await submitter.complete_envelopes([grounded, declined, as_json, late], timeout_s=60)
            responses = {r.request_id: r for r in answered}
        await read_until(settings, topology(settings).audit_log, lambda records: len(records) >= 4)
    finally:
        stop.set()
        await asyncio.wait_for(workers, 30)

    first = responses[grounded.request_id]
    assert first.status is Status.OK and first.evaluation is not None, first
    assert first.evaluation.grounded is True and first.evaluation.refusal is False
    assert responses[as_json.request_id].evaluation is not None
    assert responses[late.request_id].status is Status.DEADLINE_EXCEEDED

    rows = await ledger_rows(settings, tenant="acme")
    total = {name: sum(getattr(r, name) for r in rows) for name in (
        "requests", "grounded_evaluated", "grounded_passed", "structured_evaluated", "refusal_evaluated",
        "refusals", "slo_evaluated", "slo_passed")}
    assert total["requests"] == 4
    assert total["grounded_passed"] >= 1 and total["grounded_evaluated"] >= total["grounded_passed"]
    assert total["structured_evaluated"] == 1
    assert total["refusals"] >= 1  # the local model declines what no document covers
    assert (total["slo_evaluated"], total["slo_passed"]) == (4, 3)  # the expired request missed its SLO

    # The ledger worker's totals reconcile with the responses topic and with the audit log's costs.
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    ledger = asyncio.create_task(run_ledger(settings, stop=stop, ready=ready, web_port=port))
    try:
        await asyncio.wait([ledger, asyncio.create_task(ready.wait())], timeout=90,
                           return_when=asyncio.FIRST_COMPLETED)
        if ledger.done():
            ledger.result()
        result = await reconcile(settings, f"http://127.0.0.1:{port}")
    finally:
        stop.set()
        await asyncio.wait_for(ledger, 30)
    assert result.ok, (result.differences[:3], result.audit)
    (acme,) = result.audit
    assert (acme.requests, acme.audited_requests, acme.unaudited_requests, acme.difference_micros) == (4, 4, 0, 0)
    assert acme.audited_cost_micros == sum(r.cost_micros for r in responses.values()) > 0
