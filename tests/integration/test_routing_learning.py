"""The learning router's state on the real broker: rebuilt from the responses and outcomes topics at start-up (a
restart learns the same), then kept up to date by tailing them."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.envelope import RouteRecord, Status
from schemas.ledger import OutcomeEvent
from schemas.response import Response
from streams.cli.ledger import publish_outcome
from streams.followers.routing import follow_outcomes
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.testing import seal_response
from tests.integration.test_ledger_kill import produce
from workers.routing.features import extract
from workers.routing.online import OnlineRouter, task_kind

pytestmark = pytest.mark.integration


def routed(rid: str, task: str, tier: str, **fields: object) -> Response:
    f = extract("capital of Peru?")
    record = RouteRecord(kind=task_kind(f), features=list(f.values), tier=tier, **fields)
    return seal_response(Response(request_id=rid, tenant="acme", status=Status.OK, model="nano-us", task_id=task,
                                  route=record))


async def outcome(settings: Settings, task: str, verdict: str) -> None:
    await publish_outcome(settings, OutcomeEvent(tenant="acme", task_id=task, outcome=verdict,
                                                 at_ns=time.time_ns()))


async def test_the_learner_is_rebuilt_from_topics_and_keeps_learning(settings: Settings) -> None:
    await ensure_topics(settings)
    await produce(settings, [routed("r1", "t1", "small"), routed("r2", "t2", "small"),
                             routed("r3", "t3", "medium", cascade_failed_tier="small"),
                             Response(request_id="x", tenant="acme", status=Status.OK)])  # not auto-routed
    await outcome(settings, "t1", "resolved")
    await outcome(settings, "t2", "failed")
    await outcome(settings, "t3", "resolved")
    # r1 resolved small, r2 failed small, r3: the cascade's failed small step and its resolved medium answer.
    async with follow_outcomes(settings, OnlineRouter(), role="stage-model") as router:
        assert router.observations("acme") == 4
    async with follow_outcomes(settings, OnlineRouter(frozen=True), role="stage-model") as again:
        assert again.observations("acme") == 4 and again.frozen  # a restart rebuilds the same state, then freezes
        await produce(settings, [routed("r4", "t4", "small")])
        await outcome(settings, "t4", "failed")
        await asyncio.sleep(1.0)
        assert again.observations("acme") == 4  # frozen: the tail teaches nothing
    async with follow_outcomes(settings, OnlineRouter(), role="stage-model") as live:
        assert live.observations("acme") == 5
        await produce(settings, [routed("r5", "t5", "small")])
        await outcome(settings, "t5", "resolved")
        deadline = time.monotonic() + 20
        while live.observations("acme") < 6:
            assert time.monotonic() < deadline, "the follower did not learn the new outcome"
            await asyncio.sleep(0.1)
