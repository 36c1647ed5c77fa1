"""``tollway worker <stage>|all``: runs stage runners (one consumer group per stage) until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from streams.runtime.acls import stage_principal
from streams.runtime.chain import ChainPublisher, ChainRunner, member_topics
from streams.runtime.connections import new_producer, redis_client, start
from streams.runtime.metrics import serve_metrics
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.replays import RedisReplayMemory, ReplayMemory
from streams.runtime.runner import BatchPublisher, StageRunner
from streams.runtime.stage import Stage
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from workers.context import Clock, StageContext, SystemClock

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a worker that processes batches.

    A worker's heap is mostly what start-up built (modules, schemas, catalogs, indexes), and every batch allocates
    tens of thousands of short-lived objects that reference counting frees. With the default thresholds (700, 10,
    10) the collector rescans the live batch every 700 allocations and the whole heap every few batches: about 17 %
    of a six-stage worker's CPU in the benchmark (gen2 alone 50–120 ms a pass). Freezing the start-up heap takes it
    out of every later pass, and a larger first threshold lets batches die by reference counting before they are
    scanned; what is left costs about half as much. Cyclic garbage waits at most ~20,000 allocations longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


Unit = Stage[Any] | Sequence[Stage[Any]]


async def run_workers(settings: Settings, stages: Sequence[Unit], *, ready: asyncio.Event | None = None,
                      stop: asyncio.Event | None = None) -> None:
    """Run the given stages (see ``streams.stages.registry``) in this process until ``stop`` is set (or SIGINT/
    SIGTERM). Their runners share one producer; each opens its own context. A stage runs in its own consumer group;
    a sequence of stages runs co-located as one group (``streams/runtime/chain.py``)."""
    settings = resolve_kafka_client(settings, stages)
    await ensure_topics(settings)
    metrics_port = serve_metrics(settings.metrics_port, settings.metrics_host)
    if metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics_port)
    topo = topology(settings)
    clock = SystemClock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        names = [s.name for unit in stages for s in ([unit] if isinstance(unit, Stage) else unit)]
        new_publisher = await _open_publishers(stack, settings, stage_principal(names))
        replay_client = redis_client(settings, timeout_ms=max(settings.redis_timeout_ms, 1000))
        stack.push_async_callback(replay_client.aclose)
        # Remembered a little longer than the work topics keep records, so any redelivery is recognised.
        replays = RedisReplayMemory(replay_client, namespace=settings.topic_prefix, ttl_s=8 * 86_400)
        runners: list[StageRunner[Any] | ChainRunner] = []
        for unit in stages:
            if isinstance(unit, Stage):
                publisher = new_publisher()
                runner: StageRunner[Any] | ChainRunner = await _open_runner(stack, settings, unit, publisher,
                                                                            replays, clock)
            else:
                kafka = new_publisher()
                shared = ChainPublisher(kafka, member_topics(unit, topo))
                members = [await _open_runner(stack, settings, s, shared, replays, clock) for s in unit]
                runner = ChainRunner(members, shared, kafka, settings, topo)
            await runner.start()
            stack.push_async_callback(runner.close)
            runners.append(runner)
        log.info("worker %s running %s", settings.worker_id, ", ".join(r.stage for r in runners))
        tune_gc()
        if ready is not None:
            ready.set()
        tasks = [asyncio.create_task(r.run(), name=f"stage-{r.stage}") for r in runners]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for runner in runners:
            runner.stop()
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait(tasks, timeout=10)
        stopper.cancel()


def resolve_kafka_client(settings: Settings, stages: Sequence[Unit]) -> Settings:
    """``TOLLWAY_KAFKA_CLIENT=auto``: librdkafka when every stage of the process runs alone, aiokafka when one of its
    units is a co-located chain (one producer per process, so one client). Same run, one process per stage: p50 at
    10–50 req/s 1.4–3× lower, CPU per request 0.7–0.9×, throughput 1.1–1.4×; co-located, aiokafka's p50 and p99 at
    100 req/s were lower (librdkafka's threads hand every fetch and acknowledgement to a busy event loop)."""
    if settings.kafka_client != "auto":
        return settings
    chained = any(not isinstance(unit, Stage) for unit in stages)
    return settings.model_copy(update={"kafka_client": "aiokafka" if chained else "librdkafka"})


async def _open_publishers(stack: AsyncExitStack, settings: Settings, role: str) -> Callable[[], BatchPublisher]:
    """The process's one producer (``TOLLWAY_KAFKA_CLIENT``), started; returns a publisher factory on it (one
    publisher per runner, as each keeps its own batch's records)."""
    if settings.kafka_client == "librdkafka":
        from streams.runtime.rdkafka import RdKafkaProducer, RdKafkaPublisher

        rdkafka = RdKafkaProducer(settings, role=role, client_id=f"{settings.worker_id}-producer")
        stack.push_async_callback(rdkafka.stop)
        await rdkafka.start()
        return lambda: RdKafkaPublisher(rdkafka)
    producer = new_producer(settings, role=role)
    await start(producer, settings, "stage producer")
    stack.push_async_callback(producer.stop)
    return lambda: KafkaPublisher(producer)


async def _open_runner(stack: AsyncExitStack, settings: Settings, stage: Stage[Any], publisher: BatchPublisher,
                       replays: ReplayMemory, clock: Clock) -> StageRunner[Any]:
    base = StageContext(stage=stage.name, worker_id=settings.worker_id, clock=clock, publisher=publisher,
                        topic_prefix=settings.topic_prefix)
    ctx = await stack.enter_async_context(stage.open_context(settings, base))
    return StageRunner(stage=stage, ctx=ctx, settings=settings, topology=topology(settings), publisher=publisher,
                       clock=clock, replays=replays)
