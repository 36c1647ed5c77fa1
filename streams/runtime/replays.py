"""Remembering which requests were already answered, so a redelivered response says it is a replay.

At-least-once delivery means a crash between producing a batch and committing its offsets makes the next worker
answer those requests again. The answer is the same (the audit stage and the ledger count each request once), but a
consumer deserves to know it is a repeat: the runner asks this memory before publishing responses, marks
``replay=True`` for ids it has seen, and records the batch's ids before publishing them — so every second delivery
is marked (a crash before the acks can mark a first delivery too, the safe side of the trade).

A missing or unreachable Redis never blocks a response: the marker then reports nothing as seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis

log = logging.getLogger(__name__)


class ReplayMemory(Protocol):
    async def seen(self, request_ids: Sequence[str]) -> set[str]: ...

    async def remember(self, request_ids: Sequence[str]) -> None: ...


class NoReplayMemory:
    async def seen(self, request_ids: Sequence[str]) -> set[str]:
        return set()

    async def remember(self, request_ids: Sequence[str]) -> None:
        return None


class MemoryReplayMemory:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def seen(self, request_ids: Sequence[str]) -> set[str]:
        return self.ids.intersection(request_ids)

    async def remember(self, request_ids: Sequence[str]) -> None:
        self.ids.update(request_ids)


class RedisReplayMemory:
    def __init__(self, client: Redis, *, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def key(self, request_id: str) -> str:
        return f"{self.namespace}:responded:{request_id}"

    async def seen(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        try:
            found = await self.client.mget([self.key(rid) for rid in request_ids])
        except Exception as exc:  # redis-py raises many types; a response must never wait on this
            log.warning("replay memory unavailable, responses go out unmarked: %s", exc)
            return set()
        return {rid for rid, value in zip(request_ids, found, strict=True) if value is not None}

    async def remember(self, request_ids: Sequence[str]) -> None:
        if not request_ids:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for rid in request_ids:
                    pipe.set(self.key(rid), b"1", ex=self.ttl_s)
                await pipe.execute()
        except Exception as exc:
            log.warning("could not remember %d responded request(s): %s", len(request_ids), exc)
