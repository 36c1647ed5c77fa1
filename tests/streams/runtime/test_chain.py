"""Co-located stages (a chain): the members hand requests over in memory, everything else goes to Kafka."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from schemas.envelope import DEFAULT_ROUTE, STAGES, Envelope, Status, Usage
from schemas.errors import ConfigError
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.runtime.chain import ChainPublisher, ChainRunner, member_topics
from streams.runtime.codec import decode, decode_as, encode
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.runner import OffsetCommitter, PacedCommitter, SendOnFlush, StageRunner
from streams.runtime.stage import Stage
from streams.runtime.topics import Topology
from streams.settings import load_settings
from streams.stages import registry
from streams.stages.registry import resolve_units
from streams.testing import MemoryTopics, as_records
from tests.streams.runtime.loop_fakes import GatedTopics, ScriptedConsumer, until
from workers.audit.record import sha256_hex
from workers.context import StageContext, SystemClock
from workers.decisions import response_claims

SETTINGS = load_settings(topic_prefix="t")
TOPICS = Topology("t")


def chain_of(stages: list[Stage[Any]], kafka: MemoryTopics | None = None,
             replays: MemoryReplayMemory | None = None) -> tuple[ChainRunner, MemoryTopics]:
    kafka = kafka or MemoryTopics()
    shared = ChainPublisher(kafka, member_topics(stages, TOPICS))
    replays = replays or MemoryReplayMemory()
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


async def test_a_request_worked_again_after_a_crash_is_audited_as_it_was_answered() -> None:
    """A crash after a cycle's responses went out and before its audit records were stored makes the chain work the
    request again, model call included: the response is the first one again (a replay), and the audit records what
    that first response said — its answer, model, usage and cost — not the second pass's, so the audit log and the
    ledger (which bills the first response) agree."""
    env = new_envelope("what does the second pass cost?", tenant="acme", settings=SETTINGS)
    chain, kafka = chain_of(list(registry.STAGES))
    await chain.handle(ingress([env]))
    (worked,) = [decode_as(v, Response) for v in kafka.values(TOPICS.responses)]
    keys = chain.members[0].keys
    # What the first pass answered before the crash: another answer, another cost (a model is not deterministic).
    first = worked.model_copy(update={"answer": "the first pass's answer", "cost_micros": worked.cost_micros + 1_234,
                                      "usage": Usage(input_tokens=11, output_tokens=22), "completed_at_ns": 5})
    key_id, signature = keys.sign(response_claims(first))
    first = first.model_copy(update={"key_id": key_id, "signature": signature})
    memory = MemoryReplayMemory()
    memory.responses[env.request_id] = encode(first)

    again, kafka = chain_of(list(registry.STAGES), replays=memory)
    await again.handle(ingress([env]))
    (replayed,) = [decode_as(v, Response) for v in kafka.values(TOPICS.responses)]
    assert replayed == first.model_copy(update={"replay": True})
    (audited,) = [orjson.loads(v) for v in kafka.values(TOPICS.audit_log)]
    assert audited["source"] == "pipeline" and audited["status"] == "ok", audited["code"]
    assert (audited["cost_micros"], audited["usage"], audited["model"]) == (
        first.cost_micros, first.usage.model_dump(), first.model)
    assert audited["answer_sha256"] == sha256_hex("the first pass's answer")
    assert [h["stage"] for h in audited["hops"]] == list(DEFAULT_ROUTE)  # the rest is the second pass's


async def test_a_first_response_without_a_seal_leaves_the_second_pass_audited() -> None:
    """An older replay memory's marker, or a response without a seal, cannot vouch for what was answered."""
    env = new_envelope("hello again", tenant="acme", settings=SETTINGS)
    memory = MemoryReplayMemory()
    memory.responses[env.request_id] = b"1"
    chain, kafka = chain_of(list(registry.STAGES), replays=memory)
    await chain.handle(ingress([env]))
    (replayed,) = [decode_as(v, Response) for v in kafka.values(TOPICS.responses)]
    (audited,) = [orjson.loads(v) for v in kafka.values(TOPICS.audit_log)]
    assert replayed.replay and audited["status"] == "ok"
    assert audited["cost_micros"] == replayed.cost_micros and audited["answer_sha256"] == sha256_hex(
        replayed.answer or "")


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


def test_a_handed_over_record_is_the_consumer_record_aiokafka_builds() -> None:
    """_collect writes a hand-over's ConsumerRecord fields directly: the same record as the dataclass's __init__."""
    chain, _ = chain_of([registry.stage("retrieval"), registry.stage("policy")])
    env = new_envelope("hi", tenant="acme", settings=SETTINGS)
    topic = TOPICS.stage("policy", env.tier)
    chain.publisher.hand_over(topic, env, b"k")
    chain.publisher.publish(topic, b"bytes", key=None)
    pending: dict[Any, Any] = defaultdict(dict)
    chain._collect(pending)
    (records,) = pending[chain.owner[topic]].values()
    for record, (key, value) in zip(records, ((b"k", env), (None, b"bytes")), strict=True):
        assert record == ConsumerRecord(topic=topic, partition=-1, offset=-1, timestamp=record.timestamp,
                                        timestamp_type=0, key=key, value=value, checksum=None,
                                        serialized_key_size=len(key or b""), serialized_value_size=0, headers=[])
        assert vars(record) == vars(ConsumerRecord(**vars(record)))


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


def two_cycles(*, overlap: bool) -> tuple[list[str], GatedTopics, ChainRunner, asyncio.Task[None]]:
    """The whole route as a chain running two polled batches of one request each, acknowledgements held by a gate."""
    log: list[str] = []
    kafka = GatedTopics(log)
    chain, _ = chain_of(list(registry.STAGES), kafka)
    chain.settings = SETTINGS.model_copy(update={"chain_overlap_tail": overlap})
    first, second = (new_envelope(f"question {i}?", tenant="acme", settings=SETTINGS) for i in range(2))
    topic = TOPICS.ingress()
    tp = TopicPartition(topic, 0)
    batches = [{tp: as_records(topic, [(first.request_id.encode(), encode(first))])},
               {tp: as_records(topic, [(second.request_id.encode(), encode(second))], first_offset=1)}]
    chain.consumer = ScriptedConsumer(batches, log)
    return log, kafka, chain, asyncio.create_task(chain.run())


async def test_the_next_cycle_is_worked_while_the_previous_audit_and_acknowledgements_finish() -> None:
    log, kafka, chain, task = two_cycles(overlap=True)
    # the second request is answered while the first cycle still waits for its acknowledgements ...
    await until(lambda: log.count(f"sent {TOPICS.responses}") == 2, "the second response")
    assert log.count("awaiting acks") == 1 and not any(line.startswith("commit") for line in log)
    # ... but its audit waits for them: the first cycle's audit record must be acknowledged before its claim is
    # confirmed by the next audit batch, and offsets are committed in order, each after its own cycle's acks
    assert log.count(f"sent {TOPICS.audit_log}") == 1
    kafka.gate.set()
    await until(lambda: sum(line.startswith("commit") for line in log) == 2, "both commits")
    chain.stop()
    await task
    assert [line for line in log if line.startswith("commit")] == ["commit [1]", "commit [2]"]
    audits = [i for i, line in enumerate(log) if line == f"sent {TOPICS.audit_log}"]
    assert len(audits) == 2 and log.index("acked") < audits[1]
    assert len(kafka.values(TOPICS.responses)) == 2 and len(kafka.values(TOPICS.audit_log)) == 2


async def test_without_the_overlap_a_cycle_waits_for_its_tail() -> None:
    log, kafka, chain, task = two_cycles(overlap=False)
    await until(lambda: "awaiting acks" in log, "the first cycle's tail")
    for _ in range(100):  # loop turns, not time: the chain would poll again within a few if it did not wait
        await asyncio.sleep(0)
    assert log.count(f"sent {TOPICS.responses}") == 1  # the second request waits for the first cycle's tail
    kafka.gate.set()
    await until(lambda: sum(line.startswith("commit") for line in log) == 2, "both commits")
    chain.stop()
    await task
    second_response = [i for i, line in enumerate(log) if line == f"sent {TOPICS.responses}"][1]
    assert log.index("commit [1]") < second_response


async def test_commits_are_paced_in_order_and_none_is_lost() -> None:
    """At most one commit per interval; what a tail hands in meanwhile is kept (the newest offsets win) and goes out
    when a later tail finds the interval over, when the chain polls nothing, or when it stops."""
    log: list[str] = []
    tp, other = TopicPartition("t.ingress", 0), TopicPartition("t.ingress", 1)
    consumer = ScriptedConsumer([{tp: [], other: []}], log)
    now = [100.0]
    paced = PacedCommitter(OffsetCommitter(consumer, "chain"), 0.25,  # type: ignore[arg-type]
                           clock=lambda: now[0])
    await paced.commit({tp: 1})  # the first commit goes at once
    await paced.commit({tp: 2})
    await paced.commit({tp: 3, other: 7})  # kept: within the interval
    await paced.committer.wait()
    assert log == ["commit [1]"]
    now[0] += 0.25
    await paced.commit({tp: 4})  # the interval is over: everything kept, with this cycle's offsets
    await paced.committer.wait()
    assert log == ["commit [1]", "commit [4, 7]"]
    await paced.commit({other: 8})
    await paced.idle()  # nothing polled: no reason to wait
    await paced.idle()  # nothing kept: no commit
    await paced.commit({tp: 5})
    await paced.wait()  # stopping: what is kept is committed
    assert log == ["commit [1]", "commit [4, 7]", "commit [8]", "commit [5]"]


async def test_the_sink_writes_to_kafka_and_never_takes_the_next_cycles_hand_overs() -> None:
    """The audit runs in a cycle's tail beside the next cycle's members: what they hand each other stays theirs, and
    whatever the sink writes (even for a member's topic) goes to Kafka."""
    chain, kafka = chain_of(registry.resolve_units(["all+"])[0])  # type: ignore[arg-type]
    sink = next(m for m in chain.members if m.spec.sink)
    assert isinstance(sink.publisher, SendOnFlush) and sink._hand_over is None
    member_topic = TOPICS.stage("model")
    in_flight = new_envelope("hi", tenant="acme", settings=SETTINGS)
    chain.publisher.hand_over(member_topic, in_flight, b"k")  # a member's hand-over of the next cycle
    sink.publisher.publish(member_topic, b"forged", key=b"f")
    assert len(chain.publisher.local[member_topic]) == 1  # still the member's
    await kafka.flush()
    assert kafka.records[member_topic] == [(b"f", b"forged")]
