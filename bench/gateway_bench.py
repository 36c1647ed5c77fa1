"""Gateway overhead: LiteLLM's proxy and ``tollway serve`` in front of the same fake OpenAI-compatible model, same
load generator, open loop, alternating rounds.

    .venv/bin/python -m bench.gateway_bench --rates 25,50,75,100,150 --seconds 8 --rounds 2

Method. One fake model server (bench/fake_openai.py, answers at once) serves both systems:

* **LiteLLM** — its proxy (``--litellm-workers`` processes of ``litellm --config …``, requests round-robin) from
  its own virtualenv ``.venv-litellm`` (the
  bench-only extra ``gateway-bench`` of pyproject.toml; ``make litellm-venv`` installs it, nothing is fetched at run
  time), one model ``fake`` routed to the fake server;
* **tollway** — ``tollway serve`` (HTTP ingress) and the pipeline's workers (``--layout``: ``all+`` the whole route
  co-located in one consumer group, streams/runtime/chain.py, the default here; ``all`` every stage in one process
  on its own topics), a catalog with one model ``fake`` on the same fake server (``kind: openai``). Every stage
  runs (policy without a policy document: dev mode; cache, post-process, audit), broker and Redis included.

For each round and each rate both systems get ``--seconds`` of open-loop load (requests sent at their scheduled
times, whatever the answers do; latency = answer time − *scheduled* time, so a falling-behind loader hides nothing),
the order alternating per round and rate (A/B, B/A …) so a shared machine's drift falls on both alike. Prompts are
distinct (no cache hits). Then a closed-loop phase (``--closed-requests`` with ``--concurrency`` in flight) per
system and round measures the saturation throughput. CPU per request is read from /proc: each system's own
processes (LiteLLM: the proxy and its workers; tollway: workers and server) and, for tollway, the broker and Redis
(for LiteLLM's phases the broker and Redis are idle and reported apart); the fake model's CPU is reported apart.

Output: one JSON line per phase, then a summary JSON line whose ``rows`` bench/run.py adds to its table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.ingress_bench import delete_prefix_topics, free_port, percentile
from streams.settings import REPO_ROOT, Settings

SYSTEMS = ("tollway", "litellm")
LITELLM_VENV = REPO_ROOT / ".venv-litellm"
# Open-loop rates where the issue asks for tollway ≤ LiteLLM in p50 and p99.
COMPARED_RATES = (25.0, 50.0)
# A rate is sustained when ≥ this share of what was offered is answered (200) within the phase's time plus a drain.
SUSTAINED_SHARE = 0.95

CATALOG = """\
version: 1
expected_output_tokens: 16
backends:
  fake: {{kind: openai, base_url: "http://127.0.0.1:{port}/v1", timeout_s: 30}}
models:
  - name: fake
    backend: fake
    region: us
    quality_tier: small
    prices: {{input_micros_per_mtok: 100000, cached_input_micros_per_mtok: 25000, output_micros_per_mtok: 400000}}
    context_window: 16384
    latency: {{overhead_ms: 0, prefill_ms_per_1k_tokens: 0, decode_ms_per_token: 0}}
    capacity: 512
    max_batch: 64
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: "http://127.0.0.1:{port}/v1"
      api_key: sk-fake
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
"""


# ---------------------------------------------------------------------------------------------- CPU from /proc
def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # own + reaped children


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def tree_cpu_s(roots: list[int]) -> float:
    """CPU seconds (user + system) of the processes under ``roots``, children included."""
    ticks = sum(_ticks(pid) for root in roots for pid in descendants(root))
    return ticks / os.sysconf("SC_CLK_TCK")


def listener_pid(port: int) -> int | None:
    """The process listening on a loopback port (the broker, Redis)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    marker = "pid="
    if marker not in out:
        return None
    return int(out.split(marker, 1)[1].split(",", 1)[0])


# ---------------------------------------------------------------------------------------------- one phase
@dataclass
class Phase:
    system: str
    load: str  # "open" (rate) or "closed"
    round: int
    offered_per_s: float | None
    sent: int
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    failures: int
    cpu_s: dict[str, float]

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def achieved_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def cpu_ms_per_request(self) -> dict[str, float]:
        """CPU per answered request (nan when none was answered: the phase's CPU served nothing)."""
        return {k: round(v * 1000 / self.ok, 3) if self.ok else float("nan") for k, v in self.cpu_s.items()}

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms or [float("nan")]
        return {"system": self.system, "load": self.load, "round": self.round, "offered_per_s": self.offered_per_s,
                "sent": self.sent, "ok": self.ok, "failures": self.failures, "wall_s": round(self.wall_s, 3),
                "achieved_per_s": round(self.achieved_per_s, 1), "p50_ms": round(percentile(lat, 0.5), 2),
                "p99_ms": round(percentile(lat, 0.99), 2), "cpu_ms_per_request": self.cpu_ms_per_request()}


async def open_loop(send: Callable[[int], Any], rate: float, seconds: float,
                    timeout_s: float) -> tuple[float, list[float], int, int]:
    """Send ``rate``/s for ``seconds`` at scheduled times; (wall s, latencies of answered requests, failures, sent).
    Wall runs from the first scheduled send to the last answer."""
    n = max(1, int(rate * seconds))
    latencies: list[float] = []
    failures = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    last_done = start

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures, last_done
        try:
            ok = await asyncio.wait_for(send(i), timeout_s)
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        now = loop.time()
        if ok:
            latencies.append((now - scheduled) * 1000)
            last_done = max(last_done, now)
        else:
            failures += 1

    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the open loop's schedule
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return max(last_done - start, seconds), latencies, failures, n


async def closed_loop(send: Callable[[int], Any], n: int, concurrency: int,
                      timeout_s: float) -> tuple[float, list[float], int, int]:
    latencies: list[float] = []
    failures = 0
    queue = iter(range(n))

    async def lane() -> None:
        nonlocal failures
        for i in queue:
            began = time.perf_counter()
            try:
                ok = await asyncio.wait_for(send(i), timeout_s)
            except (TimeoutError, aiohttp.ClientError, OSError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - began) * 1000)
            else:
                failures += 1

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies, failures, n


# ---------------------------------------------------------------------------------------------- the systems
@dataclass
class Running:
    procs: dict[str, subprocess.Popen[bytes]]
    urls: dict[str, list[str]]  # system → its servers (requests go round-robin)
    cpu_roots: dict[str, dict[str, list[int]]]  # system → part → root pids


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_systems(args: argparse.Namespace, settings: Settings, workdir: Path) -> Running:
    fake_port, tollway_port = free_port(), free_port()
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    procs["fake"] = _spawn([sys.executable, "-m", "bench.fake_openai", "--port", str(fake_port),
                            "--latency-ms", str(args.model_latency_ms)], base_env, workdir / "fake.log")
    catalog = workdir / "catalog.yaml"
    catalog.write_text(CATALOG.format(port=fake_port))
    env = {**base_env, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_MODELS": str(catalog),
           "TOLLWAY_INGRESS_DEV_MODE": "true", "TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_PARTITIONS": "4",
           "TOLLWAY_MODEL_LATENCY_SCALE": "0", **dict(kv.split("=", 1) for kv in args.tollway_env)}
    tollway = [sys.executable, "-m", "streams.cli"]
    procs["workers"] = _spawn([*tollway, "worker", args.layout], env, workdir / "workers.log")
    procs["server"] = _spawn([*tollway, "serve", "--port", str(tollway_port)], env, workdir / "server.log")
    variant_urls: dict[str, list[str]] = {}
    variant_roots: dict[str, dict[str, list[int]]] = {}
    for variant in args.ingress_variant:  # another `tollway serve` with other settings, in front of the same workers
        name, _, assignments = variant.partition(":")
        name, _, root = name.partition("@")  # NAME@CHECKOUT: that checkout's code and venv (e.g. main, the baseline)
        port = free_port()
        extra = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
        serve = [str(Path(root) / ".venv" / "bin" / "python"), "-m", "streams.cli"] if root else tollway
        procs[f"server-{name}"] = _spawn([*serve, "serve", "--port", str(port)], {**env, **extra},
                                         workdir / f"server-{name}.log", cwd=Path(root) if root else REPO_ROOT)
        variant_urls[f"tollway-{name}"] = [f"http://127.0.0.1:{port}"]
        variant_roots[f"tollway-{name}"] = {**_tollway_roots(procs, settings),
                                            "server": [procs[f"server-{name}"].pid]}
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=fake_port))
    litellm_env = {**base_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                   "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
                   # no keys on either side: tollway runs in dev mode (no policy document, no API key)
                   "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    if "litellm" not in args.systems:
        return Running(procs, {"tollway": [f"http://127.0.0.1:{tollway_port}"], **variant_urls},
                       {"tollway": _tollway_roots(procs, settings), **variant_roots})
    # One proxy process per worker, the load spread round-robin over them: `--num_workers 2` (uvicorn's own
    # workers) lost every child at start on this machine, silently; two processes are the same two workers.
    litellm_ports = [free_port() for _ in range(args.litellm_workers)]
    for n, port in enumerate(litellm_ports):
        procs[f"litellm{n}"] = _spawn([str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host",
                                       "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                                      litellm_env, workdir / f"litellm{n}.log")
    roots = {"tollway": _tollway_roots(procs, settings), **variant_roots,
             "litellm": {"proxy": [procs[f"litellm{n}"].pid for n in range(len(litellm_ports))], **_infra(settings),
                         "model": [procs["fake"].pid]}}
    return Running(procs, {"tollway": [f"http://127.0.0.1:{tollway_port}"], **variant_urls,
                           "litellm": [f"http://127.0.0.1:{port}" for port in litellm_ports]}, roots)


def _infra(settings: Settings) -> dict[str, list[int]]:
    infra: dict[str, list[int]] = {}
    kafka_port = int(settings.bootstrap_servers.rsplit(":", 1)[1])
    redis_port = int(settings.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    for name, port in (("broker", kafka_port), ("redis", redis_port)):
        pid = listener_pid(port)
        infra[name] = [pid] if pid else []
    return infra


def _tollway_roots(procs: dict[str, subprocess.Popen[bytes]], settings: Settings) -> dict[str, list[int]]:
    return {"workers": [procs["workers"].pid], "server": [procs["server"].pid], **_infra(settings),
            "model": [procs["fake"].pid]}


def stop_systems(running: Running) -> None:
    for proc in running.procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    for proc in running.procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# ---------------------------------------------------------------------------------------------- measuring
OWN_PARTS = {"tollway": ("workers", "server", "broker", "redis"), "litellm": ("proxy",)}


async def measure(args: argparse.Namespace, running: Running) -> list[Phase]:
    run_id = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(limit=args.max_connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    phases: list[Phase] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        def sender(system: str) -> Callable[[int], Any]:
            urls = [f"{base}/v1/chat/completions" for base in running.urls[system]]
            headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench",
                       "X-Tollway-Tenant": "bench"}

            async def send(i: int) -> bool:
                body = {"model": "fake", "max_tokens": 16, "messages": [
                    {"role": "user", "content": f"question {run_id} {system} {i} {uuid.uuid4().hex}"}]}
                async with http.post(urls[i % len(urls)], data=orjson.dumps(body), headers=headers) as resp:
                    await resp.read()
                    return resp.status == 200
            return send

        systems = tuple(s for s in running.urls)
        senders = {system: sender(system) for system in systems}
        for system in systems:  # ready once a completion comes back (workers, server, proxy all up)
            await wait_ready(system, senders[system], running, args.ready_timeout_s)
        for system in systems:
            await closed_loop(senders[system], args.warmup, 16, args.timeout_s)

        async def phase(system: str, load: str, k: int, rate: float | None) -> None:
            roots = running.cpu_roots[system]
            before = {part: tree_cpu_s(pids) for part, pids in roots.items()}
            if rate is None:
                wall, lat, failures, sent = await closed_loop(senders[system], args.closed_requests,
                                                              args.concurrency, args.timeout_s)
            else:
                wall, lat, failures, sent = await open_loop(senders[system], rate, args.seconds, args.timeout_s)
            used = {part: tree_cpu_s(pids) - before[part] for part, pids in roots.items()}
            p = Phase(system, load, k, rate, sent, wall, lat, failures, used)
            phases.append(p)
            lat_or_nan = lat or [float("nan")]
            print(f"# round {k} {system:<8} {load:<6} offered {rate or 0:5.0f}/s achieved {p.achieved_per_s:6.1f}/s "
                  f"p50 {percentile(lat_or_nan, 0.5):7.1f} ms p99 {percentile(lat_or_nan, 0.99):7.1f} ms "
                  f"fail {failures} cpu ms/req {p.cpu_ms_per_request()}  load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)
            await asyncio.sleep(args.pause_s)  # let the last phase's stragglers drain off the machine

        for k in range(args.rounds):
            for j, rate in enumerate(args.rates):
                order = systems if (k + j) % 2 == 0 else systems[::-1]
                for system in order:
                    await phase(system, "open", k, rate)
            if args.closed_requests > 0:
                for system in (systems if k % 2 == 0 else systems[::-1]):
                    await phase(system, "closed", k, None)
    return phases


async def wait_ready(system: str, send: Callable[[int], Any], running: Running, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        for name, proc in running.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode} before the run (see its log)")
        try:
            if all([await asyncio.wait_for(send(n), 10) for n in range(len(running.urls[system]))]):
                return
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        if loop.time() > deadline:
            raise SystemExit(f"{system} did not answer within {timeout_s:g} s")
        await asyncio.sleep(0.5)  # polling a process's readiness, bounded


# ---------------------------------------------------------------------------------------------- the summary
def sustained_rate(phases: list[Phase], system: str) -> float:
    """The highest offered rate every round of which the system answered ≥ SUSTAINED_SHARE of (the saturation rate
    as the open loop sees it)."""
    best = 0.0
    rates = sorted({p.offered_per_s for p in phases if p.load == "open" and p.offered_per_s})
    for rate in rates:
        runs = [p for p in phases if p.system == system and p.load == "open" and p.offered_per_s == rate]
        if runs and all(p.ok >= SUSTAINED_SHARE * p.sent and p.achieved_per_s >= SUSTAINED_SHARE * rate
                        for p in runs):
            best = rate
    return best


def summarise(phases: list[Phase]) -> dict[str, Any]:
    table: list[dict[str, Any]] = []
    rates = sorted({p.offered_per_s for p in phases if p.load == "open" and p.offered_per_s})
    for rate in [*rates, None]:
        for system in dict.fromkeys(p.system for p in phases):
            runs = [p for p in phases if p.system == system and p.offered_per_s == rate
                    and p.load == ("open" if rate else "closed")]
            if not runs:
                continue
            entry: dict[str, Any] = {"system": system, "offered_per_s": rate or "closed",
                                     "rounds": len(runs)}
            for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
                values = [percentile(p.latencies_ms, q) for p in runs if p.latencies_ms]
                entry[name] = [round(v, 1) for v in values]
                entry[f"{name}_median"] = round(statistics.median(values), 1) if values else None
            entry["achieved_per_s"] = [round(p.achieved_per_s, 1) for p in runs]
            entry["failures"] = sum(p.failures for p in runs)
            parts = runs[0].cpu_s.keys()
            answered = [p for p in runs if p.ok] or runs
            entry["cpu_ms_per_request"] = {
                part: round(statistics.median(p.cpu_ms_per_request()[part] for p in answered), 3) for part in parts}
            entry["cpu_ms_per_request_total"] = round(sum(entry["cpu_ms_per_request"][part]
                                                          for part in OWN_PARTS[system.split("-")[0]]), 3)
            table.append(entry)
    by = {(e["system"], e["offered_per_s"]): e for e in table}
    rows: list[dict[str, Any]] = []
    verdict: dict[str, Any] = {}
    for rate in COMPARED_RATES:
        t, lite = by.get(("tollway", rate)), by.get(("litellm", rate))
        if not t or not lite or t["p50_ms_median"] is None or lite["p50_ms_median"] is None:
            continue
        for name in ("p50_ms", "p99_ms"):
            value, base = t[f"{name}_median"], lite[f"{name}_median"]
            passed = value <= base
            verdict[f"{name[:3]}@{rate:g}"] = passed
            rows.append({"figure": f"gateway overhead: {name[:3]} through the HTTP ingress at {rate:g} req/s",
                         "value": value, "unit": "ms", "baseline": base, "baseline_name": "LiteLLM proxy",
                         "ratio": round(value / base, 3) if base else None, "target": "<= LiteLLM", "pass": passed})
    systems = list(dict.fromkeys(p.system for p in phases))
    sustained = {system: sustained_rate(phases, system) for system in systems}
    closed = {system: by[(system, "closed")]["achieved_per_s"] for system in systems if (system, "closed") in by}
    closed_median = {system: statistics.median(v) for system, v in closed.items()}
    if "tollway" in closed_median and "litellm" in closed_median:
        passed = closed_median["tollway"] > closed_median["litellm"]
        verdict["saturation"] = passed
        rows.append({"figure": "gateway overhead: saturation throughput (closed loop)",
                     "value": round(closed_median["tollway"], 1), "unit": "req/s",
                     "baseline": round(closed_median["litellm"], 1), "baseline_name": "LiteLLM proxy",
                     "ratio": round(closed_median["tollway"] / closed_median["litellm"], 3)
                     if closed_median["litellm"] else None, "target": "> LiteLLM", "pass": passed,
                     "note": f"highest open-loop rate sustained: tollway {sustained.get('tollway', 0):g}, "
                             f"LiteLLM {sustained.get('litellm', 0):g} req/s"})
    for rate in rates:
        t, lite = by.get(("tollway", rate)), by.get(("litellm", rate))
        if t and lite and lite["cpu_ms_per_request_total"]:
            rows.append({"figure": f"gateway overhead: CPU per request at {rate:g} req/s (tollway incl. broker, Redis)",
                         "value": t["cpu_ms_per_request_total"], "unit": "ms",
                         "baseline": lite["cpu_ms_per_request_total"], "baseline_name": "LiteLLM proxy",
                         "ratio": round(t["cpu_ms_per_request_total"] / lite["cpu_ms_per_request_total"], 3),
                         "target": None, "pass": None})
    return {"table": table, "sustained_per_s": sustained, "closed_per_s": closed, "verdict": verdict, "rows": rows}


def print_table(summary: dict[str, Any]) -> None:
    print("| offered req/s | system | p50 ms (median; rounds) | p99 ms (median; rounds) | achieved req/s | "
          "CPU ms/req (own+broker+Redis) | fake model CPU ms/req |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for e in summary["table"]:
        print(f"| {e['offered_per_s']} | {e['system']} | {e['p50_ms_median']} ({', '.join(map(str, e['p50_ms']))}) | "
              f"{e['p99_ms_median']} ({', '.join(map(str, e['p99_ms']))}) | {', '.join(map(str, e['achieved_per_s']))} "
              f"| {e['cpu_ms_per_request_total']} {e['cpu_ms_per_request']} | {e['cpu_ms_per_request'].get('model')} |",
              file=sys.stderr)


def main(args: argparse.Namespace) -> None:
    if "litellm" in args.systems and not (LITELLM_VENV / "bin" / "litellm").exists():
        raise SystemExit(f"LiteLLM's proxy is not installed in {LITELLM_VENV}: run `make litellm-venv` (bench-only)")
    prefix = f"gw{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, partitions=4)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    running = start_systems(args, settings, workdir)
    try:
        phases = asyncio.run(measure(args, running))
    finally:
        stop_systems(running)
        if args.keep_topics:  # e.g. for `python -m bench.response_hops --prefix P --slowest 0.02`
            print(f"topics kept: prefix {prefix}", file=sys.stderr)
        else:
            asyncio.run(delete_prefix_topics(settings))
    for phase in phases:
        print(orjson.dumps(phase.row()).decode())
    summary = summarise(phases)
    summary.update(layout=args.layout, rates=args.rates, seconds=args.seconds, rounds=args.rounds,
                   litellm_workers=args.litellm_workers, loadavg=os.getloadavg(), logs=str(workdir))
    print_table(summary)
    print(orjson.dumps(summary).decode())
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[25, 50, 75, 100, 150])
    parser.add_argument("--seconds", type=float, default=8.0, help="open-loop seconds per rate, system and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--closed-requests", type=int, default=600, help="closed-loop requests per system and round")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight in the closed-loop phase")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS),
                        help="tollway,litellm (one alone: profiling runs)")
    parser.add_argument("--ingress-variant", action="append", default=[],
                        help="NAME[@CHECKOUT]:KEY=VAL,KEY=VAL — another `tollway serve` (from CHECKOUT's code and "
                             ".venv, e.g. /work/main) with these settings in front of the same workers, measured as "
                             "system tollway-NAME: an ingress change's A/B in one run")
    parser.add_argument("--layout", default="all+", help="tollway worker argument: all+ (co-located) or all")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--model-latency-ms", type=float, default=0.0)
    parser.add_argument("--tollway-env", action="append", default=[], help="KEY=VALUE for tollway's processes")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--pause-s", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=2000)
    parser.add_argument("--ready-timeout-s", type=float, default=420.0)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--keep-topics", action="store_true",
                        help="leave the run's topics (bench.response_hops reads where the last responses waited)")
    parser.add_argument("--json", action="store_true", help="accepted for bench/run.py; the last line is JSON anyway")
    main(parser.parse_args())
