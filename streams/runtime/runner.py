"""The batch runner: the thin Kafka shell every stage shares.

One loop per stage: poll a batch (``getmany``) → decode (bad bytes → dead-letter) → stamp the hop → hand the live
events to the stage's pure ``process`` → publish responses for terminal outcomes → produce each event to the next
stage of its route, in its lane → wait for every acknowledgement → commit the batch's offsets.

Delivery is at-least-once: a crash between produce and commit redelivers the batch; the audit and ledger stages
deduplicate by request_id. Offsets are committed only after everything the batch produced is acknowledged, so
nothing acknowledged to a producer is ever lost.

A lone stage's loop (``tollway worker <stage>``, one consumer group per stage) overlaps a batch's *tail* — the wait
for its acknowledgements and its commit — with the next poll and batch (``TOLLWAY_STAGE_OVERLAP_TAIL``; one tail at
a time, in order; the sink stage works its next batch only once the previous one's output is acknowledged), and
commits at most once per ``TOLLWAY_STAGE_COMMIT_INTERVAL_MS`` (:class:`PacedCommitter`), as a co-located chain does.
Its poll waits as long as its fetch when idle (:meth:`StageRunner.lane_poller`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from schemas.envelope import Envelope, Hop, Status, Tier, ms_rounded
from schemas.errors import BadEvent
from schemas.response import DeadLetter, response_bytes
from streams.runtime import metrics, tracing
from streams.runtime.codec import decode, encode
from streams.runtime.connections import Batches, StageConsumer, new_stage_consumer
from streams.runtime.lanes import LanePoller, owned_offsets
from streams.runtime.replays import Answers, NoReplayMemory, ReplayMemory, as_answered
from streams.runtime.stage import C, Stage
from streams.runtime.topics import Topology
from streams.settings import Settings
from workers.budgets import Budgets
from workers.context import Clock
from workers.decisions import (
    DecisionKeys,
    decision_problem,
    outcome_verifies,
    sign_decision,
    sign_outcome,
    sign_tool_calls,
)

log = logging.getLogger(__name__)

Records = Batches  # a polled batch: records by partition


class BatchPublisher(Protocol):
    """Where a batch's output goes: ``publish`` enqueues, ``flush`` returns once every record is acknowledged.
    Kafka: :class:`streams.runtime.publisher.KafkaPublisher`; in memory: :mod:`streams.testing`."""

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None: ...

    async def flush(self) -> None: ...


class SendOnFlush:
    """A publisher whose end of batch (``flush`` in ``handle``) only ships the records (``send``) without waiting for
    their acknowledgements: a lone stage's while its loop overlaps the tail (:meth:`StageRunner.finish` awaits them
    on the wrapped publisher before the batch's offsets are committed), and a chain's sink member's (straight to
    Kafka; the chain awaits them in the cycle's tail)."""

    def __init__(self, kafka: BatchPublisher, send: Callable[[], Awaitable[None]]) -> None:
        self.kafka = kafka
        self._send = send

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.kafka.publish(topic, value, key=key)

    async def flush(self) -> None:
        await self._send()


# A batch of hundreds of events is tens of milliseconds of pure CPU per pass; handing the loop back every this many
# events keeps heartbeats and the other stages of the process moving without costing anything measurable.
_YIELD_EVERY = 128


class OffsetCommitter:
    """Commits a batch's offsets while the next batch is polled and worked: one commit in flight, in order.

    The runner calls ``commit`` only once the batch's output is acknowledged, so a crash at any point redelivers
    rather than loses; taking the commit's round trip off the loop only shortens the time between two polls (a hop's
    latency at low rates, its cycle under load).
    """

    def __init__(self, consumer: StageConsumer, stage: str) -> None:
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


class PacedCommitter:
    """Commits at most one per ``interval_s``: what a tail hands in once its output is acknowledged is committed at
    once if the last commit is that old, else kept (a later batch's offsets replace an earlier one's) until a later
    tail finds the interval over, the loop polls nothing (``idle``) or stops (``wait``).

    At 25–50 req/s a cycle holds a request or two, and each paid a commit: a round trip, ~0.35 ms of the worker's
    CPU and ~0.6–1 ms of the broker's (an append to the group's offsets log). Delivery stays at-least-once and
    offsets are committed in order, each only after its own batch's acknowledgements; a crash redelivers at most the
    interval's worth more (the audit and the claims deduplicate, as for any redelivery). Used by a lone stage's loop
    (:meth:`ConsumerLoop.run`) and a co-located chain's (``streams/runtime/chain.py``).
    """

    def __init__(self, committer: OffsetCommitter, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.committer = committer
        self.interval_s = interval_s
        self.clock = clock
        self._pending: dict[TopicPartition, int] = {}
        self._last = -float("inf")
        self._lock = asyncio.Lock()  # the tail and the idle loop both commit: one takes and sends at a time, in order

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._pending.update(offsets)  # tails finish in cycle order, so these offsets are the newest
        if self.clock() - self._last >= self.interval_s:
            await self._send()

    async def idle(self) -> None:
        """Nothing was polled: commit what is kept now rather than leave it to the next cycle."""
        if self._pending:
            await self._send()

    async def wait(self) -> None:
        await self._send()
        await self.committer.wait()

    async def _send(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            offsets, self._pending = self._pending, {}
            self._last = self.clock()
            await self.committer.commit(offsets)


@dataclass
class BatchOutcome:
    consumed: int = 0
    forwarded: int = 0
    responses: int = 0
    deadlettered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # responses by status: counted once per batch


class ConsumerLoop:
    """A consumer group's loop: poll (lanes) → ``handle`` → commit once everything it produced is acknowledged.
    Shared by a stage (:class:`StageRunner`) and a co-located chain (``streams/runtime/chain.py``)."""

    name: str
    topics: list[str]
    settings: Settings
    consumer: StageConsumer | None
    _stopping: asyncio.Event

    async def handle(self, batches: Records) -> object:
        raise NotImplementedError

    async def open_consumer(self, *, role: str, group: str) -> None:
        self.consumer = new_stage_consumer(self.settings, *self.topics, role=role, group_id=group,
                                           client_id=f"{self.settings.worker_id}-{self.name}",
                                           group_instance_id=self.settings.group_instance_id(self.name),
                                           **consumer_options(self.settings))
        await self.consumer.start()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self.consumer is not None:
            if self.settings.leave_group_on_stop:
                leave_even_if_static(self.consumer)
            await self.consumer.stop()

    def lane_poller(self) -> LanePoller:
        """Polls this loop's topics, the batch lanes within their quota (streams/runtime/lanes.py)."""
        return LanePoller(self.name, frozenset(t for t in self.topics if t.endswith(".batch")),
                          max_records=self.settings.batch_max_records, batch_quota=self.settings.lane_batch_quota,
                          batch_share=self.settings.lane_batch_share, pause_lag=self.settings.lane_pause_lag)

    # How ``run`` cycles (a lone stage's and a chain's own settings).
    overlap_tail = False  # work the next batch while the previous batch's tail (acknowledgements, commit) finishes
    commit_interval_s = 0.0  # commit at most this often (PacedCommitter)
    tail_first = False  # the next batch's work waits for the previous tail (only the poll overlaps it)

    async def work(self, batches: Records) -> Any:
        """A polled batch up to its tail; what it returns is handed to :meth:`finish` in the tail."""
        await self.handle(batches)

    async def finish(self, worked: Any) -> None:
        """The batch's tail before its commit: returns once everything the batch produced is acknowledged (by
        default ``handle`` already waited for that)."""

    async def run(self) -> None:
        """Poll → work → (the previous batch's tail finished) → this batch's tail in the background → poll. A tail
        (:meth:`finish`) returns once the batch's output is acknowledged, then hands its offsets to the paced
        committer: one tail at a time, in batch order, so every commit follows its own batch's acknowledgements and
        commits never overtake each other.
        """
        assert self.consumer is not None, "start() first"
        poller = self.lane_poller()
        committer = PacedCommitter(OffsetCommitter(self.consumer, self.name), self.commit_interval_s)
        tail: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                batches = await poller.poll(self.consumer)
                if tail is not None and tail.done():
                    done, tail = tail, None
                    done.result()  # a tail that failed (a produce never acknowledged) ends the loop uncommitted
                if not batches:
                    if tail is None:  # a tail still running commits its own offsets
                        await committer.idle()
                    continue
                if tail is not None and self.tail_first:
                    await tail
                    tail = None
                worked = await self.work(batches)
                if tail is not None:
                    await tail  # one tail at a time: acknowledgements awaited and commits made in batch order
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                tail = asyncio.create_task(self._tail(worked, offsets, committer), name=f"tail-{self.name}")
                if not self.overlap_tail:
                    await tail
                    tail = None
            if tail is not None:
                await tail
        finally:
            if tail is not None and not tail.done():
                await asyncio.wait([tail])
            await committer.wait()

    async def _tail(self, worked: Any, offsets: dict[TopicPartition, int], committer: PacedCommitter) -> None:
        await self.finish(worked)  # everything the batch produced is acknowledged before its offsets are committed
        await committer.commit(offsets)


class StageRunner(ConsumerLoop, Generic[C]):
    """Runs one stage: ``handle`` works one batch of records (no broker needed: :mod:`streams.testing` drives it
    over in-memory topics); ``start``/``run`` wrap it in a Kafka consumer loop with ordered commits."""

    def __init__(
        self,
        *,
        stage: Stage[C],
        ctx: C,
        settings: Settings,
        topology: Topology,
        publisher: BatchPublisher,
        clock: Clock,
        replays: ReplayMemory | None = None,
        keys: DecisionKeys | None = None,
    ) -> None:
        self.spec = stage
        self.keys = keys or DecisionKeys.parse(settings.decision_keys.get_secret_value())
        self.stage = self.name = stage.name
        self.ctx = ctx
        self.settings = settings
        self.topology = topology
        self.use_publisher(publisher)
        self.clock = clock
        self.replays: ReplayMemory = replays or NoReplayMemory()
        self.topics: list[str] = list(topology.stage_lanes(stage.name))
        self.ingress_topics = frozenset(topology.stage_lanes("ingress")) if stage.entry else frozenset()
        self.topics += sorted(self.ingress_topics)
        self.consumer: StageConsumer | None = None
        self._stopping = asyncio.Event()
        self.overlap_tail = settings.stage_overlap_tail
        self.commit_interval_s = settings.stage_commit_interval_ms / 1000
        # The audit's claim confirmations ride its next batch and rely on the previous batch being acknowledged.
        self.tail_first = stage.sink
        self._acknowledged: BatchPublisher | None = None  # what the tail flushes while run() overlaps it
        self.budgets = Budgets.from_totals(settings.budget_interactive_ms, settings.budget_standard_ms,
                                           settings.budget_batch_ms)
        self.tracing = tracing.tracer_for(settings)  # OpenTelemetry hop spans; None (and free) when off
        # The stage's metric children, looked up once (a label lookup is a lock, a tuple and a dict probe).
        self._events = metrics.STAGE_EVENTS.labels(self.stage)
        self._service_seconds = metrics.STAGE_SERVICE_SECONDS.labels(self.stage)
        self._queue_seconds = metrics.STAGE_QUEUE_SECONDS.labels(self.stage)
        # This stage's allocation of each tier's budget, looked up once (TierBudget.violated_by per hop, inlined).
        self._allocation_ms = {tier: budget.allocation_ms(self.stage) for tier, budget in self.budgets.tiers.items()}
        self._violations: dict[Tier, Any] = {}  # BUDGET_VIOLATIONS' children by tier

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.open_consumer(role=f"stage-{self.stage}", group=self.topology.group(self.stage))

    async def run(self) -> None:
        """The consumer loop (:meth:`ConsumerLoop.run`). With the tail overlapped, the end of ``handle`` only sends
        the batch's output (:class:`SendOnFlush`) and the tail awaits its acknowledgements before the commit."""
        kafka = self.publisher
        send: Callable[[], Awaitable[None]] | None = getattr(kafka, "send", None)
        if self.overlap_tail and send is not None:
            self.use_publisher(SendOnFlush(kafka, send))
            self._acknowledged = kafka
        try:
            await super().run()
        finally:
            if self._acknowledged is not None:
                self.use_publisher(kafka)
                self._acknowledged = None

    def lane_poller(self) -> LanePoller:
        poller = super().lane_poller()
        # An idle stage waits as long as its fetch does (the broker answers at the first record, so does the poll):
        # at 100 ms an idle stage woke ten times a second for nothing.
        poller.wait_ms = self.settings.batch_wait_ms
        return poller

    async def finish(self, worked: Any) -> None:
        if self._acknowledged is not None:
            await self._acknowledged.flush()

    def use_publisher(self, publisher: BatchPublisher) -> None:
        """Where this stage's output goes. A co-located chain's publisher takes envelopes for its members as objects
        (``hand_over``, streams/runtime/chain.py); a chain's sink is given one without."""
        self.publisher = publisher
        self._hand_over: Callable[[str, Envelope, bytes], bool] | None = getattr(publisher, "hand_over", None)

    # ------------------------------------------------------------------ one batch
    async def handle(self, batches: Records) -> BatchOutcome:
        received_ns = self.clock.now_ns()
        sink, governed = self.spec.sink, self.spec.governed
        result = BatchOutcome()
        live: list[Envelope] = []
        passing: list[Envelope] = []  # terminal or forwarded without work here
        unanswered: list[Envelope] = []  # reached the audit stage without an outcome: audited, then answered
        hops: dict[str, Hop] = {}
        worker_id = self.settings.worker_id
        for records in batches.values():
            for record in records:
                result.consumed += 1
                if result.consumed % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let heartbeats and the other stages of this process run
                value = record.value
                if isinstance(value, Envelope):  # handed over in memory by a co-located member (chain.py)
                    env = value
                else:
                    decoded = self._decode(record, result)
                    if decoded is None:
                        continue
                    env = decoded
                if record.topic in self.ingress_topics:
                    _clear_runner_fields(env)
                elif env.outcome is None and env.responded:
                    env.responded = False  # only a terminal request can have been answered
                hop = Hop.arrived(self.stage, worker_id, int(record.timestamp) * 1_000_000, received_ns)
                if env.route and env.route[0] == self.stage:
                    env.route.pop(0)
                elif env.route:
                    hop.status = "forwarded"  # arrived on ingress but its route starts elsewhere
                    env.hops.append(hop)
                    hops[env.request_id] = hop
                    passing.append(env)
                    continue
                elif not sink:
                    self._deadletter(record, BadEvent(f"route is empty at stage {self.stage}", reason="misrouted"),
                                     result, env)
                    continue
                env.hops.append(hop)
                hops[env.request_id] = hop
                # (``_refused`` has nothing to check on a request neither terminal nor governed here)
                if (governed or env.outcome is not None) and self._refused(env, result):
                    hop.status = "refused"
                    if sink:
                        unanswered.append(env)
                if sink and env.outcome is None:
                    # Only a producer bypassing the route gets here: audit it as a failure, and answer it too.
                    env.finish(Status.FAILED, code="no_outcome", stage=self.stage,
                               message=f"the request reached the {self.stage} stage without an outcome")
                    unanswered.append(env)
                if env.outcome is not None and not sink:
                    passing.append(env)
                elif not sink and env.deadline_at_ns <= received_ns:
                    # Never work a request whose deadline passed on arrival; end it now, explained.
                    hop.status = "deadline_exceeded"
                    env.finish(Status.DEADLINE_EXCEEDED, code="deadline_exceeded", stage=self.stage,
                               message=f"deadline passed {-env.remaining_budget_ms(received_ns):.0f} ms before "
                                       f"the {self.stage} stage")
                    passing.append(env)
                else:
                    live.append(env)

        started_ns = self.clock.now_ns()
        batch_size = len(live)
        for hop in hops.values():
            # The stamps write the hop's fields as pydantic's own assignment does (validate_assignment is off: the
            # value into __dict__, the name into the fields set), without its ~0.4–0.7 µs of dispatch per write.
            stamps = hop.__dict__
            stamps["started_at_ns"] = started_ns
            stamps["batch_size"] = batch_size
            hop.__pydantic_fields_set__.update(_STARTED)
        outputs = await self._process(live, result) if live else []
        if self.spec.decides:
            for env in outputs:
                if not env.terminal and env.policy is not None:
                    sign_decision(env, self.keys)
        if self.spec.seals_tool_calls:
            for env in outputs:
                if not env.terminal and env.tools is not None and env.tools.pending:
                    sign_tool_calls(env, self.keys)
        finished_ns = self.clock.now_ns()
        for stamp in hops.values():
            stamp.__dict__["finished_at_ns"] = finished_ns
            stamp.__pydantic_fields_set__.add("finished_at_ns")
        onward = (*outputs, *passing, *unanswered)
        answers = Answers(self.replays)  # a request answered before gets its first response again (replays.py)
        # tracing hook: one span per hop (made before forwarding: it rewrites env.trace), one per batch
        trace = self.tracing.batch(self.stage, started_ns, finished_ns, len(live)) if self.tracing else None
        for i, env in enumerate(onward, start=1):
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            stamp_or_none = hops.get(env.request_id)
            if stamp_or_none is not None:
                # = round(env.remaining_budget_ms(finished_ns), 3)
                stamp_or_none.__dict__["remaining_budget_ms"] = ms_rounded(env.deadline_at_ns - finished_ns)
                stamp_or_none.__pydantic_fields_set__.add("remaining_budget_ms")
                if self._violates(env.tier, stamp_or_none):
                    stamp_or_none.__dict__["budget_violation"] = True  # as the stamps above are written
                    stamp_or_none.__pydantic_fields_set__.add("budget_violation")
                    violations = self._violations.get(env.tier)
                    if violations is None:  # looked up at the first violation (a series appears only then)
                        violations = self._violations[env.tier] = metrics.BUDGET_VIOLATIONS.labels(env.tier.value,
                                                                                                  self.stage)
                    violations.inc()
                if trace is not None:
                    trace.hop(env, stamp_or_none)
            self._answer(env, finished_ns, result, answers)
        # The responses first (one replay-memory round trip for the batch), then the envelopes on their routes: a
        # request answered before travels on saying what it was answered with (replays.as_answered).
        for env, first in await answers.publish(self.publisher):
            as_answered(env, first)
        for env in onward:
            if env.route:
                self._route(env, result)
        if trace is not None:
            trace.close(live)  # also the hops of the envelopes a sink stage keeps (not forwarded)
        await self.publisher.flush()
        self._events.inc(result.consumed)
        self._service_seconds.observe((finished_ns - started_ns) / 1e9)
        # Each live hop's queue_ms / 1e3 (every one started at started_ns), the property's arithmetic inlined.
        queued = [started_ns - hops[env.request_id].produced_at_ns for env in live]
        metrics.observe_many(self._queue_seconds, [(ns if ns > 0 else 0) / 1e6 / 1e3 for ns in queued])
        for status, count in result.outcomes.items():
            metrics.OUTCOMES.labels(self.stage, status).inc(count)
        return result

    def _violates(self, tier: Tier, hop: Hop) -> bool:
        """``self.budgets.for_tier(tier).violated_by(hop)``: the same float arithmetic, in the same order."""
        allocation = self._allocation_ms[tier]
        if not allocation > 0:
            return False
        started = hop.started_at_ns
        queued, served = started - hop.produced_at_ns, hop.finished_at_ns - started
        return (queued if queued > 0 else 0) / 1e6 + (served if served > 0 else 0) / 1e6 > allocation

    async def _process(self, live: list[Envelope], result: BatchOutcome) -> list[Envelope]:
        try:
            return await self.spec.process(live, self.ctx)
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

    def _answer(self, env: Envelope, now_ns: int, result: BatchOutcome, answers: Answers) -> None:
        """A request this stage ended (or that ended before it and was not answered yet) gets its response."""
        if not env.route and not self.spec.sink and env.outcome is None:
            # A route that ends before the audit stage would lose the request silently; end it, explained.
            env.finish(Status.FAILED, code="route_ended", stage=self.stage,
                       message=f"the route ended at {self.stage} without reaching a terminal outcome")
        outcome = env.outcome
        if outcome is not None and outcome.signature is None:
            sign_outcome(env, self.keys)  # this stage ended it: what it counts is sealed here
        if outcome is not None and not env.responded:
            response = response_bytes(env, completed_at_ns=now_ns)  # = encode(Response.from_envelope(…))
            topics = [self.topology.responses]
            reply_to = env.request.reply_to
            if reply_to:
                if reply_to.startswith(self.topology.replies_prefix):
                    topics.append(reply_to)
                else:
                    # A producer must not make the pipeline write into arbitrary topics (say another stage's input).
                    log.warning("request %s: reply_to %r is outside %s*; answered on %s only", env.request_id,
                                reply_to, self.topology.replies_prefix, self.topology.responses)
            answers.add(env.request_id, response, topics, envelope=env if env.route else None)
            env.responded = True
            result.responses += 1
            result.outcomes[outcome.status] += 1

    def _route(self, env: Envelope, result: BatchOutcome) -> None:
        """On to the next stage of the route: handed over in memory to a co-located member, else produced."""
        key = env.request_id.encode()
        topic = self.topology.lanes[env.route[0], env.tier]  # the next stage's lane, formatted once
        if self._hand_over is None or not self._hand_over(topic, env, key):
            self.publisher.publish(topic, encode(env), key=key)
        result.forwarded += 1

    def _refused(self, env: Envelope, result: BatchOutcome) -> bool:
        """Zero trust: an outcome must carry its deciding stage's signature, and a governed stage works a request
        only under a policy decision sealed for it. Otherwise the request becomes an audited denial without data
        (never an answer, never a count) and a copy goes to the dead-letter topic."""
        if env.terminal:
            problem = None if outcome_verifies(env, self.keys) else "its outcome's signature does not verify"
        elif self.spec.governed:
            problem = decision_problem(env, self.keys, self.stage)
        else:
            return False
        if problem is None:
            return False
        code = "unverified_outcome" if env.terminal else "unverified_decision"
        log.warning("stage %s refused request %s (tenant %s): %s", self.stage, env.request_id, env.tenant, problem)
        env.answer = None
        env.retrieval = env.cache = None
        env.model = None
        env.postprocess = None
        env.responded = False
        env.outcome = None
        env.finish(Status.DENIED, code=code, stage=self.stage,
                   message=f"refused by the {self.stage} stage: {problem}")
        sign_outcome(env, self.keys)
        if not self.spec.sink:  # the sink audits the refusal itself; elsewhere operators get a copy to look at
            self._deadletter_envelope(env, code, result)
        metrics.REFUSED.labels(self.stage, code).inc()
        return True

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


def _clear_runner_fields(env: Envelope) -> None:
    """A request entering the pipeline carries only what a producer may say: the stages' sections, the answer, the
    outcome, the hops and the answered flag are the pipeline's to write, so whatever a producer put there is dropped
    (a pre-filled ``responded`` once meant no response was ever published). Only what is set is written: a
    pydantic assignment costs ~1 µs, and a producer's envelope has none of these."""
    if env.responded:
        env.responded = False
    if env.hops:
        env.hops = []
    for name in _RUNNER_SECTIONS:
        if getattr(env, name) is not None:
            setattr(env, name, None)


_STARTED = frozenset({"started_at_ns", "batch_size"})
_RUNNER_SECTIONS = ("outcome", "retrieval", "policy", "cache", "model", "postprocess", "tools", "answer")


def leave_even_if_static(consumer: StageConsumer) -> None:
    """Make ``consumer.stop()`` send its LeaveGroup although it is a static member.

    aiokafka never sends one for a consumer with a ``group_instance_id`` (and has no LeaveGroup v3, which names the
    instance); Kafka takes the v0–v2 LeaveGroup by member id from a static member too (checked against 4.4: the group
    is empty right after). A private attribute, hence the guard: without it the member just stays until its session
    times out, as aiokafka intends.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and hasattr(coordinator, "_group_instance_id"):
        coordinator._group_instance_id = None


def consumer_options(settings: Settings) -> dict[str, object]:
    """How every stage consumer fetches; the benchmark's raw relay uses the same, so only our code differs."""
    return {
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        # With fetch_min_bytes=1 the broker answers a fetch as soon as any record arrives, so this wait mostly sets
        # how often an idle consumer asks again: at 5 ms six idle stage consumers kept ~20 % of a core busy (the
        # broker answering ~1,200 empty fetches a second); at 500 ms, ~2 %. See Settings.batch_wait_ms for its cost.
        "fetch_max_wait_ms": settings.batch_wait_ms,
        # Heartbeats share the event loop with the batches; on a starved machine a big batch can hold the loop for
        # seconds, and aiokafka's 10 s default then evicts a healthy member mid-batch (Kafka's own default is 45 s).
        "session_timeout_ms": settings.session_timeout_ms,
    }


def topics_of(runners: Sequence[StageRunner[Any]]) -> list[str]:
    return [topic for runner in runners for topic in runner.topics]
