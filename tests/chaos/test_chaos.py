"""Fault scenarios against worker subprocesses; each prints one row of the chaos table (``make chaos``).

Guarantees checked in every scenario: every accepted request ends with a terminal response and exactly one audit
record, the ledger counts it once and its money equals the audited cost, nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from schemas.envelope import STAGES
from tests.chaos.harness import Env, Figures, Load, Pipeline, count, send_load, wait_settled, warm_up

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
              rate: float = RATE) -> Figures:
    started = time.monotonic()
    try:
        await warm_up(pipeline.settings, pipeline)
        load = Load(run=name, count=count_n, rate_per_s=rate)
        sender = asyncio.create_task(send_load(pipeline.settings, load))
        await fault(pipeline, load)
        await sender
        settled = await wait_settled(pipeline.settings, load, pipeline, SETTLE_S)
        figures = await count(pipeline.settings, name, load)
        if not settled:
            figures.notes.append(f"not settled within {SETTLE_S:.0f} s")
    finally:
        pipeline.stop()
    figures.seconds = time.monotonic() - started
    results.append(figures)
    return figures


def check(figures: Figures) -> None:
    assert figures.accepted > 0
    assert not figures.violations, figures.violations


# ---------------------------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("stage", STAGES)
async def test_kill_9_stage_worker_mid_batch(stage: str, tmp_path: Path, chaos_results: list[Figures]) -> None:
    pipeline = Pipeline(f"kill-{stage}", Env(), tmp_path)
    pipeline.worker([s for s in STAGES if s != stage])
    victim = pipeline.worker([stage])

    async def fault(p: Pipeline, load: Load) -> None:
        await at(load, 2.0)
        victim.kill9()
        await at(load, 3.0)
        victim.start()

    check(await run(f"kill -9 {stage}", pipeline, fault, chaos_results))


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
        second.stop()  # graceful: SIGTERM, leaves the groups
        await at(load, 4.5)
        third.kill9()  # abrupt: its partitions move after the session timeout

    check(await run("rebalance +2 −1 −1(kill)", pipeline, fault, chaos_results))
