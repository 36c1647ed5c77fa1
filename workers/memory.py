"""Conversation memory: a session's recent turns, kept in Redis with a TTL, scoped by tenant.

Key ``{ns}:mem:{tenant}:{session_id}`` is a list of JSON messages, trimmed to the newest ``max_messages`` and
expiring ``ttl_s`` after the last turn. The tenant is part of the key: two tenants' equal session ids never meet.
The retrieval stage reads (``recent_turns_many``, one pipeline per batch); the post-process stage writes
(``append_turns``: one MULTI/EXEC per batch).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.envelope import Envelope, Message, Status, ToolCall
from schemas.errors import BackendError

log = logging.getLogger(__name__)


class ConversationMemory(Protocol):
    async def recent_turns_many(self, sessions: Sequence[tuple[str, str]]) -> list[list[Message]]:
        """The recent messages of each ``(tenant, session_id)``, oldest first."""
        ...

    async def append_turn(self, tenant: str, session_id: str, messages: Sequence[Message]) -> None: ...

    async def append_turns_many(self, turns: Sequence[tuple[str, str, Sequence[Message]]]) -> None:
        """Append each ``(tenant, session_id, messages)`` in order: a batch's turns in one go."""
        ...


class RedisMemory:
    def __init__(self, client: Redis, *, namespace: str, ttl_s: int = 3600, max_turns: int = 10) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.max_messages = 2 * max_turns

    def key(self, tenant: str, session_id: str) -> str:
        return f"{self.namespace}:mem:{tenant}:{session_id}"

    async def recent_turns(self, tenant: str, session_id: str) -> list[Message]:
        return (await self.recent_turns_many([(tenant, session_id)]))[0]

    async def recent_turns_many(self, sessions: Sequence[tuple[str, str]]) -> list[list[Message]]:
        if not sessions:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for tenant, session_id in sessions:
                    pipe.lrange(self.key(tenant, session_id), -self.max_messages, -1)
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis memory read failed: {exc}") from exc
        return [[Message.model_validate(orjson.loads(raw)) for raw in row] for row in rows]

    async def append_turn(self, tenant: str, session_id: str, messages: Sequence[Message]) -> None:
        await self.append_turns_many([(tenant, session_id, messages)])

    async def append_turns_many(self, turns: Sequence[tuple[str, str, Sequence[Message]]]) -> None:
        """One round trip for the batch: one MULTI/EXEC, so each session's push, trim and expiry stay atomic."""
        if not turns:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for tenant, session_id, messages in turns:
                    key = self.key(tenant, session_id)
                    pipe.rpush(key, *(orjson.dumps(m.model_dump(mode="json")) for m in messages))
                    pipe.ltrim(key, -self.max_messages, -1)
                    pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis memory write failed: {exc}") from exc


@dataclass
class MemoryConversationMemory:
    max_turns: int = 10
    sessions: dict[tuple[str, str], list[Message]] = field(default_factory=dict)

    async def recent_turns_many(self, sessions: Sequence[tuple[str, str]]) -> list[list[Message]]:
        return [list(self.sessions.get(s, [])[-2 * self.max_turns:]) for s in sessions]

    async def append_turn(self, tenant: str, session_id: str, messages: Sequence[Message]) -> None:
        self.sessions.setdefault((tenant, session_id), []).extend(messages)

    async def append_turns_many(self, turns: Sequence[tuple[str, str, Sequence[Message]]]) -> None:
        for tenant, session_id, messages in turns:
            await self.append_turn(tenant, session_id, messages)


def tool_messages(env: Envelope) -> list[Message]:
    """The tool use between a request's prompt and its answer, as chat messages: per step, the assistant turn that
    asked (its calls by id and name) and one ``role: tool`` message per call with what the model read — the tools
    stage's records (server-executed: refusals and errors included), or the caller's tool messages (client-executed).
    """
    messages: list[Message] = []
    if env.tools is not None and env.tools.calls:
        for step in sorted({record.step for record in env.tools.calls}):
            records = [r for r in env.tools.calls if r.step == step]
            messages.append(Message(role="assistant", content="",
                                    tool_calls=[ToolCall(id=r.call_id, name=r.name) for r in records]))
            messages += [Message(role="tool", content=r.content, tool_call_id=r.call_id) for r in records]
    last_user = max((i for i, m in enumerate(env.request.messages) if m.role == "user"), default=-1)
    messages += [m for m in env.request.messages[last_user + 1:]
                 if m.role == "tool" or (m.role == "assistant" and m.tool_calls)]
    return messages


async def append_turns(batch: list[Envelope], store: ConversationMemory) -> int:
    """Record the user prompt, its tool use (:func:`tool_messages`) and the answer of each answered request that has
    a session; returns how many. A later turn's model sees them (``ModelCall.history``), tool results included.

    Call it after the answer is final (post-process). Cache hits count: the user saw that answer. The batch's turns
    go to the store in one call (one Redis round trip, not one per session). A store error is logged and swallowed:
    losing a turn of memory must not fail the request.
    """
    turns: list[tuple[str, str, list[Message]]] = []
    for env in batch:
        session = env.request.session_id
        if not session or env.answer is None:
            continue
        if env.outcome is not None and env.outcome.status not in (Status.OK, Status.CACHE_HIT):
            continue
        turns.append((env.tenant, session, [Message(role="user", content=env.request.prompt), *tool_messages(env),
                                            Message(role="assistant", content=env.answer)]))
    if not turns:
        return 0
    try:
        await store.append_turns_many(turns)
    except BackendError as exc:
        log.warning("could not record %d turn(s) of sessions %s: %s", len(turns),
                    sorted({f"{tenant}/{session}" for tenant, session, _ in turns})[:5], exc)
        return 0
    return len(turns)
