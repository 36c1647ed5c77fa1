"""``tollway backfill INPUT.jsonl --out RESULTS.jsonl --rate 200/s --tier batch``: bulk requests on the batch lane.

Input lines are ``{"prompt": ...}`` or ``{"messages": [...]}`` with optional ``id``, ``tenant``, ``model``,
``max_tokens``, ``temperature``, ``task_id``, ``session_id``, ``quality_tier`` — or OpenAI Batch API lines
(``{"custom_id": ..., "body": {"model": ..., "messages": [...]}}``). A line that does not parse is reported with its
number and skipped; it never stops the job.

**Request ids are deterministic**: ``bf_`` + sha256(job, tenant, the line's ``id`` — or its number and content). The
job name defaults to the output file's name, so rerunning the same command yields the same ids.

**Resuming never works or charges a request twice.** Results are appended to the output as they arrive (one JSON line
each, flushed), so the output is the record of what is done: a rerun skips every id already in it. Requests that were
published but not yet answered when the job stopped are still in Kafka; the rerun finds them by scanning the ingress
lane from the job's start (kept in ``RESULTS.jsonl.state``) and waits for their responses — from the responses topic,
read from the same point — instead of publishing them again. Only ids never published are published. And should a
request be published twice anyway (the state file deleted), its id is the same: the policy stage's reservation, the
audit record and the ledger all deduplicate by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from schemas.envelope import Envelope, GenerationParams, Message, Status, Tier
from schemas.errors import ServiceUnavailable
from schemas.response import Response
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.connections import new_consumer, start
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings

RESUME_MARGIN_MS = 5_000  # clocks of this host and the broker may differ a little
SCAN_TIMEOUT_S = 300.0  # reading back a previous run's requests; far longer than a healthy broker needs


def parse_rate(text: str) -> float:
    """``200/s``, ``6000/m``, ``200`` → requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|min|h))?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--rate {text!r}: use a positive number per second or minute, e.g. 200/s or 6000/m")
    per = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) / per


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, min_length=1, max_length=200)
    custom_id: str | None = Field(default=None, min_length=1, max_length=200)
    method: str | None = None  # OpenAI batch lines
    url: str | None = None
    body: dict[str, Any] | None = None
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    tenant: str | None = Field(default=None, min_length=1, max_length=128)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    task_id: str | None = None
    session_id: str | None = None
    quality_tier: str | None = None


@dataclass(frozen=True)
class Item:
    line: int
    request_id: str
    source_id: str | None
    tenant: str
    messages: list[Message]
    fields: dict[str, Any]

    def envelope(self, settings: Settings, tier: Tier) -> Envelope:
        return new_envelope(list(self.messages), tenant=self.tenant, tier=tier, settings=settings,
                            request_id=self.request_id, **self.fields)


@dataclass(frozen=True)
class BadLine:
    line: int
    error: str


def request_id_for(job: str, tenant: str, source_id: str | None, line: int, raw: bytes) -> str:
    identity = source_id if source_id is not None else f"line:{line}:{hashlib.sha256(raw).hexdigest()}"
    return "bf_" + hashlib.sha256(orjson.dumps([job, tenant, identity])).hexdigest()[:32]


def parse_line(line: int, raw: bytes, *, job: str, tenant: str) -> Item:
    try:
        spec = _Line.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc']) or 'line'}: {first['msg']}") from None
    if spec.body is not None:  # an OpenAI batch line: the request is the body
        body = spec.body
        merged = {**spec.model_dump(exclude_none=True, exclude={"body"}), "messages": body.get("messages"),
                  "model": body.get("model"), "temperature": body.get("temperature"),
                  "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens")}
        try:
            spec = _Line.model_validate({k: v for k, v in merged.items() if v is not None})
        except ValidationError as exc:
            raise ValueError(f"body: {exc.errors()[0]['msg']}") from None
    if (spec.prompt is None) == (spec.messages is None):
        raise ValueError("give exactly one of prompt or messages")
    messages = spec.messages or [Message(role="user", content=spec.prompt or "")]
    params: dict[str, Any] = {}
    if spec.max_tokens is not None:
        params["max_tokens"] = spec.max_tokens
    if spec.temperature is not None:
        params["temperature"] = spec.temperature
    fields: dict[str, Any] = {"model": None if spec.model in (None, "auto") else spec.model,
                              "task_id": spec.task_id, "session_id": spec.session_id,
                              "quality_tier": spec.quality_tier, "params": GenerationParams(**params)}
    source_id = spec.id or spec.custom_id
    owner = spec.tenant or tenant
    return Item(line=line, request_id=request_id_for(job, owner, source_id, line, raw), source_id=source_id,
                tenant=owner, messages=messages, fields=fields)


def read_input(path: Path, *, job: str, tenant: str) -> tuple[list[Item], list[BadLine]]:
    items: list[Item] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                item = parse_line(number, raw.strip(), job=job, tenant=tenant)
            except ValueError as exc:
                bad.append(BadLine(number, str(exc)))
                continue
            if item.request_id in seen:
                bad.append(BadLine(number, f"duplicate of line {seen[item.request_id]} (same id)"))
                continue
            seen[item.request_id] = number
            items.append(item)
    return items, bad


def read_done(out: Path) -> set[str]:
    """Request ids already in the output. A torn last line (a crash mid-write) is cut off so appends stay valid."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with out.open("r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    done = set()
    for raw in data.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            done.add(orjson.loads(raw)["request_id"])
    return done


@dataclass(frozen=True)
class BackfillOptions:
    input_file: Path
    out: Path
    rate_per_s: float = 200.0
    tier: Tier = Tier.BATCH
    tenant: str = "acme"
    api_key: str | None = None
    job: str | None = None
    max_in_flight: int = 2000
    dry_run: bool = False
    result_timeout_s: float | None = None  # default: the tier's budget plus a minute


@dataclass
class Summary:
    total: int = 0
    already_done: int = 0
    resumed_in_flight: int = 0
    published: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    unanswered: int = 0
    cost_micros: int = 0
    elapsed_s: float = 0.0
    dry_run: bool = False
    bad_lines: list[BadLine] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)


async def scan_published(settings: Settings, topic: str, since_ms: int, wanted: set[str], *,
                         timeout_s: float = SCAN_TIMEOUT_S) -> set[str]:
    """Which of ``wanted`` were published to ``topic`` at or after ``since_ms`` (record keys are request ids).

    Reads from there up to the end offsets taken at the start; ServiceUnavailable if that takes over ``timeout_s``.
    """
    if not wanted:
        return set()
    consumer = new_consumer(settings, role="backfill", auto_offset_reset="earliest")
    await start(consumer, settings, "backfill scan")
    found: set[str] = set()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            return found
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            at = starts.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while remaining:
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceUnavailable(
                    f"could not read {topic} up to its end within {timeout_s:g} s to find the requests a previous "
                    f"run published ({len(remaining)} partition(s) unfinished); is the broker overloaded? Run the "
                    "backfill again to resume")
            for records in (await consumer.getmany(*remaining, timeout_ms=500)).values():
                found.update(rid for record in records
                             if record.key is not None and (rid := record.key.decode()) in wanted)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return found
    finally:
        await consumer.stop()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[b]backfill[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>7.1f}/s"), TextColumn("failed {task.fields[failed]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)


async def run_backfill(settings: Settings, options: BackfillOptions, *, console: Console | None = None,
                       progress: bool = True) -> Summary:
    console = console or Console()
    job = options.job or options.out.name
    started = time.monotonic()
    items, bad = read_input(options.input_file, job=job, tenant=options.tenant)
    done_ids = read_done(options.out)
    todo = [item for item in items if item.request_id not in done_ids]
    summary = Summary(total=len(items), already_done=len(items) - len(todo), bad_lines=bad, dry_run=options.dry_run)
    for line in bad:
        console.print(f"[yellow]line {line.line} skipped:[/] {line.error}")
    if options.dry_run or not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    state_path = options.out.with_name(options.out.name + ".state")
    resuming = state_path.exists()
    if resuming:
        since_ms = int(orjson.loads(state_path.read_bytes())["started_at_ms"]) - RESUME_MARGIN_MS
    else:
        since_ms = time.time_ns() // 1_000_000
        state_path.write_bytes(orjson.dumps({"job": job, "started_at_ms": since_ms}))

    await ensure_topics(settings)
    in_flight = (await scan_published(settings, topology(settings).ingress(options.tier), since_ms,
                                      {i.request_id for i in todo}) if resuming else set())
    summary.resumed_in_flight = len(in_flight)
    timeout_s = options.result_timeout_s or {Tier.INTERACTIVE: settings.budget_interactive_ms,
                                             Tier.STANDARD: settings.budget_standard_ms,
                                             Tier.BATCH: settings.budget_batch_ms}[options.tier] / 1000 + 60
    client = TollwayClient(settings, tenant=options.tenant, api_key=options.api_key, tier=options.tier)
    client.expect(in_flight)  # before the reader starts, so a reply already on the topic is not passed over
    window = asyncio.Semaphore(options.max_in_flight)
    view = _progress(console) if progress else None
    task = view.add_task("backfill", total=len(todo), rate=0.0, failed=0) if view else None

    with options.out.open("ab") as out:
        def record(item: Item, response: Response) -> None:
            row = {"line": item.line, "id": item.source_id, **response.model_dump(mode="json")}
            out.write(orjson.dumps(row) + b"\n")
            out.flush()
            summary.done += 1
            summary.by_status[response.status.value] = summary.by_status.get(response.status.value, 0) + 1
            summary.cost_micros += response.cost_micros
            if response.status in (Status.OK, Status.CACHE_HIT):
                summary.ok += 1
            else:
                summary.failed += 1
            if view is not None and task is not None:
                view.update(task, advance=1, failed=summary.failed,
                            rate=summary.done / max(1e-9, time.monotonic() - started))

        async def collect(item: Item) -> None:
            try:
                record(item, await client.result(item.request_id, timeout_s))
            except TimeoutError:
                summary.unanswered += 1
            finally:
                window.release()

        collectors: list[asyncio.Task[None]] = []
        try:
            await client.start(replies_since_ms=since_ms if resuming else None)
            if view is not None:
                view.start()
            for item in todo:
                if item.request_id in in_flight:
                    await window.acquire()
                    collectors.append(asyncio.create_task(collect(item)))
            await _publish(client, settings, options, [i for i in todo if i.request_id not in in_flight],
                           window, collect, collectors, summary)
            await asyncio.gather(*collectors)
        finally:
            for collector in collectors:
                collector.cancel()
            await asyncio.gather(*collectors, return_exceptions=True)
            if view is not None:
                view.stop()
            await client.close()
            out.flush()
            os.fsync(out.fileno())
    summary.elapsed_s = time.monotonic() - started
    return summary


async def _publish(client: TollwayClient, settings: Settings, options: BackfillOptions, items: list[Item],
                   window: asyncio.Semaphore, collect: Callable[[Item], Coroutine[Any, Any, None]],
                   collectors: list[asyncio.Task[None]], summary: Summary) -> None:
    """Publish at ``rate_per_s`` in small acknowledged groups, never more than ``max_in_flight`` unanswered.

    A group is as large as the rate allows *and* the window has free slots right now: it never waits for a slot while
    holding others. Slots are freed only by the collectors of published requests, so a group waiting for more slots
    than the window had free could wait forever — which is how a resumed run hung when the previous run's in-flight
    results held the window long enough for the rate to allow a group larger than the window.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    index = 0
    while index < len(items):
        await window.acquire()  # room for at least one: waits only on collectors that already exist
        taken = 1
        try:
            next_due = began + summary.published / options.rate_per_s
            if next_due > loop.time():
                await asyncio.sleep(next_due - loop.time())  # pacing to the rate, not synchronisation
            allowed = max(1, int((loop.time() - began) * options.rate_per_s) + 1 - summary.published)
            limit = min(allowed, 500, len(items) - index)
            while taken < limit and not window.locked():
                await window.acquire()  # free now: returns at once
                taken += 1
            group = items[index:index + taken]
            await client.submit_envelopes([item.envelope(settings, options.tier) for item in group])
        except BaseException:
            for _ in range(taken):  # nothing of the group is waited for: give its slots back
                window.release()
            raise
        collectors.extend(asyncio.create_task(collect(item)) for item in group)
        summary.published += len(group)
        index += len(group)


def print_summary(summary: Summary, console: Console, *, as_json: bool = False) -> None:
    if as_json:
        data = {k: v for k, v in summary.__dict__.items() if k != "bad_lines"}
        data["bad_lines"] = [{"line": b.line, "error": b.error} for b in summary.bad_lines]
        console.print_json(orjson.dumps(data).decode())
        return
    table = Table(title="backfill" + (" (dry run)" if summary.dry_run else ""), show_header=False)
    rate = summary.done / summary.elapsed_s if summary.elapsed_s else 0.0
    rows: list[tuple[str, object]] = [("valid requests", summary.total),
                                      ("already in the output", summary.already_done),
                                      ("bad lines (skipped)", len(summary.bad_lines))]
    if not summary.dry_run:
        rows += [("resumed in flight", summary.resumed_in_flight), ("published", summary.published),
                 ("done", summary.done), ("ok", summary.ok), ("failed / denied", summary.failed),
                 ("unanswered (rerun to resume)", summary.unanswered),
                 ("by status", ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items())) or "-"),
                 ("cost", f"${summary.cost_micros / 1e6:.6f} ({summary.cost_micros} µ$)"),
                 ("time", f"{summary.elapsed_s:.1f} s ({rate:.1f}/s)")]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
