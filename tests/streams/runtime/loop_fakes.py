"""Fakes shared by the consumer-loop tests (a lone stage's loop, a co-located chain's): acknowledgements held at a
gate, a consumer that hands out scripted batches, and a wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from streams.testing import MemoryTopics


class GatedTopics(MemoryTopics):
    """Acknowledgements held until the test opens the gate (``fail``: then refused); what was sent, awaited and
    committed, in order."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.gate = asyncio.Event()
        self.fail = False

    async def send(self) -> None:
        self.log.extend(f"sent {topic}" for topic, _value, _key in self.pending)
        await MemoryTopics.flush(self)  # on the topics at once; acknowledged at the gate
        self.flushes -= 1

    async def flush(self) -> None:
        await self.send()
        self.log.append("awaiting acks")
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("not acknowledged")
        self.log.append("acked")
        self.flushes += 1


class ScriptedConsumer:
    """Just what the loops use of a consumer: the given batches one poll at a time, then nothing."""

    def __init__(self, batches: list[dict[TopicPartition, Any]], log: list[str]) -> None:
        self.batches = batches
        self.log = log
        self.tps = {tp for batch in batches for tp in batch}

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    def highwater(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, Any]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.001)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append(f"commit {sorted(offsets.values())}")

    def paused(self) -> set[TopicPartition]:
        return set()

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)
