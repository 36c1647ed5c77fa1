"""Priority lanes: a stage serves its interactive lane first and holds the batch lane back while it is busy.

Each stage consumes two topics: ``tollway.<stage>`` (interactive and standard tiers) and ``tollway.<stage>.batch``
(backfill). Batch work must never push interactive latency over budget, so on every poll:

* while interactive traffic is *hot* (a record seen within ``hot_window_ms``), the batch lane gets at most
  ``batch_quota`` records per poll — a small slice, so a batch of backfill work never delays the next interactive
  record by more than a small batch's service time;
* while the interactive lane's lag is above ``pause_lag`` records, the batch lane is paused outright (no fetches
  at all), and resumed once the lag has drained below half of it (hysteresis, so it does not flap);
* when interactive traffic is idle, the batch lane gets the whole batch size: backfill runs at full speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams import metrics

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass
class LanePoller:
    stage: str
    batch_topics: frozenset[str]
    max_records: int
    wait_ms: int = 100
    batch_quota: int = 32
    pause_lag: int = 100
    hot_window_ms: float = 250.0
    _last_interactive: float = field(default=-1e18)
    _paused: bool = False

    def _split(self, consumer: AIOKafkaConsumer) -> tuple[list[TopicPartition], list[TopicPartition]]:
        assigned = consumer.assignment()
        interactive = [tp for tp in assigned if tp.topic not in self.batch_topics]
        batch = [tp for tp in assigned if tp.topic in self.batch_topics]
        return interactive, batch

    @staticmethod
    def _lag(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], batches: Batches) -> int:
        lag = 0
        for tp in partitions:
            high = consumer.highwater(tp)
            records = batches.get(tp)
            if high is None or not records:
                continue
            lag += max(0, high - (records[-1].offset + 1))
        return lag

    def _hot(self) -> bool:
        return (time.monotonic() - self._last_interactive) * 1000 < self.hot_window_ms

    async def poll(self, consumer: AIOKafkaConsumer) -> Batches:
        interactive, batch = self._split(consumer)
        batches: Batches
        if not batch or not interactive:
            batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
            return batches
        if not self._hot() and not self._paused:
            batches = await consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
        else:
            batches = await consumer.getmany(*interactive, timeout_ms=self.wait_ms if self._paused else 5,
                                             max_records=self.max_records)
            if not self._paused:
                extra = await consumer.getmany(*batch, timeout_ms=0, max_records=self.batch_quota)
                batches.update(extra)
        self._observe(consumer, interactive, batch, batches)
        return batches

    def _observe(self, consumer: AIOKafkaConsumer, interactive: list[TopicPartition], batch: list[TopicPartition],
                 batches: Batches) -> None:
        if any(tp.topic not in self.batch_topics for tp in batches):
            self._last_interactive = time.monotonic()
        lag = self._lag(consumer, interactive, batches)
        metrics.CONSUMER_LAG.labels(self.stage, "interactive").set(lag)
        metrics.CONSUMER_LAG.labels(self.stage, "batch").set(self._lag(consumer, batch, batches))
        if not self._paused and lag > self.pause_lag:
            consumer.pause(*batch)
            self._paused = True
        elif self._paused and lag <= self.pause_lag // 2:
            consumer.resume(*batch)
            self._paused = False
        metrics.LANE_PAUSED.labels(self.stage).set(1 if self._paused else 0)
