"""Count what a process does, by kind: ``python -m bench.counting -m <module> [args…]`` runs ``<module>`` as
``__main__`` with counters installed; on SIGUSR1 it writes them to ``$TOLLWAY_COUNTS_DIR/<pid>.json``.

Counted (each a call of the named function, so the figures do not depend on the machine's load):
``loop.wakeups`` (event-loop iterations, ``BaseEventLoop._run_once``), ``loop.timers`` (``call_at``: every sleep,
timeout and ``call_later``), ``loop.tasks`` (tasks created), ``kafka.getmany`` (consumer polls),
``kafka.commit`` (``AIOKafkaConsumer.commit``), ``kafka.req.<Request>`` (requests sent to the broker by type:
Fetch, Produce, OffsetCommit, Heartbeat, Metadata …) and ``kafka.fetch_partitions`` (partitions named
by the fetches), ``redis.commands`` and ``redis.round_trips`` (commands packed,
writes to the socket), and ``cpu_s`` (the process's CPU time, all threads).

Used by ``bench/stage_counts.py``; the wrappers cost ~0.3 µs per counted call, so the CPU it reads is a little
above an uncounted process's.
"""

from __future__ import annotations

import asyncio.base_events
import json
import os
import runpy
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

COUNTS: Counter[str] = Counter()
_SNAPSHOTS = [0]


def _count(owner: Any, name: str, key: str | Callable[[tuple[Any, ...]], str]) -> None:
    original = getattr(owner, name)
    counts = COUNTS
    if isinstance(key, str):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key(args)] += 1
            return original(*args, **kwargs)
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def _request_name(args: tuple[Any, ...]) -> str:
    request = args[1]
    name = type(request).__name__.split("_v")[0]
    if name == "FetchRequest":
        topics = getattr(request, "topics", None) or ()
        COUNTS["kafka.fetch_partitions"] += sum(len(partitions) for _topic, partitions in topics)
    return "kafka.req." + name


def install() -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.conn import AIOKafkaConnection
    from redis.asyncio.connection import AbstractConnection

    from streams.runtime.connections import HiredisPackConnection

    loop_class = asyncio.base_events.BaseEventLoop
    _count(loop_class, "_run_once", "loop.wakeups")
    _count(loop_class, "call_at", "loop.timers")
    _count(loop_class, "create_task", "loop.tasks")
    _count(AIOKafkaConsumer, "getmany", "kafka.getmany")
    _count(AIOKafkaConsumer, "commit", "kafka.commit")
    _count(AIOKafkaConnection, "send", _request_name)
    _count(HiredisPackConnection, "pack_command", "redis.commands")  # every TCP client of the workers packs here
    _count(AbstractConnection, "send_packed_command", "redis.round_trips")
    signal.signal(signal.SIGUSR1, _dump)


def _dump(_signum: int, _frame: Any) -> None:
    out_dir = Path(os.environ.get("TOLLWAY_COUNTS_DIR", "."))
    _SNAPSHOTS[0] += 1
    snapshot = {"seq": _SNAPSHOTS[0], "at_s": time.monotonic(), "cpu_s": time.process_time(), **COUNTS}
    path = out_dir / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot))
    tmp.replace(path)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: python -m bench.counting -m <module> [args…]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
