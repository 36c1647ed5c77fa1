"""Where a request's time goes in ``tollway worker all+`` at a fixed rate: stamps and counts, not only percentiles.

Runs the co-located route (the whole interactive route as one consumer group) in its own process with counters
installed (``--worker``: the same ``run_workers`` as ``tollway worker all+``, plus the probes below), drives it open
loop from here (bench/load.py's loader and collector, as ``bench.run`` does), and reports per rate:

* per request, from the response's own stamps and the collector's arrivals: loader lateness (scheduled → envelope
  created), ingress → the chain picking it up (the retrieval hop's queue: produce, broker, fetch and the wait for the
  cycle in progress), the members' work, the response's way out (completed → collector) and the audit behind it
  (response → audit record at the collector);
* per chain cycle, counted in the worker: records per cycle, how long a polled record had been fetched before the poll
  took it (aiokafka's fetch completion → ``poll`` return), the cycle's work and tail wall times;
* per request: Kafka requests by kind (fetch, produce, commit, heartbeat …), Redis commands sent, event-loop wake-ups,
  worker threads started (the audit's fsync), process CPU.

    python -m bench.chain_stamps [--rates 10,100] [--seconds 10] [--set chain_overlap_tail=false] [--json]

Counts do not depend on the machine's load; wall times do (print ``uptime`` beside them).
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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.load import Collector, Loader, request
from streams.runtime.topics import delete_prefix_topics, ensure_topics, topology
from streams.settings import REPO_ROOT, Settings


# ---------------------------------------------------------------------------------------------------------- worker
class Probe:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.last_data_fetch = time.monotonic()
        self.fetched_ms = 0.0  # the last poll that took records: how long since a fetch brought records in
        self.reset()

    def reset(self) -> None:
        self.kafka: Counter[str] = Counter()
        self.redis = 0
        self.threads = 0
        self.wakeups = 0
        self.select_s = 0.0
        self.cycles: list[tuple[int, float, float]] = []  # (records, fetched→taken ms, work ms)
        self.tails: list[float] = []
        self.after_work: list[float] = []  # work's end → the next poll (the wait for the previous tail)
        self.work_ended: float | None = None
        self.polls = 0
        self.handles: Counter[str] = Counter()  # event-loop callbacks run, by coroutine or function name
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()

    def dump(self) -> None:
        cpu, wall = time.process_time() - self.cpu0, time.monotonic() - self.wall0
        data = {"kafka": dict(self.kafka), "redis": self.redis, "threads": self.threads, "wakeups": self.wakeups,
                "select_s": self.select_s, "cycles": self.cycles, "tails": self.tails,
                "after_work": self.after_work, "polls": self.polls,
                "handles": dict(self.handles.most_common(25)),
                "cpu_s": cpu, "wall_s": wall}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data))
        tmp.replace(self.out)
        self.reset()


def install(probe: Probe) -> None:
    handle_run = asyncio.events.Handle._run

    def counted_run(self: asyncio.Handle) -> None:
        callback = self._callback  # type: ignore[attr-defined]
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, asyncio.Task):
            coro = owner.get_coro()
            name = getattr(coro, "__qualname__", repr(coro))
        else:
            name = getattr(callback, "__qualname__", type(callback).__name__)
        probe.handles[name] += 1
        handle_run(self)

    asyncio.events.Handle._run = counted_run  # type: ignore[method-assign]
    import aiokafka.client
    import aiokafka.consumer.fetcher
    import redis.asyncio.connection

    from streams.runtime import chain, lanes

    send = aiokafka.client.AIOKafkaClient.send

    async def counted_send(self: Any, node_id: Any, request: Any, **kw: Any) -> Any:
        probe.kafka[type(request).__name__.split("_")[0]] += 1
        return await send(self, node_id, request, **kw)

    aiokafka.client.AIOKafkaClient.send = counted_send

    proc_fetch = aiokafka.consumer.fetcher.Fetcher._proc_fetch_request

    async def timed_fetch(self: Any, *args: Any) -> Any:
        has_data = await proc_fetch(self, *args)
        if has_data:
            probe.last_data_fetch = time.monotonic()
        return has_data

    aiokafka.consumer.fetcher.Fetcher._proc_fetch_request = timed_fetch

    packed = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counted_packed(self: Any, *args: Any, **kw: Any) -> Any:
        probe.redis += 1
        return await packed(self, *args, **kw)

    redis.asyncio.connection.AbstractConnection.send_packed_command = counted_packed  # type: ignore[method-assign]

    to_thread = asyncio.to_thread

    async def counted_to_thread(func: Any, /, *args: Any, **kw: Any) -> Any:
        probe.threads += 1
        return await to_thread(func, *args, **kw)

    asyncio.to_thread = counted_to_thread

    poll = lanes.LanePoller.poll

    async def timed_poll(self: Any, consumer: Any) -> Any:
        if probe.work_ended is not None:  # how long the loop waited for the previous tail before polling again
            probe.after_work.append((time.monotonic() - probe.work_ended) * 1000)
            probe.work_ended = None
        batches = await poll(self, consumer)
        probe.polls += 1
        if batches:
            probe.fetched_ms = (time.monotonic() - probe.last_data_fetch) * 1000
        return batches

    lanes.LanePoller.poll = timed_poll  # type: ignore[method-assign]

    work = chain.ChainRunner.work
    finish = chain.ChainRunner.finish

    async def timed_work(self: Any, batches: Any) -> Any:
        started = time.monotonic()
        out = await work(self, batches)
        probe.cycles.append((sum(len(r) for r in batches.values()), probe.fetched_ms,
                             (time.monotonic() - started) * 1000))
        probe.work_ended = time.monotonic()
        return out

    async def timed_finish(self: Any, worked: Any) -> None:
        started = time.monotonic()
        await finish(self, worked)
        probe.tails.append((time.monotonic() - started) * 1000)

    chain.ChainRunner.work = timed_work  # type: ignore[method-assign]
    chain.ChainRunner.finish = timed_finish  # type: ignore[method-assign,assignment]


def _count_wakeups(probe: Probe) -> None:
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    select = selector.select

    def counted(timeout: float | None = None) -> Any:
        started = time.perf_counter()
        events = select(timeout)
        probe.select_s += time.perf_counter() - started
        probe.wakeups += 1
        return events

    selector.select = counted


def worker(out: Path) -> None:
    from streams.cli.common import setup_logging
    from streams.runtime.worker_process import run_workers
    from streams.settings import get_settings
    from streams.stages.registry import resolve_units

    probe = Probe(out)
    install(probe)
    settings = get_settings()
    setup_logging(settings.log_level)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        _count_wakeups(probe)
        loop.add_signal_handler(signal.SIGUSR1, probe.reset)
        loop.add_signal_handler(signal.SIGUSR2, probe.dump)
        await run_workers(settings, resolve_units(["all+"]))

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------- driver
def _spawn(stats: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.chain_stamps", "--worker", str(stats)], cwd=REPO_ROOT,
                            env=env)


def _collect_probe(proc: subprocess.Popen[bytes], stats: Path) -> dict[str, Any]:
    stats.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not stats.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker wrote no counters")
        time.sleep(0.05)
    data: dict[str, Any] = orjson.loads(stats.read_bytes())
    return data


def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return f"{p50:.2f} / {p90:.2f} / {p99:.2f}"


async def drive(opts: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(kv.split("=", 1) for kv in opts.set)
    settings = Settings(topic_prefix=f"benchs{uuid.uuid4().hex[:8]}", partitions=4, **overrides)
    await ensure_topics(settings)
    topo = topology(settings)
    stats = Path(tempfile.mkdtemp(prefix="chain-stamps-")) / "probe.json"
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_PARTITIONS": "4",
           "TOLLWAY_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO_ROOT), "TOLLWAY_MODEL_LATENCY_SCALE": "0",
           **{f"TOLLWAY_{k.upper()}": v for k, v in overrides.items()}}
    proc = _spawn(stats, env)
    print(f"worker pid {proc.pid}", file=sys.stderr, flush=True)
    collector = Collector(settings.bootstrap_servers, [topo.audit_log, topo.responses], keep_values=[topo.responses])
    loader = Loader(settings.bootstrap_servers)
    results: dict[str, Any] = {}
    try:
        await collector.start()
        await loader.start()
        run = uuid.uuid4().hex[:6]
        tenant = f"bench-{run}"
        warm = [request(f"{run}w", i, tenant=tenant) for i in range(50)]
        await loader.burst(topo.ingress(), warm)
        if await collector.wait_for(topo.audit_log, [rid for rid, _ in warm], 180):
            raise TimeoutError("warm-up requests never came out")
        await asyncio.sleep(3)  # quiet partitions parked, commits settled
        first = 50
        if opts.idle:
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(opts.idle)
            idle = await asyncio.to_thread(_collect_probe, proc, stats)
            results["idle"] = {"wakeups_per_s": round(idle["wakeups"] / idle["wall_s"], 1),
                               "cpu_ms_per_s": round(1000 * idle["cpu_s"] / idle["wall_s"], 2),
                               "kafka_per_s": {k: round(v / idle["wall_s"], 2) for k, v in idle["kafka"].items()},
                               "redis_per_s": round(idle["redis"] / idle["wall_s"], 2), "handles": idle["handles"]}
        for rate in opts.rates:
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
            scheduled = await loader.open_loop(topo.ingress(), f"{run}r{rate:g}", rate, opts.seconds, tenant=tenant,
                                               first_prompt=first)
            first += len(scheduled)
            missing = await collector.wait_for(topo.audit_log, scheduled, 60)
            probe = await asyncio.to_thread(_collect_probe, proc, stats)
            results[f"{rate:g}"] = _report(rate, scheduled, collector, topo.audit_log, topo.responses, probe,
                                           missing)
    finally:
        await loader.stop()
        await collector.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await delete_prefix_topics(settings)
    return results


def _report(rate: float, scheduled: dict[str, int], collector: Collector, audit: str, responses: str,
            probe: dict[str, Any], missing: int) -> dict[str, Any]:
    audit_at = collector.arrivals[audit].at_ns
    resp_at = collector.arrivals[responses].at_ns
    values = collector.arrivals[responses].values
    parts: dict[str, list[float]] = {k: [] for k in (
        "e2e (scheduled → audit record)", "loader (scheduled → created)", "created → chain starts retrieval",
        "members (retrieval start → response built)", "response out (built → collector)",
        "audit behind it (response → audit record)")}
    per_stage: dict[str, list[float]] = {}
    for rid, at_ns in scheduled.items():
        if rid not in audit_at or rid not in values:
            continue
        body = orjson.loads(values[rid])
        created, completed = body["created_at_ns"], body["completed_at_ns"]
        hops = body["hops"]
        queue0 = hops[0]["queue_ms"]
        # retrieval's queue is measured from the record's timestamp (the loader's send, ms resolution)
        work_ms = sum(h["service_ms"] for h in hops) + sum(h["queue_ms"] for h in hops[1:])
        for h in hops:
            per_stage.setdefault(f"{h['stage']} service", []).append(h["service_ms"])
        parts["e2e (scheduled → audit record)"].append((audit_at[rid] - at_ns) / 1e6)
        parts["loader (scheduled → created)"].append((created - at_ns) / 1e6)
        parts["created → chain starts retrieval"].append((completed - created) / 1e6 - work_ms)
        parts["members (retrieval start → response built)"].append(work_ms)
        parts["response out (built → collector)"].append((resp_at[rid] - completed) / 1e6)
        parts["audit behind it (response → audit record)"].append((audit_at[rid] - resp_at[rid]) / 1e6)
        del queue0
    n = max(1, len(parts["e2e (scheduled → audit record)"]))
    cycles = probe["cycles"]
    kafka = {k: round(v / n, 2) for k, v in sorted(probe["kafka"].items())}
    out = {
        "rate": rate, "requests": n, "missing": missing,
        "split_p50_p90_p99_ms": {k: _pct(v) for k, v in {**parts, **per_stage}.items()},
        "cycles_per_request": round(len(cycles) / n, 3),
        "records_per_cycle_mean": round(float(np.mean([c[0] for c in cycles])) if cycles else 0, 2),
        "records_per_cycle_max": max((c[0] for c in cycles), default=0),
        "fetched_to_taken_ms": _pct([c[1] for c in cycles]),
        "cycle_work_ms": _pct([c[2] for c in cycles]),
        "cycle_tail_ms": _pct(probe["tails"]),
        "work_end_to_next_poll_ms": _pct(probe["after_work"]),
        "polls_per_request": round(probe["polls"] / n, 2),
        "kafka_requests_per_request": kafka,
        "redis_commands_per_request": round(probe["redis"] / n, 2),
        "threads_per_request": round(probe["threads"] / n, 2),
        "wakeups_per_request": round(probe["wakeups"] / n, 2),
        "busy_share": round(1 - probe["select_s"] / max(1e-9, probe["wall_s"]), 3),
        "cpu_ms_per_request": round(1000 * probe["cpu_s"] / n, 3),
        "handles_per_request": {k: round(v / n, 2) for k, v in probe["handles"].items()},
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="10,100")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--set", action="append", default=[], help="a Settings field for the worker, k=v")
    parser.add_argument("--idle", type=float, default=0.0, help="first measure the idle worker for this many s")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    if opts.worker is not None:
        worker(opts.worker)
        return
    opts.rates = [float(r) for r in opts.rates.split(",")]
    started = os.getloadavg()
    results = asyncio.run(drive(opts))
    results["load"] = f"{started[0]:.2f} → {os.getloadavg()[0]:.2f}"
    if opts.json:
        print(json.dumps(results))
        return
    for rate, r in results.items():
        if rate == "load":
            continue
        if rate == "idle":
            print(f"== idle: {r}")
            continue
        print(f"== {rate} req/s: {r['requests']} requests, {r['missing']} missing")
        for k, v in r.items():
            if k == "split_p50_p90_p99_ms":
                for part, pct in v.items():
                    print(f"   {part:48s} p50/p90/p99 {pct} ms")
            elif k not in ("rate", "requests", "missing"):
                print(f"   {k}: {v}")
    print(f"load {results['load']}")


if __name__ == "__main__":
    main()
