"""The running pipeline fills the cache after the model answers: the same question again is a cache hit."""

from __future__ import annotations

import pytest

from schemas.envelope import Message, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings
from streams.stages.cache import redis_client
from workers.memory import RedisMemory

pytestmark = pytest.mark.integration


async def test_second_identical_request_is_served_from_cache(pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as submitter:
        (first,) = await submitter.complete_envelopes([new_envelope("How long do refunds take?", tenant="acme",
                                                          settings=pipeline)])
        (second,) = await submitter.complete_envelopes([new_envelope("How long do refunds take?", tenant="acme",
                                                           settings=pipeline)])
        (other_tenant,) = await submitter.complete_envelopes([new_envelope("How long do refunds take?", tenant="globex",
                                                                 settings=pipeline)])
    assert first.status is Status.OK and first.cost_micros > 0
    assert second.status is Status.CACHE_HIT, second
    assert second.answer == first.answer
    assert second.cost_micros == 0 and second.saved_micros == first.cost_micros
    assert "model" not in [h.stage for h in second.hops]
    assert other_tenant.status is Status.OK, "a tenant never gets another tenant's cached answer"


async def test_session_memory_carries_turns(pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as submitter:
        (first,) = await submitter.complete_envelopes([new_envelope("My order number is 4411.", tenant="acme",
                                                          settings=pipeline, session_id="s-1")])
        (second,) = await submitter.complete_envelopes([new_envelope("What did I just tell you?", tenant="acme",
                                                           settings=pipeline, session_id="s-1")])
    assert first.status is Status.OK and second.status is Status.OK
    client = redis_client(pipeline)
    try:
        turns = await RedisMemory(client, namespace=pipeline.topic_prefix).recent_turns("acme", "s-1")
    finally:
        await client.aclose()
    contents = [t.content for t in turns]
    assert "My order number is 4411." in contents and "What did I just tell you?" in contents
    assert first.answer in contents, "the assistant's answer is remembered too"


async def test_a_batch_of_turns_is_one_transaction_and_keeps_each_session_apart(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        memory = RedisMemory(client, namespace=settings.topic_prefix, ttl_s=60, max_turns=2)
        ask = [Message(role="user", content=f"question {i}") for i in range(4)]
        await memory.append_turns_many([("acme", "s-1", ask[:2]), ("globex", "s-1", ask[2:3]),
                                        ("acme", "s-1", ask[2:]), ("acme", "s-2", ask[:1])])
        acme, globex, other = await memory.recent_turns_many([("acme", "s-1"), ("globex", "s-1"), ("acme", "s-2")])
        # in order, trimmed to the newest 2 turns (4 messages), per tenant and session, with the TTL set
        assert [m.content for m in acme] == ["question 0", "question 1", "question 2", "question 3"]
        assert [m.content for m in globex] == ["question 2"] and [m.content for m in other] == ["question 0"]
        await memory.append_turns_many([("acme", "s-1", ask[:1])])
        (acme,) = await memory.recent_turns_many([("acme", "s-1")])
        assert [m.content for m in acme] == ["question 1", "question 2", "question 3", "question 0"]
        assert 0 < await client.ttl(memory.key("acme", "s-1")) <= 60
    finally:
        await client.aclose()
