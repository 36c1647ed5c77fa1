"""``make bench``: every scenario, each figure next to a baseline measured in the same run.

1. physical limit   the raw relay (bench/relay.py): req/s through six hops, closed loop (a burst of N requests);
2. max throughput   the six-stage pipeline, same N, same broker, model latency 0 — target ≥ 0.5× the relay, in one
                    process and in one process per stage (each against the relay in the same layout); next to it
                    the same runners with pass-through stages (bench/passthrough.py), to tell the shell's cost from
                    the stages', and the CPU per record of each without the broker (bench/micro.py);
3. overhead latency open loop at fixed rates: end-to-end (ingress → sixth hop's output) minus the model's service
                    time, p50/p99, next to the relay's — target p50 ≤ 10 ms and p99 ≤ 1.5× the relay's at 100 req/s;
4–7.                cache, lanes, economics, memory: other areas' modules, run when present (see bench/__init__.py).

Every system runs in its own process(es) (bench/systems.py); the loader and the collector run here. CPU per request
(the systems' own CPU time over the burst) is reported beside every throughput: on a shared machine it moves far less
than wall-clock figures do. Writes bench/results/latest.json and latest.md (and latest.png with matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.load import Collector, Loader, percentiles, request, statuses
from bench.report import Row, write_results
from bench.systems import System, cpu_seconds
from streams.settings import REPO_ROOT, Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"

# Scenarios 4–7 live in other areas' modules, each run when its file exists as ``python -m bench.<module> <args>``.
# The first module found for a scenario runs; scenario 7 (peak RSS) is one of cache_bench's rows.
EXTRA_SCENARIOS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("4_cache", (("cache_bench", ("--json",)),)),
    ("5_lanes", (("lanes_bench", ("--json",)), ("lanes", ("--json",)))),
    ("6_economics", (("economics_bench", ("--json",)), ("economics", ("--json",)))),
    ("model", (("model_bench", ("--json",)),)),
)
# Other areas' benches that run on request only (--extras all): long, or without a JSON result.
MORE_EXTRAS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("ingress", (("ingress_bench", ()),)),
    ("gateway_overhead", (("gateway_bench", ()),)),  # needs `make litellm-venv`
    ("kafka_client", (("kafka_client_bench", ()),)),  # aiokafka vs librdkafka
    ("policy", (("policy_bench", ()),)),
    ("pii", (("pii_eval", ()),)),
    ("injection", (("injection_eval", ()),)),
    ("audit_verify", (("audit_verify_bench", ()),)),
)

# The local model at zero latency: the pipeline's own cost is what scenarios 2 and 3 measure.
MODEL_ZERO_LATENCY_ENV = {"TOLLWAY_MODEL_LATENCY_SCALE": "0"}


@dataclass
class Options:
    requests: int = 20_000
    warmup: int = 300
    rates: tuple[float, ...] = (10.0, 50.0, 100.0)
    rate_seconds: float = 10.0
    layouts: tuple[int, ...] = (1, 6)
    latency_layouts: tuple[int, ...] = (1, 6)
    partitions: int = 4
    extras: str = "scenarios"  # none | scenarios (4–7) | all (every other area's bench too)
    out_dir: Path = RESULTS_DIR
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    profile: bool = False
    systems: tuple[str, ...] = ("floor", "relay", "shell", "tollway", "colocated")
    micro: bool = True
    micro_batch: int = 200
    micro_repeat: int = 7


def _settings(kind: str, opts: Options) -> Settings:
    prefix = f"bench{kind[0]}{uuid.uuid4().hex[:8]}"
    return Settings(topic_prefix=prefix, partitions=opts.partitions, **opts.settings_overrides)


async def measure(system: System, opts: Options, *, latency: bool) -> dict[str, Any]:
    """Start a system, warm it, push a burst through it, then (optionally) the open-loop rates."""
    out: dict[str, Any] = {"system": system.name}
    bootstrap = system.settings.bootstrap_servers
    extra = [system.responses, system.deadletter] if system.responses and system.deadletter else []
    collector = Collector(bootstrap, [system.output, *extra], keep_values=extra)
    loader = Loader(bootstrap)
    await system.start()
    try:
        await collector.start()
        await loader.start()
        run = uuid.uuid4().hex[:6]
        tenant = f"bench-{run}"  # a fresh tenant: nothing cached, no budget or rate limit shared with anyone
        # Warm-up: every consumer group joined, every connection open, before anything is timed.
        warm = [request(f"{run}w", i, tenant=tenant) for i in range(opts.warmup)]
        await loader.burst(system.ingress, warm)
        def healthy() -> None:
            system.check()
            if system.deadletter and collector.arrivals[system.deadletter].at_ns:
                letter = orjson.loads(next(iter(collector.arrivals[system.deadletter].values.values())))
                raise RuntimeError(f"{system.name} dead-lettered a request: {letter.get('reason')}: "
                                   f"{str(letter.get('error'))[:300]}")

        missing = await collector.wait_for(system.output, [rid for rid, _ in warm], 180, check=healthy)
        if missing:
            raise TimeoutError(f"{system.name}: {missing} of {len(warm)} warm-up requests never came out")

        items = [request(f"{run}b", i, tenant=tenant, prompt_index=opts.warmup + i) for i in range(opts.requests)]
        ids = [rid for rid, _ in items]
        cpu_before = cpu_seconds(system.pids())
        started_ns = await loader.burst(system.ingress, items)
        sent_s = (time.time_ns() - started_ns) / 1e9
        missing = await collector.wait_for(system.output, ids, max(120.0, opts.requests / 20), check=healthy)
        cpu_s = cpu_seconds(system.pids()) - cpu_before
        arrived = collector.arrivals[system.output].at_ns
        done_ns = max((arrived[rid] for rid in ids if rid in arrived), default=started_ns)
        elapsed_s = max(1e-9, (done_ns - started_ns) / 1e9)
        delivered = len(ids) - missing
        out["throughput"] = {
            "requests": len(ids), "delivered": delivered, "seconds": round(elapsed_s, 3),
            "req_per_s": round(delivered / elapsed_s, 1), "loader_seconds": round(sent_s, 3),
            "cpu_seconds": round(cpu_s, 3), "cpu_ms_per_request": round(1000 * cpu_s / max(1, delivered), 4),
        }
        if system.responses:
            out["throughput"]["statuses"] = statuses(collector, system.responses, ids)
            out["throughput"]["stages"] = _stage_profile(collector, system.responses, ids)
        if latency:
            out["latency"] = {}
            first_prompt = opts.warmup + opts.requests
            for rate in opts.rates:
                out["latency"][f"{rate:g}"] = await _open_loop(system, collector, loader, opts, rate,
                                                               f"{run}r{rate:g}", tenant, first_prompt)
                first_prompt += out["latency"][f"{rate:g}"]["sent"]
    finally:
        await loader.stop()
        await collector.stop()
        await system.stop()
        await system.delete_topics()
    return out


async def _open_loop(system: System, collector: Collector, loader: Loader, opts: Options, rate: float,
                     run: str, tenant: str, first_prompt: int) -> dict[str, Any]:
    cpu_before = cpu_seconds(system.pids())
    scheduled = await loader.open_loop(system.ingress, run, rate, opts.rate_seconds, tenant=tenant,
                                       first_prompt=first_prompt)
    missing = await collector.wait_for(system.output, scheduled, 60, check=system.check)
    cpu_s = cpu_seconds(system.pids()) - cpu_before  # the systems' CPU over the round (idle polling included)
    arrived = collector.arrivals[system.output].at_ns
    end_to_end, overhead, response_ms, model_ms = [], [], [], []
    responses = collector.arrivals[system.responses] if system.responses else None
    for rid, at_ns in scheduled.items():
        if rid not in arrived:
            continue
        e2e = (arrived[rid] - at_ns) / 1e6
        service = 0.0
        if responses is not None and rid in responses.values:
            hops = orjson.loads(responses.values[rid]).get("hops") or []
            service = sum(float(h.get("service_ms", 0.0)) for h in hops if h.get("stage") == "model")
            response_ms.append((responses.at_ns[rid] - at_ns) / 1e6)
            model_ms.append(service)
        end_to_end.append(e2e)
        overhead.append(e2e - service)
    result: dict[str, Any] = {"rate_per_s": rate, "sent": len(scheduled), "missing": missing,
                              "overhead": percentiles(overhead), "end_to_end": percentiles(end_to_end),
                              "cpu_ms_per_request": round(1000 * cpu_s / max(1, len(end_to_end)), 3)}
    if response_ms:
        result["to_response"] = percentiles(response_ms)
        result["model_service"] = percentiles(model_ms)
        result["stages"] = _stage_profile(collector, system.responses, list(scheduled)) if system.responses else {}
    return result


def _stage_profile(collector: Collector, topic: str, ids: list[str]) -> dict[str, dict[str, float]]:
    """Per stage, from the responses' hops: mean batch size, mean queue and service ms — where the time went."""
    sums: dict[str, list[float]] = {}
    values = collector.arrivals[topic].values
    for rid in ids:
        raw = values.get(rid)
        for hop in (orjson.loads(raw).get("hops") or []) if raw else []:
            acc = sums.setdefault(hop["stage"], [0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += hop.get("batch_size", 0)
            acc[2] += hop.get("queue_ms", 0.0)
            acc[3] += hop.get("service_ms", 0.0)
    return {stage: {"mean_batch": round(b / n, 1), "mean_queue_ms": round(q / n, 1), "mean_service_ms": round(v / n, 1)}
            for stage, (n, b, q, v) in sums.items() if n}


def run_extra(module: str, args: tuple[str, ...], timeout_s: float = 900.0) -> dict[str, Any]:
    """``python -m bench.<module> <args>``; the last stdout line that parses as a JSON object is the result."""
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO_ROOT,
                              capture_output=True, timeout=timeout_s, check=False,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    except subprocess.TimeoutExpired:
        return {"module": module, "error": f"timed out after {timeout_s:.0f} s"}
    result: dict[str, Any] = {"module": module, "exit_code": proc.returncode,
                              "seconds": round(time.monotonic() - started, 1)}
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            result["result"] = parsed
            break
    if "result" not in result:
        result["error"] = (proc.stderr or proc.stdout).decode(errors="replace")[-1500:]
    return result


async def run_all(opts: Options, log: Any = print) -> dict[str, Any]:
    started = time.time()
    results: dict[str, Any] = {
        "run": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg()), "git": _git_head(), "requests": opts.requests,
            "partitions": opts.partitions, "rates_per_s": list(opts.rates), "rate_seconds": opts.rate_seconds,
            "settings": {k: v for k, v in Settings(**opts.settings_overrides).model_dump(mode="json").items()
                         if k.startswith(("batch_", "producer_", "max_message", "kafka_client"))},
        },
        "scenarios": {},
    }
    measured: dict[tuple[str, int], dict[str, Any]] = {}
    for processes in opts.layouts:
        for kind in opts.systems:
            env = {f"TOLLWAY_{k.upper()}": str(v) for k, v in opts.settings_overrides.items()}
            if kind in ("tollway", "colocated"):
                env.update(MODEL_ZERO_LATENCY_ENV)
            system = System(kind, processes, _settings(kind, opts), extra_env=env, profile=opts.profile)
            log(f"· {system.name}: {opts.requests} requests" +
                (f", then {', '.join(f'{r:g}' for r in opts.rates)} req/s" if processes in opts.latency_layouts
                 else ""))
            try:
                measured[(kind, processes)] = await measure(system, opts,
                                                            latency=processes in opts.latency_layouts)
                log(f"  {measured[(kind, processes)]['throughput']}")
            except Exception as exc:  # one broken system must not lose the others' figures
                measured[(kind, processes)] = {"system": system.name, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  failed: {measured[(kind, processes)]['error']}")
    for kind in opts.systems:
        results["scenarios"][SCENARIO_OF[kind]] = {f"{p}p": measured[(kind, p)] for p in opts.layouts}
    if opts.micro:
        log("· CPU per record without the broker (bench/micro.py)")
        from bench import micro

        results["scenarios"]["2b_cpu_per_record"] = await micro.measure(opts.micro_batch, opts.micro_repeat)
    extras = {"none": (), "scenarios": EXTRA_SCENARIOS, "all": EXTRA_SCENARIOS + MORE_EXTRAS}[opts.extras]
    for scenario, candidates in extras:
        present = [(m, args) for m, args in candidates if importlib.util.find_spec(f"bench.{m}") is not None]
        if not present:
            results["scenarios"][scenario] = {"skipped": f"no bench/{candidates[0][0]}.py yet"}
            continue
        module, args = present[0]
        log(f"· {scenario}: python -m bench.{module} {' '.join(args)}")
        results["scenarios"][scenario] = run_extra(module, args)
    results["run"]["loadavg_end"] = list(os.getloadavg())
    results["run"]["seconds"] = round(time.time() - started, 1)
    results["rows"] = [row.as_dict() for row in rows(results)]
    return results


def _where(layout: str) -> str:
    processes = int(layout.rstrip("p"))
    return {0: "in the harness", 1: "1 process"}.get(processes, f"{processes} processes")


SCENARIO_OF = {"relay": "1_physical_limit", "tollway": "2_3_tollway", "shell": "2_3_shell", "floor": "0_floor",
               "colocated": "2_3_tollway_colocated"}
LABELS = {"tollway": "tollway", "shell": "tollway shell (pass-through stages)", "floor": "minimal aiokafka chain",
          "colocated": "tollway co-located (worker all+)"}


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    scenarios = results["scenarios"]
    for layout, relay in scenarios.get("1_physical_limit", {}).items():
        where = _where(layout)
        if "error" in relay:
            out.append(Row(f"relay ({where})", None, "", note=f"failed: {relay['error'][:200]}"))
            continue
        r = relay["throughput"]
        out.append(Row(f"relay throughput ({where})", r["req_per_s"], "req/s", target="the ceiling"))
        for kind in ("floor", "tollway", "colocated", "shell"):
            data = scenarios.get(SCENARIO_OF[kind], {}).get(layout)
            if data is None:
                continue
            label, gated = LABELS[kind], kind == "tollway"
            if "error" in data:
                out.append(Row(f"{label} ({where})", None, "", note=f"failed: {data['error'][:200]}"))
                continue
            t = data["throughput"]
            out.append(Row(f"{label} throughput ({where})", t["req_per_s"], "req/s", baseline=r["req_per_s"],
                           baseline_name=f"relay ({where})", target="≥ 0.5× relay" if gated else "",
                           min_ratio=0.5 if gated else None))
            out.append(Row(f"{label} CPU per request ({where})", t["cpu_ms_per_request"], "ms",
                           baseline=r["cpu_ms_per_request"], baseline_name=f"relay ({where})"))
            for rate, lat in data.get("latency", {}).items():
                base = relay.get("latency", {}).get(rate, {}).get("overhead", {})
                over = lat["overhead"]
                if not over.get("count") or not base.get("count"):
                    continue
                gate = gated and rate == "100"  # the targets are set at 100 req/s; other rates show the trend
                out.append(Row(f"{label} overhead p50 @ {rate} req/s ({where})", over["p50_ms"], "ms",
                               baseline=base["p50_ms"], baseline_name="relay p50", target="≤ 10 ms" if gate else "",
                               max_value=10.0 if gate else None))
                out.append(Row(f"{label} overhead p99 @ {rate} req/s ({where})", over["p99_ms"], "ms",
                               baseline=base["p99_ms"], baseline_name="relay p99",
                               target="≤ 1.5× relay" if gate else "", max_ratio=1.5 if gate else None))
                if lat.get("cpu_ms_per_request") is not None:
                    relay_cpu = relay.get("latency", {}).get(rate, {}).get("cpu_ms_per_request")
                    out.append(Row(f"{label} CPU per request @ {rate} req/s ({where})", lat["cpu_ms_per_request"],
                                   "ms", baseline=relay_cpu, baseline_name="relay",
                                   target="≤ 2.5 ms" if gate else "", max_value=2.5 if gate else None))
        out.extend(_hot_path_rows(scenarios, layout, where))
    micro = scenarios.get("2b_cpu_per_record")
    if micro and micro.get("total", {}).get("relay"):
        base = micro["total"]["relay"]
        out.append(Row("CPU per request, no broker: relay (6 hops)", base, "µs"))
        out.append(Row("CPU per request, no broker: runner shell", micro["total"]["runner"], "µs", baseline=base,
                       baseline_name="relay"))
        out.append(Row("CPU per request, no broker: runner + stages", micro["total"]["stages"], "µs",
                       baseline=base, baseline_name="relay"))
    for scenario, _ in EXTRA_SCENARIOS + MORE_EXTRAS:
        if scenario in scenarios:
            out.extend(_extra_rows(scenario, scenarios[scenario]))
    return out


def _hot_path_rows(scenarios: dict[str, Any], layout: str, where: str) -> list[Row]:
    """The hot-path targets (issue 18), each against a peer measured in this run: at 100 req/s p50 ≤ 2× and p99 ≤ 3×
    the minimal aiokafka chain's (the *floor*), the co-located route's overhead p50 ≤ 10 ms, CPU per request ≤ 1 ms
    at saturation, and no p99 cliff below saturation (p99 at 50 req/s ≤ 2× p99 at 10 req/s)."""
    out: list[Row] = []
    floor_data = scenarios.get(SCENARIO_OF["floor"], {}).get(layout, {})
    floor = floor_data.get("latency", {})
    # The floor awaits every send: in six processes it saturates near 150 req/s; a floor that queues flatters a ratio.
    floor_rate = floor_data.get("throughput", {}).get("req_per_s")
    caveat = (f"the floor saturates at {floor_rate:,.0f} req/s: it queues at 100 req/s"
              if floor_rate is not None and floor_rate < 200 else "")
    for kind in ("tollway", "colocated"):
        data = scenarios.get(SCENARIO_OF[kind], {}).get(layout)
        if not data or "error" in data:
            continue
        label, lat = LABELS[kind], data.get("latency", {})
        mine, peer = lat.get("100", {}).get("overhead", {}), floor.get("100", {}).get("overhead", {})
        if mine.get("count") and peer.get("count"):
            out.append(Row(f"{label} p50 @ 100 req/s ÷ floor's ({where})", mine["p50_ms"], "ms",
                           baseline=peer["p50_ms"], baseline_name="floor p50", target="≤ 2× floor", max_ratio=2.0,
                           note=caveat))
            out.append(Row(f"{label} p99 @ 100 req/s ÷ floor's ({where})", mine["p99_ms"], "ms",
                           baseline=peer["p99_ms"], baseline_name="floor p99", target="≤ 3× floor", max_ratio=3.0,
                           note=caveat))
            if kind == "colocated":
                out.append(Row(f"{label} overhead p50 @ 100 req/s ({where})", mine["p50_ms"], "ms",
                               target="≤ 10 ms", max_value=10.0))
        at10, at50 = lat.get("10", {}).get("overhead", {}), lat.get("50", {}).get("overhead", {})
        if at10.get("count") and at50.get("count"):
            out.append(Row(f"{label} p99 @ 50 req/s ÷ p99 @ 10 req/s, no cliff ({where})", at50["p99_ms"], "ms",
                           baseline=at10["p99_ms"], baseline_name="its p99 @ 10 req/s", target="≤ 2×",
                           max_ratio=2.0))
        cpu = data.get("throughput", {}).get("cpu_ms_per_request")
        if cpu is not None:
            out.append(Row(f"{label} CPU per request at saturation ({where})", cpu, "ms", target="≤ 1 ms",
                           max_value=1.0))
    return out


def _extra_rows(scenario: str, data: dict[str, Any]) -> list[Row]:
    if "skipped" in data:
        return [Row(scenario, None, "", target="", note=data["skipped"])]
    if "error" in data:
        return [Row(scenario, None, "", target="", note=f"error: {str(data['error']).strip().splitlines()[-1:]}")]
    found = data.get("result", {}).get("rows")
    if not isinstance(found, list):
        return [Row(scenario, None, "", target="", note="ran; no rows reported (see latest.json)")]
    # Scenario 7 (peak RSS of a worker holding 100k cache entries) is one of cache_bench's rows.
    return [Row.from_extra("7_memory" if "RSS" in str(row.get("figure")) else scenario, row)
            for row in found if isinstance(row, dict)]


def _git_head() -> str:
    if os.environ.get("BENCH_COMMIT"):  # a run from an exported tree (git archive) names the commit it came from
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError:
        return ""


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=Options.requests, help="burst size for scenarios 1–2")
    parser.add_argument("--warmup", type=int, default=Options.warmup)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in Options.rates),
                        help="open-loop rates (req/s) for scenario 3")
    parser.add_argument("--rate-seconds", type=float, default=Options.rate_seconds)
    parser.add_argument("--layouts", default="1,6", help="processes per system: 1 and/or 6")
    parser.add_argument("--latency-layouts", default=",".join(map(str, Options.latency_layouts)),
                        help="layouts that also run scenario 3")
    parser.add_argument("--no-extras", action="store_const", const="none", dest="extras", default="scenarios",
                        help="skip other areas' benches (scenarios 4–7)")
    parser.add_argument("--extras", choices=("none", "scenarios", "all"), default="scenarios",
                        help="scenarios: 4–7 when their modules exist; all: every other area's bench too")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Settings override for both systems, e.g. --set producer_linger_ms=5")
    parser.add_argument("--profile", action="store_true",
                        help="run the systems under cProfile (.prof files in .state/bench/)")
    parser.add_argument("--systems", default=",".join(Options.systems), help="which systems to run")
    parser.add_argument("--no-micro", action="store_true", help="skip the CPU-per-record micro benchmark")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    return Options(requests=args.requests, warmup=args.warmup,
                   rates=tuple(float(r) for r in args.rates.split(",") if r),
                   rate_seconds=args.rate_seconds, layouts=tuple(int(x) for x in args.layouts.split(",") if x),
                   latency_layouts=tuple(int(x) for x in args.latency_layouts.split(",") if x),
                   extras=args.extras, out_dir=args.out, settings_overrides=overrides,
                   profile=args.profile, systems=tuple(args.systems.split(",")), micro=not args.no_micro)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C does: through the atexit hook that stops every worker this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = asyncio.run(run_all(opts))
    paths = write_results(results, opts.out_dir)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
