"""Where each process of a system spends what the floor's does not: counts per second and per request, per process.

``python -m bench.stage_counts [--systems floor,tollway] [--processes 6] [--rates 0,10,50] [--seconds 10]``

Each system runs as in ``bench.run`` (its own processes, the local model at 0 ms), each process under
``bench.counting``: event-loop wake-ups, timers, tasks, ``getmany`` calls, broker requests by type (Fetch, Produce,
OffsetCommit, Heartbeat …), consumer commits, Redis commands and round trips, and CPU. After a warm-up, each rate is
an open-loop round of ``--seconds`` (rate 0: idle for that long); the counters are read before and after it. Counts
do not depend on the machine's load; the CPU does (and includes ~0.3 µs per counted call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.load import Collector, Loader, request
from bench.run import MODEL_ZERO_LATENCY_ENV
from bench.systems import System
from schemas.envelope import DEFAULT_ROUTE
from streams.settings import Settings

# The columns printed, in order (the JSON has every counter).
COLUMNS = ("cpu_ms", "loop.wakeups", "loop.timers", "loop.tasks", "kafka.getmany", "kafka.req.FetchRequest",
           "kafka.fetch_partitions", "kafka.req.ProduceRequest", "kafka.req.OffsetCommitRequest",
           "kafka.req.HeartbeatRequest", "redis.commands", "redis.round_trips")


class CountedSystem(System):
    """A :class:`System` whose processes run under ``bench.counting``."""

    def _commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "bench.counting", *base[1:]] for base in super()._commands()]

    def labels(self) -> list[str]:
        if self.processes == 1:
            return [self.kind]
        if self.kind in ("relay", "floor"):
            return [f"{self.kind}-{hop}" for hop in range(1, self.processes + 1)]
        return list(DEFAULT_ROUTE)


async def snapshot(pids: list[int], out_dir: Path, timeout_s: float = 10.0) -> dict[int, dict[str, float]]:
    """Ask every process for its counters (SIGUSR1) and read them once each has written a newer snapshot."""
    before = {pid: _read(out_dir, pid).get("seq", 0) for pid in pids}
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while True:
        current = {pid: _read(out_dir, pid) for pid in pids}
        if all(current[pid].get("seq", 0) > before[pid] for pid in pids):
            return current
        if time.monotonic() > deadline:
            raise TimeoutError("a process did not write its counters")
        await asyncio.sleep(0.02)


def _read(out_dir: Path, pid: int) -> dict[str, float]:
    try:
        return dict(json.loads((out_dir / f"{pid}.json").read_text()))
    except (OSError, ValueError):
        return {}


def rates_of(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters per second over the window (``cpu_ms``: CPU milliseconds per second)."""
    seconds = max(1e-9, after["at_s"] - before["at_s"])
    out = {key: (after.get(key, 0) - before.get(key, 0)) / seconds for key in after
           if key not in ("seq", "at_s", "cpu_s")}
    out["cpu_ms"] = 1000 * (after["cpu_s"] - before["cpu_s"]) / seconds
    out["window_s"] = seconds  # the round and its drain: per request = per second × window ÷ sent
    return out


async def measure(kind: str, processes: int, rates: list[float], seconds: float, warmup: int,
                  out_dir: Path, profile_dir: Path | None = None) -> dict[str, Any]:
    settings = Settings(topic_prefix=f"benchc{kind[0]}{uuid.uuid4().hex[:8]}", partitions=4)
    system = CountedSystem(kind, processes, settings,
                           extra_env={**MODEL_ZERO_LATENCY_ENV, "TOLLWAY_COUNTS_DIR": str(out_dir)})
    collector = Collector(settings.bootstrap_servers, [system.output])
    loader = Loader(settings.bootstrap_servers)
    result: dict[str, Any] = {"system": system.name, "rates": {}}
    await system.start()
    try:
        await collector.start()
        await loader.start()
        run = uuid.uuid4().hex[:6]
        tenant = f"bench-{run}"
        warm = [request(f"{run}w", i, tenant=tenant) for i in range(warmup)]
        await loader.burst(system.ingress, warm)
        missing = await collector.wait_for(system.output, [rid for rid, _ in warm], 180, check=system.check)
        if missing:
            raise TimeoutError(f"{system.name}: {missing} warm-up requests never came out")
        await asyncio.sleep(2.0)  # let the warm-up's tails and paced commits settle
        labels = system.labels()
        first_prompt = warmup
        for rate in rates:
            spies = _spy(system.pids(), labels, f"{kind}-{rate:g}", seconds, profile_dir) if profile_dir else []
            before = await snapshot(system.pids(), out_dir)
            sent = 0
            if rate > 0:
                scheduled = await loader.open_loop(system.ingress, f"{run}r{rate:g}", rate, seconds, tenant=tenant,
                                                   first_prompt=first_prompt)
                sent = len(scheduled)
                first_prompt += sent
                await collector.wait_for(system.output, scheduled, 60, check=system.check)
            else:
                await asyncio.sleep(seconds)
            after = await snapshot(system.pids(), out_dir)
            for spy in spies:
                await asyncio.to_thread(spy.wait)
            per_process = {label: rates_of(before[pid], after[pid])
                           for label, pid in zip(labels, system.pids(), strict=True)}
            result["rates"][f"{rate:g}"] = {"sent": sent, "processes": per_process}
    finally:
        await loader.stop()
        await collector.stop()
        await system.stop()
        await system.delete_topics()
    return result


def _spy(pids: list[int], labels: list[str], tag: str, seconds: float,
         profile_dir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy over each process for the round (raw stacks, ``profile_dir/<tag>-<label>.txt``; see ``areas``)."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    return [subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "50",
                              "-f", "raw", "--nonblocking", "-o", str(profile_dir / f"{tag}-{label}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid, label in zip(pids, labels, strict=True)]


AREAS = (("aiokafka", "aiokafka"), ("asyncio", "asyncio"), ("pydantic", "pydantic"), ("redis", "redis"),
         ("streams/runtime", "runtime"), ("streams/", "streams"), ("workers/", "workers"), ("schemas/", "schemas"))


def areas(raw: Path) -> dict[str, float]:
    """Share of a py-spy raw profile's samples by where the sampled (innermost) frame is."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        area = next((name for needle, name in AREAS if needle in leaf), "other")
        counts[area] = counts.get(area, 0) + int(n)
    total = sum(counts.values()) or 1
    return {area: round(n / total, 3) for area, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def table(result: dict[str, Any]) -> str:
    lines = [f"## {result['system']}"]
    short = [c.replace("kafka.req.", "").replace("Request", "").replace("kafka.", "").replace("loop.", "")
             .replace("redis.", "redis ") for c in COLUMNS]
    for rate, data in result["rates"].items():
        lines.append(f"\n### {rate} req/s — per second (per request where the rate is not 0)\n")
        lines.append("| process | " + " | ".join(short) + " |")
        lines.append("|---|" + "---:|" * len(COLUMNS))
        total: dict[str, float] = {}
        sent = data["sent"]
        for label, counts in data["processes"].items():
            for key in COLUMNS:
                total[key] = total.get(key, 0.0) + counts.get(key, 0.0)
            per = counts.get("window_s", 0.0) / sent if sent else 0.0  # seconds of the window per request sent
            lines.append(f"| {label} | " + " | ".join(_cell(counts.get(k, 0.0), per) for k in COLUMNS) + " |")
        windows = [c.get("window_s", 0.0) for c in data["processes"].values()]
        per = sum(windows) / len(windows) / sent if sent and windows else 0.0
        lines.append("| **all** | " + " | ".join(_cell(total[k], per) for k in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(per_s: float, seconds_per_request: float) -> str:
    return f"{per_s:.1f}" if seconds_per_request <= 0 else f"{per_s:.1f} ({per_s * seconds_per_request:.2f})"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tollway-counts-") as tmp:
        for kind in args.systems.split(","):
            results.append(await measure(kind, args.processes, [float(r) for r in args.rates.split(",")],
                                         args.seconds, args.warmup, Path(tmp), args.pyspy))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="floor,tollway")
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--rates", default="0,10,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--pyspy", type=Path, help="also py-spy every process each round, raw stacks in this dir")
    parser.add_argument("--json", type=Path, help="also write the counters to this file")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(f"load average {os.getloadavg()[0]:.2f}")
    for result in results:
        print(table(result))
    if args.pyspy:
        for raw in sorted(args.pyspy.glob("*.txt")):
            print(raw.stem, areas(raw))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
