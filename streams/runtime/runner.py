"""The batch runner: the thin Kafka shell every stage shares.

One loop per stage: poll a batch (``getmany``) → decode (bad bytes → dead-letter) → stamp the hop → hand the live
events to the stage's pure ``process`` → publish responses for terminal outcomes → produce each event to the next
stage of its route, in its lane → wait for every acknowledgement → commit the batch's offsets.

Delivery is at-least-once: a crash between produce and commit redelivers the batch; the audit and ledger stages
deduplicate by request_id. Offsets are committed only after everything the batch produced is acknowledged, so
nothing acknowledged to a producer is ever lost.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from schemas.envelope import Envelope, Hop, Status
from schemas.errors import BadEvent
from schemas.response import DeadLetter, Response
from streams.runtime import metrics
from streams.runtime.codec import decode, encode
from streams.runtime.lanes import LanePoller, owned_offsets
from streams.runtime.replays import Answers, NoReplayMemory, ReplayMemory
from streams.runtime.topics import Topology
from streams.settings import Settings
from workers.budgets import Budgets
from workers.context import Clock, StageContext

log = logging.getLogger(__name__)

ProcessFn = Callable[[list[Envelope], StageContext], Awaitable[list[Envelope]]]

# A batch of hundreds of events is tens of milliseconds of pure CPU per pass; handing the loop back every this many
# events keeps heartbeats and the other stages of the process moving without costing anything measurable.
_YIELD_EVERY = 128


# murmur2 of recently produced keys: a request's key is hashed for every topic it is produced to (six stages, the
# response, the audit record), and aiokafka's murmur2 is pure Python.
_KEY_HASHES: dict[bytes, int] = {}
_KEY_HASHES_MAX = 50_000


def _key_hash(key: bytes) -> int:
    hashed = _KEY_HASHES.get(key)
    if hashed is None:
        if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
            _KEY_HASHES.clear()
        hashed = _KEY_HASHES[key] = murmur2(key) & 0x7FFFFFFF
    return hashed


@dataclass
class KafkaPublisher:
    """Enqueues records on the shared producer; ``flush`` sends them and waits for every acknowledgement.

    The records of a flush go out as one batch per partition (``create_batch`` / ``send_batch``): no coroutine, no
    metadata wait and no delivery future per record, which is most of what ``send()`` costs. Keys map to partitions
    exactly as the producer's default partitioner maps them (murmur2 of the key over the sorted partitions), so a
    request stays on the same partition numbers from topic to topic.
    """

    producer: AIOKafkaProducer
    pending: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        partitions: dict[str, list[int]] = {}
        builders: dict[tuple[str, int], BatchBuilder] = {}
        deliveries: list[asyncio.Future[object]] = []
        for topic, value, key in pending:
            ids = partitions.get(topic)
            if ids is None:
                ids = partitions[topic] = await self._partitions(topic)
            partition = ids[_key_hash(key) % len(ids)] if key is not None else random.choice(ids)
            builder = builders.get((topic, partition))
            if builder is None:
                builder = builders[(topic, partition)] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start the next
                deliveries.append(await self.producer.send_batch(builder, topic, partition=partition))
                builder = builders[(topic, partition)] = self.producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)  # a batch always takes its first record
        for (topic, partition), builder in builders.items():
            deliveries.append(await self.producer.send_batch(builder, topic, partition=partition))
        # An unacknowledged batch never commits: every delivery is awaited before the runner commits offsets.
        await asyncio.gather(*deliveries)

    async def _partitions(self, topic: str) -> list[int]:
        known = self.producer.client.cluster.partitions_for_topic(topic)
        return sorted(known if known else await self.producer.partitions_for(topic))


class OffsetCommitter:
    """Commits a batch's offsets while the next batch is polled and worked: one commit in flight, in order.

    The runner calls ``commit`` only once the batch's output is acknowledged, so a crash at any point redelivers
    rather than loses; taking the commit's round trip off the loop only shortens the time between two polls (a hop's
    latency at low rates, its cycle under load).
    """

    def __init__(self, consumer: AIOKafkaConsumer, stage: str) -> None:
        self.consumer = consumer
        self.stage = stage
        self._inflight: asyncio.Task[None] | None = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.wait()  # the previous batch's commit first: commits never overtake each other
        self._inflight = asyncio.create_task(self._commit(offsets), name=f"commit-{self.stage}")

    async def wait(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight  # re-raises what the commit raised (other than a rebalance)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        # A partition a rebalance moved while the batch was worked is redelivered by its new owner (aiokafka refuses
        # to commit it, and that refusal killed the worker): commit what this member still owns.
        offsets = owned_offsets(self.consumer, offsets)
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced while this batch was worked (on a starved machine a long batch can outlast the
            # session). Everything it produced is acknowledged; the partitions' new owner redelivers it and the
            # audit and ledger deduplicate. Dying here would only turn a rebalance into an outage.
            log.warning("stage %s: offsets not committed after a rebalance, the batch will be redelivered: %s",
                        self.stage, exc)


@dataclass
class BatchOutcome:
    consumed: int = 0
    forwarded: int = 0
    responses: int = 0
    deadlettered: int = 0


class StageRunner:
    def __init__(
        self,
        *,
        stage: str,
        process: ProcessFn,
        ctx: StageContext,
        settings: Settings,
        topology: Topology,
        producer: AIOKafkaProducer,
        publisher: KafkaPublisher,
        clock: Clock,
        consume_ingress: bool = False,
        replays: ReplayMemory | None = None,
    ) -> None:
        self.stage = stage
        self.process = process
        self.ctx = ctx
        self.settings = settings
        self.topology = topology
        self.producer = producer
        self.publisher = publisher
        self.clock = clock
        self.replays: ReplayMemory = replays or NoReplayMemory()
        self.topics: list[str] = list(topology.stage_lanes(stage))
        if consume_ingress:
            self.topics += list(topology.stage_lanes("ingress"))
        self.consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.budgets = Budgets.from_totals(settings.budget_interactive_ms, settings.budget_standard_ms,
                                           settings.budget_batch_ms)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            *self.topics,
            group_id=self.topology.group(self.stage),
            client_id=f"{self.settings.worker_id}-{self.stage}",
            **consumer_options(self.settings),
        )
        await self.consumer.start()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def run(self) -> None:
        assert self.consumer is not None, "start() first"
        poller = LanePoller(self.stage, frozenset(t for t in self.topics if t.endswith(".batch")),
                            max_records=self.settings.batch_max_records, batch_quota=self.settings.lane_batch_quota,
                            batch_share=self.settings.lane_batch_share, pause_lag=self.settings.lane_pause_lag)
        committer = OffsetCommitter(self.consumer, self.stage)
        try:
            while not self._stopping.is_set():
                batches = await poller.poll(self.consumer)
                if not batches:
                    continue
                await self.handle(batches)  # returns once everything the batch produced is acknowledged
                await committer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        finally:
            await committer.wait()

    # ------------------------------------------------------------------ one batch
    async def handle(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> BatchOutcome:
        received_ns = self.clock.now_ns()
        result = BatchOutcome()
        live: list[Envelope] = []
        passing: list[Envelope] = []  # terminal or forwarded without work here
        unanswered: list[Envelope] = []  # reached the audit stage without an outcome: audited, then answered
        hops: dict[str, Hop] = {}
        for records in batches.values():
            for record in records:
                result.consumed += 1
                if result.consumed % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let heartbeats and the other stages of this process run
                env = self._decode(record, result)
                if env is None:
                    continue
                # Constructed, not validated: every value is the runner's own (one per record per hop).
                hop = Hop.model_construct(stage=self.stage, worker_id=self.settings.worker_id,
                                          produced_at_ns=int(record.timestamp) * 1_000_000,
                                          received_at_ns=received_ns, started_at_ns=received_ns)
                if env.route and env.route[0] == self.stage:
                    env.route.pop(0)
                elif env.route:
                    hop.status = "forwarded"  # arrived on ingress but its route starts elsewhere
                    env.hops.append(hop)
                    hops[env.request_id] = hop
                    passing.append(env)
                    continue
                elif self.stage != "audit":
                    self._deadletter(record, BadEvent(f"route is empty at stage {self.stage}", reason="misrouted"),
                                     result, env)
                    continue
                env.hops.append(hop)
                hops[env.request_id] = hop
                if self.stage == "audit" and not env.terminal:
                    # Only a producer bypassing the route gets here: audit it as a failure, and answer it too.
                    env.finish(Status.FAILED, code="no_outcome", stage=self.stage,
                               message="the request reached the audit stage without an outcome")
                    unanswered.append(env)
                if env.terminal and self.stage != "audit":
                    passing.append(env)
                elif self.stage != "audit" and env.deadline_at_ns <= received_ns:
                    # Never work a request whose deadline passed on arrival; end it now, explained.
                    hop.status = "deadline_exceeded"
                    env.finish(Status.DEADLINE_EXCEEDED, code="deadline_exceeded", stage=self.stage,
                               message=f"deadline passed {-env.remaining_budget_ms(received_ns):.0f} ms before "
                                       f"the {self.stage} stage")
                    passing.append(env)
                else:
                    live.append(env)

        started_ns = self.clock.now_ns()
        for hop in hops.values():
            hop.started_at_ns = started_ns
            hop.batch_size = len(live)
        outputs = await self._process(live, result) if live else []
        finished_ns = self.clock.now_ns()
        for stamp in hops.values():
            stamp.finished_at_ns = finished_ns
        onward = (*outputs, *passing, *unanswered)
        answers = Answers(self.replays)  # a request answered before gets its first response again (replays.py)
        for i, env in enumerate(onward, start=1):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            stamp_or_none = hops.get(env.request_id)
            if stamp_or_none is not None:
                stamp_or_none.remaining_budget_ms = round(env.remaining_budget_ms(finished_ns), 3)
                if self.budgets.for_tier(env.tier).violated_by(stamp_or_none):
                    stamp_or_none.budget_violation = True
                    metrics.BUDGET_VIOLATIONS.labels(env.tier.value, self.stage).inc()
            self._forward(env, finished_ns, result, answers)
        await answers.publish(self.publisher)
        await self.publisher.flush()
        metrics.STAGE_EVENTS.labels(self.stage).inc(result.consumed)
        metrics.STAGE_SERVICE_SECONDS.labels(self.stage).observe((finished_ns - started_ns) / 1e9)
        queue_seconds = metrics.STAGE_QUEUE_SECONDS.labels(self.stage)  # one label lookup per batch, not per event
        for env in live:
            queue_seconds.observe(hops[env.request_id].queue_ms / 1e3)
        return result

    async def _process(self, live: list[Envelope], result: BatchOutcome) -> list[Envelope]:
        try:
            return await self.process(live, self.ctx)
        except Exception:
            if len(live) == 1:
                log.exception("stage %s failed on request %s", self.stage, live[0].request_id)
                env = live[0]
                env.finish(Status.FAILED, code="stage_error", stage=self.stage,
                           message=f"the {self.stage} stage failed on this request; see the dead-letter topic")
                self._deadletter_envelope(env, "stage_error", result)
                return [env]
        # One bad request must not fail its neighbours: retry one by one to isolate it.
        outputs: list[Envelope] = []
        for env in live:
            outputs.extend(await self._process([env], result))
        return outputs

    def _decode(self, record: ConsumerRecord[bytes, bytes], result: BatchOutcome) -> Envelope | None:
        value = record.value
        try:
            if value is not None and len(value) > self.settings.max_message_bytes:
                raise BadEvent(f"record of {len(value)} bytes exceeds the {self.settings.max_message_bytes} limit",
                               reason="oversized")
            return decode(value)
        except BadEvent as exc:
            self._deadletter(record, exc, result, None)
            return None

    def _forward(self, env: Envelope, now_ns: int, result: BatchOutcome, answers: Answers) -> None:
        key = env.request_id.encode()
        if not env.route and self.stage != "audit" and not env.terminal:
            # A route that ends before the audit stage would lose the request silently; end it, explained.
            env.finish(Status.FAILED, code="route_ended", stage=self.stage,
                       message=f"the route ended at {self.stage} without reaching a terminal outcome")
        if env.terminal and not env.responded:
            response = encode(Response.from_envelope(env, completed_at_ns=now_ns))
            topics = [self.topology.responses]
            if env.request.reply_to:
                if env.request.reply_to.startswith(self.topology.replies_prefix):
                    topics.append(env.request.reply_to)
                else:
                    # A producer must not make the pipeline write into arbitrary topics (say another stage's input).
                    log.warning("request %s: reply_to %r is outside %s*; answered on %s only", env.request_id,
                                env.request.reply_to, self.topology.replies_prefix, self.topology.responses)
            answers.add(env.request_id, response, topics)
            env.responded = True
            result.responses += 1
            metrics.OUTCOMES.labels(self.stage, env.outcome.status if env.outcome else "").inc()
        if env.route:
            self.publisher.publish(self.topology.stage(env.route[0], env.tier), encode(env), key=key)
            result.forwarded += 1

    def _deadletter(self, record: ConsumerRecord[bytes, bytes], exc: BadEvent, result: BatchOutcome,
                    env: Envelope | None) -> None:
        raw = record.value or b""
        letter = DeadLetter(
            reason=exc.reason, error=str(exc)[:2000], stage=self.stage, worker_id=self.settings.worker_id,
            source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
            request_id=env.request_id if env else None, tenant=env.tenant if env else None,
            original_b64=base64.b64encode(raw).decode(), original_size=len(raw),
            dead_lettered_at_ns=self.clock.now_ns(),
        )
        self.publisher.publish(self.topology.deadletter, encode(letter), key=record.key)
        result.deadlettered += 1
        metrics.DEADLETTERS.labels(self.stage, exc.reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    def _deadletter_envelope(self, env: Envelope, reason: str, result: BatchOutcome) -> None:
        raw = encode(env)
        letter = DeadLetter(
            reason=reason, error=f"stage {self.stage} raised while processing", stage=self.stage,
            worker_id=self.settings.worker_id, source_topic=self.topology.stage(self.stage, env.tier),
            source_partition=-1, source_offset=-1, request_id=env.request_id, tenant=env.tenant,
            original_b64=base64.b64encode(raw).decode(), original_size=len(raw),
            dead_lettered_at_ns=self.clock.now_ns(),
        )
        self.publisher.publish(self.topology.deadletter, encode(letter), key=env.request_id.encode())
        result.deadlettered += 1
        metrics.DEADLETTERS.labels(self.stage, reason).inc()


def consumer_options(settings: Settings) -> dict[str, object]:
    """How every stage consumer fetches; the benchmark's raw relay uses the same, so only our code differs."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        # With fetch_min_bytes=1 the broker answers a fetch as soon as any record arrives, so this wait mostly sets
        # how often an idle consumer asks again: at 5 ms six idle stage consumers kept ~20 % of a core busy (the
        # broker answering ~1,200 empty fetches a second); at 500 ms, ~2 %. See Settings.batch_wait_ms for its cost.
        "fetch_max_wait_ms": settings.batch_wait_ms,
        "max_partition_fetch_bytes": settings.max_message_bytes * 2,
        # Heartbeats share the event loop with the batches; on a starved machine a big batch can hold the loop for
        # seconds, and aiokafka's 10 s default then evicts a healthy member mid-batch (Kafka's own default is 45 s).
        "session_timeout_ms": 30_000,
    }


def new_producer(settings: Settings) -> AIOKafkaProducer:
    # Idempotence forces acks=all: aiokafka's default acks=1 can lose acknowledged records on a leader change.
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.worker_id}-producer",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=settings.max_message_bytes * 2,
    )


def topics_of(runners: Sequence[StageRunner]) -> list[str]:
    return [topic for runner in runners for topic in runner.topics]
