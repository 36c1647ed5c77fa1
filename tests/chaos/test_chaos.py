"""Fault scenarios against worker subprocesses; each prints one row of the chaos table (``make chaos``).

Guarantees checked in every scenario: every accepted request ends with a terminal response and exactly one audit
record, the ledger counts it once and its money equals the audited cost, nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from schemas.envelope import STAGES
from streams.ledger.app import fetch_snapshot, read_topic
from streams.runtime.connections import new_producer, redis_client
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.replays import RedisReplayMemory
from streams.runtime.runner import StageRunner
from streams.runtime.topics import ensure_topics, topology
from streams.stages import postprocess as stage_postprocess
from streams.stages import registry
from tests.chaos.harness import (
    Env,
    Figures,
    Load,
    Pipeline,
    Worker,
    count,
    deadletter_path_works,
    own_env,
    send_load,
    services,
    stop_own_redis,
    wait_settled,
    wait_until,
    warm_up,
)
from tests.fakes.openai_server import FakeOpenAI
from workers.context import StageContext, SystemClock

pytestmark = pytest.mark.chaos

COUNT, RATE = 400, 80.0  # 5 s of load per scenario
SETTLE_S = 90.0

Fault = Callable[[Pipeline, Load], Awaitable[None]]


async def at(load: Load, seconds: float) -> None:
    """Wait until the load has been flowing for ``seconds`` (by its own send clock)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if load.sent_at and time.monotonic() - min(load.sent_at.values()) >= seconds:
            return
        await asyncio.sleep(0.02)


async def run(name: str, pipeline: Pipeline, fault: Fault, results: list[Figures], *, count_n: int = COUNT,
              rate: float = RATE, load: Load | None = None,
              ledger: Callable[[], Awaitable[tuple[int, int]]] | None = None, warm: bool = True,
              settle_s: float = SETTLE_S, deadletter_timeout_s: float = 45.0) -> Figures:
    started = time.monotonic()
    supervisor = asyncio.create_task(pipeline.supervisor()) if pipeline.supervise else None
    try:
        if warm:
            await warm_up(pipeline.settings, pipeline)
        else:
            await ensure_topics(pipeline.settings)
        load = load or Load(run=name, count=count_n, rate_per_s=rate)
        sender = asyncio.create_task(send_load(pipeline.settings, load))
        await fault(pipeline, load)
        await sender
        settled = await wait_settled(pipeline.settings, load, pipeline, settle_s)
        figures = await count(pipeline.settings, name, load, ledger=ledger)
        figures.deadletter_timeout_s = deadletter_timeout_s
        figures.deadletter_path_ok = await deadletter_path_works(pipeline.settings, deadletter_timeout_s)
        if not settled:
            figures.notes.append(f"not settled within {settle_s:.0f} s")
        figures.notes.extend(pipeline.exits)
    finally:
        if supervisor is not None:
            supervisor.cancel()
        pipeline.stop()
    figures.seconds = time.monotonic() - started
    results.append(figures)
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check(figures: Figures) -> None:
    assert figures.accepted > 0
    assert not figures.violations, figures.violations


# ---------------------------------------------------------------------------------------------- kill -9
def kill_twice(victim: Worker) -> Callable[[Pipeline, Load], Awaitable[None]]:
    """kill -9 at two points of the load, restarted half a second later: a kill between a batch's produce and its
    commit is what makes a redelivery (and so a duplicate response), and where a kill lands is luck."""

    async def fault(p: Pipeline, load: Load) -> None:
        for kill_at in (1.5, 3.5):
            await at(load, kill_at)
            victim.kill9()
            await at(load, kill_at + 0.5)
            victim.start()

    return fault


@pytest.mark.parametrize("stage", STAGES)
async def test_kill_9_stage_worker_mid_batch(stage: str, tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = Pipeline(f"kill-{stage}", Env(), tmp_path)
    pipeline.worker([s for s in STAGES if s != stage])
    victim = pipeline.worker([stage])
    check(await run(f"kill -9 {stage} (x2)", pipeline, kill_twice(victim), chaos_results))


async def test_kill_9_colocated_worker_mid_cycle(tmp_path: Path, chaos_results: list[Figures]) -> None:
    """The whole route as one chain (``worker all+``), killed twice: a cycle's front may be answered while the
    previous cycle's tail (audit, acknowledgements, commit) is still running, and a kill anywhere in that overlap
    must still leave every request answered and audited exactly once."""
    pipeline = Pipeline("kill-colocated", Env(), tmp_path)
    victim = pipeline.worker(["all+"])
    check(await run("kill -9 all+ (x2)", pipeline, kill_twice(victim), chaos_results))


# ---------------------------------------------------------------------------------------------- rebalance
async def test_add_and_remove_workers_under_load(tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = Pipeline("rebalance", Env(), tmp_path)
    pipeline.worker(list(STAGES))

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 0.5)
        second = p.worker(list(STAGES))
        await at(load, 1.5)
        third = p.worker(list(STAGES))
        await at(load, 3.5)
        await asyncio.to_thread(second.stop)  # graceful: SIGTERM, leaves the groups (the load keeps flowing)
        await at(load, 4.5)
        third.kill9()  # abrupt: its partitions move after the session timeout

    check(await run("rebalance +2 −1 −1(kill)", pipeline, fault, chaos_results))


async def test_scale_every_stage_up_and_down_at_once(tmp_path: Path, chaos_results: list[Figures]) -> None:
    """As users scale: several ``tollway worker all`` and single-stage workers started at the same moment, then
    stopped and killed -9 in waves (joins and leaves overlapping) while the load flows. Every stage gains and loses
    members, in every order; no worker may die on its own, and nothing accepted may be lost."""
    pipeline = Pipeline("scale", Env(), tmp_path)
    original = pipeline.worker(list(STAGES))

    async def at_once(*actions: Callable[[], object]) -> None:
        await asyncio.gather(*(asyncio.to_thread(action) for action in actions))

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 1.0)
        first, second = p.worker(list(STAGES)), p.worker(list(STAGES))  # Popen returns at once: they start together
        policy, model, audit = p.worker(["policy"]), p.worker(["model"]), p.worker(["audit"])
        await at(load, 3.0)
        await at_once(first.stop, audit.kill9, original.kill9)
        await at(load, 5.0)
        p.worker(["cache"]), p.worker(list(STAGES))  # they stay to the end
        retrieval = p.worker(["retrieval"])
        await at_once(second.stop)
        await at(load, 7.0)
        await at_once(policy.kill9, model.stop, retrieval.kill9)
        # Left: the last `all` and the cache worker; the killed members' partitions move after the session timeout.

    figures = await run("scale up/down at once: +5 −3 +3 −1 −3", pipeline, fault, chaos_results,
                        load=Load(run="scale", count=800, rate_per_s=80))
    figures.notes.append(f"outcomes: {figures.statuses}")
    check(figures)


# ---------------------------------------------------------------------------------------------- ledger kill -9
async def test_kill_9_ledger_worker(tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = Pipeline("kill-ledger", Env(), tmp_path)
    pipeline.worker(list(STAGES))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = pipeline.ledger_worker(port)

    async def counted() -> int:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(timeout=2) as client:
                return int((await client.get(f"{url}/ledger/status/")).json().get("counted", 0))
        return 0

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 2.5)

        async def counting() -> bool:
            return await counted() >= 100

        with contextlib.suppress(AssertionError):  # mid-run: once it has counted some of this run
            await wait_until(counting, 30, "the ledger to count 100 responses")
        killed_at.append(f"killed -9 with {await counted()} responses counted")
        ledger.kill9()
        await at(load, 4.0)
        ledger.start()

    async def ledger_totals() -> tuple[int, int]:
        total = len(await read_topic(pipeline.settings, topology(pipeline.settings).responses))

        async def caught_up() -> bool:
            pipeline.check_alive()
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    status = (await client.get(f"{url}/ledger/status/")).json()
            except (httpx.HTTPError, ValueError):
                return False
            return sum(int(o) + 1 for o in status["positions"].values()) >= total

        await wait_until(caught_up, 120, "the ledger worker to apply every response")
        snapshot = await fetch_snapshot(url, window="day")
        return sum(r.requests for r in snapshot.rows), sum(r.cost_micros for r in snapshot.rows)

    killed_at: list[str] = []
    figures = await run("kill -9 ledger worker", pipeline, fault, chaos_results, ledger=ledger_totals)
    figures.notes.extend(killed_at)
    check(figures)


# ---------------------------------------------------------------------------------------------- own services
@pytest.fixture(scope="module")
def own_services() -> Iterator[None]:
    """Our own broker and Redis (the shared ones are never killed); stopped at the end if we started them."""
    was_up = services("status").returncode == 0
    up = services("up")
    if up.returncode != 0:
        pytest.skip(f"could not start the chaos run's own Kafka/Redis: {up.stderr[-500:]}")
    yield
    if not was_up:
        services("down")


async def test_kafka_broker_kill_9_and_restart(own_services: None, tmp_path: Path,
                                               chaos_results: list[Figures]) -> None:
    pipeline = Pipeline("kill-broker", own_env(), tmp_path)
    pipeline.supervise = True
    pipeline.worker(list(STAGES))

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 2.0)
        assert services("kill-kafka").returncode == 0
        await at(load, 3.5)
        restarted = await asyncio.to_thread(services, "up")
        assert restarted.returncode == 0, restarted.stderr

    check(await run("kafka broker kill -9 + restart", pipeline, fault, chaos_results))


async def test_redis_stopped_and_restarted(own_services: None, tmp_path: Path,
                                           chaos_results: list[Figures]) -> None:
    pipeline = Pipeline("redis", own_env(), tmp_path)
    pipeline.supervise = True
    pipeline.worker(list(STAGES))

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 1.5)
        await asyncio.to_thread(stop_own_redis)
        await at(load, 3.5)
        restarted = await asyncio.to_thread(services, "up")
        assert restarted.returncode == 0, restarted.stderr

    check(await run("redis stop + restart (no persistence)", pipeline, fault, chaos_results))


# ---------------------------------------------------------------------------------------------- model backend
class FlakyOpenAI(FakeOpenAI):
    """Every call draws a behaviour: 500, 429, a timeout, a truncated or malformed body, or a good answer."""

    def __init__(self, seed: int = 11) -> None:
        super().__init__(slow_s=3.0)
        self.rng = random.Random(seed)
        self.drawn: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        behaviour = self.rng.choices(["500", "429", "slow", "truncated", "malformed", "ok"],
                                     weights=[15, 15, 5, 10, 5, 50])[0]
        self.drawn[behaviour] += 1
        model = orjson.loads(await request.read())["model"]
        self.scripts[model].appendleft(behaviour)  # type: ignore[arg-type]
        return await super().handle(request)


def flaky_catalog(path: Path, base_url: str) -> Path:
    model = {"backend": "fake", "region": "us", "quality_tier": "small", "context_window": 16384,
             "prices": {"input_micros_per_mtok": 150_000, "cached_input_micros_per_mtok": 75_000,
                        "output_micros_per_mtok": 600_000},
             "latency": {"overhead_ms": 40, "prefill_ms_per_1k_tokens": 1, "decode_ms_per_token": 1},
             "capacity": 32}
    catalog = {"version": 1, "expected_output_tokens": 40,
               "backends": {"fake": {"kind": "openai", "base_url": base_url, "timeout_s": 2.0}},
               "models": [{"name": "flaky-a", **model}, {"name": "flaky-b", **model}]}
    path.write_text(yaml.safe_dump(catalog))
    return path


async def test_model_backend_errors(tmp_path: Path, chaos_results: list[Figures]) -> None:
    fake = FlakyOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        catalog = flaky_catalog(tmp_path / "catalog.yaml", f"http://127.0.0.1:{port}/v1")
        pipeline = Pipeline("model-errors", Env(extra={"TOLLWAY_MODELS_FILE": str(catalog)}), tmp_path)
        pipeline.worker(list(STAGES))

        async def fault(p: Pipeline, load: Load) -> None:
            return None  # the backend itself is the fault

        figures = await run("model backend 500/429/timeout/truncated", pipeline, fault, chaos_results,
                            load=Load(run="flaky", count=300, rate_per_s=60, distinct=300))
        figures.notes.append(f"backend calls drawn: {dict(fake.drawn)}; outcomes: {figures.statuses}")
    finally:
        fake.release()
        await runner.cleanup()
    check(figures)


# ---------------------------------------------------------------------------------------------- slow stage
async def test_slow_stage_backlog(tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = Pipeline("slow-model", Env(), tmp_path)
    pipeline.worker([s for s in STAGES if s != "model"])
    # One request per batch at twice the catalog latency (still inside the model stage's own timeouts): the model
    # stage serves a few requests a second against 80 arriving, so a backlog builds and budgets run out in it.
    pipeline.worker(["model"], extra_env={"TOLLWAY_MODEL_LATENCY_SCALE": "2", "TOLLWAY_BATCH_MAX_RECORDS": "1"})

    async def fault(p: Pipeline, load: Load) -> None:
        return None

    figures = await run("slow model stage (1/batch), 8 s budgets", pipeline, fault, chaos_results,
                        load=Load(run="slow", count=400, rate_per_s=80, budget_ms=8_000))
    figures.notes.append(f"outcomes: {figures.statuses}")
    check(figures)


# ---------------------------------------------------------------------------------------------- redelivery
async def test_crash_between_produce_and_commit_redelivers(tmp_path: Path, chaos_results: list[Figures]) -> None:
    """The worst moment for a kill -9, made deterministic: the post-process stage runs in this process, handles a
    whole batch (responses published and acknowledged, events forwarded to audit) and dies before its commit. A
    fresh ``tollway worker postprocess`` then gets the same records again."""
    pipeline = Pipeline("redelivery", Env(), tmp_path)
    pipeline.worker([s for s in STAGES if s != "postprocess"])
    settings = pipeline.settings
    load = Load(run="redeliver", count=200, rate_per_s=100)

    async def crash_after_produce(p: Pipeline, load: Load) -> None:
        async def load_sent() -> bool:
            return len(load.accepted) + load.refused >= load.count

        await wait_until(load_sent, 60, "the load to be sent")
        async with AsyncExitStack() as stack:
            producer = new_producer(settings, role="stage-postprocess")
            await producer.start()
            stack.push_async_callback(producer.stop)
            publisher = KafkaPublisher(producer)
            clock = SystemClock()
            base = StageContext(stage="postprocess", worker_id="doomed", clock=clock, publisher=publisher,
                                topic_prefix=settings.topic_prefix)
            ctx = await stack.enter_async_context(stage_postprocess.open_context(settings, base))
            replay_client = redis_client(settings)
            stack.push_async_callback(replay_client.aclose)
            # as `tollway worker` wires it: the answered ids are remembered, so the redelivery is marked
            replays = RedisReplayMemory(replay_client, namespace=settings.topic_prefix, ttl_s=3600)
            runner = StageRunner(stage=registry.stage("postprocess"), ctx=ctx, settings=settings,
                                 topology=topology(settings), publisher=publisher, clock=clock, replays=replays)
            await runner.start()
            stack.push_async_callback(runner.close)
            assert runner.consumer is not None
            handled = 0
            deadline = time.monotonic() + 60
            while handled < len(load.accepted) and time.monotonic() < deadline:
                batches = await runner.consumer.getmany(timeout_ms=500)
                if batches:
                    handled += (await runner.handle(batches)).consumed  # produced and acknowledged...
            # ...and never committed: the process "dies" here.
        p.worker(["postprocess"])

        async def redelivered() -> bool:
            p.check_alive()
            return len(await read_topic(settings, topology(settings).responses)) >= 2 * len(load.accepted)

        with contextlib.suppress(AssertionError):  # the count below says what happened
            await wait_until(redelivered, 90, "the redelivered batch's responses")

    figures = await run("crash after produce, before commit", pipeline, crash_after_produce, chaos_results,
                        load=load, warm=False)  # no warm-up: the doomed runner must be the group's only member
    assert figures.duplicate_responses == figures.accepted, "every response should have been published twice"
    check(figures)
