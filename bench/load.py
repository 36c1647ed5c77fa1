"""Load for the benchmarks: request payloads, a loader (burst or open-loop) and a collector of arrivals.

The loader and the collector live in the harness process, never in the system under test, so the system's CPU is
spent on its own work only. Both sides read the same clock (``time.time_ns``): a request's latency is its arrival
time at the collector minus its *scheduled* send time (open loop: a loader that falls behind does not hide the delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.envelope import Tier
from streams.clients.envelopes import new_envelope
from streams.runtime.codec import encode
from streams.runtime.connections import kafka_security
from streams.settings import Settings, load_settings

# Benign, distinct prompts: every request passes the policy and misses the cache, so each one does the full work.
_VERBS = ("reset", "rotate", "export", "archive", "rename", "share", "restore", "audit", "migrate", "verify",
          "close", "merge", "upgrade", "downgrade", "pause", "resume", "transfer", "configure", "review", "update")
_THINGS = ("API key", "workspace", "invoice", "report", "dashboard", "webhook", "team", "project", "dataset",
           "billing plan", "login", "backup", "pipeline", "alert", "folder", "template", "contract", "profile",
           "schedule", "integration")
_WHERE = ("from the admin console", "with the command line tool", "through the public API", "on a mobile phone",
          "in the sandbox account", "for a new colleague", "before the end of the month", "without downtime",
          "after a failed payment", "in the European region", "for a single tenant", "during a migration",
          "with read only access", "when the owner left", "in bulk", "on a schedule", "for an audit",
          "with two factor login", "after renaming the team", "in a shared workspace")
_ASK = ("How do I", "What is the safest way to", "Can I", "Explain how to", "What happens when I try to")
_WHO = ("", " for the finance team", " for a contractor", " as an administrator", " for the support desk",
        " for a partner account", " as a read only user", " for the whole company")

# Long enough that queueing under a burst never ends a request by its deadline (that would skip the work).
BENCH_BUDGET_MS = 3_600_000


_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def _ticket(i: int, words: int = 4) -> str:
    """Made-up words that differ from request to request: with them no two prompts of a run come closer than ~0.65
    cosine under the hashing embedder (the templates alone reach the 0.88 semantic threshold), so every request
    misses the cache and does the full work."""
    digest = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=3 * words).digest()
    return " ".join("".join(_SYLLABLES[b % len(_SYLLABLES)] for b in digest[3 * k:3 * k + 3]) for k in range(words))


def prompt(i: int) -> str:
    index = i
    verb, i = _VERBS[i % len(_VERBS)], i // len(_VERBS)
    thing, i = _THINGS[i % len(_THINGS)], i // len(_THINGS)
    where, i = _WHERE[i % len(_WHERE)], i // len(_WHERE)
    ask, i = _ASK[i % len(_ASK)], i // len(_ASK)
    who = _WHO[i % len(_WHO)]
    return f"{ask} {verb} the {thing}{who} {where}? Ticket {_ticket(index)}."


@lru_cache(maxsize=1)
def _client_settings() -> Settings:
    # Building Settings reads the environment (~6 ms): once per loader process, not once per request.
    return Settings()


def request(run: str, i: int, *, tenant: str = "acme", prompt_index: int | None = None,
            tier: Tier = Tier.STANDARD) -> tuple[str, bytes]:
    """(request_id, envelope bytes) for request ``i`` of a run, created now.

    320,000 distinct prompts: give each phase of a run its own ``prompt_index`` range (and each run its own tenant)
    so that no request is answered from the cache a previous one filled.
    """
    request_id = f"{run}-{i}"
    env = new_envelope(prompt(i if prompt_index is None else prompt_index), tenant=tenant, tier=tier,
                       budget_ms=BENCH_BUDGET_MS, request_id=request_id, settings=_client_settings())
    return request_id, encode(env)


def request_id_of(value: bytes | None) -> str | None:
    """The request id of an envelope, a response or an audit record (top level, or one level down)."""
    if not value:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    rid = data.get("request_id")
    if isinstance(rid, str):
        return rid
    for inner in data.values():
        if isinstance(inner, dict) and isinstance(inner.get("request_id"), str):
            return str(inner["request_id"])
    return None


@dataclass
class Arrivals:
    at_ns: dict[str, int] = field(default_factory=dict)  # first arrival per request id
    values: dict[str, bytes] = field(default_factory=dict)  # kept only for topics asked to keep them
    anonymous: int = 0  # records without a request id (checkpoints and the like)


class Collector:
    """Reads output topics from their end (no consumer group) and timestamps each request's first arrival."""

    def __init__(self, bootstrap: str, topics: Iterable[str], *, keep_values: Iterable[str] = ()) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.keep_values = set(keep_values)
        self.arrivals: dict[str, Arrivals] = {t: Arrivals() for t in self.topics}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        self._consumer = AIOKafkaConsumer(*self.topics, bootstrap_servers=self.bootstrap,
                                          **kafka_security(load_settings(), "admin"), group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="latest",
                                          fetch_max_wait_ms=5, max_poll_records=5000)
        await self._consumer.start()
        deadline = time.monotonic() + timeout_s
        expected_topics = set(self.topics)
        while {tp.topic for tp in self._consumer.assignment()} != expected_topics:
            if time.monotonic() > deadline:
                raise TimeoutError(f"collector got no partitions of {sorted(expected_topics)}")
            await asyncio.sleep(0.05)
        tps = sorted(self._consumer.assignment())
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end now, so nothing produced after start() is missed
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.time_ns()
            for tp, records in batches.items():
                arrivals = self.arrivals[tp.topic]
                keep = tp.topic in self.keep_values
                for record in records:
                    rid = request_id_of(record.value)
                    if rid is None:
                        arrivals.anonymous += 1
                    elif rid not in arrivals.at_ns:
                        arrivals.at_ns[rid] = now
                        if keep and record.value is not None:
                            arrivals.values[rid] = record.value

    async def wait_for(self, topic: str, ids: Iterable[str], timeout_s: float,
                       check: Callable[[], None] | None = None) -> int:
        """Wait until every id arrived on ``topic`` (or the timeout); returns how many are still missing."""
        wanted = set(ids)
        arrived = self.arrivals[topic].at_ns
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # Counting first keeps the check cheap while most ids are still on their way.
            if len(arrived) >= len(wanted) and not wanted - arrived.keys():
                return 0
            if self._task is not None and self._task.done():
                self._task.result()  # the collector died: raise why
            if check is not None:
                check()  # raises when the system under test died
            await asyncio.sleep(0.05)
        return len(wanted - arrived.keys())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def statuses(collector: Collector, topic: str, ids: list[str]) -> dict[str, int]:
    """How the requests ended, counted from their responses on ``topic`` ("no response" for those missing)."""
    counts: dict[str, int] = {}
    values = collector.arrivals[topic].values
    for rid in ids:
        raw = values.get(rid)
        status = str(orjson.loads(raw).get("status")) if raw else "no response"
        counts[status] = counts.get(status, 0) + 1
    return counts


class Loader:
    """An idempotent producer that writes requests to an ingress topic, as fast as it can or at a fixed rate."""

    def __init__(self, bootstrap: str, *, linger_ms: int = 0) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                         **kafka_security(load_settings(), "admin"), enable_idempotence=True,
                                         linger_ms=linger_ms,
                                         max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def burst(self, topic: str, items: list[tuple[str, bytes]]) -> int:
        """Send pre-encoded requests back to back; returns the time of the first send (ns)."""
        started_ns = time.time_ns()
        deliveries = [await self.producer.send(topic, value, key=rid.encode()) for rid, value in items]
        await asyncio.gather(*deliveries)
        return started_ns

    async def open_loop(self, topic: str, run: str, rate_per_s: float, duration_s: float, *, tenant: str = "acme",
                        first_prompt: int = 0, tier: Tier = Tier.STANDARD,
                        prompts: Sequence[int] | None = None) -> dict[str, int]:
        """Send ``rate × duration`` requests on a fixed schedule; returns each id's scheduled send time (ns).
        Request ``i`` asks prompt ``first_prompt + i``, or ``prompts[i]`` when given."""
        count = max(1, round(rate_per_s * duration_s))
        scheduled: dict[str, int] = {}
        deliveries = []
        start_ns = time.time_ns() + 20_000_000
        for i in range(count):
            at_ns = start_ns + round(i * 1e9 / rate_per_s)
            delay_s = (at_ns - time.time_ns()) / 1e9
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            index = prompts[i] if prompts is not None else first_prompt + i
            rid, value = request(run, i, tenant=tenant, prompt_index=index, tier=tier)
            scheduled[rid] = at_ns
            deliveries.append(await self.producer.send(topic, value, key=rid.encode()))
        await asyncio.gather(*deliveries)
        return scheduled


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"count": 0}
    arr = np.asarray(values_ms, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"count": len(values_ms), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "max_ms": round(float(arr.max()), 3),
            "mean_ms": round(float(arr.mean()), 3)}
