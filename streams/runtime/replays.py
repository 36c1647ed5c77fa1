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

What is audited is what was answered: a request worked twice travels on to the audit stage saying what its first
response said — status, answer, model, usage, cost, savings and that response's seal (:func:`as_answered`) — so the
audit log, the responses and the ledger agree on a request that a crash made the pipeline work again. (In a chain,
a crash after a cycle's responses went out and before its audit records were stored repeats the whole route, model
call included, and the second call may cost another amount than the first, billed one.)

A missing or unreachable Redis never blocks a response: the memory then claims nothing, and responses go out as
answered, unmarked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from redis.asyncio import Redis

from schemas.envelope import CacheResult, Envelope, ModelResult, Outcome, ToolsResult
from schemas.errors import BadEvent
from schemas.response import Response
from streams.runtime.codec import decode_as, encode
from workers.decisions import envelope_claims, response_claims

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
        # request id, response, topics, the envelope answered (None: nothing travels on)
        self.pending: list[tuple[str, bytes, Sequence[str], Envelope | None]] = []

    def add(self, request_id: str, response: bytes, topics: Sequence[str], *,
            envelope: Envelope | None = None) -> None:
        self.pending.append((request_id, response, topics, envelope))

    async def publish(self, publisher: Publisher) -> list[tuple[Envelope, bytes]]:
        """Publish the batch's responses; return the envelopes of those that went out as replays, each with the
        first response (its bytes) — what the request was answered with, and so what it is audited as."""
        if not self.pending:
            return []
        pending, self.pending = self.pending, []
        first: dict[str, bytes] = {}
        for rid, response, _topics, _env in pending:
            first.setdefault(rid, response)  # a request twice in one batch: its first response here is the first
        earlier = await self.memory.claim(first)
        published: set[str] = set()
        answered_before: list[tuple[Envelope, bytes]] = []
        for rid, response, topics, env in pending:
            if rid in earlier:
                value = replay_of(earlier[rid], response)
            elif rid in published:
                value = replay_of(first[rid], response)
            else:
                value = response
            if value is not response and env is not None:
                answered_before.append((env, earlier.get(rid, first[rid])))
            published.add(rid)
            for topic in topics:
                publisher.publish(topic, value, key=rid.encode())
        return answered_before


def replay_of(first: bytes, fresh: bytes) -> bytes:
    """The first response again, marked; the fresh one marked if the first is unreadable (an older memory's "1")."""
    replay = as_replay(first) or as_replay(fresh)
    return replay if replay is not None else fresh


def as_answered(env: Envelope, first_response: bytes) -> bool:
    """Make a request worked again say what its first response said, so it is audited as it was answered: the
    outcome (status, code, message, the stage that ended it and that response's seal), the answer, the model, its
    usage and cost, the tool calls' cost and the cache's savings. The rest (hops, policy, retrieval, each tool call)
    stays this pass's. False, and ``env`` unchanged, when the first response cannot be read, carries no seal (an older
    memory's marker; a pass without keys) or does not say the same claims once written on the envelope.

    What the seal covers (:func:`~workers.decisions.response_claims`) is the same list for an envelope and its
    response, so the first response's signature verifies on the rewritten envelope at every stage after this one."""
    try:
        first = decode_as(first_response, Response)
    except BadEvent:
        return False
    if first.signature is None or first.request_id != env.request_id:
        return False
    before = (env.outcome, env.answer, env.model, env.tools, env.cache)
    env.outcome = Outcome(status=first.status, code=first.code, message=first.message,
                          retry_after_s=first.retry_after_s, stage=first.stage, key_id=first.key_id,
                          signature=first.signature)
    env.answer = first.answer
    if first.model is None:  # a response names a model exactly when its envelope had a model section
        env.model = None
    else:
        env.model = (env.model or ModelResult()).model_copy(update={
            "model": first.model, "usage": first.usage, "cost_micros": first.cost_micros - first.tool_cost_micros,
            "step_cost_micros": [s.cost_micros for s in first.steps if s.kind == "model"],
            "learn": first.route, "cascade_model": first.cascade_model,
            "cascade_cost_micros": first.cascade_cost_micros})
    if env.tools is not None:
        env.tools = env.tools.model_copy(update={"cost_micros": first.tool_cost_micros})
    elif first.tool_cost_micros:
        env.tools = ToolsResult(cost_micros=first.tool_cost_micros)
    if first.cache is None and not first.saved_micros:
        env.cache = None
    elif env.cache is not None:
        env.cache = env.cache.model_copy(update={"outcome": first.cache or env.cache.outcome,
                                                 "saved_micros": first.saved_micros})
    else:
        env.cache = CacheResult.model_validate({"outcome": first.cache or "miss", "saved_micros": first.saved_micros})
    if envelope_claims(env) == response_claims(first):
        return True
    log.warning("request %s answered before: its first response does not map onto its envelope; audited as "
                "worked this time", env.request_id)
    env.outcome, env.answer, env.model, env.tools, env.cache = before
    return False
