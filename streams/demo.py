"""``make demo``: every stage in one process, the bundled sample requests, and what happened to them."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from schemas.envelope import Message, Tier
from schemas.response import Response
from streams.client import Submitter, new_envelope
from streams.settings import Settings
from streams.worker import resolve_stages, run_workers


def load_samples(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def run_demo(settings: Settings, requests_file: Path, console: Console) -> list[Response]:
    stop, ready = asyncio.Event(), asyncio.Event()
    workers = asyncio.create_task(run_workers(settings, resolve_stages(["all"]), ready=ready, stop=stop))
    ready_or_crash = asyncio.create_task(ready.wait())
    await asyncio.wait([workers, ready_or_crash], return_when=asyncio.FIRST_COMPLETED)
    if workers.done():
        workers.result()  # re-raise the worker's startup error
    try:
        samples = load_samples(requests_file)
        async with Submitter(settings) as submitter:
            envs = []
            for sample in samples:
                messages = [Message.model_validate(m) for m in sample["messages"]]  # type: ignore[attr-defined]
                envs.append(new_envelope(messages, tenant=str(sample.get("tenant", "acme")),
                                         tier=Tier(str(sample.get("tier", "standard"))), settings=settings))
            responses = await submitter.complete(envs, timeout_s=60)
        from streams.cli import print_response

        for env, response in zip(envs, responses, strict=True):
            console.rule(f"[b]{env.tenant}[/] ({env.tier}): {env.request.prompt}")
            print_response(response)
        console.print(cost_summary(responses))
        return responses
    finally:
        stop.set()
        await workers


def cost_summary(responses: list[Response]) -> Table:
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for r in responses:
        row = rows[(r.tenant, r.model or "-")]
        row[0] += 1
        row[1] += r.usage.input_tokens
        row[2] += r.usage.cached_input_tokens
        row[3] += r.usage.output_tokens
        row[4] += r.cost_micros
        row[5] += r.saved_micros
    table = Table(title="cost summary (tenant × model)")
    for col in ("tenant", "model", "requests", "tokens in", "cached in", "tokens out", "cost µ$", "saved µ$"):
        table.add_column(col)
    for (tenant, model), row in sorted(rows.items()):
        table.add_row(tenant, model, *(str(v) for v in row))
    return table
