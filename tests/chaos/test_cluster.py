"""Broker faults on a 3-broker KRaft cluster (RF 3, min.insync.replicas 2, producers acks=all): one row each in the
chaos table (``make chaos``), with the time until traffic flowed again.

The cluster is the chaos run's own (``harness.CLUSTER_PORT``: nodes on +0/+10/+20, controllers one above), started
with ``TOLLWAY_KAFKA_BROKERS=3 infra/services.sh up`` and stopped at the end if this module started it. Every
scenario first brings all three nodes back (``up`` restarts only the nodes that are down).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from schemas.envelope import STAGES
from streams.runtime.connections import new_admin, start
from streams.settings import Settings
from tests.chaos.harness import (
    CLUSTER_BROKERS,
    CLUSTER_STATE,
    Figures,
    Load,
    Pipeline,
    broker_pid,
    cluster_env,
    cluster_services,
    measure_flow,
    wait_until,
)
from tests.chaos.test_chaos import at, check, run

# A broker restart alone takes 5–90 s on a busy 2-core machine; the rolling restart does three.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

# Three JVMs and the pipeline share a 2-core machine with other runs: a rate the pipeline drains even there, so a
# request that is late is late because of the fault; and a longer bound on the drain than the single-broker rows.
RATE = 15.0
SETTLE_S = 240.0
# Longer than both session timeouts: the controller fences a silent broker after broker.session.timeout.ms (9 s), a
# group coordinator evicts a silent consumer after the stage consumers' session_timeout_ms (30 s).
PAUSE_S = 35.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    was_up = cluster_services("status").returncode == 0
    up = cluster_services("up")
    if up.returncode != 0:
        pytest.skip(f"could not start the chaos run's 3-broker cluster: {up.stderr[-800:]}")
    yield
    if not was_up:
        cluster_services("down")


def heal() -> None:
    up = cluster_services("up")
    assert up.returncode == 0, up.stderr[-800:]


def active_controller() -> int:
    """The KRaft leader as the running nodes last recorded it (``quorum-state``: the newest epoch's leader). Cheaper
    than ``infra/services.sh quorum``, whose Admin client took over 60 s to compile and run on a loaded machine."""
    views = []
    for node in range(1, CLUSTER_BROKERS + 1):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(broker_pid(node), 0)
            state = orjson.loads((CLUSTER_STATE / f"node-{node}" / "data" / "__cluster_metadata-0" /
                                  "quorum-state").read_bytes())
            views.append((int(state["leaderEpoch"]), int(state["leaderId"])))
    _epoch, leader = max(views, default=(-1, -1))
    assert leader > 0, f"no node knows a KRaft leader: {views}"
    return leader


async def replicas_in_sync(settings: Settings) -> bool:
    """Every partition of the scenario's topics and of the offsets topic has all its replicas in sync."""
    admin = new_admin(settings)
    await start(admin, settings, "isr check")
    try:
        names = [t for t in await admin.list_topics()
                 if t.startswith(settings.topic_prefix + ".") or t == "__consumer_offsets"]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return all(t["error_code"] == 0 and all(len(p["isr"]) == len(p["replicas"]) for p in t["partitions"])
               for t in described)


def wait_dead(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"broker pid {pid} still alive after {timeout_s:.0f} s")


def pipeline_for(name: str, tmp_path: Path) -> Pipeline:
    heal()
    pipeline = Pipeline(name, cluster_env(), tmp_path)
    pipeline.supervise = True  # a worker that dies of a broker fault comes back, as under systemd/Kubernetes
    pipeline.worker(list(STAGES))
    return pipeline


async def scenario(name: str, pipeline: Pipeline, fault_at_s: float, act: Callable[[Pipeline, Load], Awaitable[None]],
                   load: Load,
                   results: list[Figures], *, deadletter_timeout_s: float = 45.0) -> Figures:
    fault_at: list[int] = []

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, fault_at_s)
        fault_at.append(time.time_ns())
        await act(p, load)

    figures = await run(name, pipeline, fault, results, load=load, settle_s=SETTLE_S,
                        deadletter_timeout_s=deadletter_timeout_s)
    await measure_flow(pipeline.settings, load, figures, fault_at[0])
    return figures


async def test_kill_9_one_broker(cluster: None, tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = pipeline_for("cluster-kill", tmp_path)
    killed: list[int] = []

    async def act(p: Pipeline, load: Load) -> None:
        victim = next(n for n in range(1, CLUSTER_BROKERS + 1) if n != active_controller())  # not the controller
        killed.append(victim)
        os.kill(broker_pid(victim), signal.SIGKILL)
        await at(load, 15.0)
        await asyncio.to_thread(heal)

    figures = await scenario("3 brokers: kill -9 a broker, restart at 15 s", pipeline, 5.0, act,
                             Load(run="ckill", count=int(30 * RATE), rate_per_s=RATE), chaos_results)
    figures.notes.append(f"killed broker {killed[0]} (not the active controller)")
    check(figures)


async def test_kill_9_active_controller(cluster: None, tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = pipeline_for("cluster-ctl", tmp_path)
    killed: list[int] = []

    async def act(p: Pipeline, load: Load) -> None:
        leader = await asyncio.to_thread(active_controller)
        killed.append(leader)
        os.kill(broker_pid(leader), signal.SIGKILL)
        await at(load, 15.0)
        await asyncio.to_thread(heal)
        killed.append(await asyncio.to_thread(active_controller))

    figures = await scenario("3 brokers: kill -9 active controller, restart", pipeline, 5.0, act,
                             Load(run="cctl", count=int(30 * RATE), rate_per_s=RATE), chaos_results)
    figures.notes.append(f"killed controller {killed[0]}; active controller afterwards: {killed[-1]}")
    check(figures)


async def test_rolling_restart_of_all_brokers(cluster: None, tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = pipeline_for("cluster-roll", tmp_path)
    timings: list[str] = []

    async def act(p: Pipeline, load: Load) -> None:
        for node in range(1, CLUSTER_BROKERS + 1):  # as an operator does: one at a time, the next once all in sync
            began = time.monotonic()
            pid = broker_pid(node)
            os.kill(pid, signal.SIGTERM)  # controlled shutdown: leadership moves before the broker goes
            await asyncio.to_thread(wait_dead, pid)
            await asyncio.to_thread(heal)

            async def in_sync() -> bool:
                return await replicas_in_sync(p.settings)

            await wait_until(in_sync, 180, f"every replica in sync after restarting broker {node}")
            timings.append(f"{node}: {time.monotonic() - began:.0f} s")

    figures = await scenario("3 brokers: rolling restart (SIGTERM, in sync, next)", pipeline, 3.0, act,
                             Load(run="croll", count=int(120 * RATE), rate_per_s=RATE), chaos_results)
    figures.notes.append("restart → all in sync per broker: " + ", ".join(timings))
    check(figures)


async def test_broker_paused_past_session_timeout(cluster: None, tmp_path: Path,
                                                  chaos_results: list[Figures]) -> None:
    pipeline = pipeline_for("cluster-pause", tmp_path)
    paused: list[int] = []

    async def act(p: Pipeline, load: Load) -> None:
        victim = next(n for n in range(1, CLUSTER_BROKERS + 1) if n != active_controller())
        paused.append(victim)
        pid = broker_pid(victim)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE_S)  # the fault's duration itself, not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)

    # A paused broker keeps its connections open: a client's request to it waits its whole request timeout (30–40 s)
    # before the client re-reads metadata, so the documented recovery is minutes (stall 30–200 s measured, see
    # docs/CAPACITY.md). The garbage-record probe after the fault gets that long, not the 45 s of the other scenarios.
    figures = await scenario(f"3 brokers: SIGSTOP a broker {PAUSE_S:.0f} s", pipeline, 5.0, act,
                             Load(run="cpause", count=int(50 * RATE), rate_per_s=RATE), chaos_results,
                             deadletter_timeout_s=180.0)
    figures.notes.append(f"paused broker {paused[0]} (not the active controller)")
    check(figures)
