"""Ingress overhead: the same requests through `tollway serve` (HTTP) and straight to Kafka with the SDK, same run.

    .venv/bin/python -m bench.ingress_bench --requests 1000 --concurrency 64 --rounds 4

Method. One pipeline (`tollway worker all`) and one `tollway serve`, subprocesses on a fresh topic prefix (model
latency emulation off, so the model stage is not what is measured). Both paths drive the *same* pipeline, alternating
A/B, B/A, A/B … (round k runs direct first when k is even), so a shared machine's drift falls on both paths alike;
each round yields one paired comparison, and the figures are medians of the paired differences and ratios.

Three loads per round: ``--requests`` closed-loop with ``--concurrency`` in flight (throughput, latency under load);
``--mixed-requests`` with half the lanes on each path at once (both paths see exactly the same load and machine
noise: the steadiest added-latency figure on a shared machine); ``--serial-requests`` one at a time (the added
latency of the HTTP hop without queueing in front of it).
Per phase the CPU seconds of the workers, the server and this process (the load generator, and for the direct path
also the SDK's producer and reply reader) are read from /proc next to wall time.

Output: one JSON line per phase, then a summary JSON line whose ``rows`` bench/run.py adds to its table.
Topics of the run's prefix are deleted at the end.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from schemas.envelope import Status
from streams.clients.sdk import TollwayClient
from streams.runtime.topics import delete_prefix_topics
from streams.settings import REPO_ROOT, Settings

PATHS = ("direct", "http")
# What peers publish for their proxy overhead (docs/FIELD: LiteLLM p50 2–12 ms, p99 13–43 ms): the bar to stay under.
ADDED_P50_TARGET_MS = 12.0
ADDED_P99_TARGET_MS = 43.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def order_of_round(k: int) -> tuple[str, str]:
    """A/B, B/A, A/B …: neither path always runs first (warmer caches, a quieter machine)."""
    return PATHS if k % 2 == 0 else (PATHS[1], PATHS[0])


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process (this one when ``pid`` is None), children not included."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    load: str  # "concurrent", "mixed" (both paths at once; wall and CPU are the whole phase's) or "serial"
    round: int
    path: str
    requests: int
    concurrency: int
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    failures: int
    cpu_s: dict[str, float]

    @property
    def req_per_s(self) -> float:
        return self.requests / self.wall_s

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"load": self.load, "round": self.round, "path": self.path, "requests": self.requests,
                "concurrency": self.concurrency, "wall_s": round(self.wall_s, 3), "req_per_s": round(self.req_per_s, 1),
                "p50_ms": round(percentile(lat, 0.50), 2), "p95_ms": round(percentile(lat, 0.95), 2),
                "p99_ms": round(percentile(lat, 0.99), 2), "mean_ms": round(statistics.fmean(lat), 2),
                "failures": self.failures, "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
                "cpu_ms_per_request": {k: round(v * 1000 / self.requests, 3) for k, v in self.cpu_s.items()}}


async def drive(n: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> tuple[float, list[float], int]:
    """Run ``one(i)`` n times with ``concurrency`` in flight: (wall seconds, latencies in ms, failures)."""
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
    return time.perf_counter() - began, latencies, failures


async def drive_mixed(n: int, concurrency: int, direct: Callable[[int], Awaitable[bool]],
                      http: Callable[[int], Awaitable[bool]]) -> tuple[float, dict[str, list[float]], dict[str, int]]:
    """Half the lanes on each path at once: (wall seconds, latencies in ms by path, failures by path)."""
    latencies: dict[str, list[float]] = {path: [] for path in PATHS}
    failures = dict.fromkeys(PATHS, 0)
    queue = iter(range(n))

    async def lane(path: str, one: Callable[[int], Awaitable[bool]]) -> None:
        for i in queue:
            began = time.perf_counter()
            ok = await one(i)
            latencies[path].append((time.perf_counter() - began) * 1000)
            failures[path] += not ok

    began = time.perf_counter()
    await asyncio.gather(*(lane(PATHS[k % 2], (direct, http)[k % 2]) for k in range(max(2, concurrency))))
    return time.perf_counter() - began, latencies, failures


def paired(phases: list[Phase], load: str) -> list[tuple[Phase, Phase]]:
    """(direct, http) of each round of one load."""
    by_round: dict[int, dict[str, Phase]] = {}
    for phase in phases:
        if phase.load == load:
            by_round.setdefault(phase.round, {})[phase.path] = phase
    return [(pair["direct"], pair["http"]) for _, pair in sorted(by_round.items()) if len(pair) == 2]


def summarise(phases: list[Phase]) -> dict[str, Any]:
    """Medians of the per-round paired figures, and the rows for bench/run.py."""
    out: dict[str, Any] = {"rounds": len(paired(phases, "concurrent")), "rows": []}
    rows: list[dict[str, Any]] = out["rows"]
    for load in ("concurrent", "mixed", "serial"):
        pairs = paired(phases, load)
        if not pairs:
            continue
        c = pairs[0][1].concurrency
        label = {"concurrent": f"{c} in flight", "mixed": f"{c} in flight, both paths at once",
                 "serial": "one at a time"}[load]
        direct_rate = [d.req_per_s for d, _ in pairs]
        http_rate = [h.req_per_s for _, h in pairs]
        figures: dict[str, Any] = {
            "direct_req_per_s": [round(r, 1) for r in direct_rate], "http_req_per_s": [round(r, 1) for r in http_rate],
            "throughput_ratio": round(statistics.median(h / d for d, h in zip(direct_rate, http_rate, strict=True)), 3),
            # how far two measurements of the same path differ in this run: the noise floor of the comparison
            "direct_spread": round(max(direct_rate) / min(direct_rate), 3),
            "http_spread": round(max(http_rate) / min(http_rate), 3),
        }
        for q, name in ((0.50, "p50"), (0.99, "p99")):
            d_q = [percentile(d.latencies_ms, q) for d, _ in pairs]
            h_q = [percentile(h.latencies_ms, q) for _, h in pairs]
            figures[f"direct_{name}_ms"] = round(statistics.median(d_q), 2)
            figures[f"http_{name}_ms"] = round(statistics.median(h_q), 2)
            figures[f"added_{name}_ms"] = round(statistics.median(h - d for d, h in zip(d_q, h_q, strict=True)), 2)
            figures[f"{name}_ratio"] = round(statistics.median(h / d for d, h in zip(d_q, h_q, strict=True)), 3)
        for who in ("workers", "server", "bench"):
            figures[f"cpu_ms_per_request_{who}"] = {
                path: round(statistics.median(p.cpu_s[who] * 1000 / p.requests for p in (pair[i] for pair in pairs)),
                            3) for i, path in enumerate(PATHS)}
        out[load] = figures
        if load == "mixed":  # one phase, two paths: only the latencies compare
            for name in ("p50", "p99"):
                rows.append({"figure": f"HTTP ingress added latency {name}, {label}",
                             "value": figures[f"added_{name}_ms"], "unit": "ms",
                             "baseline": figures[f"direct_{name}_ms"],
                             "baseline_name": f"SDK straight to Kafka, {name}", "ratio": figures[f"{name}_ratio"],
                             "target": None, "pass": None})
            out[load] = {k: v for k, v in figures.items()  # rates and CPU are the whole phase's, not a path's
                         if k.startswith(("direct_p", "http_p", "added_", "p50_", "p99_"))}
            continue
        rows.append({"figure": f"HTTP ingress throughput, {label}", "value": round(statistics.median(http_rate), 1),
                     "unit": "req/s", "baseline": round(statistics.median(direct_rate), 1),
                     "baseline_name": "SDK straight to Kafka", "ratio": figures["throughput_ratio"], "target": None,
                     "pass": None, "note": f"direct runs differed {figures['direct_spread']}×"})
        for name, target in (("p50", ADDED_P50_TARGET_MS), ("p99", ADDED_P99_TARGET_MS)):
            rows.append({"figure": f"HTTP ingress added latency {name}, {label}", "value": figures[f"added_{name}_ms"],
                         "unit": "ms", "baseline": figures[f"direct_{name}_ms"],
                         "baseline_name": f"SDK straight to Kafka, {name}", "ratio": figures[f"{name}_ratio"],
                         "target": f"<= {target:g} ms" if load == "serial" else None,
                         "pass": figures[f"added_{name}_ms"] <= target if load == "serial" else None})
        if load == "concurrent":
            server = figures["cpu_ms_per_request_server"]["http"]
            workers = figures["cpu_ms_per_request_workers"]["http"]
            rows.append({"figure": f"HTTP ingress server CPU per request, {label}", "value": server, "unit": "ms",
                         "baseline": workers, "baseline_name": "the pipeline's CPU per request",
                         "ratio": round(server / workers, 3) if workers else None, "target": None, "pass": None})
    return out


def main(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": prefix, "TOLLWAY_MODEL_LATENCY_SCALE": "0",
           "TOLLWAY_INGRESS_DEV_MODE": "true", "TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_PARTITIONS": "4"}
    tollway = [sys.executable, "-m", "streams.cli"]
    settings = Settings(topic_prefix=prefix, model_latency_scale=0, partitions=4)
    workers = subprocess.Popen([*tollway, "worker", "all"], env=env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([*tollway, "serve", "--port", str(port)], env=env, cwd=REPO_ROOT,
                              stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        phases = asyncio.run(measure(args, settings, f"http://127.0.0.1:{port}",
                                     {"workers": workers.pid, "server": server.pid, "bench": None}))
    finally:
        for proc in (server, workers):
            proc.terminate()
        for proc in (server, workers):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(delete_prefix_topics(settings))
    for phase in phases:
        print(orjson.dumps(phase.row()).decode())
    summary = summarise(phases)
    summary.update(requests=args.requests, concurrency=args.concurrency, mixed_requests=args.mixed_requests,
                   serial_requests=args.serial_requests,
                   loadavg=os.getloadavg())
    print(orjson.dumps(summary).decode())


async def measure(args: argparse.Namespace, settings: Settings, url: str,
                  pids: dict[str, int | None]) -> list[Phase]:
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
            await asyncio.sleep(0.1)  # polling a process's readiness, bounded

        run_id = uuid.uuid4().hex[:8]  # distinct prompts per run and request: no cache hits

        async def direct(i: int) -> bool:
            response = await client.complete(f"direct question {run_id} {i} {uuid.uuid4().hex}", timeout=60)
            return response.status is Status.OK

        async def via_http(i: int) -> bool:
            body = {"model": "auto", "messages": [{"role": "user",
                                                   "content": f"http question {run_id} {i} {uuid.uuid4().hex}"}]}
            async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json",
                                          "X-Tollway-Tenant": "bench"}) as resp:
                await resp.read()
                return resp.status == 200

        paths = {"direct": direct, "http": via_http}
        for name in PATHS:
            await drive(args.warmup, args.concurrency, paths[name])
        phases: list[Phase] = []
        for k in range(args.rounds):
            for load, n, concurrency in (("concurrent", args.requests, args.concurrency),
                                         ("mixed", args.mixed_requests, args.concurrency),
                                         ("serial", args.serial_requests, 1)):
                if n <= 0:
                    continue
                if load == "mixed":
                    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                    wall, by_path, failed = await drive_mixed(n, concurrency, direct, via_http)
                    used = {who: cpu_seconds(pid) - before[who] for who, pid in pids.items()}
                    for name in PATHS:
                        phases.append(Phase(load, k, name, len(by_path[name]), concurrency, wall, by_path[name],
                                            failed[name], used))
                    print(f"# round {k} mixed      p50 direct {percentile(by_path['direct'], 0.5):6.2f} ms http "
                          f"{percentile(by_path['http'], 0.5):6.2f} ms  p99 direct "
                          f"{percentile(by_path['direct'], 0.99):7.2f} ms http {percentile(by_path['http'], 0.99):7.2f}"
                          f" ms", file=sys.stderr, flush=True)
                    continue
                for name in order_of_round(k):
                    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                    wall, latencies, failures = await drive(n, concurrency, paths[name])
                    used = {who: cpu_seconds(pid) - before[who] for who, pid in pids.items()}
                    phases.append(Phase(load, k, name, n, concurrency, wall, latencies, failures, used))
                    print(f"# round {k} {load:<10} {name:<6} {n / wall:8.1f} req/s  p50 "
                          f"{percentile(latencies, 0.5):6.2f} ms  p99 {percentile(latencies, 0.99):7.2f} ms  "
                          f"cpu s {used}", file=sys.stderr, flush=True)
    return phases


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrent phase, per path")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--mixed-requests", type=int, default=1000,
                        help="requests per phase with both paths at once (0: none)")
    parser.add_argument("--serial-requests", type=int, default=100, help="requests per one-at-a-time phase (0: none)")
    parser.add_argument("--rounds", type=int, default=4, help="paired rounds, order alternating (A/B, B/A, …)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="accepted for bench/run.py; the last line is JSON anyway")
    main(parser.parse_args())
