"""Priority lanes: a stage serves its interactive lane first and holds the batch lane back while it is busy.

Each stage consumes two topics: ``tollway.<stage>`` (interactive and standard tiers) and ``tollway.<stage>.batch``
(backfill). Batch work must never push interactive latency over budget, so on every poll:

* while interactive traffic is *hot* (a record seen by any stage of the process within ``hot_window_ms``, or by this
  stage in one of its last ``hot_polls`` polls), the batch lane gets slices of at most ``batch_quota`` records, and
  at most ``batch_share`` of the stage's time: after a slice that kept the stage busy for ``d``, its next slice waits
  ``d × (1 − share) / share`` while the interactive lane is served alone. A quota per poll alone is no limit at all:
  a fast stage polls again within milliseconds, so it worked backfill back to back and took the CPU its neighbours'
  interactive work needed. The share is also a floor — a slice is due once its rest is over even if interactive
  records are waiting (they ride along in the same poll), so backfill slows down under interactive load but is never
  starved. (One rest for the whole process starved the model stage instead: the fast stages, waiting for the exact
  moment a slice was due, took every slice and only piled backfill up in front of it.);
* while the interactive lane's lag is above ``pause_lag`` records, the batch lane is paused outright (no fetches
  at all), and resumed once the lag has drained below half of it (hysteresis, so it does not flap);
* when interactive traffic is idle, the batch lane gets the whole batch size: backfill runs at full speed. The first
  interactive record after a quiet spell waits for at most the batch in hand.

The group may rebalance while a poll waits (another worker of the stage joins or leaves): what the poll observes
afterwards (lag, pause, resume) is about the partitions the consumer owns *then*, never the list it took before
``getmany`` — aiokafka asserts on a revoked partition, and that assertion killed the first worker of a stage as soon
as a second one joined. A batch lane held paused stays paused on the partitions a rebalance hands over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from streams.runtime import metrics
from streams.runtime.connections import Batches, StageConsumer


@dataclass
class ProcessLanes:
    """What the stages of one process share about lanes: whether interactive traffic is flowing. They share its CPU
    and its event loop, so a stage that had seen no interactive record for a while (its upstream holding them) took a
    full batch of backfill and stalled its neighbours' interactive work behind it."""

    last_interactive: float = -1e18


PROCESS_LANES = ProcessLanes()


@dataclass
class QuietPartitions:
    """Which of a chain's partitions to leave out of its fetches: those that have been quiet a while.

    A chain's consumer reads every member's topics (``all+``: 16 topics, 64 partitions with 4 each), but at ordinary
    rates only the ingress lanes carry records — what members hand each other stays in memory. aiokafka has no
    incremental fetch sessions, so every fetch named all 64 partitions and the broker answered for each: a
    produce→fetch round cost the worker ~3.5 ms of CPU and the broker ~2.8 ms, against ~1.1 and ~1.2 ms naming the
    ingress's 4 (one consumer, 400 rounds each, alternated). So a partition outside ``steady_topics`` that has
    delivered nothing for ``quiet_s`` and has nothing left to read (its high watermark at its position) is paused;
    every ``probe_s`` the paused ones are fetched again until a fetch response for them came back
    (``last_poll_timestamp``), and those with records stay. Nothing is lost or skipped: a paused partition keeps its
    position, and a record produced to one waits at most about ``probe_s`` plus one fetch wait longer.
    """

    steady_topics: frozenset[str]
    quiet_s: float = 2.0
    probe_s: float = 1.0
    probe_timeout_s: float = 3.0  # a probe whose fetch never came back (a starved loop) ends anyway
    clock: Callable[[], float] = time.monotonic
    _active_until: dict[TopicPartition, float] = field(default_factory=dict)
    _parked: set[TopicPartition] = field(default_factory=set)
    _probing: set[TopicPartition] = field(default_factory=set)
    _probe_ms: int = 0
    _probe_started: float = 0.0
    _next_probe: float = 0.0

    async def parked(self, consumer: StageConsumer, batches: Batches) -> set[TopicPartition]:
        """The partitions to leave out of fetches after this poll."""
        now = self.clock()
        for tp in batches:
            self._active_until[tp] = now + self.quiet_s
        assigned = consumer.assignment()
        for gone in [tp for tp in self._active_until if tp not in assigned]:
            del self._active_until[gone]
        self._parked &= assigned
        self._probing &= assigned
        for tp in assigned:
            if tp.topic not in self.steady_topics and tp not in self._active_until and tp not in self._parked:
                self._active_until[tp] = now + self.quiet_s  # new to this consumer: fetched a while first
        if self._probing:
            done = {tp for tp in self._probing if (consumer.last_poll_timestamp(tp) or 0) >= self._probe_ms}
            if now - self._probe_started >= self.probe_timeout_s:
                done = set(self._probing)
            self._probing -= done
            for tp in done:
                if tp in batches or await self._has_records(consumer, tp):
                    self._active_until[tp] = now + self.quiet_s
                else:
                    self._parked.add(tp)
        for tp, until in list(self._active_until.items()):
            if until <= now and tp.topic not in self.steady_topics:
                if await self._has_records(consumer, tp):
                    self._active_until[tp] = now + self.quiet_s
                else:
                    del self._active_until[tp]
                    if not self._parked and not self._probing:  # the first one parked: probed probe_s from now
                        self._next_probe = now + self.probe_s
                    self._parked.add(tp)
        if self._parked and not self._probing and now >= self._next_probe:
            self._probing, self._parked = self._parked, set()
            self._probe_ms = int(time.time() * 1000)  # the fetcher stamps partitions with wall-clock ms
            self._probe_started = now
            self._next_probe = now + self.probe_s
        return set(self._parked)

    @staticmethod
    async def _has_records(consumer: StageConsumer, tp: TopicPartition) -> bool:
        """Records left to read, or not known yet (never fetched): either way, not one to pause."""
        try:
            high = consumer.highwater(tp)
            if high is None:
                return True
            # A position being reset (out of range) is awaited by position(): never hold the poll for it. A known
            # position (nearly always) returns at once: a timeout scope, unlike wait_for, adds no task and no trips
            # round the event loop (a probe asks this of every parked partition: 60 of all+'s 64, every second).
            async with asyncio.timeout(0.05):
                position = await consumer.position(tp)
            return bool(high > position)
        except TimeoutError:
            return True
        except (AssertionError, IllegalStateError):  # no longer assigned (a rebalance): not ours to fetch
            return False


@dataclass
class LanePoller:
    stage: str
    batch_topics: frozenset[str]
    max_records: int
    wait_ms: int = 100
    batch_quota: int = 32
    pause_lag: int = 100
    # Long enough to bridge the gaps of steady interactive traffic on a starved machine: a stage that went cold between
    # two interactive records took a full batch of backfill and made the next record wait for all of it.
    hot_window_ms: float = 2000.0
    # The model stage polls every few hundred ms; counting polls keeps a slow stage hot between two of them.
    hot_polls: int = 3
    # Backfill riding along slows the model's batched decode for the interactive requests in the same call, and each
    # slice holds the process's event loop. bench/lanes_bench.py, 20 req/s: at 0.2 (quota 16) interactive p99 under a
    # flood was 1.22× its p99 alone; at 0.1, 0.78–1.31× over five runs (rounds 0.6–1.7×: this shared machine's noise
    # is as large as the effect). Backfill then moves at ~4 % of its idle speed while interactive traffic flows.
    batch_share: float = 0.1
    clock: Callable[[], float] = time.monotonic
    shared: ProcessLanes = field(default_factory=lambda: PROCESS_LANES)
    quiet: QuietPartitions | None = None  # a chain's: quiet partitions left out of fetches
    _polls_since_interactive: int = 1 << 30
    _paused: bool = False
    _slice_started: float | None = None  # when the last batch slice was handed to the runner
    _batch_due: float = -1e18  # no batch slice before this while interactive traffic is hot

    def __post_init__(self) -> None:
        if not 0 < self.batch_share <= 1:
            raise ValueError(f"batch_share must be in (0, 1], got {self.batch_share}")

    def _split(self, consumer: StageConsumer) -> tuple[list[TopicPartition], list[TopicPartition]]:
        assigned = consumer.assignment()
        interactive = [tp for tp in assigned if tp.topic not in self.batch_topics]
        batch = [tp for tp in assigned if tp.topic in self.batch_topics]
        return interactive, batch

    @staticmethod
    def _lag(consumer: StageConsumer, partitions: list[TopicPartition], batches: Batches) -> int:
        lag = 0
        for tp in partitions:
            high = consumer.highwater(tp)
            records = batches.get(tp)
            if high is None or not records:
                continue
            lag += max(0, high - (records[-1].offset + 1))
        return lag

    def _hot(self) -> bool:
        recent = (self.clock() - self.shared.last_interactive) * 1000 < self.hot_window_ms
        return recent or self._polls_since_interactive < self.hot_polls

    def _charge_slice(self, now: float) -> None:
        """The runner calls poll again once the previous batch is worked: that time is what the slice cost."""
        if self._slice_started is not None:
            busy = max(0.0, now - self._slice_started)
            self._batch_due = now + busy * (1 - self.batch_share) / self.batch_share
            self._slice_started = None

    def _start_slice(self) -> None:
        self._slice_started = self.clock()

    async def poll(self, consumer: StageConsumer) -> Batches:
        now = self.clock()
        self._charge_slice(now)
        interactive, batch = self._split(consumer)
        batches: Batches
        if not batch or not interactive:
            batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
            await self._park_quiet(consumer, batches)
            return batches
        if not self._hot() and not self._paused:
            batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
        elif self._paused:
            batches = await consumer.getmany(*interactive, timeout_ms=self.wait_ms, max_records=self.max_records)
        elif now >= self._batch_due:
            batches = await consumer.getmany(*interactive, timeout_ms=0, max_records=self.max_records)
            if batches:
                extra = await consumer.getmany(*batch, timeout_ms=0, max_records=self.batch_quota)
                if extra:
                    batches.update(extra)
                    self._start_slice()
            else:
                # Nothing interactive in hand: one wait on both lanes for whichever comes first, as an idle stage
                # does. What the batch lane already holds comes back at once, a slice as before (a separate look at
                # it first cost one more getmany per poll, three per idle poll).
                batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.batch_quota)
                if any(tp.topic in self.batch_topics for tp in batches):
                    self._start_slice()
        else:
            # The batch lane is resting: wait for interactive records until a slice is due (then poll again).
            rest_ms = min(float(self.wait_ms), (self._batch_due - now) * 1000)
            batches = await consumer.getmany(*interactive, timeout_ms=max(1, round(rest_ms)),
                                             max_records=self.max_records)
        self._observe(consumer, batches)
        await self._park_quiet(consumer, batches)
        return batches

    async def _park_quiet(self, consumer: StageConsumer, batches: Batches) -> None:
        """Pause what is quiet (``quiet``) beside what the lanes pause, and resume the rest."""
        if self.quiet is None:
            return
        parked = await self.quiet.parked(consumer, batches)
        assigned = consumer.assignment()
        want = parked & assigned
        if self._paused:
            want |= {tp for tp in assigned if tp.topic in self.batch_topics}
        paused = consumer.paused()
        if want - paused:
            consumer.pause(*(want - paused))
        if (paused - want) & assigned:
            consumer.resume(*((paused - want) & assigned))

    def _observe(self, consumer: StageConsumer, batches: Batches) -> None:
        interactive, batch = self._split(consumer)  # owned now: a rebalance may have completed during getmany
        if any(tp.topic not in self.batch_topics for tp in batches):
            self.shared.last_interactive = self.clock()
            self._polls_since_interactive = 0
        else:
            self._polls_since_interactive += 1
        lag = self._lag(consumer, interactive, batches)
        metrics.CONSUMER_LAG.labels(self.stage, "interactive").set(lag)
        metrics.CONSUMER_LAG.labels(self.stage, "batch").set(self._lag(consumer, batch, batches))
        if not self._paused and lag > self.pause_lag:
            self._paused = True
        elif self._paused and lag <= self.pause_lag // 2:
            consumer.resume(*batch)
            self._paused = False
        if self._paused:
            consumer.pause(*batch)  # every poll: a partition a rebalance hands over starts unpaused (idempotent)
        metrics.LANE_PAUSED.labels(self.stage).set(1 if self._paused else 0)


def owned_offsets(consumer: StageConsumer, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The offsets of partitions the consumer still owns (a rebalance may have moved the others since the poll)."""
    owned = consumer.assignment()
    return {tp: offset for tp, offset in offsets.items() if tp in owned}
