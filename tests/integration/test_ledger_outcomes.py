"""Cost per resolved task, re-pricing and the worker-less ledger API on a small data set, on the real broker."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from schemas.envelope import Status, Usage
from schemas.ledger import LedgerSnapshot, OutcomeEvent
from schemas.response import Response
from streams.cli.ledger import publish_outcome, reprice_to_version
from streams.cli.main import app as cli
from streams.ledger.app import fetch_snapshot, ledger_rows, run_ledger
from streams.ledger.client import fetch_task
from streams.runtime.topics import ensure_topics
from streams.settings import Settings, get_settings
from streams.testing import seal_response
from tests.integration.test_ledger_kill import produce

pytestmark = pytest.mark.integration

T0 = 1_700_000_000 * 10**9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def data_set() -> list[Response]:
    """acme: task a (3 requests, 300 µ$) resolved, task b (1 request, 50 µ$) failed, task c (1 request) open;
    globex: task a (2 requests, 20 µ$) resolved. Usage is 1,000 input + 100 output tokens per request."""
    usage = Usage(input_tokens=1_000, cached_input_tokens=0, output_tokens=100)

    def r(rid: str, tenant: str, task: str, cost: int, model: str = "small") -> Response:
        return seal_response(Response(request_id=rid, tenant=tenant, status=Status.OK, model=model, usage=usage,
                                      cost_micros=cost, created_at_ns=T0, task_id=task))

    return [r("a1", "acme", "a", 100), r("a2", "acme", "a", 100), r("a3", "acme", "a", 100, model="large"),
            r("b1", "acme", "b", 50), r("c1", "acme", "c", 7), r("g1", "globex", "a", 10), r("g2", "globex", "a", 10),
            r("a1", "acme", "a", 100)]  # a replayed response: counted once


async def test_cost_per_resolved_task_and_reprice(settings: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await ensure_topics(settings)
    await produce(settings, data_set())
    for tenant, task, verdict in [("acme", "a", "resolved"), ("acme", "b", "failed"), ("globex", "a", "resolved")]:
        await publish_outcome(settings, OutcomeEvent(tenant=tenant, task_id=task, outcome=verdict,  # type: ignore[arg-type]
                                                     at_ns=time.time_ns()))
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_ledger(settings, stop=stop, ready=ready, web_port=port))
    try:
        started = asyncio.create_task(ready.wait())
        await asyncio.wait([worker, started], timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if worker.done():
            worker.result()
        assert ready.is_set(), "ledger app did not recover within 90 s"
        snapshot = LedgerSnapshot()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snapshot = await fetch_snapshot(f"http://127.0.0.1:{port}", window="day")
            decided = {(o.tenant, o.outcome) for o in snapshot.outcomes}
            # outcome events are a second stream: wait until they are applied too, not only the tasks' costs
            if (sum(r.requests for r in snapshot.rows) == 7 and sum(o.tasks for o in snapshot.outcomes) == 4
                    and decided >= {("acme", "resolved"), ("acme", "failed"), ("globex", "resolved")}):
                break
            await asyncio.sleep(0.1)  # polling the worker's table until it has counted the data set
        outcomes = {(o.tenant, o.outcome): o for o in snapshot.outcomes}
        assert outcomes["acme", "resolved"].cost_per_task_micros == 300
        assert outcomes["acme", "resolved"].requests == 3
        assert outcomes["acme", "failed"].cost_micros == 50
        assert outcomes["acme", "open"].tasks == 1
        assert outcomes["globex", "resolved"].cost_per_task_micros == 20

        # `tollway outcome` refuses a task id no request carried: asked of this worker, or of the topic.
        url = f"http://127.0.0.1:{port}"
        assert await fetch_task(url, tenant="acme", task_id="a") == {
            "tenant": "acme", "task_id": "a", "requests": 3, "cost_micros": 300, "outcome": "resolved",
            "positions": {str(p): o for p, o in snapshot.positions.items()}}
        monkeypatch.setenv("TOLLWAY_TOPIC_PREFIX", settings.topic_prefix)
        monkeypatch.setenv("TOLLWAY_KAFKA_CREDENTIALS_FILE", str(settings.kafka_credentials_path))
        get_settings.cache_clear()
        try:
            def outcome(*args: str) -> Result:  # in a thread: the CLI runs its own event loop
                return CliRunner().invoke(cli, ["outcome", *args], env={"COLUMNS": "200"})

            known = await asyncio.to_thread(outcome, "c", "resolved", "--tenant", "acme", "--url", url)
            assert known.exit_code == 0 and "task c (acme): resolved (1 request(s))" in known.output, known.output
            for source in (["--url", url], ["--source", "topic"]):
                unknown = await asyncio.to_thread(outcome, "c", "resolved", "--tenant", "globex", *source)
                assert unknown.exit_code == 2 and "task 'c' of tenant 'globex' is unknown" in unknown.output
            counted = await asyncio.to_thread(outcome, "a", "failed", "--tenant", "globex", "--source", "topic")
            assert counted.exit_code == 0 and "(2 request(s))" in counted.output, counted.output
        finally:
            get_settings.cache_clear()

        # The worker-less API aggregates the topic with the same logic and agrees with the Faust table.
        assert await ledger_rows(settings) == snapshot.rows
        acme = await ledger_rows(settings, tenant="acme", window="hour")
        assert [(r.model, r.requests, r.cost_micros) for r in acme] == [("large", 1, 100), ("small", 4, 257)]
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    prices = tmp_path / "prices.yaml"
    prices.write_text("small: {input: 1000000, output: 2000000}\n")  # $1 / $2 per Mtok → 1,200 µ$ per request
    rows, version = await asyncio.to_thread(reprice_to_version, settings, prices, since=T0, until=T0 + 1,
                                            out=tmp_path)
    by_tenant = {r.tenant: r for r in rows}
    assert (by_tenant["acme"].old_cost_micros, by_tenant["acme"].new_cost_micros) == (357, 100 + 4 * 1_200)
    assert by_tenant["acme"].unpriced_requests == 1  # "large" is not in the price file: kept at its cost
    assert (by_tenant["globex"].old_cost_micros, by_tenant["globex"].new_cost_micros) == (20, 2_400)
    assert version.exists() and version.parent == tmp_path
