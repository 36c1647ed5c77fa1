"""aiokafka vs librdkafka (confluent-kafka through bench/rdkafka_bridge.py) on the same loops, same run (issue 18).

    .venv/bin/python -m bench.kafka_client_bench --rounds 2 --requests 5000 --rates 10,100 --processes 1

Systems: the relay (bench/relay.py: six hops, batch in → batch out, acks awaited, commit) and the floor chain (one
record at a time, each send awaited), each on both clients; the four alternate per round (the order reversed every
other round) so a shared machine's drift falls on all alike. Per system bench/run.py's own ``measure``: a warm-up,
a burst of ``--requests`` (throughput, process CPU per message), then the open-loop ``--rates`` (end-to-end p50/p99
over six hops; per hop = ÷ 6). The broker's CPU over the whole measurement is reported per message apart.

Output: one JSON line per system and round, then a summary JSON line with ``rows`` for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from typing import Any

import orjson

from bench.gateway_bench import listener_pid, tree_cpu_s
from bench.relay import HOPS
from bench.run import MODEL_ZERO_LATENCY_ENV, Options, measure
from bench.systems import System
from streams.settings import Settings

CLIENTS = ("aiokafka", "librdkafka")
KINDS = ("relay", "floor", "tollway", "colocated")  # tollway: a process per stage; colocated: `worker all+`


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    opts = Options(requests=args.requests, warmup=args.warmup, rates=tuple(args.rates),
                   rate_seconds=args.rate_seconds, partitions=4, extras="none")
    combos = [(kind, client) for kind in args.kinds for client in CLIENTS]
    settings0 = Settings()
    broker = listener_pid(int(settings0.bootstrap_servers.rsplit(":", 1)[1]))
    results: list[dict[str, Any]] = []
    for k in range(args.rounds):
        for kind, client in (combos if k % 2 == 0 else combos[::-1]):
            settings = Settings(topic_prefix=f"kc{kind[0]}{client[0]}{uuid.uuid4().hex[:6]}", partitions=4)
            env = {"TOLLWAY_KAFKA_CLIENT": client,
                   **(MODEL_ZERO_LATENCY_ENV if kind in ("tollway", "colocated") else {})}
            system = System(kind, args.processes, settings, extra_env=env)
            broker_before = tree_cpu_s([broker]) if broker else 0.0
            try:
                out = await measure(system, opts, latency=True)
            except Exception as exc:  # one broken system must not lose the others' figures
                out = {"error": f"{type(exc).__name__}: {exc}"}
            broker_s = (tree_cpu_s([broker]) - broker_before) if broker else 0.0
            messages = args.warmup + args.requests + sum(int(r * args.rate_seconds) for r in args.rates)
            row = {"round": k, "kind": kind, "client": client, "processes": args.processes,
                   "broker_cpu_ms_per_request": round(broker_s * 1000 / messages, 3),
                   "loadavg": os.getloadavg()[0], **out}
            results.append(row)
            tp = out.get("throughput", {})
            lat = out.get("latency", {})
            print(f"# round {k} {kind:<5} {client:<10} {tp.get('req_per_s')} req/s  cpu {tp.get('cpu_ms_per_request')}"
                  f" ms/req  broker {row['broker_cpu_ms_per_request']} ms/req  " +
                  "  ".join(f"@{r}: p50 {v['end_to_end'].get('p50_ms')} p99 {v['end_to_end'].get('p99_ms')}"
                            for r, v in lat.items()) + f"  load {row['loadavg']:.1f} {out.get('error', '')}",
                  file=sys.stderr, flush=True)
    return results


def summarise(results: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    table: list[dict[str, Any]] = []
    for kind in KINDS:
        for client in CLIENTS:
            runs = [r for r in results if r["kind"] == kind and r["client"] == client and "throughput" in r]
            if not runs:
                continue
            entry: dict[str, Any] = {
                "kind": kind, "client": client, "rounds": len(runs),
                "req_per_s": [r["throughput"]["req_per_s"] for r in runs],
                "cpu_ms_per_request": [r["throughput"]["cpu_ms_per_request"] for r in runs],
                "broker_cpu_ms_per_request": [r["broker_cpu_ms_per_request"] for r in runs]}
            for rate in rates:
                key = f"{rate:g}"
                e2e = [r["latency"][key]["end_to_end"] for r in runs if key in r.get("latency", {})]
                entry[f"p50_ms@{key}"] = [round(e["p50_ms"], 2) for e in e2e if "p50_ms" in e]
                entry[f"p99_ms@{key}"] = [round(e["p99_ms"], 2) for e in e2e if "p99_ms" in e]
                entry[f"per_hop_p50_ms@{key}"] = round(statistics.median(entry[f"p50_ms@{key}"]) / HOPS, 2) \
                    if entry[f"p50_ms@{key}"] else None
            table.append(entry)
    rows = []
    by = {(e["kind"], e["client"]): e for e in table}
    for kind in KINDS:
        a, b = by.get((kind, "aiokafka")), by.get((kind, "librdkafka"))
        if not a or not b:
            continue
        med = statistics.median
        rows.append({"figure": f"{kind} on librdkafka: throughput", "value": med(b["req_per_s"]), "unit": "req/s",
                     "baseline": med(a["req_per_s"]), "baseline_name": f"{kind} on aiokafka",
                     "ratio": round(med(b["req_per_s"]) / med(a["req_per_s"]), 3), "target": None, "pass": None})
        rows.append({"figure": f"{kind} on librdkafka: process CPU per message", "value": med(b["cpu_ms_per_request"]),
                     "unit": "ms", "baseline": med(a["cpu_ms_per_request"]), "baseline_name": f"{kind} on aiokafka",
                     "ratio": round(med(b["cpu_ms_per_request"]) / med(a["cpu_ms_per_request"]), 3),
                     "target": None, "pass": None})
        for rate in rates:
            key = f"{rate:g}"
            if a[f"p50_ms@{key}"] and b[f"p50_ms@{key}"]:
                rows.append({"figure": f"{kind} on librdkafka: e2e p50 (6 hops) at {key} req/s",
                             "value": med(b[f"p50_ms@{key}"]), "unit": "ms", "baseline": med(a[f"p50_ms@{key}"]),
                             "baseline_name": f"{kind} on aiokafka",
                             "ratio": round(med(b[f"p50_ms@{key}"]) / med(a[f"p50_ms@{key}"]), 3),
                             "target": None, "pass": None})
    return {"table": table, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[10.0, 100.0])
    parser.add_argument("--rate-seconds", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=1, help="1: every hop in one process; 6: one per hop")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=["relay", "floor"],
                        help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--json", action="store_true", help="accepted for bench/run.py; the last line is JSON anyway")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    for row in results:
        print(orjson.dumps(row).decode())
    summary = summarise(results, args.rates)
    summary.update(rounds=args.rounds, requests=args.requests, processes=args.processes, loadavg=os.getloadavg())
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
