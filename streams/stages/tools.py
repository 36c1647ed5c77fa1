"""Wiring for the tools stage: the policy follower (tool registry and tenant rules), the ticket store and the effect
store on Redis, and an HTTP client for plain HTTP tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from schemas.errors import ServiceUnavailable
from streams.followers.policy import open_policy_store
from streams.runtime.connections import redis_client
from streams.settings import Settings
from workers.context import StageContext, derive
from workers.tools.builtins import Builtins, RedisTicketStore
from workers.tools.effects import RedisEffectStore
from workers.tools.http import HttpxTools
from workers.tools.stage import ToolsContext


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[ToolsContext]:
    # The effect store decides whether a side-effecting call runs at all: a longer floor than a cache lookup.
    client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
    http = HttpxTools()
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable at {settings.redis_url}: {exc}") from exc
        async with open_policy_store(settings, role="stage-tools") as store:
            yield derive(ToolsContext, base, policy=store,
                         builtins=Builtins(tickets=RedisTicketStore(client, prefix=settings.topic_prefix)),
                         http=http, effects=RedisEffectStore(client, prefix=settings.topic_prefix))
    finally:
        await http.aclose()
        await client.aclose()
