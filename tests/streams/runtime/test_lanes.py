"""LanePoller without Kafka: a fake consumer holding records per partition and a clock the test moves."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition

from streams.runtime.lanes import LanePoller, ProcessLanes, QuietPartitions

FAST = TopicPartition("t.model", 0)
SLOW = TopicPartition("t.model.batch", 0)


@dataclass
class Record:
    topic: str
    offset: int


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class QueuedRecords:
    """What both fake consumers share: records queued per partition, each partition's end, the assignment."""

    queued: dict[TopicPartition, list[Record]]
    ends: dict[TopicPartition, int]

    def add(self, tp: TopicPartition, count: int) -> None:
        for _ in range(count):
            self.queued[tp].append(Record(tp.topic, self.ends[tp]))
            self.ends[tp] += 1

    def assignment(self) -> set[TopicPartition]:
        return set(self.queued)


@dataclass
class FakeConsumer(QueuedRecords):
    """Just what LanePoller uses: assignment, getmany (with a partition filter), highwater, pause and resume."""

    clock: Clock
    queued: dict[TopicPartition, list[Record]] = field(default_factory=lambda: {FAST: [], SLOW: []})
    ends: dict[TopicPartition, int] = field(default_factory=lambda: {FAST: 0, SLOW: 0})
    paused: set[TopicPartition] = field(default_factory=set)
    waits_ms: list[int] = field(default_factory=list)

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp]

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        left = max_records or 1 << 30
        out: dict[TopicPartition, list[Record]] = {}
        for tp in sorted(tps or self.queued, key=lambda tp: tp.topic):  # interactive first, as a fetch may order it
            if tp in self.paused or not self.queued[tp] or left <= 0:
                continue
            taken, self.queued[tp] = self.queued[tp][:left], self.queued[tp][left:]
            out[tp] = taken
            left -= len(taken)
        if not out:
            self.waits_ms.append(timeout_ms)
            self.clock.now += timeout_ms / 1000  # nothing came: the whole wait passes
        return out


def counts(batches: dict[TopicPartition, list[Record]]) -> tuple[int, int]:
    return len(batches.get(FAST, [])), len(batches.get(SLOW, []))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def consumer(clock: Clock) -> FakeConsumer:
    return FakeConsumer(clock)


def poller(clock: Clock, **overrides: object) -> LanePoller:
    options: dict[str, object] = {"max_records": 500, "batch_quota": 16, "pause_lag": 100, "batch_share": 0.2,
                                  "clock": clock, "shared": ProcessLanes(), **overrides}
    return LanePoller("model", frozenset({SLOW.topic}), **options)  # type: ignore[arg-type]


async def test_idle_interactive_lets_backfill_run_at_full_batch_size(clock: Clock, consumer: FakeConsumer) -> None:
    consumer.add(SLOW, 2000)
    assert counts(await poller(clock).poll(consumer)) == (0, 500)


async def test_hot_interactive_holds_backfill_to_a_slice(clock: Clock, consumer: FakeConsumer) -> None:
    lanes = poller(clock)
    consumer.add(FAST, 3)
    assert counts(await lanes.poll(consumer)) == (3, 0)  # interactive traffic seen: the stage is hot from here on
    consumer.add(FAST, 2)
    consumer.add(SLOW, 2000)
    assert counts(await lanes.poll(consumer)) == (2, 16)  # a slice is due: it rides along with interactive work
    clock.now += 0.010
    consumer.add(FAST, 2)
    assert counts(await lanes.poll(consumer)) == (2, 0)  # then the batch lane rests


async def test_backfill_gets_at_most_its_share_of_a_busy_stage(clock: Clock, consumer: FakeConsumer) -> None:
    lanes = poller(clock, batch_share=0.2)
    consumer.add(FAST, 1)
    await lanes.poll(consumer)  # interactive traffic seen: the stage is hot from here on
    consumer.add(SLOW, 10_000)
    busy_s = {"interactive": 0.0, "batch": 0.0}
    for _ in range(400):
        consumer.add(FAST, 1)  # an interactive record every poll, the busiest case
        fast, slow = counts(await lanes.poll(consumer))
        busy_s["interactive"] += 0.010 * fast  # the runner works the batch before it polls again
        busy_s["batch"] += 0.005 * slow
        clock.now += 0.010 * fast + 0.005 * slow
    share = busy_s["batch"] / sum(busy_s.values())
    assert 0.1 < share <= 0.2 + 1e-9  # capped at the share, and never starved


async def test_a_resting_batch_lane_waits_on_the_interactive_lane_only(clock: Clock, consumer: FakeConsumer) -> None:
    lanes = poller(clock, batch_share=0.5)
    consumer.add(FAST, 1)
    await lanes.poll(consumer)
    consumer.add(SLOW, 100)
    assert counts(await lanes.poll(consumer)) == (0, 16)
    clock.now += 0.040  # the slice kept the stage busy 40 ms: the batch lane rests 40 ms (share 0.5)
    assert counts(await lanes.poll(consumer)) == (0, 0)
    assert consumer.waits_ms[-1] == 40  # waited for interactive records until the slice was due
    assert counts(await lanes.poll(consumer)) == (0, 16)


async def test_a_hot_stage_polls_with_two_getmany_calls_at_most(clock: Clock, consumer: FakeConsumer) -> None:
    """Interactive records in hand: they and a batch slice (two calls); none: one wait on both lanes, which returns a
    slice the batch lane already holds at once (it was three calls per idle poll)."""
    lanes = poller(clock, batch_share=0.5)
    calls: list[tuple[TopicPartition, ...]] = []
    getmany = consumer.getmany

    async def counted(*tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        calls.append(tps)
        return await getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)

    consumer.getmany = counted  # type: ignore[method-assign]
    consumer.add(FAST, 1)
    await lanes.poll(consumer)  # hot from here on
    calls.clear()
    assert counts(await lanes.poll(consumer)) == (0, 0)  # idle: one look at the interactive lane, one wait on both
    assert calls == [(FAST,), ()]
    assert consumer.waits_ms[-1] == 100
    calls.clear()
    consumer.add(SLOW, 100)
    assert counts(await lanes.poll(consumer)) == (0, 16)  # what the batch lane holds: a slice, at once
    assert calls == [(FAST,), ()]
    clock.now += 0.010  # the slice kept the stage busy 10 ms: the batch lane rests 10 ms
    assert counts(await lanes.poll(consumer)) == (0, 0)  # resting: the interactive lane alone, until it is due
    calls.clear()
    consumer.add(FAST, 2)
    assert counts(await lanes.poll(consumer)) == (2, 16)  # interactive records in hand, and a slice beside them
    assert calls == [(FAST,), (SLOW,)]


async def test_a_slow_stage_stays_hot_between_polls_longer_than_the_window(clock: Clock,
                                                                          consumer: FakeConsumer) -> None:
    lanes = poller(clock, hot_window_ms=100.0, hot_polls=3)
    consumer.add(FAST, 1)
    await lanes.poll(consumer)
    consumer.add(SLOW, 2000)
    clock.now += 0.8  # one model call later: far past the wall-clock window
    assert counts(await lanes.poll(consumer)) == (0, 16)  # still a slice, not a full batch of backfill


async def test_batch_lane_pauses_above_the_lag_and_resumes_below_half(clock: Clock, consumer: FakeConsumer) -> None:
    lanes = poller(clock, max_records=50, pause_lag=100)
    consumer.add(SLOW, 500)
    consumer.add(FAST, 200)
    assert counts(await lanes.poll(consumer)) == (50, 0)  # lag 150 left behind: pause
    assert SLOW in consumer.paused
    assert counts(await lanes.poll(consumer)) == (50, 0)  # lag 100: still paused (hysteresis)
    assert SLOW in consumer.paused
    await lanes.poll(consumer)  # lag 50: resumed
    assert SLOW not in consumer.paused


def test_batch_share_must_be_a_fraction(clock: Clock) -> None:
    with pytest.raises(ValueError, match="batch_share"):
        poller(clock, batch_share=0.0)


async def test_stages_of_one_process_share_hotness(clock: Clock) -> None:
    shared = ProcessLanes()
    upstream, downstream = FakeConsumer(clock), FakeConsumer(clock)
    first, second = poller(clock, shared=shared), poller(clock, shared=shared)
    upstream.add(FAST, 1)
    await first.poll(upstream)  # interactive traffic at one stage ...
    downstream.add(SLOW, 2000)
    assert counts(await second.poll(downstream)) == (0, 16)  # ... holds the other stage's backfill to a slice
    assert counts(await poller(clock).poll(downstream)) == (0, 500)  # a stage of another process: idle, full batch


# ------------------------------------------------------------------------------------------------ rebalances
@dataclass
class RebalancingConsumer(FakeConsumer):
    """The group rebalances while ``getmany`` waits: ``revoke`` moves to another member and ``grant`` arrives with
    its records. As in aiokafka, asking about a partition this member no longer owns fails."""

    revoke: set[TopicPartition] = field(default_factory=set)
    grant: dict[TopicPartition, int] = field(default_factory=dict)

    def rebalance(self) -> None:
        for tp in self.revoke:
            del self.queued[tp], self.ends[tp]
            self.paused.discard(tp)
        for tp, records in self.grant.items():
            self.queued[tp], self.ends[tp] = [], 0
            self.add(tp, records)
        self.revoke, self.grant = set(), {}

    def owned(self, tp: TopicPartition) -> None:
        if tp not in self.queued:
            raise AssertionError("Partition is not assigned")

    def highwater(self, tp: TopicPartition) -> int:
        self.owned(tp)
        return super().highwater(tp)

    def pause(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.owned(tp)
        super().pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.owned(tp)
        super().resume(*tps)

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        self.rebalance()
        owned = [tp for tp in tps if tp in self.queued]
        if tps and not owned:
            return {}
        return await super().getmany(*owned, timeout_ms=timeout_ms, max_records=max_records)


SLOW_1 = TopicPartition(SLOW.topic, 1)


async def test_a_rebalance_during_the_poll_does_not_kill_the_stage(clock: Clock) -> None:
    consumer = RebalancingConsumer(clock)
    consumer.add(FAST, 5)
    consumer.add(SLOW, 5)
    lanes = poller(clock)
    consumer.revoke = {FAST}  # a second worker of the stage joins: the interactive partition moves to it
    assert counts(await lanes.poll(consumer)) == (0, 5)
    consumer.add(SLOW, 3)
    consumer.grant = {FAST: 2}  # and back when it leaves
    assert counts(await lanes.poll(consumer)) == (2, 3)


async def test_a_paused_batch_lane_survives_a_rebalance_and_stays_paused(clock: Clock) -> None:
    consumer = RebalancingConsumer(clock)
    lanes = poller(clock, max_records=50, pause_lag=100)
    consumer.add(SLOW, 500)
    consumer.add(FAST, 400)
    await lanes.poll(consumer)
    assert SLOW in consumer.paused
    consumer.revoke, consumer.grant = {SLOW}, {SLOW_1: 500}  # the paused partition moves; another one arrives
    assert counts(await lanes.poll(consumer)) == (50, 0)
    assert consumer.paused == {SLOW_1}, "the lane is still paused, on the partition it owns now"
    consumer.revoke = {SLOW_1}
    while consumer.queued[FAST]:  # the interactive lag drains: resumes what it owns, nothing it lost
        await lanes.poll(consumer)
    assert not consumer.paused


ENTRY = TopicPartition("t.ingress", 0)
INNER = TopicPartition("t.model", 0)


@dataclass
class FetchingConsumer(QueuedRecords):
    """A consumer whose paused partitions are left out of fetches: what QuietPartitions reads (positions, high
    watermarks, when each partition was last fetched) and pause/resume."""

    queued: dict[TopicPartition, list[Record]] = field(default_factory=lambda: {ENTRY: [], INNER: []})
    ends: dict[TopicPartition, int] = field(default_factory=lambda: {ENTRY: 0, INNER: 0})
    positions: dict[TopicPartition, int] = field(default_factory=lambda: {ENTRY: 0, INNER: 0})
    fetched_ms: dict[TopicPartition, int] = field(default_factory=dict)
    held: set[TopicPartition] = field(default_factory=set)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp] if tp in self.fetched_ms else None

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.fetched_ms.get(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self.held)

    def pause(self, *tps: TopicPartition) -> None:
        self.held.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.held.difference_update(tps)

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        for tp in tps or self.queued:
            if tp in self.held:
                continue
            self.fetched_ms[tp] = int(time.time() * 1000) + 1
            if self.queued[tp]:
                out[tp], self.queued[tp] = self.queued[tp], []
                self.positions[tp] = self.ends[tp]
        return out


async def test_a_chain_leaves_quiet_partitions_out_of_its_fetches_and_probes_them(clock: Clock) -> None:
    consumer = FetchingConsumer()
    lanes = LanePoller("chain", frozenset(), max_records=500, clock=clock, shared=ProcessLanes(),
                       quiet=QuietPartitions(frozenset({ENTRY.topic}), quiet_s=2.0, probe_s=1.0, clock=clock))
    consumer.add(ENTRY, 1)
    assert await lanes.poll(consumer) == {ENTRY: [Record(ENTRY.topic, 0)]}
    assert consumer.paused() == set()  # new partitions are fetched a while first
    clock.now += 2.5
    await lanes.poll(consumer)
    assert consumer.paused() == {INNER}  # quiet, nothing to read: out of the fetches; the entry never is
    consumer.add(INNER, 2)
    consumer.add(ENTRY, 1)
    assert await lanes.poll(consumer) == {ENTRY: [Record(ENTRY.topic, 1)]}  # not fetched while parked ...
    clock.now += 1.0
    await lanes.poll(consumer)  # ... until the probe is due: resumed
    assert consumer.paused() == set()
    assert await lanes.poll(consumer) == {INNER: [Record(INNER.topic, 0), Record(INNER.topic, 1)]}
    assert consumer.paused() == set()  # it delivered: it stays
    clock.now += 2.5
    await lanes.poll(consumer)
    assert consumer.paused() == {INNER}
    clock.now += 1.0
    await lanes.poll(consumer)  # probed: a fetch for it comes back empty ...
    await lanes.poll(consumer)
    assert consumer.paused() == {INNER}  # ... and it is parked again


async def test_a_parked_partition_with_records_left_is_never_held_back(clock: Clock) -> None:
    consumer = FetchingConsumer()
    quiet = QuietPartitions(frozenset({ENTRY.topic}), quiet_s=2.0, clock=clock)
    await consumer.getmany()  # fetched once: high watermarks known
    consumer.ends[INNER] = 5  # records beyond its position (say a fetch brought them but they were not taken)
    clock.now += 2.5
    assert await quiet.parked(consumer, {}) == set()


class ResettingConsumer(FetchingConsumer):
    """A consumer whose position of INNER is being reset (out of range): ``position`` waits until it is known."""

    async def position(self, tp: TopicPartition) -> int:
        if tp == INNER:
            await asyncio.Event().wait()
        return self.positions[tp]


async def test_a_known_position_is_read_in_place_and_one_being_reset_is_not_waited_for(clock: Clock) -> None:
    consumer = ResettingConsumer()
    await consumer.getmany()  # fetched once: high watermarks known
    tasks = len(asyncio.all_tasks())
    loop_turns = 0

    async def count_turns() -> None:
        nonlocal loop_turns
        while True:
            await asyncio.sleep(0)
            loop_turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    before = loop_turns
    assert await QuietPartitions._has_records(consumer, ENTRY) is False  # position 0 = high watermark 0
    assert loop_turns == before and len(asyncio.all_tasks()) == tasks + 1  # no task, no trip round the loop
    started = time.monotonic()
    assert await QuietPartitions._has_records(consumer, INNER) is True  # a reset in progress: never held back
    assert 0.04 <= time.monotonic() - started < 1.0
    counter.cancel()
