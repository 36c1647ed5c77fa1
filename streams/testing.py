"""Run stages and whole pipelines without a broker: the real runner code over in-memory topics.

For users who write or change a stage, and for tollway's own tests (like Quix Streams' ``sdf.test()`` or
FastStream's ``TestKafkaBroker``)::

    from streams.testing import run_batch, run_pipeline
    from streams.clients.envelopes import EnvelopeFactory

    env = EnvelopeFactory(settings).new("What is our refund policy?", tenant="acme")
    result = await run_pipeline([env])
    result.responses[env.request_id].status        # "ok"
    [hop.stage for hop in result.audited[0].hops]  # the route it took

Each stage runs with its in-memory context (``Stage.memory_context``) unless ``contexts`` gives one; what a stage
produces lands on in-memory topics exactly as :class:`~streams.runtime.runner.StageRunner` would produce it to
Kafka (responses, reply topics, dead letters, the next stage's lane), and the next stage consumes it from there.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from schemas.envelope import Envelope
from schemas.response import DeadLetter, Response
from streams.runtime.codec import decode, decode_as, encode
from streams.runtime.replays import MemoryReplayMemory, ReplayMemory
from streams.runtime.runner import BatchOutcome, StageRunner
from streams.runtime.stage import Stage
from streams.runtime.topics import Topology
from streams.settings import Settings, load_settings
from workers.context import Clock, StageContext, SystemClock


@dataclass
class MemoryTopics:
    """Topics as lists of records; also the runner's publisher (``publish`` enqueues, ``flush`` appends)."""

    records: dict[str, list[tuple[bytes | None, bytes]]] = field(default_factory=lambda: defaultdict(list))
    pending: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    flushes: int = 0

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        for topic, value, key in pending:
            self.records[topic].append((key, value))
        self.flushes += 1

    def append(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.records[topic].append((key, value))

    def values(self, topic: str) -> list[bytes]:
        return [value for _key, value in self.records.get(topic, [])]


def as_records(topic: str, values: Sequence[tuple[bytes | None, bytes]], *, first_offset: int = 0,
               timestamp_ms: int | None = None) -> list[ConsumerRecord[bytes, bytes]]:
    """Consumer records as aiokafka hands them to the runner (one partition)."""
    now_ms = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
    return [ConsumerRecord(topic=topic, partition=0, offset=first_offset + i, timestamp=now_ms, timestamp_type=0,
                           key=key, value=value, checksum=None, serialized_key_size=len(key or b""),
                           serialized_value_size=len(value), headers=[])
            for i, (key, value) in enumerate(values)]


@dataclass
class BatchResult:
    outcome: BatchOutcome
    topics: MemoryTopics
    topology: Topology

    def forwarded(self, stage: str) -> list[Envelope]:
        return [decode(v) for lane in self.topology.stage_lanes(stage) for v in self.topics.values(lane)]

    @property
    def responses(self) -> list[Response]:
        return [decode_as(v, Response) for v in self.topics.values(self.topology.responses)]

    @property
    def deadletters(self) -> list[DeadLetter]:
        return [decode_as(v, DeadLetter) for v in self.topics.values(self.topology.deadletter)]


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings(topic_prefix="test")


def _runner(stage: Stage[Any], settings: Settings, topics: MemoryTopics, clock: Clock, replays: ReplayMemory,
            ctx: StageContext | None) -> StageRunner[Any]:
    base = StageContext(stage=stage.name, worker_id=settings.worker_id, clock=clock, publisher=topics,
                        topic_prefix=settings.topic_prefix)
    if ctx is not None:  # the caller's backends, on the harness's topics, clock and names
        ctx = dataclasses.replace(ctx, stage=stage.name, worker_id=settings.worker_id, clock=clock, publisher=topics,
                                  topic_prefix=settings.topic_prefix)
    return StageRunner(stage=stage, ctx=ctx if ctx is not None else stage.memory_context(base), settings=settings,
                       topology=Topology(settings.topic_prefix), publisher=topics, clock=clock, replays=replays)


async def run_batch(stage: Stage[Any], envelopes: Iterable[Envelope | bytes], *, ctx: StageContext | None = None,
                    settings: Settings | None = None, topic: str | None = None, clock: Clock | None = None,
                    replays: ReplayMemory | None = None) -> BatchResult:
    """One batch through one stage's runner, from ``topic`` (default: the stage's standard lane). Raw bytes are
    passed as they are (to test bad input)."""
    s = _settings(settings)
    topo = Topology(s.topic_prefix)
    topics = MemoryTopics()
    source = topic or topo.stage(stage.name)
    values = [(None if isinstance(e, bytes) else e.request_id.encode(), e if isinstance(e, bytes) else encode(e))
              for e in envelopes]
    runner = _runner(stage, s, topics, clock or SystemClock(), replays or MemoryReplayMemory(), ctx)
    outcome = await runner.handle({TopicPartition(source, 0): as_records(source, values)})
    return BatchResult(outcome, topics, topo)


@dataclass
class PipelineResult:
    topics: MemoryTopics
    topology: Topology
    batches: int

    @property
    def responses(self) -> dict[str, Response]:
        """The last response per request id (a replay would repeat it)."""
        return {r.request_id: r for r in self.all_responses}

    @property
    def all_responses(self) -> list[Response]:
        return [decode_as(v, Response) for v in self.topics.values(self.topology.responses)]

    @property
    def deadletters(self) -> list[DeadLetter]:
        return [decode_as(v, DeadLetter) for v in self.topics.values(self.topology.deadletter)]

    def on(self, topic: str) -> list[bytes]:
        return self.topics.values(topic)


async def run_pipeline(envelopes: Iterable[Envelope | bytes], *, stages: Sequence[Stage[Any]] | None = None,
                       contexts: Mapping[str, StageContext] | None = None, settings: Settings | None = None,
                       topic: str | None = None, clock: Clock | None = None,
                       max_batches: int = 1_000) -> PipelineResult:
    """Publish ``envelopes`` on the ingress lane of their tier (or ``topic``) and run the stages until no record is
    left to consume: each stage reads its own lanes (the entry stage also the ingress), in route order, with the
    real runner. ``stages`` defaults to the registry's table."""
    if stages is None:
        from streams.stages.registry import STAGES

        stages = STAGES
    s = _settings(settings)
    topo = Topology(s.topic_prefix)
    topics = MemoryTopics()
    for env in envelopes:
        if isinstance(env, bytes):
            topics.append(topic or topo.ingress(), env)
        else:
            topics.append(topic or topo.ingress(env.tier), encode(env), key=env.request_id.encode())
    clock = clock or SystemClock()
    replays = MemoryReplayMemory()
    runners = [_runner(stage, s, topics, clock, replays, (contexts or {}).get(stage.name)) for stage in stages]
    positions: dict[str, int] = defaultdict(int)
    batches = 0
    while batches < max_batches:
        moved = False
        for runner in runners:
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
            for name in runner.topics:
                waiting = topics.records.get(name, [])[positions[name]:]
                if waiting:
                    batch[TopicPartition(name, 0)] = as_records(name, waiting, first_offset=positions[name])
                    positions[name] += len(waiting)
            if batch:
                await runner.handle(batch)
                batches += 1
                moved = True
        if not moved:
            return PipelineResult(topics, topo, batches)
    raise RuntimeError(f"the pipeline did not settle within {max_batches} batches (a routing loop?)")


def decide(env: Envelope, settings: Settings | None = None, *, version: str = "test") -> Envelope:
    """Seal a policy decision on ``env`` as the policy stage would (to drive a governed stage on its own): the route
    from here on is ``env.route`` as it stands."""
    from schemas.envelope import PolicyDecision
    from workers.decisions import DecisionKeys, sign_decision, sign_tool_calls

    s = _settings(settings)
    if env.policy is None:
        env.policy = PolicyDecision(policy_version=version)
    keys = DecisionKeys.parse(s.decision_keys.get_secret_value())
    sign_decision(env, keys)
    if env.tools is not None and env.tools.pending:  # and the tool calls, as the model stage would
        sign_tool_calls(env, keys)
    return env


def seal_outcome(env: Envelope, settings: Settings | None = None) -> Envelope:
    """Sign ``env``'s outcome as the stage that ended it would (to hand a stage's output straight to audit)."""
    from workers.decisions import DecisionKeys, sign_outcome

    s = _settings(settings)
    sign_outcome(env, DecisionKeys.parse(s.decision_keys.get_secret_value()))
    return env


def seal_response(response: Response, settings: Settings | None = None) -> Response:
    """A response signed as a stage would sign it (synthetic ledger input for tests and benchmarks)."""
    from workers.decisions import DecisionKeys, response_claims

    s = _settings(settings)
    keys = DecisionKeys.parse(s.decision_keys.get_secret_value())
    response.key_id, response.signature = keys.sign(response_claims(response))
    return response
