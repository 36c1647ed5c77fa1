"""The ledger worker killed with -9 mid-run and restarted: nothing lost, nothing counted twice, reconcile prints 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from schemas.envelope import Status, Usage
from schemas.response import Response
from streams.ledger.app import reconcile
from streams.runtime.codec import encode
from streams.runtime.connections import kafka_security
from streams.runtime.topics import ensure_topics, topology
from streams.settings import REPO_ROOT, Settings
from streams.testing import seal_response

# A kill -9 and a changelog recovery take minutes on a loaded 2-core machine: this runs in `make chaos`.
pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FIRST, SECOND, REPLAYS = 5_000, 1_500, 500
CHECKPOINT_RECORDS = 200  # small, so the kill lands after some checkpoints and before others


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_response(i: int, *, replay: bool = False) -> Response:
    return seal_response(_make_response(i, replay=replay))


def _make_response(i: int, *, replay: bool = False) -> Response:
    status = [Status.OK, Status.OK, Status.CACHE_HIT, Status.DENIED, Status.FAILED][i % 5]
    return Response(request_id=f"req-{i}", tenant=["acme", "globex"][i % 2], status=status,
                    model=None if status is Status.DENIED else ["small", "large"][i % 3 % 2],
                    usage=Usage(input_tokens=i % 97, cached_input_tokens=i % 7, output_tokens=i % 13),
                    cost_micros=0 if status is not Status.OK else 100 + i % 1000,
                    saved_micros=50 if status is Status.CACHE_HIT else 0,
                    created_at_ns=1_700_000_000 * 10**9 + i * 10**9, completed_at_ns=1, replay=replay,
                    task_id=f"task-{i % 50}")


async def produce(settings: Settings, responses: list[Response]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        topic = topology(settings).responses
        futures = [await producer.send(topic, encode(r), key=r.request_id.encode()) for r in responses]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def start_worker(settings: Settings, port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_PARTITIONS": str(settings.partitions),
           "TOLLWAY_LEDGER_PORT": str(port), "TOLLWAY_STATE_DIR": str(state_dir),
           "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(settings.kafka_credentials_path),
           "TOLLWAY_LEDGER_CHECKPOINT_RECORDS": str(CHECKPOINT_RECORDS)}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "ledger", "worker", "--loglevel", "warn"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_status(port: int, done: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[bytes],
                      timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"ledger worker exited {proc.returncode}: "
                                     f"{proc.stderr.read().decode()[-3000:] if proc.stderr else ''}")
            try:
                status: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/ledger/status/")).json()
            except httpx.HTTPError:
                status = {}
            if status and done(status):
                return status
            await asyncio.sleep(0.05)  # polling interval, not synchronisation: the condition decides
    raise AssertionError(f"ledger worker did not reach the condition in {timeout_s:.0f} s: {status}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_kill_9_mid_run_then_restart_reconciles_to_zero(settings: Settings, tmp_path: Path) -> None:
    await ensure_topics(settings)
    first = [make_response(i) for i in range(FIRST)]
    port = free_port()
    proc = start_worker(settings, port, tmp_path)
    try:
        # Traffic arrives once the worker is up, so the agent (not the start-up catch-up) counts it.
        await wait_status(port, lambda s: s["recovered_s"] is not None, proc, timeout_s=60)
        await produce(settings, first)
        status = await wait_status(port, lambda s: s["counted"] >= 600 and s["checkpoints"] >= 1, proc,
                                   timeout_s=60)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the worker is still counting the first batch
        proc.wait(10)
        assert status["counted"] < FIRST, "the kill should land mid-run"
        # While it is down: more traffic, and replayed responses of already-counted requests (new records).
        second = [make_response(FIRST + i) for i in range(SECOND)]
        replays = [make_response(i, replay=True).model_copy(update={"cost_micros": 999_999}) for i in range(REPLAYS)]
        await produce(settings, second + replays)
        total = FIRST + SECOND + REPLAYS

        proc = start_worker(settings, port, tmp_path)
        final = await wait_status(port, lambda s: s["recovered_s"] is not None and
                                  sum(p + 1 for p in s["positions"].values()) >= total, proc)
        assert final["recovered_s"] is not None
        # The restart read every record once: those its checkpoints cover by key only, the rest re-applied.
        assert final["caught_up_keys"] + final["reapplied"] == total
        assert final["caught_up_keys"] > 0, "the checkpoints written before the kill should cover some records"

        result = await reconcile(settings, f"http://127.0.0.1:{port}")
        assert result.ok, result.differences[:5]
        expected_cost = sum(r.cost_micros for r in first + second)
        assert sum(c.cost_micros for c in result.ledger_totals.values()) == expected_cost
        assert sum(c.requests for c in result.ledger_totals.values()) == FIRST + SECOND

        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "ledger", "reconcile", "--json", "--url", f"http://127.0.0.1:{port}",
            cwd=REPO_ROOT, env={**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, out + err
        assert b'"difference":0' in out
    finally:
        stop(proc)
