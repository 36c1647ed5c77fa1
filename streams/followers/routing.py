"""The learning router's state, rebuilt from topics: follow ``<prefix>.responses`` and ``<prefix>.outcomes``.

Each model worker with ``TOLLWAY_ROUTER_LEARNING=learn`` (or ``frozen``) reads both topics from the beginning
before it serves (responses first, then outcomes, so every outcome finds the responses of its task), feeding
:class:`workers.routing.online.OutcomeJoin` and the worker's :class:`~workers.routing.online.OnlineRouter`; then
it keeps tailing them. The state is the observations, so a restart replays to the same model; ``frozen`` replays
nothing new into it after the catch-up (the learnt state stays as the topics had it at start-up).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.ledger import OutcomeEvent
from schemas.response import Response
from streams.followers.base import TopicFollower
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.routing.online import Observation, OnlineRouter, OutcomeJoin

log = logging.getLogger(__name__)


class _Feed(TopicFollower):
    def __init__(self, settings: Settings, topic: str, role: str, router: OnlineRouter, join: OutcomeJoin,
                 outcomes: bool) -> None:
        super().__init__(settings, topic, role=role, start_at="beginning", catch_up=True)
        self.router, self.join, self.outcomes = router, join, outcomes
        self.learnt = 0

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if record.value is None:
                continue
            try:
                observations = self._observations(record.value)
            except (orjson.JSONDecodeError, ValidationError) as exc:
                log.debug("routing learner skips %s@%d: %s", self.topic, record.offset, exc)
                continue
            for obs in observations:
                self.router.observe(obs)
            self.learnt += len(observations)

    def _observations(self, raw: bytes) -> list[Observation]:
        data = orjson.loads(raw)
        if self.outcomes:
            event = OutcomeEvent.model_validate(data)
            return self.join.on_outcome(event.tenant, event.task_id, event.outcome)
        if not isinstance(data, dict) or data.get("route") is None:
            return []  # most responses: nothing routed automatically (skip validating them)
        return self.join.on_response(Response.model_validate(data))


@asynccontextmanager
async def follow_outcomes(settings: Settings, router: OnlineRouter, *, role: str) -> AsyncIterator[OnlineRouter]:
    """Rebuild ``router`` from the topics, then keep it learning while the context is open."""
    topo = topology(settings)
    join = OutcomeJoin()
    frozen, router.frozen = router.frozen, False  # the catch-up rebuilds the learnt state even when frozen
    responses = _Feed(settings, topo.responses, role, router, join, outcomes=False)
    outcomes = _Feed(settings, topo.outcomes, role, router, join, outcomes=True)
    await responses.start(timeout_s=120)
    try:
        await outcomes.start(timeout_s=120)
        try:
            router.frozen = frozen
            log.info("learning router rebuilt from %d observations (%s)", responses.learnt + outcomes.learnt,
                     "frozen" if frozen else "learning")
            yield router
        finally:
            await outcomes.stop()
    finally:
        await responses.stop()
