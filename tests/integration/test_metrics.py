"""Every worker exposes Prometheus /metrics: scraped and parsed after real traffic."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from schemas.envelope import DEFAULT_ROUTE, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_port": free_port()})


async def test_metrics_are_scraped_and_parsed(pipeline: Settings) -> None:
    async with TollwayClient(pipeline) as submitter:
        responses = await submitter.complete_envelopes(
            [new_envelope(f"metrics question {i}", tenant="acme", settings=pipeline) for i in range(5)])
    assert all(r.status in (Status.OK, Status.CACHE_HIT) for r in responses)

    url = f"http://127.0.0.1:{pipeline.metrics_port}/metrics"

    async def scrape() -> dict[str, Metric]:
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        return {f.name: f for f in text_string_to_metric_families(body)}

    def events_by_stage(families: dict[str, Metric]) -> dict[str, float]:
        return {s.labels["stage"]: s.value for s in families["tollway_stage_events"].samples
                if s.name == "tollway_stage_events_total"}

    families = await scrape()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline and events_by_stage(families).get("audit", 0) < 5:  # audit runs after the response
        await asyncio.sleep(0.1)
        families = await scrape()
    for name in ("tollway_stage_events", "tollway_stage_queue_seconds", "tollway_stage_service_seconds",
                 "tollway_outcomes", "tollway_deadletters", "tollway_budget_violations",
                 "tollway_consumer_lag_records"):
        assert name in families, f"{name} missing from /metrics"
    events = events_by_stage(families)
    for stage in DEFAULT_ROUTE:
        assert events.get(stage, 0) >= 5, f"no events counted for {stage}: {events}"
