"""Wiring for the tools stage: the policy follower (tool registry and tenant rules), the ticket store and the effect
store on Redis, an HTTP client for plain HTTP tools, the worker's MCP connections and the approval book (the
compacted approvals topic, followed)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer, ConsumerRecord
from redis.exceptions import RedisError

from schemas.approvals import ApprovalEvent
from schemas.errors import BadEvent, ServiceUnavailable, ToolFailure
from streams.followers.base import TopicFollower
from streams.followers.policy import open_policy_store
from streams.runtime.codec import decode_as, encode
from streams.runtime.connections import new_producer, redis_client, start
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.context import StageContext, derive
from workers.tools.approvals import MemoryApprovals
from workers.tools.builtins import Builtins, RedisTicketStore
from workers.tools.effects import RedisEffectStore
from workers.tools.http import HttpxTools
from workers.tools.mcp import McpSessions
from workers.tools.stage import ToolsContext
from workers.tools.tasks import RedisTaskSteps

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[ToolsContext]:
    # The effect store decides whether a side-effecting call runs at all: a longer floor than a cache lookup.
    client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
    http = HttpxTools()
    mcp = McpSessions(mcp_server_environment(settings))
    approvals = KafkaApprovals(settings)
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable at {settings.redis_url}: {exc}") from exc
        async with open_policy_store(settings, role="stage-tools") as store:
            await approvals.open()
            doc = store.current()
            if doc is not None and doc.mcp_servers:
                await mcp.warm(doc.mcp_servers)  # launched once now, not inside the first call's deadline
            yield derive(ToolsContext, base, policy=store,
                         builtins=Builtins(tickets=RedisTicketStore(client, prefix=settings.topic_prefix)),
                         http=http, effects=RedisEffectStore(client, prefix=settings.topic_prefix), mcp=mcp,
                         approvals=approvals, task_steps=RedisTaskSteps(client, prefix=settings.topic_prefix))
    finally:
        await approvals.close()
        await mcp.aclose()
        await http.aclose()
        await client.aclose()


def mcp_server_environment(settings: Settings) -> dict[str, str]:
    """What a stdio MCP server this worker launches inherits: the settings that locate Redis, Kafka and the topics,
    so the demo server reads and writes the same tickets and index as the pipeline."""
    return {"TOLLWAY_REDIS_URL": settings.redis_url, "TOLLWAY_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_STATE_DIR": str(settings.state_dir),
            "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(settings.kafka_credentials_path)}


class KafkaApprovals(TopicFollower):
    """The approval book on ``<prefix>.tools.approvals``: asks by producing a pending event, learns decisions by
    following the topic (every tools worker sees every decision, whichever partition its request came from)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, topology(settings).tool_approvals, role="stage-tools", start_at="beginning",
                         catch_up=True)
        self.book = MemoryApprovals()
        self._producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        await self.start()
        producer = new_producer(self.settings, role="stage-tools", client_id=f"{self.settings.worker_id}-approvals")
        await start(producer, self.settings, "approvals producer")
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        await self.stop()

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if record.value is None:
                continue
            try:
                self.book.record(decode_as(record.value, ApprovalEvent))
            except BadEvent as exc:
                log.warning("skipping a bad approvals record at offset %d: %s", record.offset, exc)

    async def ask(self, pending: ApprovalEvent) -> None:
        if pending.approval_id in self.book.events:
            return  # asked already (a redelivered call), or decided
        if self._producer is None:
            raise ToolFailure("tool_unavailable", "the approvals topic is not open in this worker")
        self.book.record(pending)
        await (await self._producer.send(self.topic, encode(pending), key=pending.approval_id.encode()))

    async def wait(self, approval_id: str, timeout_s: float) -> ApprovalEvent | None:
        return await self.book.wait(approval_id, timeout_s)
