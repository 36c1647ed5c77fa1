"""Co-located stages (a chain): the members hand requests over in memory, everything else goes to Kafka."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.envelope import DEFAULT_ROUTE, STAGES, Envelope, Status
from schemas.errors import ConfigError
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.runtime.chain import ChainPublisher, ChainRunner, member_topics
from streams.runtime.codec import decode, decode_as, encode
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Stage
from streams.runtime.topics import Topology
from streams.settings import load_settings
from streams.stages import registry
from streams.stages.registry import resolve_units
from streams.testing import MemoryTopics, as_records
from workers.context import StageContext, SystemClock

SETTINGS = load_settings(topic_prefix="t")
TOPICS = Topology("t")


def chain_of(stages: list[Stage[Any]], kafka: MemoryTopics | None = None) -> tuple[ChainRunner, MemoryTopics]:
    kafka = kafka or MemoryTopics()
    shared = ChainPublisher(kafka, member_topics(stages, TOPICS))
    replays = MemoryReplayMemory()
    members = []
    for stage in stages:
        base = StageContext(stage=stage.name, clock=SystemClock(), publisher=shared, topic_prefix="t")
        members.append(StageRunner(stage=stage, ctx=stage.memory_context(base), settings=SETTINGS, topology=TOPICS,
                                   publisher=shared, clock=SystemClock(), replays=replays))
    return ChainRunner(members, shared, kafka, SETTINGS, TOPICS), kafka


def ingress(envs: list[Envelope]) -> dict[TopicPartition, Any]:
    topic = TOPICS.ingress()
    return {TopicPartition(topic, 0): as_records(topic, [(e.request_id.encode(), encode(e)) for e in envs])}


async def test_the_whole_route_as_one_chain_answers_and_audits_every_request() -> None:
    chain, kafka = chain_of(list(registry.STAGES))
    envs = [new_envelope(f"question {i}?", tenant="acme", settings=SETTINGS) for i in range(6)]
    await chain.handle(ingress(envs))
    responses = [decode_as(v, Response) for v in kafka.values(TOPICS.responses)]
    assert sorted(r.request_id for r in responses) == sorted(e.request_id for e in envs)
    assert all(r.status is Status.OK for r in responses)
    assert [h.stage for h in responses[0].hops] == list(DEFAULT_ROUTE[:-1])
    assert len(kafka.values(TOPICS.audit_log)) == 6
    for stage in DEFAULT_ROUTE:  # no hop inside the chain touched Kafka
        assert not any(kafka.values(t) for t in TOPICS.stage_lanes(stage))
    assert kafka.flushes == 1  # one acknowledged produce per cycle


async def test_a_partial_chain_produces_to_the_first_stage_outside_it() -> None:
    chain, kafka = chain_of([registry.stage("retrieval"), registry.stage("policy"), registry.stage("cache")])
    env = new_envelope("hello", tenant="acme", settings=SETTINGS)
    await chain.handle(ingress([env]))
    (forwarded,) = [decode(v) for v in kafka.values(TOPICS.stage("model"))]
    assert [h.stage for h in forwarded.hops] == ["retrieval", "policy", "cache"]
    assert forwarded.route[0] == "model"


async def test_a_route_that_revisits_a_member_completes_in_one_cycle() -> None:
    chain, kafka = chain_of([registry.stage("retrieval"), registry.stage("policy"), registry.stage("cache")])
    env = new_envelope("hello", tenant="acme", settings=SETTINGS)
    env.route = ["policy", "retrieval", "cache", "model", "postprocess", "audit"]  # as with a remote embedder
    await chain.handle(ingress([env]))
    (forwarded,) = [decode(v) for v in kafka.values(TOPICS.stage("model"))]
    assert [h.stage for h in forwarded.hops] == ["retrieval", "policy", "retrieval", "cache"]


async def test_bad_bytes_in_a_chain_are_dead_lettered_and_the_rest_goes_on() -> None:
    chain, kafka = chain_of(list(registry.STAGES))
    good = new_envelope("fine", tenant="acme", settings=SETTINGS)
    topic = TOPICS.ingress()
    await chain.handle({TopicPartition(topic, 0): as_records(topic, [(None, b"junk"),
                                                                     (b"k", encode(good))])})
    assert len(kafka.values(TOPICS.deadletter)) == 1
    assert [decode_as(v, Response).request_id for v in kafka.values(TOPICS.responses)] == [good.request_id]


def test_worker_arguments_name_chains_with_plus() -> None:
    units = resolve_units(["retrieval+policy+cache", "model", "postprocess+audit"])
    assert [[s.name for s in u] if isinstance(u, list) else u.name for u in units] == [
        ["retrieval", "policy", "cache"], "model", ["postprocess", "audit"]]
    # every stage, the tools stage included (visited only when a model asks for tools)
    assert [s.name for s in resolve_units(["all+"])[0]] == list(STAGES)  # type: ignore[union-attr]


@pytest.mark.parametrize("names", [["all+", "policy"], ["all", "model"], ["policy", "all+"]])
def test_all_and_all_plus_stand_alone(names: list[str]) -> None:
    with pytest.raises(ConfigError, match="stand alone"):
        resolve_units(names)


class SendingTopics(MemoryTopics):
    """A publisher that can ship early (as KafkaPublisher.send does): what each ``send`` shipped, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[list[str]] = []

    async def send(self) -> None:
        self.sends.append([topic for topic, _value, _key in self.pending])
        await self.flush()
        self.flushes -= 1  # a send is not an acknowledged flush


async def test_a_response_is_sent_before_the_audit_behind_it_runs() -> None:
    kafka = SendingTopics()
    chain, _ = chain_of(list(registry.STAGES), kafka)
    envs = [new_envelope(f"question {i}?", tenant="acme", settings=SETTINGS) for i in range(3)]
    await chain.handle(ingress(envs))
    shipped = [topics for topics in kafka.sends if topics]
    # the responses leave with the member that ended the requests, the audit records with the audit, later
    assert set(shipped[0]) == {TOPICS.responses}
    assert TOPICS.audit_log in shipped[-1]
    assert len(kafka.values(TOPICS.responses)) == 3 and len(kafka.values(TOPICS.audit_log)) == 3
    assert kafka.flushes == 1  # still one acknowledged flush per cycle, before the commit
