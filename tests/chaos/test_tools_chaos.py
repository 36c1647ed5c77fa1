"""kill -9 of the tools worker while side-effecting tool calls are in flight: 0 lost requests, 0 duplicated effects.

Every request asks for a refund (``issue_refund``, a side-effecting plain HTTP tool). The refund service is a fake in
this process that records each execution under the call's ``Idempotency-Key`` (the stage's effect key) *before* it
answers, and answers slowly, so a kill lands mid-call. The worker is killed twice and restarted; the uncommitted
batches are redelivered to the new one. Judged, beside the usual guarantees (every accepted request answered and
audited once, the ledger equal to the audit): no effect key executed twice; every request's refund either issued
once, or — when the worker died between claiming the effect and storing its result — answered
``tool_effect_in_doubt`` (never run again), and the fake shows whether that effect happened (at most once).
With ``honours_idempotency_key`` (the service deduplicates by the key, as this fake then does) a call in doubt is
sent again with its key: every refund issued exactly once, none in doubt.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from schemas.response import Response
from streams.ledger.app import read_topic
from streams.runtime.codec import decode_as
from streams.runtime.topics import topology
from tests.chaos.harness import Env, Figures, Load, Pipeline
from tests.chaos.test_chaos import at, check, free_port, run
from tests.workers.tools.documents import tools_policy

pytestmark = pytest.mark.chaos

COUNT, RATE = 200, 40.0  # 5 s of load
REFUND_SERVICE_S = 0.4  # how long the fake refund service takes to answer: the window a kill lands in


class RefundService:
    """Records each refund it makes (an effect) under the call's key; ``dedupe``: a request with a key it has seen
    gets the first refund back (as a service honouring Idempotency-Key does) and counts as a resend, not an effect."""

    def __init__(self, *, dedupe: bool) -> None:
        self.dedupe = dedupe
        self.executions: Counter[str] = Counter()  # idempotency key → effects made
        self.resends = 0

    async def refund(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("idempotency-key", "")
        if self.dedupe and key in self.executions:
            self.resends += 1
        else:
            self.executions[key] += 1  # the effect happens here, before the answer
        await asyncio.sleep(REFUND_SERVICE_S)
        return web.json_response({"ticket_id": body["ticket_id"], "amount": body["amount"],
                                  "refund_id": f"rf_{len(self.executions)}"})


@pytest.mark.parametrize("honours_key", [False, True], ids=["at-most-once", "idempotency-key"])
async def test_kill_9_tools_worker_mid_call(honours_key: bool, tmp_path: Path,
                                            chaos_results: list[Figures]) -> None:
    service = RefundService(dedupe=honours_key)
    app = web.Application()
    app.router.add_post("/refund", service.refund)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        doc = tools_policy()
        refund = doc.tools["issue_refund"].model_copy(update={"kind": "http", "url": f"http://127.0.0.1:{port}/refund",
                                                              "timeout_ms": 15_000,
                                                              "honours_idempotency_key": honours_key})
        doc = doc.model_copy(update={"tools": {**doc.tools, "issue_refund": refund}})
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(doc.model_dump(mode="json", exclude_defaults=True)))
        pipeline = Pipeline("kill-tools-call", Env(extra={"TOLLWAY_POLICY_FILE": str(policy)}), tmp_path)
        pipeline.worker(["retrieval", "policy", "cache", "model", "postprocess", "audit"])
        victim = pipeline.worker(["tools"])

        async def fault(p: Pipeline, load: Load) -> None:
            for kill_at in (1.5, 3.5):
                await at(load, kill_at)
                await wait_for_calls_in_flight(service)
                victim.kill9()
                await at(load, kill_at + 0.5)
                victim.start()

        # Distinct prompts: no answer comes from the cache, every request asks for its own refund.
        load = Load(run="kill-tools-call", count=COUNT, rate_per_s=RATE, budget_ms=120_000,
                    prompts=lambda i: f"Refund ${1 + i % 90} on ticket T-{1001 + i % 2} (request {i}).")
        scenario = "kill -9 tools mid-call (x2)" + (", key honoured" if honours_key else "")
        figures = await run(scenario, pipeline, fault, chaos_results, load=load)
        outcomes = await refund_outcomes(pipeline, load)
        duplicated = sum(n - 1 for n in service.executions.values() if n > 1)
        figures.notes.append(f"side effects: {sum(service.executions.values())} executions of "
                             f"{len(service.executions)} effect keys, {duplicated} duplicated, "
                             f"{service.resends} resends deduplicated by the service; answers "
                             f"{dict(sorted(outcomes.items()))}")
        check(figures)
        assert duplicated == 0, service.executions.most_common(3)
        assert sum(outcomes.values()) == figures.accepted
        assert outcomes["issued"] <= sum(service.executions.values())
        if honours_key:  # nothing left in doubt: resent with its key instead
            assert outcomes["in_doubt"] == 0
        assert outcomes["other"] == 0
    finally:
        await runner.cleanup()


async def wait_for_calls_in_flight(service: RefundService) -> None:
    """Until the service has started at least one refund since the last look (bounded)."""
    seen = sum(service.executions.values())
    for _ in range(100):
        if sum(service.executions.values()) > seen:
            return
        await asyncio.sleep(0.02)


async def refund_outcomes(pipeline: Pipeline, load: Load) -> Counter[str]:
    accepted = set(load.accepted)
    first: dict[str, Response] = {}
    for _p, _o, value in await read_topic(pipeline.settings, topology(pipeline.settings).responses):
        response = decode_as(value, Response)
        if response.request_id in accepted:
            first.setdefault(response.request_id, response)
    outcomes: Counter[str] = Counter()
    for response in first.values():
        answer = response.answer or ""
        if answer.startswith("Refund rf_"):
            outcomes["issued"] += 1
        elif "tool_effect_in_doubt" in answer:
            outcomes["in_doubt"] += 1
        elif "tool_timeout" in answer:  # the machine too loaded for the fake to answer in time (it still counts)
            outcomes["timeout"] += 1
        else:
            outcomes["other"] += 1
            if outcomes["other"] <= 3:
                print("other:", response.status.value, response.code, answer[:200])
    return outcomes
