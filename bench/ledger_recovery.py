"""How long a restarted ledger worker takes to rebuild its tables from their changelogs.

    .venv/bin/python bench/ledger_recovery.py --updates 1000000

Writes ``--updates`` ledger table updates straight into the ledger's changelog topics (the very records the agent
would have written: :func:`workers.ledger.apply_response` run over synthetic responses, four writes per request —
seen, hour cell, day cell, task), uncompacted, under a fresh topic prefix; then starts ``tollway ledger worker`` and
reports the time until its tables are recovered (the worker's own measure, and spawn → first HTTP answer), the
recovered table sizes, and the recovery rate. Memory store: recovery reads every changelog record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.envelope import Status, Usage
from schemas.response import Response
from streams.ledger_app import app_id
from streams.settings import REPO_ROOT, Settings
from streams.topics import ensure_topics
from workers.ledger import apply_response

TABLES = ("seen", "cells", "tasks", "outcomes")


class Recorder(dict[str, Any]):
    def __init__(self, name: str, sink: list[tuple[str, int, bytes, bytes]], partition: list[int]) -> None:
        super().__init__()
        self.name, self.sink, self.partition = name, sink, partition

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        # Faust's json serializer: the key and the value each as JSON text.
        self.sink.append((self.name, self.partition[0], json.dumps(key).encode(), json.dumps(value).encode()))


async def write_changelogs(settings: Settings, updates: int) -> dict[str, int]:
    name = app_id(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{name}-{table}-changelog", settings.partitions, 1,
                                            topic_configs={"cleanup.policy": "compact"}) for table in TABLES])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, acks="all",
                                max_batch_size=1024 * 1024)
    await producer.start()
    written: dict[str, int] = {}
    try:
        sink: list[tuple[str, int, bytes, bytes]] = []
        partition = [0]
        tables = {t: Recorder(t, sink, partition) for t in ("seen", "cells", "tasks")}
        offsets = [0] * settings.partitions
        t0 = 1_700_000_000 * 10**9
        i, total = 0, 0
        started = time.monotonic()
        while total < updates:
            response = Response(request_id=f"req-{i}", tenant=f"tenant-{i % 20}", status=Status.OK,
                                model=("small", "large")[i % 2], usage=Usage(input_tokens=100, output_tokens=20),
                                cost_micros=100 + i % 1000, created_at_ns=t0 + i * 10**8, task_id=f"task-{i % 5000}")
            partition[0] = i % settings.partitions
            apply_response(response, partition=partition[0], offset=offsets[partition[0]], seen=tables["seen"],
                           cells=tables["cells"], tasks=tables["tasks"])
            offsets[partition[0]] += 1
            i += 1
            if len(sink) >= 20_000 or total + len(sink) >= updates:
                batch = sink[: updates - total]
                futures = [await producer.send(f"{name}-{table}-changelog", value, key=key, partition=part)
                           for table, part, key, value in batch]
                await asyncio.gather(*futures)
                for table, *_ in batch:
                    written[table] = written.get(table, 0) + 1
                total += len(batch)
                sink.clear()
                print(f"\rwritten {total:,} updates ({total / (time.monotonic() - started):,.0f}/s)", end="",
                      file=sys.stderr)
        print(file=sys.stderr)
    finally:
        await producer.stop()
    return written


async def time_recovery(settings: Settings, port: int, state_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_PARTITIONS": str(settings.partitions),
           "TOLLWAY_LEDGER_PORT": str(port), "TOLLWAY_STATE_DIR": str(state_dir)}
    spawned = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "streams.cli", "ledger", "worker", cwd=REPO_ROOT,
                                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                if proc.returncode is not None:
                    raise SystemExit(f"ledger worker exited {proc.returncode}")
                try:
                    status: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/ledger/status/")).json()
                except httpx.HTTPError:
                    status = {}
                if status.get("recovered_s") is not None:
                    status["spawn_to_ready_s"] = round(time.monotonic() - spawned, 2)
                    return status
                await asyncio.sleep(0.2)  # polling a separate process's readiness
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--port", type=int, default=16099)
    args = parser.parse_args()
    settings = Settings(topic_prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=args.partitions)
    await ensure_topics(settings)
    started = time.monotonic()
    written = await write_changelogs(settings, args.updates)
    print(f"wrote {sum(written.values()):,} changelog records in {time.monotonic() - started:.1f} s: {written}")
    state_dir = Path("/tmp") / settings.topic_prefix
    status = await time_recovery(settings, args.port, state_dir)
    recovered_s = status["recovered_s"]
    print(json.dumps({"updates": args.updates, "partitions": args.partitions, "prefix": settings.topic_prefix,
                      "recovered_s": round(recovered_s, 2), "spawn_to_ready_s": status["spawn_to_ready_s"],
                      "updates_per_s": round(args.updates / recovered_s), "seen": status["seen"],
                      "cells": status["cells"], "tasks": status["tasks"]}))


if __name__ == "__main__":
    asyncio.run(main())
