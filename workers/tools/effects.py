"""Exactly-once effect for side-effecting tools under at-least-once delivery.

A batch of the tools stage can be delivered twice (a crash between produce and commit, a rebalance). A read-only tool
simply runs again; a side-effecting one (a refund, a ticket update) must not. Before running one, the stage
``claim``s the call's effect key (:func:`effect_key`: request, step, position, tool and arguments digest — stable
even if a redelivered model step renamed its call ids):

* ``Claim.DONE`` with the stored record: the effect already happened; its result is reused (``replayed``);
* ``Claim.IN_DOUBT``: an earlier attempt claimed it and never recorded a result (it crashed mid-call, or is still
  running elsewhere). Whether the effect happened is unknown, so it is *not* run again: the model gets a
  ``tool_effect_in_doubt`` error and an operator can look the key up — at most once, never twice;
* ``Claim.NEW``: this attempt owns the call; it runs the tool, then ``complete``s the key with the record.

Redis: ``SET key pending NX EX ttl`` claims atomically across workers; ``complete`` overwrites it with the record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.envelope import ToolCallRecord
from schemas.errors import BackendError

_PENDING = b"pending"


class Claim(Enum):
    NEW = "new"
    DONE = "done"
    IN_DOUBT = "in_doubt"


def arguments_digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


def effect_key(request_id: str, step: int, position: int, tool: str, arguments: dict[str, Any]) -> str:
    return f"{request_id}:{step}:{position}:{tool}:{arguments_digest(arguments)[:32]}"


class EffectStore(Protocol):
    async def claim(self, key: str) -> tuple[Claim, ToolCallRecord | None]: ...

    async def complete(self, key: str, record: ToolCallRecord) -> None: ...


@dataclass
class MemoryEffectStore:
    entries: dict[str, bytes] = field(default_factory=dict)

    async def claim(self, key: str) -> tuple[Claim, ToolCallRecord | None]:
        found = self.entries.get(key)
        if found is None:
            self.entries[key] = _PENDING
            return Claim.NEW, None
        if found == _PENDING:
            return Claim.IN_DOUBT, None
        return Claim.DONE, ToolCallRecord.model_validate_json(found)

    async def complete(self, key: str, record: ToolCallRecord) -> None:
        self.entries[key] = record.model_dump_json().encode()


class RedisEffectStore:
    """Claims and results under ``<prefix>:tooleffect:<key>``, kept ``ttl_s`` (longer than any redelivery)."""

    def __init__(self, client: Redis, *, prefix: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, key: str) -> str:
        return f"{self.prefix}:tooleffect:{key}"

    async def claim(self, key: str) -> tuple[Claim, ToolCallRecord | None]:
        try:
            if await self.client.set(self._key(key), _PENDING, nx=True, ex=self.ttl_s):
                return Claim.NEW, None
            found = await self.client.get(self._key(key))
        except (RedisError, OSError) as exc:
            raise BackendError(f"the tool effect store is unreachable: {exc}") from exc
        if found is None:  # expired between the two commands: claim again
            return await self.claim(key)
        if found == _PENDING:
            return Claim.IN_DOUBT, None
        return Claim.DONE, ToolCallRecord.model_validate_json(found)

    async def complete(self, key: str, record: ToolCallRecord) -> None:
        try:
            await self.client.set(self._key(key), record.model_dump_json().encode(), ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise BackendError(f"the tool effect store is unreachable: {exc}") from exc
