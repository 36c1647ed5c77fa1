"""Answering each request once: a redelivered request gets its first response again, marked as a replay.

At-least-once delivery means a crash between producing a batch and committing its offsets (or a rebalance that moves
a partition mid-batch) makes a worker answer those requests again — and the second pass need not reach the same
answer (the cache now holds the first one, a budget has moved, the model is not deterministic). The audit stage and
the ledger count each request once, by its first record; a consumer of the responses deserves the same: the replay
memory stores the bytes of each request's first response (in Redis, keyed by request id, for as long as the work
topics keep records) and every later response to that request is those bytes again with ``replay: true`` — the only
byte that differs.

The runner hands a batch's responses to :class:`Answers` and publishes them through it: one atomic round trip claims
every request id of the batch (store the response unless one is stored already, and read what is stored), so two
workers answering the same request at once (a rebalance) publish the same bytes too. The claim comes before the
responses go out, so a crash after it and before the acknowledgements marks the only delivery as a replay as well —
a harmless "you may have seen this" rather than an unmarked, different duplicate.

A missing or unreachable Redis never blocks a response: the memory then claims nothing, and responses go out as
answered, unmarked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from redis.asyncio import Redis

from schemas.errors import BadEvent
from schemas.response import Response
from streams.runtime.codec import decode_as, encode

log = logging.getLogger(__name__)


class ReplayMemory(Protocol):
    async def claim(self, responses: Mapping[str, bytes]) -> dict[str, bytes]:
        """Store each request's response unless one is stored already; return the responses that were (by request
        id): those requests were answered before."""
        ...


class Publisher(Protocol):
    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None: ...


class NoReplayMemory:
    async def claim(self, responses: Mapping[str, bytes]) -> dict[str, bytes]:
        return {}


class MemoryReplayMemory:
    def __init__(self) -> None:
        self.responses: dict[str, bytes] = {}

    async def claim(self, responses: Mapping[str, bytes]) -> dict[str, bytes]:
        earlier = {rid: self.responses[rid] for rid in responses if rid in self.responses}
        for rid, value in responses.items():
            self.responses.setdefault(rid, value)
        return earlier


class RedisReplayMemory:
    def __init__(self, client: Redis, *, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def key(self, request_id: str) -> str:
        return f"{self.namespace}:responded:{request_id}"

    async def claim(self, responses: Mapping[str, bytes]) -> dict[str, bytes]:
        if not responses:
            return {}
        try:
            # SET NX GET (Redis ≥ 7.0), one command per request: atomic on its own, so concurrent claims agree on
            # the first response — nil when this claim stored it, else what an earlier one stored. (It was SET NX
            # then GET inside a MULTI: three times the commands for the same answer.)
            async with self.client.pipeline(transaction=False) as pipe:
                for rid, value in responses.items():
                    pipe.set(self.key(rid), value, nx=True, ex=self.ttl_s, get=True)
                results = await pipe.execute()
        except Exception as exc:  # redis-py raises many types; a response must never wait on this
            log.warning("replay memory unavailable, %d response(s) go out unmarked: %s", len(responses), exc)
            return {}
        return {rid: value for rid, value in zip(responses, results, strict=True) if value is not None}


def as_replay(response: bytes) -> bytes | None:
    """The same response with ``replay: true``; None when the bytes are not a response (an older memory's marker)."""
    try:
        first = decode_as(response, Response)
    except BadEvent:
        return None
    return encode(first.model_copy(update={"replay": True}))


class Answers:
    """One batch's responses, published once their request ids are claimed in the replay memory."""

    def __init__(self, memory: ReplayMemory) -> None:
        self.memory = memory
        self.pending: list[tuple[str, bytes, Sequence[str]]] = []  # request id, response, topics

    def add(self, request_id: str, response: bytes, topics: Sequence[str]) -> None:
        self.pending.append((request_id, response, topics))

    async def publish(self, publisher: Publisher) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        first: dict[str, bytes] = {}
        for rid, response, _topics in pending:
            first.setdefault(rid, response)  # a request twice in one batch: its first response here is the first
        earlier = await self.memory.claim(first)
        published: set[str] = set()
        for rid, response, topics in pending:
            if rid in earlier:
                value = replay_of(earlier[rid], response)
            elif rid in published:
                value = replay_of(first[rid], response)
            else:
                value = response
            published.add(rid)
            for topic in topics:
                publisher.publish(topic, value, key=rid.encode())


def replay_of(first: bytes, fresh: bytes) -> bytes:
    """The first response again, marked; the fresh one marked if the first is unreadable (an older memory's "1")."""
    replay = as_replay(first) or as_replay(fresh)
    return replay if replay is not None else fresh
