"""The systems under test, each in its own process(es) so the harness never shares their CPU or event loop.

``relay``   bench/relay.py: six raw aiokafka hops — every hop in one process, or one process per hop;
``tollway`` the six-stage pipeline: ``tollway worker all`` (``run_workers`` with every stage in one process), or
            ``tollway worker <stage>`` once per stage. Either way the topic prefix comes from TOLLWAY_TOPIC_PREFIX;
``shell``   the same runners and topics with pass-through stages (bench/passthrough.py): tollway's shell alone.

``processes=0`` runs the system as tasks of the harness's own event loop instead: only the smoke test does that
(no interpreter start-up per run), and its figures are not comparable with the others.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.relay import HOPS, ensure_relay_topics, relay_topics
from schemas.envelope import DEFAULT_ROUTE as STAGES  # the hops every request crosses (tools only on demand)
from streams.runtime.topics import delete_prefix_topics, ensure_topics, topology
from streams.settings import REPO_ROOT, Settings

LOG_DIR = REPO_ROOT / ".state" / "bench"

# Every process a System started and has not stopped yet: killed at exit, so an interrupted benchmark never leaves
# workers polling the shared broker.
_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _RUNNING.clear()


class SystemDied(RuntimeError):
    pass


@dataclass
class System:
    kind: str  # "relay" | "floor" (minimal chain) | "tollway" | "colocated" (worker all+) | "shell"
    processes: int  # 1, one per stage (6), or 0: tasks in the harness's loop
    settings: Settings
    extra_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False  # run each process under cProfile; the .prof files land next to the logs
    _procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        layout = {0: "in the harness", 1: "1 process"}.get(self.processes, f"{self.processes} processes")
        return f"{self.kind} ({layout})"

    @property
    def ingress(self) -> str:
        if self.kind in ("relay", "floor"):
            return relay_topics(self.settings.topic_prefix)[0]
        return topology(self.settings).ingress()

    @property
    def output(self) -> str:
        """Where a request has passed all six hops: the relay's last topic, or the audit log."""
        if self.kind in ("relay", "floor"):
            return relay_topics(self.settings.topic_prefix)[-1]
        return topology(self.settings).audit_log

    @property
    def responses(self) -> str | None:
        return None if self.kind in ("relay", "floor") else topology(self.settings).responses

    @property
    def deadletter(self) -> str | None:
        return None if self.kind in ("relay", "floor") else topology(self.settings).deadletter

    def _commands(self) -> list[list[str]]:
        if self.kind in ("relay", "floor"):
            relay = [sys.executable, "-m", "bench.relay", *(["--floor"] if self.kind == "floor" else []), "--hops"]
            return [[*relay, f"1-{HOPS}"]] if self.processes == 1 else [[*relay, str(h)] for h in range(1, HOPS + 1)]
        if self.kind == "colocated":  # the whole route as one consumer group: one process however many layouts
            return [[sys.executable, "-m", "streams.cli", "worker", "all+"]]
        worker = [sys.executable, "-m", "streams.cli", "worker"] if self.kind == "tollway" else \
            [sys.executable, "-m", "bench.passthrough"]
        return [[*worker, "all"]] if self.processes == 1 else [[*worker, stage] for stage in STAGES]

    async def start(self) -> None:
        # Topics first, from here: six processes racing to create them only adds noise to the start.
        if self.kind in ("relay", "floor"):
            await ensure_relay_topics(self.settings)
        else:
            await ensure_topics(self.settings)
        if self.processes == 0:
            self._start_in_process()
            return
        self._spawn()

    def _spawn(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env, "TOLLWAY_TOPIC_PREFIX": self.settings.topic_prefix,
               "TOLLWAY_PARTITIONS": str(self.settings.partitions), "TOLLWAY_LOG_LEVEL": "WARNING",
               "PYTHONPATH": str(REPO_ROOT)}
        for i, base in enumerate(self._commands()):
            log_path = LOG_DIR / f"{self.settings.topic_prefix}-{i}.log"
            prof = LOG_DIR / f"{self.settings.topic_prefix}-{i}.prof"
            command = [base[0], "-m", "cProfile", "-o", str(prof), *base[1:]] if self.profile else base
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            self._procs.append((proc, log_path))
            _RUNNING.add(proc)

    def _start_in_process(self) -> None:
        if self.kind == "relay":
            from bench.relay import run_relay

            coro = run_relay(self.settings, list(range(1, HOPS + 1)), stop=self._stop)
        elif self.kind == "shell":
            from bench.passthrough import run_passthrough

            coro = run_passthrough(self.settings, list(STAGES), stop=self._stop)
        else:
            from streams.runtime.worker_process import run_workers
            from streams.stages.registry import STAGES as REGISTRY

            coro = run_workers(self.settings, [s for s in REGISTRY if s.name in STAGES], stop=self._stop)
        self._task = asyncio.create_task(coro, name=f"bench-{self.kind}")

    def check(self) -> None:
        """Raise if a process of the system exited: a benchmark must not wait out its timeout on a dead worker."""
        if self._task is not None and self._task.done():
            exc = self._task.exception()
            raise SystemDied(f"{self.name} stopped: {exc!r}") from exc
        for proc, log_path in self._procs:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SystemDied(f"{self.name}: {proc.args!r} exited with {proc.returncode}:\n{tail}")

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._procs] or [os.getpid()]

    async def stop(self, timeout_s: float = 15.0) -> None:
        if self._task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout_s)
            self._task = None
        for proc, _ in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc, _ in self._procs:
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            _RUNNING.discard(proc)
        self._procs.clear()

    async def delete_topics(self) -> None:
        """Bench topics are throwaway; leave the shared broker as we found it."""
        with contextlib.suppress(Exception):
            await delete_prefix_topics(self.settings)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (Linux /proc; 0 where unreadable)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks
