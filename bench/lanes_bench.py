"""Scenario 5, priority lanes: interactive latency alone, and while a backfill floods the batch lane.

    python -m bench.lanes_bench [--rate 20] [--seconds 10] [--rounds 4] [--flood 2000] [--latency-scale 1]
                                [--processes 1] [--set lane_batch_quota=8] [--json]

Method (one pipeline, one run, so every figure has its baseline beside it):

* start the six-stage pipeline (bench/systems.py, ``tollway worker all`` by default) with the local model sleeping
  the catalog's latency profile × ``--latency-scale``. The default 1 is the profile as written (a small model call
  is ~0.2 s): lanes exist because a stage, above all the model, is busy; at scale 0 the model is free and a stage's
  only cost is CPU, which no lane can give back on a shared 2-core machine;
* warm it up with both tiers (every consumer group joined, every lane's partitions assigned);
* then ``--rounds`` × (A, B):
  A  interactive-tier requests at ``--rate`` req/s for ``--seconds`` (open loop, latency from the scheduled send);
  B  first ``--flood`` batch-tier requests published as fast as the producer takes them to the batch ingress lane
     (as ``tollway backfill`` publishes, minus its rate limit), then the same interactive open loop over the
     backlog; afterwards the backlog is left to drain with interactive traffic idle before the next A;
* both phases of a round ask prompts of one block, each consecutive pair split between them by a seeded coin
  (:func:`paired_prompts`): the bench's prompts come in runs that the router sends to one model or another, and
  consecutive ranges gave the alone and flood phases different mixes of models; each phase prints its models;
* interactive end-to-end latency = its audit record's arrival − its scheduled send; every request must come out
  ``ok`` (distinct prompts and fresh tenants — one per phase, another for each flood — so there are no cache hits,
  no budget or rate limit shared with anyone, and no phase's cache lookups scan entries an earlier phase stored);
* the figure: p99(B) / p99(A) over the pooled rounds, target ≤ 1.2×; each round's ratio, and their median, are shown
  too: on a shared machine the rounds differ more than the lanes do, so read the spread before the pooled figure;
* the backfill's throughput while interactive traffic flows (it must not be starved) next to its throughput once
  interactive traffic stops, and the pipeline's CPU time next to every phase's wall time.

The last line of stdout is the JSON result (bench/__init__.py); ``--json`` prints only that line.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bench.load import Collector, Loader, percentiles, request, statuses
from bench.systems import System, cpu_seconds
from schemas.envelope import Tier
from streams.runtime.topics import topology
from streams.settings import Settings

TARGET_RATIO = 1.2
FLOOD_DELAY_S = 1.0
SLOWEST_SHARE = 0.02  # the share of each phase's slowest interactive requests whose hops stage_profile shows


@dataclass
class Options:
    # 20 req/s keeps one worker process well short of saturation on the shared 2-core machine (at 30 req/s its
    # interactive p50 alone was seconds, all queueing); 2,000 backfill requests outlast every flood phase.
    rate: float = 20.0
    # Short phases, many rounds: this machine's speed drifts by 2× within a minute (other engineers' runs), so only
    # phases close in time compare; 4 × 200 requests per phase.
    seconds: float = 10.0
    rounds: int = 4
    flood: int = 2000
    latency_scale: float = 1.0
    processes: int = 1
    partitions: int = 4
    warmup: int = 100
    overrides: dict[str, str] = field(default_factory=dict)
    quiet: bool = False


@dataclass
class Phase:
    name: str  # "alone" | "flood"
    round: int
    latencies_ms: list[float]
    statuses: dict[str, int]
    missing: int
    wall_s: float
    cpu_s: float
    stages: dict[str, Any]
    backfill: dict[str, Any] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)  # the interactive requests' models (the phases compare)

    def summary(self) -> dict[str, Any]:
        return {"phase": self.name, "round": self.round, "interactive": percentiles(self.latencies_ms),
                "statuses": self.statuses, "missing": self.missing, "wall_s": round(self.wall_s, 2),
                "cpu_s": round(self.cpu_s, 2), "cpu_cores": round(self.cpu_s / max(1e-9, self.wall_s), 2),
                "models": self.models, "stages": self.stages,
                **({"backfill": self.backfill} if self.backfill else {})}


def _hops(raw: bytes | None, arrived_ns: int | None = None) -> list[dict[str, Any]]:
    """A record's hops; an audit record's also end with ``audit→log``: from its ``audited_at_ns`` to its arrival."""
    if not raw:
        return []
    record = orjson.loads(raw)
    hops: list[dict[str, Any]] = record.get("hops") or []
    audited_ns = record.get("audited_at_ns")
    if audited_ns and arrived_ns:
        hops.append({"stage": "audit→log", "queue_ms": max(0, arrived_ns - audited_ns) / 1e6, "service_ms": 0.0})
    return hops


def stage_profile(collector: Collector, topic: str, ids: list[str], latencies_ms: dict[str, float] | None = None,
                  sizes_topic: str | None = None) -> dict[str, Any]:
    """Per stage, over the interactive requests' audit records (every hop, the audit's own, and ``audit→log``: the
    audit's write until the record arrived): mean batch size, queue and service ms, their p99s, the p99 of both
    summed (where a tail comes from: a stage whose p99 grows under the flood is the one letting batch work in the
    way), and — given each request's end-to-end latency — the stage's mean queue and service ms over the slowest 2 %
    of the requests (``slow_queue_ms``, ``slow_service_ms``: which stage those requests waited in). Audit records
    carry no batch sizes: ``sizes_topic`` (the responses) gives them."""
    per_stage: dict[str, list[tuple[float, float, float]]] = {}
    slow: dict[str, list[tuple[float, float]]] = {}
    values, arrivals = collector.arrivals[topic].values, collector.arrivals[topic].at_ns
    slowest: set[str] = set()
    if latencies_ms:
        ranked = sorted(latencies_ms, key=latencies_ms.__getitem__, reverse=True)
        slowest = set(ranked[:max(1, round(len(ranked) * SLOWEST_SHARE))])
    sized = collector.arrivals[sizes_topic].values if sizes_topic else {}
    for rid in ids:
        sizes = {hop["stage"]: hop.get("batch_size", 0) for hop in _hops(sized.get(rid))}
        for hop in _hops(values.get(rid), arrivals.get(rid)):
            row = (float(sizes.get(hop["stage"], hop.get("batch_size", 0))), float(hop.get("queue_ms", 0.0)),
                   float(hop.get("service_ms", 0.0)))
            per_stage.setdefault(hop["stage"], []).append(row)
            if rid in slowest:
                slow.setdefault(hop["stage"], []).append(row[1:])
    out: dict[str, Any] = {}
    if slowest and sized:
        # The slowest requests one by one (model, output tokens, and their model hop): what they waited for.
        detail = []
        for rid in sorted(slowest, key=lambda r: -(latencies_ms or {}).get(r, 0.0)):
            raw = sized.get(rid)
            response = orjson.loads(raw) if raw else {}
            hop = next((h for h in _hops(values.get(rid)) if h["stage"] == "model"), {})
            size = next((h.get("batch_size", 0) for h in _hops(raw) if h["stage"] == "model"), 0)
            detail.append({"ms": round((latencies_ms or {}).get(rid, 0.0)), "model": response.get("model"),
                           "out": (response.get("usage") or {}).get("output_tokens"), "batch": size,
                           "model_queue_ms": round(float(hop.get("queue_ms", 0.0))),
                           "model_service_ms": round(float(hop.get("service_ms", 0.0)))})
        out["slowest"] = detail
    for stage, rows in per_stage.items():
        arr = np.asarray(rows)
        out[stage] = {"mean_batch": round(float(arr[:, 0].mean()), 1),
                      "mean_queue_ms": round(float(arr[:, 1].mean()), 1),
                      "mean_service_ms": round(float(arr[:, 2].mean()), 1),
                      "p99_queue_ms": round(float(np.percentile(arr[:, 1], 99)), 1),
                      "p99_service_ms": round(float(np.percentile(arr[:, 2], 99)), 1),
                      "p99_hop_ms": round(float(np.percentile(arr[:, 1] + arr[:, 2], 99)), 1)}
        if slow.get(stage):
            worst = np.asarray(slow[stage])
            out[stage]["slow_queue_ms"] = round(float(worst[:, 0].mean()), 1)
            out[stage]["slow_service_ms"] = round(float(worst[:, 1].mean()), 1)
    return out


class LanesBench:
    def __init__(self, opts: Options, log: Any) -> None:
        self.opts = opts
        self.log = log
        self.settings = Settings(topic_prefix=f"benchl{uuid.uuid4().hex[:8]}", partitions=opts.partitions)
        env = {"TOLLWAY_MODEL_LATENCY_SCALE": f"{opts.latency_scale:g}"}
        env.update({f"TOLLWAY_{k.upper()}": v for k, v in opts.overrides.items()})
        self.system = System("tollway", opts.processes, self.settings, extra_env=env)
        self.topo = topology(self.settings)
        bootstrap = self.settings.bootstrap_servers
        self.collector = Collector(bootstrap, [self.system.output, self.topo.responses],
                                   keep_values=[self.topo.responses, self.system.output])
        self.interactive = Loader(bootstrap)
        self.backfill = Loader(bootstrap)  # its own producer: the flood never queues in front of interactive sends
        self.run_id = uuid.uuid4().hex[:6]
        self.tenant = f"bench-lanes-{self.run_id}"  # fresh: nothing cached, no limit shared with anyone
        self.next_prompt = 0

    def _prompts(self, count: int) -> int:
        first, self.next_prompt = self.next_prompt, self.next_prompt + count
        return first

    async def run(self) -> dict[str, Any]:
        await self.system.start()
        try:
            await self.collector.start()
            await self.interactive.start()
            await self.backfill.start()
            await self._warm_up()
            phases: list[Phase] = []
            for round_no in range(1, self.opts.rounds + 1):
                prompts = self._round_prompts(round_no)
                for name in ("alone", "flood"):
                    phase = await self._phase(name, round_no, prompts[name])
                    phases.append(phase)
                    self.log(f"  round {round_no} {name:5}: interactive {percentiles(phase.latencies_ms)} "
                             f"models {phase.models} "
                             f"statuses {phase.statuses} cpu {phase.cpu_s:.1f} s / {phase.wall_s:.1f} s"
                             + (f"\n    backfill {phase.backfill}" if phase.backfill else "")
                             + "\n    slowest 2 %, queue/service ms by stage: "
                             + ", ".join(f"{stage} {row.get('slow_queue_ms', 0):g}/{row.get('slow_service_ms', 0):g}"
                                         for stage, row in phase.stages.items() if stage != "slowest")
                             + f"\n    slowest: {phase.stages.get('slowest', [])}")
        finally:
            await self.backfill.stop()
            await self.interactive.stop()
            await self.collector.stop()
            await self.system.stop()
            await self.system.delete_topics()
        return self._results(phases)

    async def _warm_up(self) -> None:
        n = self.opts.warmup
        first = self._prompts(2 * n)
        items = [request(f"{self.run_id}wi", i, tenant=self.tenant, prompt_index=first + i, tier=Tier.INTERACTIVE)
                 for i in range(n)]
        batch = [request(f"{self.run_id}wb", i, tenant=self.tenant, prompt_index=first + n + i, tier=Tier.BATCH)
                 for i in range(n)]
        await self.interactive.burst(self.topo.ingress(Tier.INTERACTIVE), items)
        await self.backfill.burst(self.topo.ingress(Tier.BATCH), batch)
        ids = [rid for rid, _ in items + batch]
        missing = await self.collector.wait_for(self.system.output, ids, 180, check=self.system.check)
        if missing:
            raise TimeoutError(f"{missing} of {len(ids)} warm-up requests never came out")

    def _round_prompts(self, round_no: int) -> dict[str, list[int]]:
        """The interactive prompts of a round's two phases (:func:`paired_prompts`)."""
        count = max(1, round(self.opts.rate * self.opts.seconds))
        alone, flood = paired_prompts(self._prompts(2 * count), count, f"{self.run_id}-{round_no}")
        return {"alone": alone, "flood": flood}

    async def _phase(self, name: str, round_no: int, prompts: list[int]) -> Phase:
        run = f"{self.run_id}{name[0]}{round_no}"
        # A tenant per phase, and another for the flood: the semantic cache's work grows with the tenant's entries,
        # and a later phase must not look slower only because earlier phases filled the same tenant's cache.
        tenant, flood_tenant = f"{self.tenant}-{name}{round_no}", f"{self.tenant}-backfill{round_no}"
        items: list[tuple[str, bytes]] = []
        if name == "flood":  # encoded before the clock starts: a few ms of the harness's CPU each
            first = self._prompts(self.opts.flood)
            items = [request(f"{run}b", i, tenant=flood_tenant, prompt_index=first + i, tier=Tier.BATCH)
                     for i in range(self.opts.flood)]
        flood_ids = [rid for rid, _ in items]
        pids = self.system.pids()
        cpu_before = cpu_seconds(pids)
        started_ns = time.time_ns()
        flood = asyncio.create_task(self._flood(items)) if items else None
        scheduled = await self.interactive.open_loop(
            self.topo.ingress(Tier.INTERACTIVE), f"{run}i", self.opts.rate, self.opts.seconds, tenant=tenant,
            prompts=prompts, tier=Tier.INTERACTIVE)
        flood_started_ns = await flood if flood is not None else 0
        missing = await self.collector.wait_for(self.system.output, scheduled, 120, check=self.system.check)
        arrived = self.collector.arrivals[self.system.output].at_ns
        ids = list(scheduled)
        ended_ns = max((arrived[rid] for rid in ids if rid in arrived), default=time.time_ns())
        cpu_s = cpu_seconds(pids) - cpu_before
        wall_s = (ended_ns - started_ns) / 1e9
        # Responses may trail the audit records by a poll; the statuses are read once both are in.
        await self.collector.wait_for(self.topo.responses, ids, 30, check=self.system.check)
        latencies = {rid: (arrived[rid] - at_ns) / 1e6 for rid, at_ns in scheduled.items() if rid in arrived}
        models = Counter(orjson.loads(raw).get("model") for rid in ids
                         if (raw := self.collector.arrivals[self.topo.responses].values.get(rid)))
        phase = Phase(name, round_no, list(latencies.values()),
                      statuses(self.collector, self.topo.responses, ids), missing, wall_s, cpu_s,
                      stage_profile(self.collector, self.system.output, ids, latencies,
                                    self.topo.responses))
        phase.models = dict(models)
        if flood_ids:
            phase.backfill = await self._drain(flood_ids, flood_started_ns=flood_started_ns, last_ns=ended_ns)
        return phase

    async def _flood(self, items: list[tuple[str, bytes]]) -> int:
        # A backfill job starting while interactive traffic flows, as it would in production: the open loop has run
        # for a moment when the whole job lands on the batch lane.
        await asyncio.sleep(FLOOD_DELAY_S)
        return await self.backfill.burst(self.topo.ingress(Tier.BATCH), items)

    async def _drain(self, ids: list[str], *, flood_started_ns: int, last_ns: int) -> dict[str, Any]:
        """How much of the flood came out while interactive traffic flowed, then how fast the rest did without it."""
        arrived = self.collector.arrivals[self.system.output].at_ns
        during = sum(1 for rid in ids if arrived.get(rid, last_ns + 1) <= last_ns)
        left = len(ids) - during
        cpu_before = cpu_seconds(self.system.pids())
        drain_start_ns = time.time_ns()
        missing = await self.collector.wait_for(self.system.output, ids, max(300.0, len(ids) / 10),
                                                check=self.system.check)
        done_ns = max((arrived[rid] for rid in ids if rid in arrived), default=drain_start_ns)
        drain_s = max(1e-9, (done_ns - max(last_ns, drain_start_ns - 1)) / 1e9)
        cpu_s = cpu_seconds(self.system.pids()) - cpu_before
        await self.collector.wait_for(self.topo.responses, ids, 60, check=self.system.check)
        with_interactive_s = max(1e-9, (last_ns - flood_started_ns) / 1e9)
        return {"requests": len(ids), "done_with_interactive": during, "left_after_interactive": left,
                "missing": missing,
                "req_per_s_with_interactive": round(during / with_interactive_s, 1),
                "req_per_s_alone": round((left - missing) / drain_s, 1) if left > missing else None,
                "drain_s": round(drain_s, 2), "drain_cpu_s": round(cpu_s, 2),
                "statuses": statuses(self.collector, self.topo.responses, ids)}

    def _results(self, phases: list[Phase]) -> dict[str, Any]:
        alone = [p for p in phases if p.name == "alone"]
        flood = [p for p in phases if p.name == "flood"]
        pool_a = percentiles([ms for p in alone for ms in p.latencies_ms])
        pool_b = percentiles([ms for p in flood for ms in p.latencies_ms])
        bad = {s: n for p in alone + flood for s, n in p.statuses.items() if s != "ok"}
        bad_note = f"not ok: {bad}" if bad else ""
        rate = f"{self.opts.rate:g} req/s"
        rows: list[dict[str, Any]] = [
            _row(f"interactive p50 alone @ {rate}", pool_a.get("p50_ms"), "ms"),
            _row(f"interactive p99 alone @ {rate}", pool_a.get("p99_ms"), "ms"),
            _row(f"interactive p50 during a {self.opts.flood}-request backfill flood", pool_b.get("p50_ms"), "ms",
                 baseline=pool_a.get("p50_ms"), baseline_name="alone"),
            _row(f"interactive p99 during a {self.opts.flood}-request backfill flood", pool_b.get("p99_ms"), "ms",
                 baseline=pool_a.get("p99_ms"), baseline_name="alone", target=f"≤ {TARGET_RATIO}× alone",
                 max_ratio=TARGET_RATIO, ok=not bad, note=bad_note),
        ]
        round_ratios = []
        for a, b in zip(alone, flood, strict=True):
            pa, pb = percentiles(a.latencies_ms), percentiles(b.latencies_ms)
            rows.append(_row(f"round {a.round}: interactive p99 flood vs alone", pb.get("p99_ms"), "ms",
                             baseline=pa.get("p99_ms"), baseline_name=f"alone, round {a.round}"))
            if pa.get("p99_ms") and pb.get("p99_ms"):
                round_ratios.append(pb["p99_ms"] / pa["p99_ms"])
        if round_ratios:
            # Each flood phase against the alone phase just before it: robust to the machine's drift over the run.
            rows.append(_row("median of the rounds' p99 ratios (flood / alone)", round(float(np.median(round_ratios)),
                             3), "×", note=f"rounds: {', '.join(f'{r:.2f}' for r in round_ratios)}"))
        with_interactive = [p.backfill["req_per_s_with_interactive"] for p in flood]
        drained = [p.backfill["req_per_s_alone"] for p in flood if p.backfill.get("req_per_s_alone")]
        idle = round(float(np.mean(drained)), 1) if drained else None
        during = round(float(np.mean(with_interactive)), 1)
        rows.append(_row("backfill throughput while interactive traffic flows", during, "req/s", baseline=idle,
                         baseline_name="backfill with interactive idle", note="> 0: held back, not starved"))
        rows.append(_row("backfill throughput with interactive idle", idle, "req/s"))
        cores_a = sum(p.cpu_s for p in alone) / max(1e-9, sum(p.wall_s for p in alone))
        cores_b = sum(p.cpu_s for p in flood) / max(1e-9, sum(p.wall_s for p in flood))
        rows.append(_row("pipeline CPU during the flood phases", round(cores_b, 2), "cores", baseline=round(cores_a, 2),
                         baseline_name="alone phases"))
        return {"options": {"rate_per_s": self.opts.rate, "seconds": self.opts.seconds, "rounds": self.opts.rounds,
                            "flood": self.opts.flood, "latency_scale": self.opts.latency_scale,
                            "processes": self.opts.processes, "partitions": self.opts.partitions,
                            "overrides": self.opts.overrides},
                "pooled": {"alone": pool_a, "flood": pool_b}, "phases": [p.summary() for p in phases],
                "rows": rows}


def paired_prompts(first: int, count: int, seed: str) -> tuple[list[int], list[int]]:
    """Two phases' prompts from one block of ``2 × count``: each consecutive pair split between them by a seeded coin.

    The bench's prompts are not alike along the index — which model the calibrated router picks comes in runs of a
    hundred prompts and more (blocks of 200 alternate between 0 and 20 prompts for a medium model, ~1 s calls) — and
    phases of consecutive ranges compared different workloads: every alone phase drew a block without medium-model
    prompts and every flood phase one with them, which alone made the ratio ~2.3× (the slowest requests' models
    showed it). Paired, both phases get the same mix of models."""
    coin = random.Random(seed)
    alone: list[int] = []
    flood: list[int] = []
    for pair in range(count):
        a, b = first + 2 * pair, first + 2 * pair + 1
        if coin.random() < 0.5:
            a, b = b, a
        alone.append(a)
        flood.append(b)
    return alone, flood


def _row(figure: str, value: float | None, unit: str, *, baseline: float | None = None, baseline_name: str = "",
         target: str = "", max_ratio: float | None = None, ok: bool = True, note: str = "") -> dict[str, Any]:
    ratio = round(value / baseline, 3) if value is not None and baseline else None
    verdict = None if max_ratio is None else (ok and ratio is not None and ratio <= max_ratio)
    return {"figure": figure, "value": value, "unit": unit, "baseline": baseline, "baseline_name": baseline_name,
            "ratio": ratio, "target": target, "pass": verdict, "note": note}


def parse_args(argv: list[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=Options.rate, help="interactive open-loop rate (req/s)")
    parser.add_argument("--seconds", type=float, default=Options.seconds, help="length of each phase's open loop")
    parser.add_argument("--rounds", type=int, default=Options.rounds, help="(alone, flood) pairs")
    parser.add_argument("--flood", type=int, default=Options.flood, help="batch-tier requests per flood")
    parser.add_argument("--latency-scale", type=float, default=Options.latency_scale,
                        help="TOLLWAY_MODEL_LATENCY_SCALE of the pipeline (1: the catalog's profile)")
    parser.add_argument("--processes", type=int, choices=(1, 6), default=Options.processes)
    parser.add_argument("--partitions", type=int, default=Options.partitions)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Settings override for the pipeline, e.g. --set lane_batch_quota=8")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    opts = Options(rate=args.rate, seconds=args.seconds, rounds=args.rounds, flood=args.flood,
                   latency_scale=args.latency_scale, processes=args.processes, partitions=args.partitions,
                   overrides=overrides, quiet=args.json)
    return opts, args.json


def main(argv: list[str] | None = None) -> None:
    opts, as_json = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C does: through the atexit hook that stops every worker this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(message: str) -> None:
        print(message, file=sys.stderr if as_json else sys.stdout, flush=True)

    log(f"· lanes: {opts.rounds} × (alone, flood of {opts.flood}) at {opts.rate:g} req/s for {opts.seconds:g} s, "
        f"model latency × {opts.latency_scale:g}, {opts.processes} process(es)")

    async def bench() -> dict[str, Any]:
        return await LanesBench(opts, log).run()  # aiokafka clients must be built inside the loop

    results = asyncio.run(bench())
    if not as_json:
        for row in results["rows"]:
            ratio = f"  {row['ratio']:.2f}× {row['baseline_name']}" if row["ratio"] is not None else ""
            verdict = {True: "  PASS", False: "  FAIL", None: ""}[row["pass"]]
            log(f"{row['figure']:<66} {row['value']!s:>9} {row['unit']:<6}{ratio}{verdict}")
    print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
