"""Wiring for the policy stage: the policy follower, the Redis-backed limits and the principal secret."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from schemas.errors import ServiceUnavailable
from streams.followers.policy import open_policy_store
from streams.runtime.connections import redis_client
from streams.settings import Settings
from workers.context import StageContext, derive
from workers.detectors.semantic import open_semantic
from workers.limits import RedisLimits
from workers.policy import DEV_PRINCIPAL_SECRET, PolicyContext

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_limits(settings: Settings) -> AsyncIterator[RedisLimits]:
    """Redis-backed rate limits and budgets, namespaced by the topic prefix.

    The audit stage uses this too, to ``settle(reservation_id, actual_micros)`` or ``release(reservation_id)``.
    """
    # Limits and budgets are on the request path: the client has the configured timeouts (a stalled Redis fails the
    # admission instead of holding the batch), with a longer floor than a cache lookup because a reservation counts.
    client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable(f"Redis is not reachable at {settings.redis_url}: {exc}") from exc
    try:
        yield RedisLimits(client, prefix=settings.topic_prefix)
    finally:
        await client.aclose()


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[PolicyContext]:
    if settings.principal_secret.get_secret_value() == DEV_PRINCIPAL_SECRET.get_secret_value():
        log.warning("TOLLWAY_PRINCIPAL_SECRET is the development default: anyone who knows it can sign principals")
    async with open_policy_store(settings, role="stage-policy") as store, open_limits(settings) as limits:
        yield derive(PolicyContext, base, policy=store, limits=limits, principal_secret=settings.principal_secret,
                     injection_semantic=open_semantic(settings.injection_semantic))
