"""Where the last responses of a prefix waited: ``python -m bench.response_hops --prefix P [--last 200]``.

Reads the newest responses on ``<prefix>.responses`` and prints p50/p90 of each hop's queue and service time, the
time from the request's creation to its outcome (``completed``), and to the response record's timestamp (when the
finished response was handed to the producer): the gap between the two is what a response waited behind other work
(issue 18: a co-located chain once sent its responses only after the audit member had run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections import defaultdict

from aiokafka import ConsumerRecord, TopicPartition

from schemas.response import Response
from streams.runtime.codec import decode_as
from streams.runtime.connections import new_consumer, start
from streams.runtime.topics import topology
from streams.settings import load_settings


async def newest_responses(prefix: str, last: int) -> list[ConsumerRecord[bytes, bytes]]:
    settings = load_settings(topic_prefix=prefix)
    topic = topology(settings).responses
    consumer = new_consumer(settings, role="producer")
    await start(consumer, settings, "responses reader")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or
                                                               await _partitions(consumer, topic))]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        wanted = 0
        for tp in partitions:
            first = max(0, end[tp] - last // len(partitions))
            consumer.seek(tp, first)
            wanted += end[tp] - first
        records: list[ConsumerRecord[bytes, bytes]] = []
        while len(records) < wanted:
            batches = await consumer.getmany(timeout_ms=2000)
            if not batches:
                break
            records.extend(r for batch in batches.values() for r in batch)
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: object, topic: str) -> set[int]:
    cluster = await consumer._client.fetch_all_metadata()  # type: ignore[attr-defined]
    return set(cluster.partitions_for_topic(topic) or ())


def timeline(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.value is None:
            continue
        response = decode_as(record.value, Response)
        for hop in response.hops:
            series[f"{hop.stage} queue"].append(hop.queue_ms)
            series[f"{hop.stage} service"].append(hop.service_ms)
        series["created → completed"].append((response.completed_at_ns - response.created_at_ns) / 1e6)
        series["created → response record"].append((record.timestamp * 1_000_000 - response.created_at_ns) / 1e6)
        series["completed → response record"].append(
            (record.timestamp * 1_000_000 - response.completed_at_ns) / 1e6)
    return series


def slowest(records: list[ConsumerRecord[bytes, bytes]], share: float) -> dict[str, float]:
    """Mean of each hop's queue and service time over the slowest ``share`` of responses (created → response record)
    and over the rest: which wait grows for the slow ones."""
    rows = []
    for record in records:
        if record.value is None:
            continue
        response = decode_as(record.value, Response)
        row = {f"{hop.stage} {part}": value for hop in response.hops
               for part, value in (("queue", hop.queue_ms), ("service", hop.service_ms))}
        row["completed → response record"] = (record.timestamp * 1_000_000 - response.completed_at_ns) / 1e6
        row["created → response record"] = (record.timestamp * 1_000_000 - response.created_at_ns) / 1e6
        rows.append(row)
    rows.sort(key=lambda row: row["created → response record"])
    cut = max(1, round(len(rows) * share))
    slow, rest = rows[-cut:], rows[:-cut]
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: (statistics.fmean(r.get(name, 0.0) for r in slow), statistics.fmean(r.get(name, 0.0) for r in rest))
            for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--last", type=int, default=200)
    parser.add_argument("--slowest", type=float, default=0.02, help="share of responses shown apart (0: none)")
    args = parser.parse_args()
    records = asyncio.run(newest_responses(args.prefix, args.last))
    series = timeline(records)
    for name, values in series.items():
        ordered = sorted(values)
        print(f"{name:30s} p50 {statistics.median(ordered):8.2f} ms  p90 {ordered[int(len(ordered) * 0.9)]:8.2f} ms"
              f"  (n={len(ordered)})")
    if args.slowest:
        print(f"mean ms, slowest {args.slowest:.0%} vs the rest:")
        for name, (slow, rest) in slowest(records, args.slowest).items():
            print(f"  {name:30s} {slow:8.2f}  {rest:8.2f}")


if __name__ == "__main__":
    main()
