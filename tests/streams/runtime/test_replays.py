"""A request answered again gets its first response again, byte for byte, marked ``replay``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from schemas.envelope import CacheResult, Envelope, ModelResult, Status, ToolsResult, Usage
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import decode_as, encode
from streams.runtime.replays import (
    Answers,
    MemoryReplayMemory,
    NoReplayMemory,
    RedisReplayMemory,
    as_answered,
    as_replay,
)
from streams.runtime.topics import topology
from streams.settings import Settings, load_settings
from tests.kafka_helpers import read_until
from workers.decisions import DecisionKeys, outcome_verifies, sign_outcome


@dataclass
class Published:
    records: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.records.append((topic, value, key))


def response(rid: str, answer: str, *, completed_at_ns: int = 1) -> bytes:
    return encode(Response(request_id=rid, tenant="acme", status=Status.OK, answer=answer, cost_micros=7,
                           created_at_ns=1, completed_at_ns=completed_at_ns))


def marked(first: bytes) -> bytes:
    return first.replace(b'"replay":false', b'"replay":true')


async def answer(memory: MemoryReplayMemory | NoReplayMemory | RedisReplayMemory,
                 *batch: tuple[str, bytes]) -> list[bytes]:
    answers, out = Answers(memory), Published()
    for rid, value in batch:
        answers.add(rid, value, ["t.responses", "t.replies.me"])
    await answers.publish(out)
    assert [key for _t, _v, key in out.records] == [rid.encode() for rid, _ in batch for _ in range(2)]
    return [value for topic, value, _k in out.records if topic == "t.responses"]


def test_a_replay_differs_from_the_first_only_in_its_marker() -> None:
    first = response("r1", "hello", completed_at_ns=123_456_789)
    assert as_replay(first) == marked(first) != first
    assert as_replay(b"1") is None  # what an older replay memory stored


async def test_the_second_answer_to_a_request_is_the_first_one_again() -> None:
    memory = MemoryReplayMemory()
    first = response("r1", "the first answer", completed_at_ns=10)
    assert await answer(memory, ("r1", first)) == [first]
    again = await answer(memory, ("r1", response("r1", "a different answer", completed_at_ns=20)),
                         ("r2", response("r2", "other")))
    assert again == [marked(first), response("r2", "other")]


async def test_a_request_twice_in_one_batch_is_answered_once_then_replayed() -> None:
    first, second = response("r1", "one"), response("r1", "two")
    assert await answer(MemoryReplayMemory(), ("r1", first), ("r1", second)) == [first, marked(first)]


async def test_without_a_memory_responses_go_out_as_answered() -> None:
    fresh = response("r1", "hello")
    assert await answer(NoReplayMemory(), ("r1", fresh), ("r1", fresh)) == [fresh, marked(fresh)]


async def test_the_envelopes_answered_before_come_back_with_their_first_response() -> None:
    memory, out = MemoryReplayMemory(), Published()
    first = response("r1", "first")
    memory.responses["r1"] = first
    answers = Answers(memory)
    a, b, c = (new_envelope("q", tenant="acme", settings=SETTINGS) for _ in range(3))
    answers.add("r1", response("r1", "again"), ["t.responses"], envelope=a)
    answers.add("r2", response("r2", "new"), ["t.responses"], envelope=b)
    answers.add("r2", response("r2", "twice"), ["t.responses"], envelope=c)
    answers.add("r3", response("r3", "nothing travels on"), ["t.responses"])
    assert await answers.publish(out) == [(a, first), (c, response("r2", "new"))]


# ------------------------------------------------------------------------------------- audited as answered
SETTINGS = load_settings(topic_prefix="t")
KEYS = DecisionKeys.parse(SETTINGS.decision_keys.get_secret_value())


def ended(*, model: ModelResult | None = None, cache: CacheResult | None = None, tools: ToolsResult | None = None,
          answer: str | None = "an answer", status: Status = Status.OK, code: str = "") -> Envelope:
    env = new_envelope("what is the capital of France?", tenant="acme", settings=SETTINGS)
    env.request_id = "r1"
    env.model, env.cache, env.tools, env.answer = model, cache, tools, answer
    env.finish(status, code=code, stage="postprocess")
    sign_outcome(env, KEYS)
    return env


MODEL = ModelResult(model="nano-us", backend="local", usage=Usage(input_tokens=9, output_tokens=30), cost_micros=41)
PASSES = {
    "model": lambda: ended(model=MODEL.model_copy(), cache=CacheResult(outcome="miss")),
    "other model": lambda: ended(model=ModelResult(model="large-eu", usage=Usage(input_tokens=9, output_tokens=3),
                                                   cost_micros=900, cascade_model="nano-us",
                                                   cascade_cost_micros=12), cache=CacheResult(outcome="miss")),
    "cache hit": lambda: ended(cache=CacheResult(outcome="hit", kind="exact", saved_micros=41)),
    "tools": lambda: ended(model=MODEL.model_copy(update={"step_cost_micros": [20, 21]}),
                           tools=ToolsResult(cost_micros=300, steps=1)),
    "denied": lambda: ended(answer=None, status=Status.DENIED, code="budget_exceeded"),
}


@pytest.mark.parametrize("first_pass", list(PASSES))
@pytest.mark.parametrize("second_pass", list(PASSES))
def test_a_request_worked_again_says_what_its_first_response_said(first_pass: str, second_pass: str) -> None:
    first = Response.from_envelope(PASSES[first_pass](), completed_at_ns=10)
    env = PASSES[second_pass]()
    assert as_answered(env, encode(first))
    assert outcome_verifies(env, KEYS)  # the first response's seal holds on the envelope that says the same
    again = Response.from_envelope(env, completed_at_ns=10)
    same = {"status", "code", "message", "stage", "answer", "model", "usage", "cost_micros", "tool_cost_micros",
            "saved_micros", "cache", "key_id", "signature", "cascade_model", "cascade_cost_micros"}
    assert again.model_dump(include=same) == first.model_dump(include=same)


@pytest.mark.parametrize("stored", [b"1", b"not json", encode(Response(request_id="r1", tenant="acme",
                                                                        status=Status.OK, answer="unsealed"))])
def test_what_cannot_vouch_for_the_first_answer_changes_nothing(stored: bytes) -> None:
    env = PASSES["model"]()
    before = env.model_dump()
    assert not as_answered(env, stored)
    assert env.model_dump() == before


def test_another_request_s_response_changes_nothing() -> None:
    other = PASSES["cache hit"]()
    other.request_id = "r2"
    sign_outcome(other, KEYS)
    env = PASSES["model"]()
    before = env.model_dump()
    assert not as_answered(env, encode(Response.from_envelope(other, completed_at_ns=1)))
    assert env.model_dump() == before


# ------------------------------------------------------------------------------------------------ real Redis
@pytest.fixture
async def redis_memory(settings: Settings) -> AsyncIterator[RedisReplayMemory]:
    client = Redis.from_url(settings.redis_url)
    memory = RedisReplayMemory(client, namespace=f"t{uuid.uuid4().hex[:10]}", ttl_s=60)
    yield memory
    keys = [key async for key in client.scan_iter(f"{memory.namespace}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.integration
async def test_redis_keeps_the_first_response_with_a_ttl(redis_memory: RedisReplayMemory) -> None:
    first = response("r1", "first")
    assert await answer(redis_memory, ("r1", first)) == [first]
    assert await answer(redis_memory, ("r1", response("r1", "second"))) == [marked(first)]
    assert 0 < await redis_memory.client.ttl(redis_memory.key("r1")) <= 60


@pytest.mark.integration
async def test_an_older_memory_marker_still_marks_the_replay(redis_memory: RedisReplayMemory) -> None:
    await redis_memory.client.set(redis_memory.key("r1"), b"1")  # written by the previous release
    fresh = response("r1", "again")
    assert await answer(redis_memory, ("r1", fresh)) == [marked(fresh)]


async def test_an_unreachable_redis_never_holds_a_response_back() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        fresh = response("r1", "hello")
        assert await answer(RedisReplayMemory(client, namespace="t", ttl_s=60), ("r1", fresh)) == [fresh]
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_a_request_answered_again_gets_its_first_response_byte_for_byte(pipeline: Settings) -> None:
    env = new_envelope("answer me twice", tenant="acme", settings=pipeline)
    async with TollwayClient(pipeline) as submitter:
        (first,) = await submitter.complete_envelopes([env])
        (again,) = await submitter.complete_envelopes([env])  # what a redelivery after a crash looks like downstream
    assert not first.replay and again.replay
    records = await read_until(pipeline, topology(pipeline).responses, lambda rs: len(rs) >= 2)
    raw = [r.value for r in records if decode_as(r.value, Response).request_id == env.request_id]
    assert len(raw) == 2 and raw[1] == marked(raw[0]), "the second pass (served from the cache) is not re-sent"


@pytest.mark.parametrize("args", [
    ("SET", "k", b"v", "EX", 60),
    (b"XADD", "log", "MAXLEN", "~", 1000, "*", "k", "kéy", "x", 1_700_000_000_000, "v", b"\x00\xff" * 600),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"me"),
    ("ZADD", "z", 0.1, "a", 1e300, "b", -2.5, "c"),
    ("SET", "k", 10**30),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
])
def test_hiredis_packing_writes_the_bytes_redis_py_writes(args: tuple[object, ...]) -> None:
    from redis.asyncio.connection import Connection

    from streams.runtime.connections import HiredisPackConnection

    def joined(chunks: list[bytes]) -> bytes:
        return b"".join(bytes(chunk) for chunk in chunks)

    assert joined(HiredisPackConnection().pack_command(*args)) == joined(Connection().pack_command(*args))


def test_hiredis_packing_refuses_what_redis_py_refuses() -> None:
    from redis.exceptions import DataError

    from streams.runtime.connections import HiredisPackConnection

    with pytest.raises(DataError):
        HiredisPackConnection().pack_command("SET", "k", True)
