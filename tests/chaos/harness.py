"""Fault injection against real worker processes, and the reconciliation every scenario is judged by.

A scenario starts the pipeline as ``tollway worker`` subprocesses (one process per *group* of stages, so the stage
under fault runs alone and can be killed or cloned), sends a bounded load of requests to the ingress with an
idempotent producer, applies its fault while the load flows, waits until every accepted request has a response and
an audit record (bounded), then reads every output topic from the beginning and counts:

    accepted     requests whose produce Kafka acknowledged (the loader's own futures)
    terminal     accepted requests with at least one response on ``<prefix>.responses``
    dup resp     responses beyond the first per request, how many are identical to the first (the same bytes but
                 for the ``replay`` marker: a redelivered request is re-served its first response) and how many
                 say ``replay: true``
    audited      accepted requests with an audit record on ``<prefix>.audit.log``; double = more than one
    ledger       requests counted by the ledger (its own reader of the responses topic, dedup by request_id —
                 or the running Faust ledger worker where the scenario kills it) and its cost vs Σ audited cost
    dead letters records on ``<prefix>.deadletter``
    lost         accepted requests without a terminal response or without an audit record
    stall        (cluster scenarios) after the fault, the longest time no response came out while requests were in
                 flight — the time until traffic flowed again — and the p99 / max end-to-end latency of the run

Nothing here sleeps to synchronise: waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.load import BENCH_BUDGET_MS, prompt
from schemas.envelope import STAGES, Tier
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.ledger.app import read_topic
from streams.runtime.codec import decode_as, encode
from streams.runtime.connections import kafka_security
from streams.runtime.topics import ensure_topics, topology
from streams.settings import REPO_ROOT, Settings
from workers.ledger.aggregator import Aggregator

# The stack `make up` started: the same rule as Settings (TOLLWAY_BOOTSTRAP_SERVERS / TOLLWAY_REDIS_URL win, otherwise
# the addresses follow TOLLWAY_KAFKA_PORT / TOLLWAY_REDIS_PORT), so `pytest -m chaos` outside make finds the same stack.
SHARED_KAFKA = (os.environ.get("TOLLWAY_BOOTSTRAP_SERVERS")
                or f"127.0.0.1:{os.environ.get('TOLLWAY_KAFKA_PORT', '9092')}")
SHARED_REDIS = (os.environ.get("TOLLWAY_REDIS_URL")
                or f"redis://127.0.0.1:{os.environ.get('TOLLWAY_REDIS_PORT', '6379')}/0")


class Worker:
    """One ``tollway worker <stages…>`` (or ``tollway ledger worker``) subprocess, its log in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Worker:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


@dataclass
class Env:
    """Where a scenario's pipeline runs: the broker, Redis and the per-run state directory."""

    bootstrap: str = SHARED_KAFKA
    redis_url: str = SHARED_REDIS
    partitions: int = 4
    model_latency_scale: float = 0.2
    extra: dict[str, str] = field(default_factory=dict)
    # Brokers behind `bootstrap`: the topics get replication_factor min(3, n) and a majority min ISR.
    kafka_brokers: int = 1
    # The broker's principals' passwords (infra/services.sh writes them next to the broker's state).
    credentials: Path = field(default_factory=lambda: Settings().kafka_credentials_path)


class Pipeline:
    """The stages as subprocesses under one fresh topic prefix."""

    def __init__(self, name: str, where: Env, run_dir: Path) -> None:
        self.prefix = f"chaos{name.replace('-', '')[:12]}{uuid.uuid4().hex[:8]}"
        self.where = where
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(topic_prefix=self.prefix, bootstrap_servers=where.bootstrap,
                                 redis_url=where.redis_url, partitions=where.partitions, state_dir=run_dir / "state",
                                 kafka_credentials_file=where.credentials, kafka_brokers=where.kafka_brokers)
        self.env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": self.prefix, "TOLLWAY_BOOTSTRAP_SERVERS": where.bootstrap,
                    "TOLLWAY_REDIS_URL": where.redis_url, "TOLLWAY_PARTITIONS": str(where.partitions),
                    "TOLLWAY_STATE_DIR": str(run_dir / "state"), "TOLLWAY_LOG_LEVEL": "WARNING",
                    "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(where.credentials),
                    "TOLLWAY_KAFKA_BROKERS": str(where.kafka_brokers),
                    "TOLLWAY_MODEL_LATENCY_SCALE": str(where.model_latency_scale), **where.extra}
        self.workers: list[Worker] = []
        self._n = Counter[str]()
        # When True, a worker that exits on its own is restarted (as systemd/Kubernetes would) and noted.
        self.supervise = False
        self.restarts: Counter[str] = Counter()
        self.exits: list[str] = []
        self._expected_down: set[str] = set()

    def worker(self, stages: Sequence[str], *, extra_env: dict[str, str] | None = None) -> Worker:
        label = "+".join(stages) if len(stages) < len(STAGES) else "all"
        self._n[label] += 1
        w = Worker(f"{label}-{self._n[label]}", [sys.executable, "-m", "streams.cli", "worker", *stages],
                   {**self.env, **(extra_env or {})}, self.run_dir)
        self.workers.append(w)
        return w.start()

    def ledger_worker(self, port: int) -> Worker:
        w = Worker("ledger", [sys.executable, "-m", "streams.cli", "ledger", "worker", "--loglevel", "warn"],
                   {**self.env, "TOLLWAY_LEDGER_PORT": str(port)}, self.run_dir)
        self.workers.append(w)
        return w.start()

    def check_alive(self) -> None:
        for w in self.workers:
            if w.proc is None or w.name in self._expected_down:
                continue
            rc = w.proc.poll()
            if rc is None or rc in (-signal.SIGKILL, -signal.SIGTERM, 0):
                continue
            if not self.supervise:
                raise AssertionError(f"worker {w.name} exited {rc}:\n{w.tail()}")
            last = [line for line in w.tail(4000).splitlines() if "Error" in line or "error" in line][-1:]
            self.exits.append(f"{w.name} exited {rc}: {last[0][:200] if last else '?'}")
            self.restarts[w.name] += 1
            w.start()

    def stopped_on_purpose(self, w: Worker) -> None:
        self._expected_down.add(w.name)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    async def supervisor(self) -> None:
        """Restart crashed workers while the scenario runs (only when ``supervise``)."""
        while True:
            self.check_alive()
            await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Load:
    """Requests sent at a fixed rate; ``accepted`` holds the ids Kafka acknowledged."""

    run: str
    count: int
    rate_per_s: float
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)
    budget_ms: int = BENCH_BUDGET_MS
    distinct: int = 10_000  # fewer than count: prompts repeat, so some requests hit the cache
    prompts: Callable[[int], str] | None = None  # the i-th request's prompt; default: bench.load's prompt(i)


async def send_load(settings: Settings, load: Load) -> None:
    """Open-loop load; a produce that fails (broker down) counts as refused, never as accepted."""
    topic = topology(settings).ingress(Tier.STANDARD)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                enable_idempotence=True, linger_ms=2,
                                request_timeout_ms=15_000)
    await producer.start()
    pending: list[tuple[str, asyncio.Future[Any]]] = []
    try:
        started = time.monotonic()
        for i in range(load.count):
            delay = started + i / load.rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = f"{load.run}-{i}"
            text = load.prompts(i) if load.prompts is not None else prompt(i % load.distinct)
            env = new_envelope(text, tenant="acme", budget_ms=load.budget_ms, request_id=rid)
            try:
                future = await producer.send(topic, encode(env), key=rid.encode())
            except Exception:  # the producer refused outright (buffer full, broker unknown): not accepted
                load.refused += 1
                continue
            load.sent_at[rid] = time.monotonic()
            pending.append((rid, future))
        for rid, future in pending:
            try:
                await future
                load.accepted.append(rid)
            except Exception:
                load.refused += 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 30)


# ------------------------------------------------------------------------------------------------ counting
@dataclass
class Figures:
    scenario: str
    accepted: int = 0
    refused: int = 0
    terminal: int = 0
    duplicate_responses: int = 0
    duplicates_identical: int = 0
    duplicates_marked_replay: int = 0
    audited: int = 0
    audit_doubles: int = 0  # distinct audit records for one request on the audit topic
    audit_mirror_repeats: int = 0  # byte-identical repeats of a record on the audit topic
    chained: int = 0  # accepted requests with a record in the on-disk chains
    chain_doubles: int = 0
    ledger_requests: int = 0
    ledger_cost_micros: int = 0
    audited_cost_micros: int = 0
    response_cost_micros: int = 0
    deadletters: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    deadletter_path_ok: bool | None = None  # a garbage record after the fault was dead-lettered and audited
    deadletter_timeout_s: float = 45.0  # ... within this long
    seconds: float = 0.0
    stall_s: float | None = None  # after the fault: the longest time without a response (cluster scenarios)
    p99_ms: float | None = None
    max_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        out = []
        if self.deadletter_path_ok is False:
            out.append(f"after the fault a garbage record was not dead-lettered and audited within "
                       f"{self.deadletter_timeout_s:.0f} s")
        if self.lost:
            out.append(f"{self.lost} accepted requests lost (no terminal response or no audit record)")
        if self.audit_doubles or self.chain_doubles:
            out.append(f"{self.audit_doubles} requests audited more than once on the topic, "
                       f"{self.chain_doubles} in the chains")
        if self.chained != self.audited:
            out.append(f"chains hold {self.chained} accepted requests, the audit topic {self.audited}")
        if self.ledger_requests != self.accepted:
            out.append(f"ledger counts {self.ledger_requests} requests for {self.accepted} accepted")
        if self.ledger_cost_micros != self.audited_cost_micros:
            out.append(f"ledger cost {self.ledger_cost_micros} µ$ ≠ Σ audited cost {self.audited_cost_micros} µ$")
        if self.duplicate_responses != self.duplicates_identical:
            out.append(f"{self.duplicate_responses - self.duplicates_identical} duplicate responses differ")
        if self.duplicate_responses != self.duplicates_marked_replay:
            out.append(f"{self.duplicate_responses - self.duplicates_marked_replay} duplicate responses are not "
                       "marked as a replay")
        return out


def _unmarked(response: bytes) -> bytes:
    return response.replace(b'"replay":true', b'"replay":false', 1)


async def count(settings: Settings, scenario: str, load: Load, *, ledger: Callable[[], Awaitable[tuple[int, int]]]
                | None = None) -> Figures:
    topo = topology(settings)
    accepted = set(load.accepted)
    figures = Figures(scenario, accepted=len(accepted), refused=load.refused)

    by_id: dict[str, list[Response]] = defaultdict(list)
    raw_by_id: dict[str, list[bytes]] = defaultdict(list)
    for _p, _o, value in await read_topic(settings, topo.responses):
        response = decode_as(value, Response)
        by_id[response.request_id].append(response)
        raw_by_id[response.request_id].append(value or b"")
    figures.terminal = len(accepted & by_id.keys())
    for rid in accepted & by_id.keys():
        first, *again = by_id[rid]
        first_raw = _unmarked(raw_by_id[rid][0])
        figures.duplicate_responses += len(again)
        figures.duplicates_identical += sum(_unmarked(raw) == first_raw for raw in raw_by_id[rid][1:])
        figures.duplicates_marked_replay += sum(r.replay for r in again)
        figures.response_cost_micros += first.cost_micros
    figures.statuses = dict(Counter(f"{by_id[rid][0].status.value}/{by_id[rid][0].code or '-'}"
                                    for rid in accepted & by_id.keys()))

    # The audit topic mirrors the chains; after a crash the audit stage re-mirrors a stored record whose
    # acknowledgement it never saw, so the same bytes may appear twice there: a repeat, not a second record.
    audit_by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    mirrored: dict[str, set[bytes]] = defaultdict(set)
    for _p, _o, value in await read_topic(settings, topo.audit_log):
        if not value:
            continue
        record = orjson.loads(value)
        if record.get("kind") == "audit" and record.get("request_id"):
            rid = record["request_id"]
            if value in mirrored[rid]:
                figures.audit_mirror_repeats += rid in accepted
                continue
            mirrored[rid].add(value)
            audit_by_id[rid].append(record)
    chained = Counter(rid for rid in chain_request_ids(settings) if rid in accepted)
    figures.chained = len(chained)
    figures.chain_doubles = sum(1 for n in chained.values() if n > 1)
    doubles = {rid: recs for rid, recs in audit_by_id.items() if rid in accepted and len(recs) > 1}
    for rid, recs in list(doubles.items())[:3]:
        figures.notes.append(f"audited {len(recs)}x {rid}: " + "; ".join(
            f"{r.get('status')}/{r.get('code')} by {r.get('hops', [{}])[-1].get('worker_id') if r.get('hops') else '?'}"
            f" source={r.get('source')} audited_at={r.get('audited_at_ns')}" for r in recs))
    figures.audited = len(accepted & audit_by_id.keys())
    figures.audit_doubles = sum(1 for rid in accepted if len(audit_by_id.get(rid, ())) > 1)
    figures.audited_cost_micros = sum(audit_by_id[rid][0].get("cost_micros", 0)
                                      for rid in accepted & audit_by_id.keys())
    figures.lost = len(accepted - (by_id.keys() & audit_by_id.keys()))

    if ledger is None:
        agg = Aggregator.empty()
        for partition, offset, value in await read_topic(settings, topo.responses):
            response = decode_as(value, Response)
            if response.request_id in accepted:  # not the warm-up probe
                agg.add(response, partition=partition, offset=offset)
        rows = agg.rows(window="day")
        figures.ledger_requests = sum(r.requests for r in rows)
        figures.ledger_cost_micros = sum(r.cost_micros for r in rows)
    else:  # the running ledger worker counts everything on the topic: take the warm-up probe's share off
        requests, cost = await ledger()
        others = {rid: rs[0] for rid, rs in by_id.items() if rid not in accepted}
        figures.ledger_requests = requests - len(others)
        figures.ledger_cost_micros = cost - sum(r.cost_micros for r in others.values())
    # As the audit stage, the one principal that may read dead letters (the ledger's may not: it was refused).
    figures.deadletters = len(await read_topic(settings, topo.deadletter, role="stage-audit"))
    return figures


async def measure_flow(settings: Settings, load: Load, figures: Figures, fault_at_ns: int) -> None:
    """The stall after the fault (the longest gap between consecutive responses from the fault to the last response)
    and the run's end-to-end latency (response ``completed_at_ns`` − request ``created_at_ns``, wall clock)."""
    accepted = set(load.accepted)
    done: dict[str, Response] = {}
    for _p, _o, value in await read_topic(settings, topology(settings).responses):
        response = decode_as(value, Response)
        if response.request_id in accepted and response.request_id not in done:
            done[response.request_id] = response
    if not done:
        return
    latencies = sorted((r.completed_at_ns - r.created_at_ns) / 1e6 for r in done.values())
    figures.p99_ms = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    figures.max_ms = latencies[-1]
    completions = sorted([fault_at_ns, *(r.completed_at_ns for r in done.values() if r.completed_at_ns > fault_at_ns)])
    figures.stall_s = max((b - a for a, b in itertools.pairwise(completions)), default=0) / 1e9


def chain_request_ids(settings: Settings) -> list[str]:
    """Every request id in the on-disk audit chains of this prefix (all chains, every segment)."""
    root = settings.state_dir / "audit" / settings.topic_prefix
    out = []
    for segment in sorted(root.glob("chain-*/seg-*.jsonl")):
        for line in segment.read_bytes().splitlines():
            if line.strip():
                rid = orjson.loads(line)["record"].get("request_id")
                if rid:
                    out.append(rid)
    return out


async def wait_settled(settings: Settings, load: Load, pipeline: Pipeline, timeout_s: float) -> bool:
    """Until every accepted request has a response and an audit record, or the timeout (then False)."""
    topo = topology(settings)
    deadline = time.monotonic() + timeout_s
    wanted = set(load.accepted)
    while time.monotonic() < deadline:
        pipeline.check_alive()
        responded = {decode_as(v, Response).request_id for _p, _o, v in await read_topic(settings, topo.responses)}
        audited = {orjson.loads(v).get("request_id") for _p, _o, v in await read_topic(settings, topo.audit_log) if v}
        if wanted <= responded and wanted <= audited:
            return True
        await asyncio.sleep(1.0)  # polling interval; the condition above decides
    return False


async def deadletter_path_works(settings: Settings, timeout_s: float = 45) -> bool:
    """After the fault: a garbage record on the ingress must still become a dead letter *and* be audited (the audit
    stage's dead-letter consumer is a task of its own; it must have survived the fault too)."""
    topo = topology(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True,
                                **kafka_security(settings, "admin"))
    await producer.start()
    try:
        meta = await producer.send_and_wait(topo.ingress(), b"{not json after the fault", key=b"probe")
    finally:
        await producer.stop()
    wanted = f"deadletter:{meta.topic}:{meta.partition}:{meta.offset}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _p, _o, value in await read_topic(settings, topo.audit_log):
            if value and orjson.loads(value).get("dedup_key") == wanted:
                return True
        await asyncio.sleep(1.0)
    return False


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def responses_so_far(settings: Settings) -> int:
    return len(await read_topic(settings, topology(settings).responses))


async def warm_up(settings: Settings, pipeline: Pipeline, timeout_s: float = 90) -> None:
    """One request through every stage, so every worker has joined its group before the load starts."""
    await ensure_topics(settings)
    probe = Load(run=f"warm{uuid.uuid4().hex[:6]}", count=1, rate_per_s=1)
    await send_load(settings, probe)
    if not await wait_settled(settings, probe, pipeline, timeout_s):
        raise AssertionError("the pipeline did not answer a warm-up request:\n" +
                             "\n".join(f"--- {w.name}\n{w.tail(1500)}" for w in pipeline.workers))


# ------------------------------------------------------------------------------------------------ table
COLUMNS = ("scenario", "accepted", "terminal", "dup resp (ident/replay)", "audited chain/topic", "x2 (rep)",
           "ledger n", "ledger µ$ vs Σ audit µ$", "dead", "lost", "DL path after", "stall s", "p99/max ms", "s")


def row(f: Figures) -> list[str]:
    money = f"{f.ledger_cost_micros} vs {f.audited_cost_micros}" + ("" if f.ledger_cost_micros ==
                                                                   f.audited_cost_micros else " ✗")
    return [f.scenario, str(f.accepted) + (f" (+{f.refused} refused)" if f.refused else ""), str(f.terminal),
            f"{f.duplicate_responses} ({f.duplicates_identical}/{f.duplicates_marked_replay})",
            f"{f.chained}/{f.audited}", f"{f.audit_doubles + f.chain_doubles} ({f.audit_mirror_repeats})",
            str(f.ledger_requests), money, str(f.deadletters), str(f.lost),
            {True: "ok", False: "BROKEN", None: "-"}[f.deadletter_path_ok],
            "-" if f.stall_s is None else f"{f.stall_s:.1f}",
            "-" if f.p99_ms is None or f.max_ms is None else f"{f.p99_ms:.0f}/{f.max_ms:.0f}", f"{f.seconds:.0f}"]


def table(results: Sequence[Figures]) -> str:
    rows = [list(COLUMNS), *[row(f) for f in results]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for f in results:
        for v in f.violations:
            lines.append(f"VIOLATION {f.scenario}: {v}")
        for note in f.notes:
            lines.append(f"note {f.scenario}: {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ own services
CHAOS_STATE = Path(os.environ.get("TOLLWAY_CHAOS_STATE_DIR", "/tmp/chaos-state"))
CHAOS_KAFKA_PORT = int(os.environ.get("TOLLWAY_CHAOS_KAFKA_PORT", "29092"))
CHAOS_REDIS_PORT = int(os.environ.get("TOLLWAY_CHAOS_REDIS_PORT", "26379"))
# Its own controller port too: an inherited TOLLWAY_KAFKA_CONTROLLER_PORT (a second stack's) made its broker fail to
# bind, and the scenarios that kill the broker or Redis were skipped.
CHAOS_KAFKA_CONTROLLER_PORT = int(os.environ.get("TOLLWAY_CHAOS_KAFKA_CONTROLLER_PORT", str(CHAOS_KAFKA_PORT + 1)))


def services(command: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """``infra/services.sh <command>`` for the chaos run's own broker and Redis (never the shared ones)."""
    env = {**os.environ, "TOLLWAY_STATE_DIR": str(CHAOS_STATE), "TOLLWAY_KAFKA_PORT": str(CHAOS_KAFKA_PORT),
           "TOLLWAY_KAFKA_CONTROLLER_PORT": str(CHAOS_KAFKA_CONTROLLER_PORT),
           "TOLLWAY_REDIS_PORT": str(CHAOS_REDIS_PORT)}
    return subprocess.run([str(REPO_ROOT / "infra" / "services.sh"), command], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


# The chaos run's 3-broker cluster (tests/chaos/test_cluster.py): node i on CLUSTER_PORT + 10(i-1), its controller
# on CLUSTER_CONTROLLER_PORT + 10(i-1); by default two above the single chaos broker (29094/29104/29114 and
# 29095/29105/29115 with the default 29092), so both can run and neither's ports collide.
CLUSTER_PORT = int(os.environ.get("TOLLWAY_CHAOS_CLUSTER_PORT", str(CHAOS_KAFKA_PORT + 2)))
CLUSTER_CONTROLLER_PORT = CLUSTER_PORT + 1
CLUSTER_BROKERS = 3
CLUSTER_STATE = CHAOS_STATE / "kafka-cluster"


def cluster_services(*args: str, timeout_s: float = 480) -> subprocess.CompletedProcess[str]:
    """``infra/services.sh <args>`` for the chaos run's 3-broker cluster (and its own Redis)."""
    env = {**os.environ, "TOLLWAY_STATE_DIR": str(CHAOS_STATE), "TOLLWAY_KAFKA_PORT": str(CLUSTER_PORT),
           "TOLLWAY_KAFKA_CONTROLLER_PORT": str(CLUSTER_CONTROLLER_PORT), "TOLLWAY_KAFKA_BROKERS": str(CLUSTER_BROKERS),
           "TOLLWAY_REDIS_PORT": str(CHAOS_REDIS_PORT), "TOLLWAY_KAFKA_START_TIMEOUT_S": "400"}
    return subprocess.run([str(REPO_ROOT / "infra" / "services.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def cluster_env(**overrides: Any) -> Env:
    bootstrap = ",".join(f"127.0.0.1:{CLUSTER_PORT + 10 * i}" for i in range(CLUSTER_BROKERS))
    return Env(bootstrap=bootstrap, redis_url=f"redis://127.0.0.1:{CHAOS_REDIS_PORT}/0",
               credentials=CHAOS_STATE / "credentials" / "kafka.json", kafka_brokers=CLUSTER_BROKERS, **overrides)


def broker_pid(node: int) -> int:
    return int((CLUSTER_STATE / f"node-{node}" / "kafka.pid").read_text().strip())


def own_env(**overrides: Any) -> Env:
    return Env(bootstrap=f"127.0.0.1:{CHAOS_KAFKA_PORT}", redis_url=f"redis://127.0.0.1:{CHAOS_REDIS_PORT}/0",
               credentials=CHAOS_STATE / "credentials" / "kafka.json", **overrides)


def stop_own_redis() -> None:
    subprocess.run(["redis-cli", "-p", str(CHAOS_REDIS_PORT), "shutdown", "nosave"], capture_output=True,
                   timeout=30, check=False)
