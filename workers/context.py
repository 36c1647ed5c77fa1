"""What a stage's pure ``process`` receives instead of globals: a clock, a publisher and its own backends.

Each stage module in ``workers/`` defines ``NAME`` and ``async def process(batch, ctx) -> list[Envelope]`` typed on
its own context. Stages that need backends (Redis, a model client, an index) subclass :class:`StageContext` with
typed fields; the wiring in ``streams/stages/`` builds those contexts from settings (``derive``), tests build them
with in-memory backends, and ``streams/stages/registry.py`` ties each stage's process to its context type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar


class Clock(Protocol):
    def now_ns(self) -> int: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


@dataclass
class FakeClock:
    """A clock tests move by hand."""

    at_ns: int = 1_700_000_000_000_000_000

    def now_ns(self) -> int:
        return self.at_ns

    def advance_ms(self, ms: float) -> None:
        self.at_ns += int(ms * 1e6)


class Publisher(Protocol):
    """Sends records beside the stage's main output (audit records, cache fills, ...).

    The Kafka implementation only enqueues: the shell waits for every record of a batch to be acknowledged before it
    commits the batch's offsets, so a crash redelivers rather than loses.
    """

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None: ...


@dataclass
class MemoryPublisher:
    records: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.records.append((topic, key, value))


@dataclass(frozen=True)
class StageContext:
    stage: str
    worker_id: str = "test-worker"
    clock: Clock = field(default_factory=SystemClock)
    publisher: Publisher = field(default_factory=MemoryPublisher)
    topic_prefix: str = "tollway"


C = TypeVar("C", bound=StageContext)


def derive(cls: type[C], base: StageContext, **backends: Any) -> C:
    """A stage's own context built on the process's base context (clock, publisher, names) plus its backends."""
    shared = {f.name: getattr(base, f.name) for f in fields(StageContext)}
    return cls(**shared, **backends)
