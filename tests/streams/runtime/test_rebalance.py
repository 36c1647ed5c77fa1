"""Two members of one stage's group on the real broker: a worker joining or leaving never kills the others.

`tollway worker policy & tollway worker policy` killed the first worker every time (``AssertionError: Partition is
not assigned``): its lane poller asked about a partition the rebalance had just handed to the second one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtime.connections import new_consumer, new_producer
from streams.runtime.lanes import LanePoller, ProcessLanes
from streams.runtime.runner import OffsetCommitter, consumer_options
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings

pytestmark = pytest.mark.integration

STAGE = "policy"


@dataclass
class Member:
    """One stage consumer polling with the lane poller, as a worker's runner does (without the work)."""

    consumer: AIOKafkaConsumer
    poller: LanePoller
    polls: int = 0
    records: int = 0
    task: asyncio.Task[None] | None = None
    seen: set[tuple[str, int, int]] = field(default_factory=set)

    async def run(self) -> None:
        while True:
            batches = await self.poller.poll(self.consumer)
            self.polls += 1
            for tp, records in batches.items():
                self.records += len(records)
                self.seen.update((tp.topic, tp.partition, r.offset) for r in records)

    def owned(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def check(self) -> None:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # re-raises what killed it
            raise AssertionError("the member stopped polling")


@asynccontextmanager
async def member(settings: Settings, **lanes: int) -> AsyncIterator[Member]:
    topo = topology(settings)
    topics = topo.stage_lanes(STAGE)
    consumer = new_consumer(settings, *topics, role=f"stage-{STAGE}", group_id=topo.group(STAGE),
                            **consumer_options(settings))
    await consumer.start()
    options = {"max_records": 500, "pause_lag": 100, **lanes}
    m = Member(consumer, LanePoller(STAGE, frozenset(t for t in topics if t.endswith(".batch")),
                                    shared=ProcessLanes(), **options))  # type: ignore[arg-type]
    m.task = asyncio.create_task(m.run())
    try:
        yield m
    finally:
        m.task.cancel()
        await asyncio.gather(m.task, return_exceptions=True)
        await consumer.stop()


async def until(condition: Callable[[], bool], members: list[Member], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for m in members:
            m.check()
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        await asyncio.sleep(0.05)


async def polls_more(m: Member, n: int, members: list[Member]) -> None:
    target = m.polls + n
    await until(lambda: m.polls >= target, members, f"{n} more polls")


async def fill(settings: Settings, records: int) -> None:
    """``records`` on every partition of both lanes."""
    producer = new_producer(settings, role="admin")
    await producer.start()
    try:
        sent = [await producer.send(topic, b"x", partition=partition)
                for topic in topology(settings).stage_lanes(STAGE) for partition in range(settings.partitions)
                for _ in range(records)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@pytest.mark.parametrize("traffic", [0, 400], ids=["idle", "busy"])
async def test_a_second_member_joining_and_leaving_does_not_kill_the_first(settings: Settings, traffic: int) -> None:
    await ensure_topics(settings)
    all_partitions = 2 * settings.partitions
    if traffic:
        await fill(settings, traffic)
    # Small polls and a low pause threshold when busy: the batch lane is paused when the rebalance lands.
    lanes = {"max_records": 5, "pause_lag": 2} if traffic else {}
    async with member(settings, **lanes) as first:
        await until(lambda: len(first.owned()) == all_partitions, [first], "the first member's assignment")
        await polls_more(first, 3, [first])
        async with member(settings, **lanes) as second:
            both = [first, second]
            await until(lambda: bool(first.owned()) and bool(second.owned())
                        and len(first.owned() | second.owned()) == all_partitions, both, "the group to rebalance")
            await polls_more(first, 3, both)
            await polls_more(second, 3, both)
        await until(lambda: len(first.owned()) == all_partitions, [first], "the partitions back after a leave")
        await polls_more(first, 3, [first])
        first.check()


async def test_a_batch_whose_partitions_moved_commits_what_it_still_owns(settings: Settings) -> None:
    """The runner commits a batch after its output is acknowledged; if a rebalance moved some of its partitions in
    the meantime, their new owner redelivers them — the commit must neither kill the worker nor skip the rest."""
    await ensure_topics(settings)
    await fill(settings, 40)
    topo = topology(settings)
    consumer = new_consumer(settings, *topo.stage_lanes(STAGE), role=f"stage-{STAGE}", group_id=topo.group(STAGE),
                            **consumer_options(settings))
    await consumer.start()
    try:
        batch: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 60
        while len(batch) < 2 * settings.partitions and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                batch[tp] = records[-1].offset + 1
        assert len(batch) == 2 * settings.partitions
        async with member(settings) as second:  # joins while the batch is "worked"
            await until(lambda: bool(second.owned()) and bool(consumer.assignment())
                        and len(second.owned() | consumer.assignment()) == len(batch), [second], "the rebalance")
            committer = OffsetCommitter(consumer, STAGE)
            # A second rebalance may still be settling (a commit then fails, logged, and the batch is redelivered):
            # commit again until the group is stable, as the next batch of a real runner would.
            give_up = time.monotonic() + 30
            while True:
                kept = set(consumer.assignment())
                await committer.commit(batch)  # never raises for partitions the consumer no longer owns
                await committer.wait()
                committed = {tp: await consumer.committed(tp) for tp in kept}
                if all(committed[tp] == batch[tp] for tp in kept) or time.monotonic() > give_up:
                    break
                await asyncio.sleep(0.2)  # polling the group until it settles, not synchronisation
            assert kept and all(committed[tp] == batch[tp] for tp in kept), committed
    finally:
        await consumer.stop()



async def _members(settings: Settings, group: str) -> list[str]:
    from streams.runtime.connections import new_admin, start

    admin = new_admin(settings)
    await start(admin, settings, "describe group")
    try:
        (described,) = await admin.describe_consumer_groups([group])
        return [m[0] for g in described.groups for m in g[5]]
    finally:
        await admin.close()


@pytest.mark.parametrize("leave", [True, False])
async def test_a_static_member_leaves_on_stop_only_when_asked(settings: Settings, leave: bool) -> None:
    """``TOLLWAY_LEAVE_GROUP_ON_STOP``: aiokafka sends no LeaveGroup for a static member; ``leave_even_if_static``
    makes it send one (the group is empty at once), without it the member stays until its session times out."""
    from streams.runtime.runner import leave_even_if_static

    await ensure_topics(settings)
    group = f"{settings.topic_prefix}.static"
    consumer = new_consumer(settings, topology(settings).stage(STAGE), role="admin", group_id=group,
                            group_instance_id="pod-0", session_timeout_ms=30_000)
    await consumer.start()
    try:
        await until(lambda: bool(consumer.assignment()), [], "the static member's assignment")
        assert len(await _members(settings, group)) == 1
    finally:
        if leave:
            leave_even_if_static(consumer)
        await consumer.stop()
    assert len(await _members(settings, group)) == (0 if leave else 1)
