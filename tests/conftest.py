"""Shared fixtures. Integration tests get a unique topic prefix so runs never see each other's records."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from schemas.envelope import Envelope, Tier
from streams.clients.envelopes import new_envelope
from streams.settings import Settings

# The machines are shared and noisy: hypothesis judges properties, never speed.
hypothesis_settings.register_profile("tollway", deadline=None)
hypothesis_settings.load_profile("tollway")


@pytest.fixture
def make_envelope() -> Callable[..., Envelope]:
    def make(prompt: str = "What is the refund policy?", *, tenant: str = "acme", tier: Tier = Tier.STANDARD,
             budget_ms: int = 10_000, **fields: object) -> Envelope:
        return new_envelope(prompt, tenant=tenant, tier=tier, budget_ms=budget_ms, **fields)

    return make


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings isolated by a fresh topic prefix (and so fresh topics and consumer groups) and state directory.

    The test's topics are deleted afterwards: thousands of leftover topics slow every metadata request on the broker.
    """
    # The local model's emulated latency is off: tests check behaviour, benchmarks and the demo show time.
    # The stack's credentials stay where `make up` wrote them; only the test's own state moves to tmp_path.
    isolated = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2, state_dir=tmp_path,
                        model_latency_scale=0.0, kafka_credentials_file=Settings().kafka_credentials_path)
    yield isolated
    await delete_topics_with_prefix(isolated)


async def delete_topics_with_prefix(settings: Settings) -> None:
    from streams.runtime.topics import delete_prefix_topics

    with contextlib.suppress(Exception):  # best effort: a broker a test took down must not fail the next test
        await delete_prefix_topics(settings)


@pytest.fixture
async def pipeline(settings: Settings) -> AsyncIterator[Settings]:
    """Every stage running in this process against the real broker, stopped after the test."""
    from streams.runtime.worker_process import run_workers
    from streams.stages.registry import resolve as resolve_stages

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_workers(settings, resolve_stages(["all"]), ready=ready, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.is_set(), "workers did not start within 60 s"
    yield settings
    stop.set()
    await asyncio.wait_for(task, 30)
