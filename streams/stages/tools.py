"""Wiring for the tools stage: the policy follower (tool registry and tenant rules), the ticket store and the effect
store on Redis, an HTTP client for plain HTTP tools and the worker's MCP connections."""

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
from workers.tools.mcp import McpSessions
from workers.tools.stage import ToolsContext


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[ToolsContext]:
    # The effect store decides whether a side-effecting call runs at all: a longer floor than a cache lookup.
    client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
    http = HttpxTools()
    mcp = McpSessions(mcp_server_environment(settings))
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable at {settings.redis_url}: {exc}") from exc
        async with open_policy_store(settings, role="stage-tools") as store:
            doc = store.current()
            if doc is not None and doc.mcp_servers:
                await mcp.warm(doc.mcp_servers)  # launched once now, not inside the first call's deadline
            yield derive(ToolsContext, base, policy=store,
                         builtins=Builtins(tickets=RedisTicketStore(client, prefix=settings.topic_prefix)),
                         http=http, effects=RedisEffectStore(client, prefix=settings.topic_prefix), mcp=mcp)
    finally:
        await mcp.aclose()
        await http.aclose()
        await client.aclose()


def mcp_server_environment(settings: Settings) -> dict[str, str]:
    """What a stdio MCP server this worker launches inherits: the settings that locate Redis, Kafka and the topics,
    so the demo server reads and writes the same tickets and index as the pipeline."""
    return {"TOLLWAY_REDIS_URL": settings.redis_url, "TOLLWAY_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_STATE_DIR": str(settings.state_dir),
            "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(settings.kafka_credentials_path)}
