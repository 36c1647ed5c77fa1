"""A lone stage's consumer loop (``tollway worker <stage>``): the overlapped tail and the paced commits."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from schemas.envelope import Envelope
from streams.clients.envelopes import new_envelope
from streams.runtime.codec import encode
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Stage, base_context
from streams.runtime.topics import Topology
from streams.settings import Settings, load_settings
from streams.testing import as_records
from tests.streams.runtime.loop_fakes import GatedTopics, ScriptedConsumer, until
from workers.context import StageContext, SystemClock

SETTINGS = load_settings(topic_prefix="t")
TOPICS = Topology("t")


async def hand_on(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    return batch


async def keep(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    return []


RETRIEVAL = Stage("retrieval", StageContext, hand_on, base_context)
AUDIT = Stage("audit", StageContext, keep, base_context, sink=True)


def loop_of(stage: Stage[StageContext], batches: int, settings: Settings = SETTINGS
            ) -> tuple[list[str], GatedTopics, StageRunner[StageContext], asyncio.Task[None]]:
    """The stage's runner over ``batches`` polled batches of one request each, acknowledgements held by a gate."""
    log: list[str] = []
    kafka = GatedTopics(log)
    base = StageContext(stage=stage.name, clock=SystemClock(), publisher=kafka, topic_prefix="t")
    runner = StageRunner(stage=stage, ctx=stage.memory_context(base), settings=settings, topology=TOPICS,
                         publisher=kafka, clock=SystemClock(), replays=MemoryReplayMemory())
    topic = TOPICS.stage(stage.name)
    tp = TopicPartition(topic, 0)
    envs = [new_envelope(f"question {i}?", tenant="acme", settings=SETTINGS) for i in range(batches)]
    for env in envs:
        env.route = env.route[env.route.index(stage.name):]
    runner.consumer = ScriptedConsumer(  # type: ignore[assignment]
        [{tp: as_records(topic, [(env.request_id.encode(), encode(env))], first_offset=i)}
         for i, env in enumerate(envs)], log)
    return log, kafka, runner, asyncio.create_task(runner.run())


async def test_the_next_batch_is_worked_while_the_previous_acknowledgements_are_awaited() -> None:
    log, kafka, runner, task = loop_of(RETRIEVAL, 2)
    policy = TOPICS.stage("policy")
    await until(lambda: log.count(f"sent {policy}") == 2, "the second batch's output")
    assert log.count("awaiting acks") == 1 and not any(line.startswith("commit") for line in log)
    kafka.gate.set()
    await until(lambda: sum(line.startswith("commit") for line in log) == 2, "both commits")
    runner.stop()
    await task
    # in batch order, each after its own batch's acknowledgements
    assert [line for line in log if line.startswith("commit")] == ["commit [1]", "commit [2]"]
    assert log.index("acked") < log.index("commit [1]")
    assert len(kafka.values(policy)) == 2
    assert runner.publisher is kafka  # the loop's wrapper is gone once it stops


async def test_the_sink_works_its_next_batch_only_once_the_previous_one_is_acknowledged() -> None:
    log, kafka, runner, task = loop_of(AUDIT, 2)
    await until(lambda: "awaiting acks" in log, "the first batch's tail")
    for _ in range(100):  # loop turns, not time: the sink would work the next batch within a few if it did not wait
        await asyncio.sleep(0)
    assert log.count(f"sent {TOPICS.responses}") == 1
    kafka.gate.set()
    await until(lambda: sum(line.startswith("commit") for line in log) == 2, "both commits")
    runner.stop()
    await task
    assert log.index("acked") < [i for i, line in enumerate(log) if line == f"sent {TOPICS.responses}"][1]


@pytest.mark.parametrize("overlap", [True, False])
async def test_one_batch_at_a_time_commits_after_every_batch_when_asked(overlap: bool) -> None:
    settings = SETTINGS.model_copy(update={"stage_overlap_tail": overlap, "stage_commit_interval_ms": 0})
    log, kafka, runner, task = loop_of(RETRIEVAL, 3, settings)
    kafka.gate.set()
    await until(lambda: sum(line.startswith("commit") for line in log) == 3, "three commits")
    runner.stop()
    await task
    commits = [line for line in log if line.startswith("commit")]
    assert commits == ["commit [1]", "commit [2]", "commit [3]"]
    if not overlap:  # each batch's commit before the next batch is worked
        sent = [i for i, line in enumerate(log) if line == f"sent {TOPICS.stage('policy')}"]
        assert log.index("commit [1]") < sent[1] and log.index("commit [2]") < sent[2]


async def test_a_batch_never_acknowledged_is_never_committed() -> None:
    log, kafka, _runner, task = loop_of(RETRIEVAL, 2)
    kafka.fail = True
    await until(lambda: "awaiting acks" in log, "the first batch's tail")
    kafka.gate.set()
    with pytest.raises(RuntimeError, match="not acknowledged"):
        await task
    assert not any(line.startswith("commit") for line in log)


def test_a_lone_stage_waits_as_long_as_its_fetch() -> None:
    base = StageContext(stage="retrieval", clock=SystemClock(), publisher=GatedTopics([]), topic_prefix="t")
    runner = StageRunner(stage=RETRIEVAL, ctx=RETRIEVAL.memory_context(base), settings=SETTINGS, topology=TOPICS,
                         publisher=GatedTopics([]), clock=SystemClock())
    assert runner.lane_poller().quiet is None
    assert runner.lane_poller().wait_ms == SETTINGS.batch_wait_ms  # idle, it wakes once per fetch, not 10× a second
