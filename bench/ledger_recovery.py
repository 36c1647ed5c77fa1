"""How long a restarted ledger worker takes to be ready again after N ledger updates (responses counted).

    .venv/bin/python bench/ledger_recovery.py --responses 1000000

Writes ``--responses`` synthetic responses to ``<prefix>.responses`` (20 tenants, 2 models, 5,000 tasks: one ledger
update each — two cells, a task, a seen id) under a fresh topic prefix, and the checkpoints a worker that counted
them would have left in its Faust changelogs (:func:`workers.ledger.checkpoints.checkpoint_writes` every
``--checkpoint-records`` records of a partition; ``--no-checkpoints``: none, the worst case). Then starts
``tollway ledger worker`` and reports the time until it answers (its own measures: Faust's changelog recovery and the
catch-up that rebuilds seen from the responses' keys and re-applies records after the checkpoints), the worker's
CPU time, and the changelog records written. The changelogs are as written (not yet compacted by the broker): the
worst case for the last minute of a running worker.

The design before checkpoints (one changelog record per request for seen, plus one per cell and task) is
``git show f2335b9:bench/ledger_recovery.py``: its ``--updates`` counted changelog records, ~4 per response.
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
from streams.ledger.app import CHECKPOINT_TABLES, CHECKPOINT_TOPIC_CONFIGS, app_id
from streams.runtime.codec import encode
from streams.runtime.connections import kafka_security
from streams.runtime.topics import ensure_topics, topology
from streams.settings import REPO_ROOT, Settings
from streams.testing import seal_response
from workers.ledger.checkpoints import LiveTable, checkpoint_writes
from workers.ledger.dedup import apply_response

T0 = 1_700_000_000 * 10**9


def synthetic(i: int) -> Response:
    return seal_response(_synthetic(i))


def _synthetic(i: int) -> Response:
    return Response(request_id=f"req-{i}", tenant=f"tenant-{i % 20}", status=Status.OK,
                    model=("small", "large")[i % 2], usage=Usage(input_tokens=100, output_tokens=20),
                    cost_micros=100 + i % 1000, created_at_ns=T0 + i * 10**8, completed_at_ns=T0 + i * 10**8 + 1,
                    deadline_at_ns=T0 + i * 10**8 + 10**9, task_id=f"task-{i % 5000}")


async def write_topics(settings: Settings, responses: int, *, checkpoint_every: int | None) -> dict[str, int]:
    """Produce the responses and the checkpoint changelogs; returns the records written per topic kind."""
    name = app_id(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{name}-{table}-changelog", settings.partitions, 1,
                                            topic_configs=dict(CHECKPOINT_TOPIC_CONFIGS))
                                   for table in CHECKPOINT_TABLES])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                linger_ms=50, acks="all",
                                max_batch_size=1024 * 1024, compression_type=None)
    await producer.start()
    seen: dict[str, Any] = {}
    live = {table: LiveTable() for table in CHECKPOINT_TABLES}
    counts = {"responses": 0, **{f"{t}_changelog": 0 for t in CHECKPOINT_TABLES}}
    since: dict[int, int] = {}
    offsets = [0] * settings.partitions
    topic = topology(settings).responses
    started = time.monotonic()
    try:
        futures = []
        for i in range(responses):
            response = synthetic(i)
            partition = i % settings.partitions
            offset = offsets[partition]
            offsets[partition] += 1
            futures.append(await producer.send(topic, encode(response), key=response.request_id.encode(),
                                               partition=partition))
            live["cells"].partition = live["tasks"].partition = partition
            apply_response(response, partition=partition, offset=offset, seen=seen, cells=live["cells"],
                           tasks=live["tasks"])
            since[partition] = since.get(partition, 0) + 1
            if checkpoint_every is not None and since[partition] >= checkpoint_every:
                since[partition] = 0
                for table in CHECKPOINT_TABLES:
                    for key, value in checkpoint_writes(live[table], partition=partition, offset=offset):
                        # Faust's json serializer: the key and the value each as JSON text.
                        futures.append(await producer.send(f"{name}-{table}-changelog", json.dumps(value).encode(),
                                                           key=json.dumps(key).encode(), partition=partition))
                        counts[f"{table}_changelog"] += 1
            counts["responses"] += 1
            if len(futures) >= 50_000:
                await asyncio.gather(*futures)
                futures.clear()
                print(f"\rwritten {i + 1:,} responses ({(i + 1) / (time.monotonic() - started):,.0f}/s)", end="",
                      file=sys.stderr)
        await asyncio.gather(*futures)
        print(file=sys.stderr)
    finally:
        await producer.stop()
    return counts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def time_recovery(settings: Settings, port: int, state_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "TOLLWAY_TOPIC_PREFIX": settings.topic_prefix, "TOLLWAY_PARTITIONS": str(settings.partitions),
           "TOLLWAY_LEDGER_PORT": str(port), "TOLLWAY_STATE_DIR": str(state_dir),
           "TOLLWAY_KAFKA_CREDENTIALS_FILE": str(settings.kafka_credentials_path)}
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
                    status["worker_cpu_s"] = round(cpu_seconds(proc.pid), 2)
                    return status
                await asyncio.sleep(0.2)  # polling a separate process's readiness
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--checkpoint-records", type=int, default=Settings().ledger_checkpoint_records)
    parser.add_argument("--no-checkpoints", action="store_true", help="no changelog at all: re-apply everything")
    parser.add_argument("--port", type=int, default=16099)
    args = parser.parse_args()
    settings = Settings(topic_prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=args.partitions)
    await ensure_topics(settings)
    started = time.monotonic()
    written = await write_topics(settings, args.responses,
                                 checkpoint_every=None if args.no_checkpoints else args.checkpoint_records)
    print(f"wrote {written} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    status = await time_recovery(settings, args.port, Path("/tmp") / settings.topic_prefix)
    print(json.dumps({
        "responses": args.responses, "partitions": args.partitions, "prefix": settings.topic_prefix,
        "checkpoint_records": None if args.no_checkpoints else args.checkpoint_records, **written,
        "recovered_s": round(status["recovered_s"], 2), "changelog_s": round(status["changelog_s"], 2),
        "catch_up_s": round(status["catch_up_s"], 2), "spawn_to_ready_s": status["spawn_to_ready_s"],
        "worker_cpu_s": status["worker_cpu_s"], "caught_up_keys": status["caught_up_keys"],
        "reapplied": status["reapplied"], "responses_per_s": round(args.responses / status["recovered_s"]),
        "seen": status["seen"], "cells": status["cells"], "tasks": status["tasks"]}))


if __name__ == "__main__":
    asyncio.run(main())
