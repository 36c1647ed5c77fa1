"""The capacity model: measured CPU per record per stage → replicas, partitions, KEDA thresholds, brokers and disk.

Every input is a figure measured on this repository (the sources are named beside each); every output is arithmetic
on them, so docs/CAPACITY.md, the KEDA thresholds and the partition counts in ``deploy/k8s/base/generated`` come from
one table. ``python -m deploy.k8s.capacity`` prints the tables of docs/CAPACITY.md and the KEDA ramp.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from schemas.envelope import DEFAULT_ROUTE, STAGES

# `python -m bench.micro --json` (batch 200, minimum of 7 repetitions, process CPU time): µs of CPU per record of the
# runner with each stage's real `process` on in-memory backends, no broker.
MICRO_US: dict[str, float] = {"retrieval": 39.12, "policy": 41.62, "cache": 72.62, "model": 340.17,
                              "postprocess": 186.59, "audit": 144.45,
                              "tools": 60.0}  # tools: estimated (one built-in call), not measured
# `make bench` at ab63e69 (bench/results/make-bench-ab63e69.md), scenario 2: 3.68 ms of CPU per request across the six
# stages with the real broker and Redis. Kept as the planning figure: later runs measured 1.8–2.4 ms (README
# "Benchmarks"), so the plan errs on the side of more replicas.
END_TO_END_CPU_US = 3680.0
# The same scenario, one process per stage on 2 cores: 400 req/s (the model predicts it: see check_against_bench).
MEASURED_PER_STAGE_LAYOUT_RPS = 400.0
# Bytes per request on each topic, measured with streams.testing.run_pipeline over 200 bench requests (bench.load).
BYTES_PER_REQUEST: dict[str, int] = {"ingress": 743, "policy": 1107, "cache": 1669, "model": 2099, "tools": 0,
                                     "postprocess": 3220, "audit": 3698, "responses": 1328, "audit.log": 2878}
# Retention (days) per topic as streams/runtime/topics.py creates them; None = kept forever (audit evidence).
RETENTION_DAYS: dict[str, float | None] = {"ingress": 7, "policy": 7, "cache": 7, "model": 7, "tools": 7,
                                           "postprocess": 7,
                                           "audit": 7, "responses": 7, "audit.log": None}

TARGET_UTILISATION = 0.6  # a replica is sized to run at 60 % of a core: headroom for bursts and rebalances
INTERACTIVE_BUDGET_MS = 2_000  # streams/settings.py budget_interactive_ms
QUEUE_SHARE_OF_ALLOCATION = 0.5  # half a stage's budget share may be queueing, the other half is service
BATCH_CYCLE_S = 0.05  # poll → process → acks=all produce → commit, across zones (in-flight, uncommitted records)
REPLICATION_FACTOR = 3
ASSUMED_COMPRESSION = 3.0  # zstd on real text; the synthetic bench prompts compress 23× (zlib), so this is a guess
BROKER_WRITE_MB_S = 60.0  # sustained replicated write per broker we plan for (network + disk, one NVMe volume)


def hop_overhead_us() -> float:
    """Per-hop Kafka client + Redis client CPU: what the end-to-end measure adds to the broker-less one, per hop."""
    default = [MICRO_US[stage] for stage in DEFAULT_ROUTE]
    return (END_TO_END_CPU_US - sum(default)) / len(DEFAULT_ROUTE)


def cpu_us(stage: str) -> float:
    return MICRO_US[stage] + hop_overhead_us()


def replica_rps(stage: str) -> float:
    """Records per second one replica (one Python process, one core) sustains at the target utilisation."""
    return TARGET_UTILISATION * 1e6 / cpu_us(stage)


def check_against_bench(cores: float = 2.0) -> float:
    """Predicted throughput of the bench's one-process-per-stage layout on ``cores`` cores shared evenly."""
    return min(cores / len(STAGES) * 1e6 / cpu_us(stage) for stage in STAGES)


def lag_threshold(stage: str, shares: dict[str, float] | None = None) -> int:
    """KEDA's lagThreshold (records per replica): what one replica drains within its queue allowance, but never
    below twice the records a healthy replica holds uncommitted (KEDA reads committed offsets: in-flight records
    look like lag)."""
    from workers.budgets import DEFAULT_SHARES

    table = shares or dict(DEFAULT_SHARES)
    share = table.get(stage, table["model"])  # the tools stage runs inside the model's share (model → tools → model)
    allowance_s = INTERACTIVE_BUDGET_MS / 1000 * share * QUEUE_SHARE_OF_ALLOCATION
    rate = replica_rps(stage)
    return int(round(max(rate * allowance_s, 2 * rate * BATCH_CYCLE_S), -1))


def replicas_for(stage: str, rps: float) -> int:
    return max(1, math.ceil(rps / replica_rps(stage)))


def partitions_for(rps: float) -> int:
    """Partitions per work topic: twice the busiest stage's replicas at ``rps`` (room to grow without adding
    partitions, which would move keys), rounded up to a multiple of 12 (even over 3, 4 or 6 brokers)."""
    busiest = max(replicas_for(stage, rps) for stage in STAGES)
    return max(12, 12 * math.ceil(2 * busiest / 12))


@dataclass(frozen=True)
class Storage:
    write_mb_s: float  # produced, before replication
    retained_tb: float  # bounded-retention topics, all replicas
    forever_gb_per_day: float  # audit log growth, all replicas
    brokers: int


def storage_for(rps: float, compression: float = 1.0) -> Storage:
    produced = sum(BYTES_PER_REQUEST.values()) * rps / compression
    retained = sum(BYTES_PER_REQUEST[t] * rps * days * 86_400 for t, days in RETENTION_DAYS.items() if days)
    forever = sum(BYTES_PER_REQUEST[t] * rps * 86_400 for t, days in RETENTION_DAYS.items() if days is None)
    replicated_mb_s = produced * REPLICATION_FACTOR / 1e6
    return Storage(write_mb_s=produced / 1e6, retained_tb=retained * REPLICATION_FACTOR / compression / 1e12,
                   forever_gb_per_day=forever * REPLICATION_FACTOR / compression / 1e9,
                   brokers=max(3, math.ceil(replicated_mb_s / BROKER_WRITE_MB_S)))


def keda_ramp(stage: str, *, start_rps: float, end_rps: float, ramp_s: int, max_replicas: int, min_replicas: int = 1,
              polling_s: int = 15, startup_s: int = 20, step_s: int = 1) -> Iterator[tuple[int, float, int, float]]:
    """(second, arrival rate, ready replicas, lag) on a linear traffic ramp. Every ``polling_s`` the ScaledObject
    wants max(ceil(lag / lagThreshold), ceil(cpu / 60 %)) replicas (its two triggers; the HPA takes the larger), new
    pods are ready ``startup_s`` later, and each scale event pauses the whole group ~3 s (aiokafka's eager
    rebalance: every member gives up its partitions)."""
    threshold, per_replica = lag_threshold(stage), replica_rps(stage) / TARGET_UTILISATION
    ready, lag, paused_until = min_replicas, 0.0, -1
    pending: list[tuple[int, int]] = []
    for t in range(0, ramp_s * 2, step_s):
        rate = start_rps + (end_rps - start_rps) * min(1.0, t / ramp_s)
        pending_ready = [p for p in pending if p[0] <= t]
        for _at, count in pending_ready:
            ready, paused_until = count, t + 3  # the rebalance pauses consumption ~3 s
        pending = [p for p in pending if p[0] > t]
        drained = 0.0 if t < paused_until else ready * per_replica * step_s
        lag = max(0.0, lag + rate * step_s - drained)
        if t % polling_s == 0:
            by_cpu = math.ceil(rate / replica_rps(stage))
            desired = min(max_replicas, max(min_replicas, math.ceil(lag / threshold), by_cpu))
            target = max(desired, ready)  # scale-down is slow (cooldown); the ramp only goes up
            if target > ready and not pending:
                pending.append((t + startup_s, target))
        yield t, rate, ready, lag


def _table() -> Iterator[str]:
    yield "| stage | CPU µs/record (micro + hop) | replica rps @60 % | lagThreshold | 1k | 10k | 100k req/s |"
    yield "|---|---:|---:|---:|---:|---:|---:|"
    for stage in STAGES:
        yield (f"| {stage} | {MICRO_US[stage]:.0f} + {hop_overhead_us():.0f} = {cpu_us(stage):.0f} | "
               f"{replica_rps(stage):,.0f} | {lag_threshold(stage)} | {replicas_for(stage, 1e3)} | "
               f"{replicas_for(stage, 1e4)} | {replicas_for(stage, 1e5)} |")
    yield ""
    yield ("| req/s | partitions per work topic | brokers (raw / zstd 3×) | write MB/s (raw) | 7-day topics TB "
           "(raw / 3×) | audit log GB/day (raw / 3×) |")
    yield "|---:|---:|---:|---:|---:|---:|"
    for rps in (1e3, 1e4, 1e5):
        raw, packed = storage_for(rps), storage_for(rps, ASSUMED_COMPRESSION)
        yield (f"| {rps:,.0f} | {partitions_for(rps)} | {raw.brokers} / {packed.brokers} | {raw.write_mb_s:,.1f} | "
               f"{raw.retained_tb:,.1f} / {packed.retained_tb:,.1f} | {raw.forever_gb_per_day:,.0f} / "
               f"{packed.forever_gb_per_day:,.0f} |")


def main() -> None:
    print(f"per-hop client overhead {hop_overhead_us():.0f} µs; predicted bench layout "
          f"{check_against_bench():.0f} req/s vs measured {MEASURED_PER_STAGE_LAYOUT_RPS:.0f}")
    print("\n".join(_table()))
    print("\nKEDA ramp, model stage, 100 → 5,000 req/s over 300 s, max 24 replicas:")
    print("| s | req/s | ready replicas | CPU per replica | lag (records) | queue (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    full = replica_rps("model") / TARGET_UTILISATION
    ramp = list(keda_ramp("model", start_rps=100, end_rps=5_000, ramp_s=300, max_replicas=24))
    events = sum(1 for a, b in pairwise(ramp) if a[2] != b[2])
    worst = max(ramp, key=lambda row: row[3])
    for t, rate, ready, lag in ramp:
        if t % 30 == 0 and t <= 420:
            print(f"| {t} | {rate:,.0f} | {ready} | {min(1.0, rate / (ready * full)):.0%} | {lag:,.0f} | "
                  f"{1000 * lag / (ready * full):,.0f} |")
    print(f"\n{events} scale events; the largest lag {worst[3]:,.0f} records at {worst[0]} s "
          f"({worst[2]} replicas, {worst[1]:,.0f} req/s), drained in "
          f"{worst[3] / (worst[2] * full - worst[1]):.1f} s after the pause")


if __name__ == "__main__":
    main()
