"""Rebalances under load: end-to-end p99 while one stage scales 3→4→3 and while its three workers restart one by one,
with dynamic group membership and with static membership (``TOLLWAY_INSTANCE_ID`` → ``group_instance_id``).

    python -m bench.rebalance_bench [--stage policy] [--rate 8] [--modes dynamic,static,static-stay]
                                    [--latency-scale 0.2]
                                    [--session-timeout-ms 30000] [--json]

Method (one run per membership mode, the same timeline, each phase's figure next to the baseline of the same run):

* the pipeline as worker processes: every stage but ``--stage`` in one ``tollway worker``, ``--stage`` in three.
  Modes: ``dynamic`` (no identity); ``static``: each with its own ``TOLLWAY_INSTANCE_ID``, as a StatefulSet pod has
  its own name, and a stopped member still leaves (``TOLLWAY_LEAVE_GROUP_ON_STOP``, the default); ``static-stay``:
  the same with ``TOLLWAY_LEAVE_GROUP_ON_STOP=false`` (a stop leaves nothing either);
* warm-up until every group has joined (one request through), then open-loop load at ``--rate`` req/s (distinct
  prompts: no cache hits) for the whole timeline; latency = the request's response arrival − its scheduled send;
* timeline (seconds from the load's start): ``baseline`` 0–12; ``scale up`` 12: a fourth worker starts; ``scale
  down`` 32: it gets SIGTERM (as KEDA/Kubernetes stops a pod); ``rolling`` 70 (after a static member's 30 s session
  timeout): each of the three is stopped (SIGTERM), started again with the same identity, and the next one 8 s
  later (a pod's restart plus readiness); ``crash`` 8 s after the last: one member is killed -9 and started again
  at once (OOM, failed liveness probe); ``after`` 40 s later (past the session timeout), until the load ends 12 s on;
* per phase: p50 / p99 / max of the requests *sent* in it, and p99 ÷ the baseline's p99.

aiokafka has eager assignors only: every membership change pauses the whole group until it has re-joined. A static
member that does not leave (killed, or ``static-stay``) keeps its partitions: they wait until it returns (no
rebalance at all) or until the session timeout (scale down: its share of the traffic waits that long, then one
rebalance). A dynamic member that is killed costs the session timeout and then two rebalances.

The last line of stdout is the JSON result (bench/__init__.py); ``--json`` prints only that line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.load import Collector, Loader, percentiles, request
from schemas.envelope import STAGES
from streams.runtime.topics import ensure_topics, topology
from streams.settings import REPO_ROOT, Settings, load_settings

LOG_DIR = REPO_ROOT / ".state" / "bench" / "rebalance"
BASELINE_S, SCALE_UP_S, ROLLING_S, RESTART_GAP_S, CRASH_S, TAIL_S = 12.0, 32.0, 70.0, 8.0, 40.0, 12.0


@dataclass
class Options:
    stage: str = "policy"
    rate: float = 8.0
    modes: tuple[str, ...] = ("dynamic", "static", "static-stay")
    latency_scale: float = 0.2
    session_timeout_ms: int = 30_000
    json_only: bool = False


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with (LOG_DIR / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def run_mode(mode: str, opts: Options, log: Any) -> dict[str, Any]:
    prefix = f"bench{mode[:3]}{uuid.uuid4().hex[:8]}"
    settings = load_settings(topic_prefix=prefix)
    await ensure_topics(settings)
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": prefix, "TOLLWAY_LOG_LEVEL": "WARNING",
           "TOLLWAY_MODEL_LATENCY_SCALE": str(opts.latency_scale),
           "TOLLWAY_SESSION_TIMEOUT_MS": str(opts.session_timeout_ms), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TOLLWAY_INSTANCE_ID", None)
    if mode == "static-stay":
        env["TOLLWAY_LEAVE_GROUP_ON_STOP"] = "false"
    worker = [sys.executable, "-m", "streams.cli", "worker"]
    others = Proc(f"{prefix}-others", [*worker, *(s for s in STAGES if s != opts.stage)], env)

    def member(i: int) -> Proc:
        identity = {"TOLLWAY_INSTANCE_ID": f"{prefix}-{opts.stage}-{i}"} if mode.startswith("static") else {}
        return Proc(f"{prefix}-{opts.stage}-{i}", [*worker, opts.stage], {**env, **identity})

    members = [member(i) for i in range(4)]
    procs = [others, *members]
    topo = topology(settings)
    collector = Collector(settings.bootstrap_servers, [topo.responses])
    loader = Loader(settings.bootstrap_servers)
    events: list[tuple[str, int]] = []
    try:
        others.start()
        for m in members[:3]:
            m.start()
        await collector.start()
        await loader.start()
        warm = dict([request(f"{prefix}-warm", 0, prompt_index=10**6)])
        await loader.burst(topo.ingress(), list(warm.items()))
        if await collector.wait_for(topo.responses, warm, 180):
            raise RuntimeError(f"{mode}: the pipeline did not answer the warm-up (logs: {LOG_DIR})")

        async def timeline(start_ns: int) -> None:
            async def until(offset_s: float) -> None:
                await asyncio.sleep(max(0.0, (start_ns + offset_s * 1e9 - time.time_ns()) / 1e9))

            await until(BASELINE_S)
            events.append(("scale up", time.time_ns()))
            members[3].start()
            await until(SCALE_UP_S)
            events.append(("scale down", time.time_ns()))
            await asyncio.to_thread(members[3].stop)
            await until(ROLLING_S)
            events.append(("rolling", time.time_ns()))
            for m in members[:3]:
                await asyncio.to_thread(m.stop)
                m.start()
                await asyncio.sleep(RESTART_GAP_S)  # the next pod's turn (restart + readiness), not a synchronisation
            events.append(("crash", time.time_ns()))
            await asyncio.to_thread(members[0].kill9)
            members[0].start()
            await asyncio.sleep(CRASH_S)
            events.append(("after", time.time_ns()))

        duration_s = ROLLING_S + 3 * RESTART_GAP_S + CRASH_S + TAIL_S + 10
        start_ns = time.time_ns() + 20_000_000
        scheduler = asyncio.create_task(timeline(start_ns))
        scheduled = await loader.open_loop(topo.ingress(), prefix, opts.rate, duration_s, first_prompt=0)
        await scheduler
        missing = await collector.wait_for(topo.responses, scheduled, 120)
        arrived = collector.arrivals[topo.responses].at_ns
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop)
        await collector.stop()
        await loader.stop()
    bounds = [("baseline", start_ns), *events, ("end", 2**63)]
    phases: dict[str, dict[str, float]] = {}
    for (name, lo), (_next, hi) in itertools.pairwise(bounds):
        lat = [(arrived[rid] - at) / 1e6 for rid, at in scheduled.items() if lo <= at < hi and rid in arrived]
        phases[name] = percentiles(lat)
    base = phases["baseline"].get("p99_ms", 0.0) or 1.0
    for figures in phases.values():
        if "p99_ms" in figures:
            figures["p99_vs_baseline"] = round(figures["p99_ms"] / base, 2)
    result = {"mode": mode, "missing": missing, "phases": phases}
    log(f"{mode:8s} " + "  ".join(f"{name}: p50 {f.get('p50_ms', 0):.0f} p99 {f.get('p99_ms', 0):.0f} max "
                                  f"{f.get('max_ms', 0):.0f} ms ({f.get('p99_vs_baseline', 0)}×)"
                                  for name, f in phases.items()) + (f"  MISSING {missing}" if missing else ""))
    return result


async def main_async(opts: Options) -> dict[str, Any]:
    log = (lambda *_: None) if opts.json_only else (lambda msg: print(msg, flush=True))
    load_before = os.getloadavg()
    results = [await run_mode(mode, opts, log) for mode in opts.modes]
    return {"scenario": "rebalance", "stage": opts.stage, "rate": opts.rate,
            "session_timeout_ms": opts.session_timeout_ms, "partitions": Settings().partitions,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "runs": results}


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="policy", choices=list(STAGES))
    p.add_argument("--rate", type=float, default=8.0)
    p.add_argument("--modes", default="dynamic,static,static-stay")
    p.add_argument("--latency-scale", type=float, default=0.2)
    p.add_argument("--session-timeout-ms", type=int, default=30_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    return Options(stage=a.stage, rate=a.rate, modes=tuple(a.modes.split(",")), latency_scale=a.latency_scale,
                   session_timeout_ms=a.session_timeout_ms, json_only=a.json)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    result = asyncio.run(main_async(opts))
    out = Path(REPO_ROOT / ".state" / "bench" / "rebalance.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
