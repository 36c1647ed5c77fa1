"""Co-located stages: a chain of stages run as one consumer group, handing requests to each other in memory.

Six durable hops cost six produce→fetch round trips (~1.5–2 ms each on one broker) and six fetch/produce/ack/commit
cycles of transport CPU per request before any stage works. An operator who wants a route under ~25 ms can run a
chain, e.g. ``tollway worker retrieval+policy+cache`` or the whole interactive route ``retrieval+…+audit``:

* one consumer (group ``<prefix>.chain.<a>+<b>…``) reads the topics of every member, one poll per cycle;
* each member is the ordinary :class:`~streams.runtime.runner.StageRunner`: its ``handle`` decodes, stamps its
  hop (queue time between co-located members is the time spent in earlier members), applies deadlines, the
  route, dead letters, the one-by-one retry, replays and every check the stage makes — nothing is skipped;
* what a member produces to another member's topic stays in memory and is worked in the same cycle (repeatedly,
  so a route that visits a member twice, like policy → retrieval, still completes); everything else (responses,
  audit records, dead letters, stages outside the chain) is produced to Kafka;
* each member's Kafka output is sent as the member finishes (a response does not wait for the audit behind it),
  and the cycle's output is acknowledged before the polled offsets are committed, so delivery stays
  at-least-once: a crash redelivers the polled records and the chain works them again from the first member;
* the sink member (audit) and the wait for the cycle's acknowledgements are the cycle's *tail*: ``run`` polls and
  works the next cycle's other members while the previous tail finishes (one tail at a time, in order: an audit
  batch still starts only once the previous cycle's output — its audit records included — is acknowledged, which
  is what its claim confirmations rely on, and offsets are committed in order, each after its own cycle's tail).
  A request that arrives while the audit fsyncs and the acknowledgements come back no longer waits for them; under
  load the cycles get smaller, though, and each pays its fixed costs (``TOLLWAY_CHAIN_OVERLAP_TAIL=false``: one
  cycle at a time);
* offsets are committed at most once per ``TOLLWAY_CHAIN_COMMIT_INTERVAL_MS`` (:class:`PacedCommitter`): each only
  after its own cycle's acknowledgements and in order, kept meanwhile, and committed at once when the chain goes
  idle or stops.

The trade-off: the hops inside a chain are not durable (a crash repeats the chain's work, not one stage's) and its
members scale together, not alone. Do not run a stage both in a chain and on its own: both groups would read its
topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from schemas.envelope import Envelope
from streams.runtime.acls import ALL_STAGES
from streams.runtime.codec import encode
from streams.runtime.connections import StageConsumer
from streams.runtime.lanes import LanePoller, QuietPartitions
from streams.runtime.runner import BatchPublisher, ConsumerLoop, Records, SendOnFlush, StageRunner
from streams.runtime.stage import Stage
from streams.runtime.topics import Topology
from streams.settings import Settings

log = logging.getLogger(__name__)

_new = object.__new__

# A route revisits a member at most a few times (policy → retrieval); more rounds than this means a loop.
_MAX_ROUNDS = 16


class ChainPublisher:
    """What the members publish: records for a member's topic are kept for the chain, the rest go to Kafka."""

    def __init__(self, kafka: BatchPublisher, member_topics: frozenset[str]) -> None:
        self.kafka = kafka
        self.member_topics = member_topics
        self.local: dict[str, list[tuple[bytes | None, bytes | Envelope]]] = defaultdict(list)
        # Ships what is pending without awaiting acknowledgements (KafkaPublisher.send); other publishers send
        # everything at the chain's flush.
        self._send: Callable[[], Awaitable[None]] | None = getattr(kafka, "send", None)

    def hand_over(self, topic: str, env: Envelope, key: bytes) -> bool:
        """A request for a member is handed over as the object itself: no encode here, no decode there (the
        member's runner takes it as a decoded record; every check and stamp still runs)."""
        if topic not in self.member_topics:
            return False
        self.local[topic].append((key, env))
        return True

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        if topic in self.member_topics:
            self.local[topic].append((key, value))
        else:
            self.kafka.publish(topic, value, key=key)

    async def flush(self) -> None:
        """A member's end of batch: its Kafka output (responses above all) is sent now, not after the members that
        follow it in the cycle; the chain awaits every acknowledgement once per cycle, before it commits."""
        if self._send is not None:
            await self._send()

    def take(self) -> dict[str, list[tuple[bytes | None, bytes | Envelope]]]:
        local, self.local = self.local, defaultdict(list)
        return local


def member_topics(stages: Sequence[Stage[Any]], topology: Topology) -> frozenset[str]:
    """Every topic the members of a chain read: their lanes, and the ingress when the entry stage is a member."""
    topics = frozenset(t for stage in stages for t in topology.stage_lanes(stage.name))
    if any(stage.entry for stage in stages):
        topics |= frozenset(topology.stage_lanes("ingress"))
    return topics


def chain_name(names: Sequence[str]) -> str:
    return "+".join(names)


class ChainRunner(ConsumerLoop):
    def __init__(self, members: Sequence[StageRunner[Any]], publisher: ChainPublisher, kafka: BatchPublisher,
                 settings: Settings, topology: Topology) -> None:
        self.members = list(members)
        for member in self.members:
            if member.spec.sink:
                # The sink (audit) is worked in the cycle's tail, beside the next cycle's members: everything it
                # writes goes straight to Kafka, even a record for a member's topic (a request that reached the sink
                # with route left over — only a forged one can), never into the shared hand-overs; its end of batch
                # sends what is pending, as any member's does.
                member.use_publisher(SendOnFlush(publisher.kafka, publisher.flush))
        self.publisher = publisher
        self.kafka = kafka
        self.settings = settings
        self.topology = topology
        self.name = chain_name([m.stage for m in self.members])
        self.owner: dict[str, StageRunner[Any]] = {}
        for member in self.members:
            for topic in member.topics:
                self.owner.setdefault(topic, member)
        self.topics = list(self.owner)
        self.consumer: StageConsumer | None = None
        self._stopping = asyncio.Event()
        self.stage = self.name  # for the process's task names and logs

    async def start(self) -> None:
        await self.open_consumer(role=ALL_STAGES, group=self.topology.group(f"chain.{self.name}"))

    async def handle(self, batches: Records) -> None:
        """Work one polled batch through the chain; returns once its Kafka output is acknowledged."""
        await self.finish(await self.work(batches))

    async def work(self, batches: Records) -> dict[StageRunner[Any], Records]:
        """The cycle up to its tail: every member but the sink (its responses are sent as each member ends);
        returns the sink's work."""
        pending: dict[StageRunner[Any], Records] = defaultdict(dict)
        for tp, records in batches.items():
            pending[self.owner[tp.topic]][tp] = records
        for _ in range(_MAX_ROUNDS):
            for member in self.members:  # route order: one cycle usually crosses the whole chain once
                if member.spec.sink:
                    continue
                work = pending.pop(member, None)
                if work:
                    await member.handle(work)
                    self._collect(pending)
            if all(member.spec.sink for member in pending):
                break
        else:
            log.error("chain %s: requests still circulating after %d rounds; producing them to Kafka", self.name,
                      _MAX_ROUNDS)
            self._to_kafka({m: w for m, w in pending.items() if not m.spec.sink})
            pending = {m: w for m, w in pending.items() if m.spec.sink}
        return pending

    async def finish(self, sink_work: dict[StageRunner[Any], Records]) -> None:
        """The cycle's tail: the sink member's work, then every acknowledgement of the cycle's output."""
        for member, work in sink_work.items():
            # The sink's output goes straight to Kafka (SendOnFlush), never into the shared hand-overs: while
            # this tail runs, those are the next cycle's members'.
            await member.handle(work)
        await self.kafka.flush()

    async def run(self) -> None:
        """The consumer loop (:meth:`ConsumerLoop.run`) with the chain's settings: the cycle's tail (the sink member,
        the acknowledgements, the commit) runs beside the next cycle's members, one tail at a time and in order — an
        audit batch starts only once the previous one's output is acknowledged, since a tail returns only then."""
        self.overlap_tail = self.settings.chain_overlap_tail
        self.commit_interval_s = self.settings.chain_commit_interval_ms / 1000
        await super().run()

    def lane_poller(self) -> LanePoller:
        poller = super().lane_poller()
        # aiokafka names every assigned partition in every fetch (no incremental fetch sessions); librdkafka's fetches
        # are its own business, so its chains park nothing.
        if (self.settings.chain_park_quiet_partitions and self.settings.kafka_client != "librdkafka"
                and any(member.spec.entry for member in self.members)):
            poller.quiet = QuietPartitions(steady_topics=frozenset(self.topology.stage_lanes("ingress")))
        return poller

    def _to_kafka(self, pending: dict[StageRunner[Any], Records]) -> None:
        for records in (r for work in pending.values() for r in work.values()):
            for record in records:
                value = record.value
                self.kafka.publish(record.topic, encode(value) if isinstance(value, Envelope) else value,
                                   key=record.key)

    def _collect(self, pending: dict[StageRunner[Any], Records]) -> None:
        now_ms = time.time_ns() // 1_000_000
        for topic, values in self.publisher.take().items():
            member = self.owner[topic]
            tp = TopicPartition(topic, -1)  # in memory: never committed
            records = pending[member].setdefault(tp, [])
            # ConsumerRecord(topic=topic, partition=-1, offset=-1, timestamp=now_ms, timestamp_type=0, key=key,
            # value=value, checksum=None, serialized_key_size=len(key or b""), serialized_value_size=0, headers=[])
            # with its fields written straight into a new instance (a plain dataclass: __init__ only sets them),
            # without parsing eleven keywords per hand-over.
            for key, value in values:
                record: ConsumerRecord[bytes, bytes] = _new(ConsumerRecord)
                record.__dict__ = {"topic": topic, "partition": -1, "offset": -1, "timestamp": now_ms,
                                   "timestamp_type": 0, "key": key, "value": value, "checksum": None,
                                   "serialized_key_size": len(key or b""), "serialized_value_size": 0, "headers": []}
                records.append(record)
