"""What a chain's fetches cost: ``python -m bench.chain_fetch_bench [--rounds 300] [--pairs 3]`` (needs ``make up``).

One consumer of the topics ``worker all+`` reads (every member's lanes and the ingress's: 16 topics) polls through
the chain's own :class:`~streams.runtime.lanes.LanePoller`; each round produces one record to the ingress and polls
until it arrives. Reported per round: this process's CPU (producer included, the same in both) and the broker's
(from /proc, so run it on a quiet broker), with the quiet partitions fetched (``all``) and left out (``park``,
:class:`~streams.runtime.lanes.QuietPartitions`), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time

from streams.runtime.acls import ALL_STAGES
from streams.runtime.chain import member_topics
from streams.runtime.connections import new_consumer, new_producer, start
from streams.runtime.lanes import LanePoller, ProcessLanes, QuietPartitions
from streams.runtime.runner import consumer_options
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings, load_settings
from streams.stages.registry import STAGES


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def broker_pid(settings: Settings) -> int:
    port = settings.bootstrap_servers.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split("pid=", 1)[1].split(",", 1)[0])


async def rounds(settings: Settings, n: int, *, park: bool, broker: int) -> dict[str, float]:
    topo = topology(settings)
    topics = sorted(member_topics(STAGES, topo))
    producer = new_producer(settings, role="producer")
    group = topo.group(f"chain.fetchbench{time.time_ns()}")
    consumer = new_consumer(settings, *topics, role=ALL_STAGES, group_id=group, **consumer_options(settings))
    await start(producer, settings)
    await start(consumer, settings)
    try:
        poller = LanePoller("chain", frozenset(t for t in topics if t.endswith(".batch")), max_records=500,
                            shared=ProcessLanes())
        if park:
            poller.quiet = QuietPartitions(steady_topics=frozenset(topo.stage_lanes("ingress")))
        settle = time.monotonic() + 4  # past the first quiet_s, so parking has settled
        while time.monotonic() < settle:
            await poller.poll(consumer)
        broker0, cpu0 = cpu_ticks(broker), time.process_time()
        for _ in range(n):
            await producer.send_and_wait(topo.ingress(), b"y" * 300)
            while not await poller.poll(consumer):
                pass
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        return {"partitions": len(consumer.assignment()), "paused": len(consumer.paused()),
                "client_us": round((time.process_time() - cpu0) / n * 1e6),
                "broker_us": round((cpu_ticks(broker) - broker0) * tick_ms * 1000 / n)}
    finally:
        await consumer.stop()
        await producer.stop()


async def main(args: argparse.Namespace) -> None:
    settings = load_settings(topic_prefix=args.prefix)
    await ensure_topics(settings)
    broker = broker_pid(settings)
    for _ in range(args.pairs):
        for park in (False, True):
            row = await rounds(settings, args.rounds, park=park, broker=broker)
            print({"mode": "park" if park else "all", **row, "load": round(os.getloadavg()[0], 2)}, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--prefix", default="fetchbench")
    asyncio.run(main(parser.parse_args()))
