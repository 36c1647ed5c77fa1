"""Ingress overhead: the same requests through `tollway serve` (HTTP) and straight to Kafka with the SDK, same run.

    .venv/bin/python -m bench.ingress_bench --requests 2000 --concurrency 64

Starts `tollway worker all` and `tollway serve` as subprocesses on a fresh topic prefix (model latency emulation off,
so the model stage is not what is measured), warms both paths up, then runs N requests with C in flight through each
path and prints throughput and latency percentiles. "Added latency" is HTTP minus direct at the same percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from schemas.envelope import Status
from streams.sdk import TollwayClient
from streams.settings import REPO_ROOT, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(n: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> tuple[float, list[float], int]:
    """Run ``one(i)`` n times with ``concurrency`` in flight: (requests/s, latencies in ms, failures)."""
    latencies: list[float] = []
    failures = 0
    queue = iter(range(n))

    async def lane() -> None:
        nonlocal failures
        for i in queue:
            began = time.perf_counter()
            ok = await one(i)
            latencies.append((time.perf_counter() - began) * 1000)
            failures += not ok

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - began), latencies, failures


def describe(name: str, rate: float, latencies: list[float], failures: int) -> dict[str, float | str]:
    return {"path": name, "req_per_s": round(rate, 1), "p50_ms": round(percentile(latencies, 0.50), 2),
            "p95_ms": round(percentile(latencies, 0.95), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2), "failures": failures}


def main(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": prefix, "TOLLWAY_MODEL_LATENCY_SCALE": "0",
           "TOLLWAY_INGRESS_DEV_MODE": "true", "TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_PARTITIONS": "4"}
    tollway = [sys.executable, "-m", "streams.cli"]
    workers = subprocess.Popen([*tollway, "worker", "all"], env=env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([*tollway, "serve", "--port", str(port)], env=env, cwd=REPO_ROOT,
                              stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        rows = asyncio.run(measure(args, Settings(topic_prefix=prefix, model_latency_scale=0, partitions=4),
                                   f"http://127.0.0.1:{port}"))
    finally:
        for proc in (server, workers):
            proc.terminate()
        for proc in (server, workers):
            proc.wait(30)
    for row in rows:
        print(orjson.dumps(row).decode())
    base, http_row = rows[0], rows[1]
    added = {q: round(float(http_row[q]) - float(base[q]), 2) for q in ("p50_ms", "p95_ms", "p99_ms")}
    print(orjson.dumps({"added_latency_ms": added, "throughput_ratio": round(
        float(http_row["req_per_s"]) / float(base["req_per_s"]), 3),
        "requests": args.requests, "concurrency": args.concurrency}).decode())


async def measure(args: argparse.Namespace, settings: Settings, url: str) -> list[dict[str, float | str]]:
    async with TollwayClient(settings, tenant="bench") as client, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
        await client.complete("warm up", timeout=120)  # the workers are up once this comes back
        for _ in range(600):  # the server answers /healthz 200 once it reaches Kafka
            try:
                async with http.get(f"{url}/healthz") as health:
                    if health.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)

        async def direct(i: int) -> bool:
            response = await client.complete(f"direct question {i} {uuid.uuid4().hex}", timeout=60)
            return response.status is Status.OK

        async def via_http(i: int) -> bool:
            body = {"model": "auto", "messages": [{"role": "user",
                                                   "content": f"http question {i} {uuid.uuid4().hex}"}]}
            async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json",
                                          "X-Tollway-Tenant": "bench"}) as resp:
                await resp.read()
                return resp.status == 200

        await drive(args.warmup, args.concurrency, direct)
        await drive(args.warmup, args.concurrency, via_http)
        rows = []
        for name, one in (("direct (SDK → Kafka)", direct), ("HTTP ingress", via_http),
                          ("direct (SDK → Kafka), again", direct)):
            rows.append(describe(name, *await drive(args.requests, args.concurrency, one)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    main(parser.parse_args())
