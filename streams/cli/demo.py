"""``make demo``: the whole job on the embedded defaults, in one process.

1. applies the sample policy (``infra/policy.example.yaml``) and indexes the sample corpus (``infra/corpus/``);
2. runs every stage and the Faust cost ledger;
3. publishes the bundled requests in two waves (the second repeats questions, so the cache answers them);
4. runs an agent task for the ``acme-support`` tenant — "Look up ticket T-1001, then close ticket T-1001": the
   model asks for two tools, the lookup runs, the status change is refused by policy — and prints its per-step
   latency waterfall (model → tools → model) and cost per step and per task; then a client-executed tool round trip
   (the model asks, this process runs the tool, the model answers from its result);
5. prints each response with its per-stage latency, the cost ledger (tenant × model × day) and writes the latency
   report picture;
6. shows the semantic cache's decisions on a reworded question and on near misses (the cache stage's own code with
   the worker's embedder, guard and pair verifier, and tenant acme's threshold from the sample policy): similarity,
   outcome and the guard's or the verifier's reason.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import orjson
from rich.console import Console

from schemas.envelope import Message, Tier
from schemas.ledger import LedgerSnapshot
from schemas.response import Response
from streams.cli.common import print_response
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.worker_process import run_workers
from streams.settings import REPO_ROOT, Settings
from streams.stages.registry import resolve as resolve_stages

POLICY_FILE = REPO_ROOT / "infra" / "policy.example.yaml"
CORPUS_DIR = REPO_ROOT / "infra" / "corpus"
AGENT_TENANT = "acme-support"
AGENT_TASK = "Look up ticket T-1001, then close ticket T-1001."
ORDER_TOOL = {"type": "function", "function": {
    "name": "lookup_order", "description": "an order's delivery state (runs in the caller's process)",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}


def load_samples(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def prepare(settings: Settings, console: Console) -> None:
    """Publish the sample policy and the sample corpus (both compacted topics: re-running is harmless)."""
    from streams.followers.index import chunk_file, publish
    from streams.followers.policy import load_policy_file, publish_policy

    policy = load_policy_file(POLICY_FILE)
    await publish_policy(settings, policy)
    chunks = [chunk for tenant_dir in sorted(CORPUS_DIR.iterdir()) if tenant_dir.is_dir()
              for path in sorted(tenant_dir.glob("*.md")) for chunk in chunk_file(path, tenant=tenant_dir.name)]
    await publish(settings, chunks)
    console.print(f"policy [b]{policy.version}[/] applied · {len(chunks)} chunks indexed for "
                  f"{len({c.tenant for c in chunks})} tenants")


async def start_in_background(run: asyncio.Task[None], ready: asyncio.Event, what: str,
                              timeout_s: float = 120.0) -> None:
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([run, waiter], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        run.result()  # re-raise the startup error
    if not ready.is_set():
        raise TimeoutError(f"{what} did not start within {timeout_s:.0f} s")


async def read_ledger(settings: Settings, url: str, expected: int, timeout_s: float = 60.0) -> LedgerSnapshot:
    """The Faust ledger's view once it has counted every response of this run (it runs a little behind)."""
    from streams.ledger.aggregate import ledger_snapshot
    from streams.ledger.client import fetch_snapshot

    target = await ledger_snapshot(settings)  # what the responses topic holds now, for comparison
    wanted = sum(r.requests for r in target.rows)
    deadline = time.monotonic() + timeout_s
    snapshot = await fetch_snapshot(url)
    while sum(r.requests for r in snapshot.rows) < max(wanted, expected) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        snapshot = await fetch_snapshot(url)
    return snapshot


CACHED_QUESTION = "How long do I have to ask for a refund on an annual plan?"
CACHE_PROBES = (
    ("same question, other words", "how many days do I get to request a refund for a yearly plan"),
    ("near miss: another plan", "How long do I have to ask for a refund on a monthly plan?"),
    ("near miss: negation", "How long do I have to ask for a refund when it is not an annual plan?"),
    ("another question", "Can I pause my annual plan instead of cancelling it?"),
)


async def cache_walkthrough(settings: Settings, console: Console) -> None:
    """The cache stage's decision for a few lookups against one cached answer (see the module docstring, step 6)."""
    from rich.table import Table

    from schemas.envelope import ModelResult, PolicyDecision
    from streams.followers.policy import load_policy_file
    from streams.stages.embedders import open_embedder
    from workers.cache import stage as cache
    from workers.cache.stage import CacheContext
    from workers.cache.store import MemoryCacheStore, SemanticMirror
    from workers.cache.verifier import load_verifier

    threshold = load_policy_file(POLICY_FILE).tenants["acme"].cache.semantic_threshold or 0.88
    async with open_embedder(settings) as embedder:
        verifier = load_verifier(embedder) if settings.cache_verifier else None
        ctx = CacheContext(stage="cache", store=MemoryCacheStore(), embedder=embedder,
                           mirror=SemanticMirror(embedder.dim), verifier=verifier)
        cached = new_envelope(CACHED_QUESTION, tenant="acme", settings=settings)
        cached.answer, cached.model = "Within 30 days of the renewal.", ModelResult(model="m", cost_micros=900)
        await cache.fill([cached], ctx)
        table = Table(title=f"semantic cache (acme, threshold {threshold}; cached: “{CACHED_QUESTION}”; "
                            f"{embedder.name}; verifier threshold "
                            f"{verifier.threshold if verifier else '-'})")
        for column in ("lookup", "prompt", "similarity", "outcome", "why"):
            table.add_column(column)
        for label, prompt in CACHE_PROBES:
            env = new_envelope(prompt, tenant="acme", settings=settings)
            env.policy = PolicyDecision(semantic_threshold=threshold)
            (env,) = await cache.process([env], ctx)
            result = env.cache
            assert result is not None
            score = f"verifier {result.verifier_score:.2f}" if result.verifier_score is not None else ""
            if result.outcome == "hit":
                why = f"served: guard passed, {score}".rstrip(", ")
            elif result.refused_reason == "verifier":
                why = f"refused by the verifier ({score} < {verifier.threshold if verifier else '-'})"
            elif result.refused_reason:
                why = f"refused by the near-miss guard: {result.refused_reason}"
            else:
                why = "no cached prompt at or above the threshold"
            similarity = f"{result.similarity:.3f}" if result.similarity is not None else "-"
            table.add_row(label, prompt, similarity, result.outcome, why)
        console.print(table)


async def run_agent_task(settings: Settings, client: TollwayClient, console: Console) -> list[Response]:
    """Two tool calls, one refused by policy, server-executed; then one client-executed round trip."""
    from streams.runtime.connections import redis_client
    from workers.tools.builtins import RedisTicketStore, seed_demo_tickets

    redis = redis_client(settings)
    try:
        await seed_demo_tickets(RedisTicketStore(redis, prefix=settings.topic_prefix), AGENT_TENANT)
    finally:
        await redis.aclose()
    console.rule(f"[b]{AGENT_TENANT}[/] agent task, server-executed tools: {AGENT_TASK}")
    env = new_envelope(AGENT_TASK, tenant=AGENT_TENANT, settings=settings, task_id="demo-agent-task")
    (task,) = await client.complete_envelopes([env], timeout_s=120)
    print_response(task)
    prompt = 'Use lookup_order with {"order_id": "A-17"}'
    console.rule(f"[b]{AGENT_TENANT}[/] client-executed tool (this process runs it): {prompt}")
    final, messages = await client.complete_with_tools(
        prompt, {"lookup_order": lambda args: {"order_id": args["order_id"], "state": "shipped"}},
        tools=[ORDER_TOOL], tenant=AGENT_TENANT, timeout=120)
    for message in messages[1:]:
        said = message.content or ", ".join(f"{c.name}({orjson.dumps(c.arguments).decode()})"
                                            for c in message.tool_calls or [])
        console.print(f"[dim]{message.role}:[/] {said}")
    print_response(final)
    return [task, final]


async def run_demo(settings: Settings, requests_file: Path, console: Console) -> list[Response]:
    from streams.cli.ledger import ledger_table, quality_table
    from streams.cli.report import write_report
    from streams.ledger.app import run_ledger

    await prepare(settings, console)
    stop = asyncio.Event()
    workers_ready, ledger_ready = asyncio.Event(), asyncio.Event()
    ledger_port = _free_port()
    workers = asyncio.create_task(run_workers(settings, resolve_stages(["all"]), ready=workers_ready, stop=stop))
    ledger = asyncio.create_task(run_ledger(settings, stop=stop, ready=ledger_ready, web_port=ledger_port))
    try:
        await start_in_background(workers, workers_ready, "the stage workers")
        await start_in_background(ledger, ledger_ready, "the cost ledger")
        samples = load_samples(requests_file)
        responses: list[Response] = []
        async with TollwayClient(settings) as submitter:
            for wave in sorted({int(str(s.get("wave", 1))) for s in samples}):
                envs = []
                for sample in (s for s in samples if int(str(s.get("wave", 1))) == wave):
                    messages = [Message.model_validate(m) for m in sample["messages"]]  # type: ignore[attr-defined]
                    envs.append(new_envelope(messages, tenant=str(sample.get("tenant", "acme")),
                                             tier=Tier(str(sample.get("tier", "standard"))), settings=settings,
                                             model=sample.get("model")))
                wave_responses = await submitter.complete_envelopes(envs, timeout_s=120)
                for env, response in zip(envs, wave_responses, strict=True):
                    console.rule(f"[b]{env.tenant}[/] ({env.tier}, wave {wave}): {env.request.prompt}")
                    print_response(response)
                responses += wave_responses
            responses += await run_agent_task(settings, submitter, console)
        snapshot = await read_ledger(settings, f"http://127.0.0.1:{ledger_port}", expected=len(responses))
        console.print(ledger_table(snapshot.rows, "cost ledger (Faust table): tenant × model × day"))
        console.print(quality_table(snapshot.rows, "quality beside cost: online evaluators' pass rates × day"))
        png, page = write_report(responses, settings.state_dir / "reports")
        console.print(f"latency report: {png} · {page}")
        await cache_walkthrough(settings, console)
        return responses
    finally:
        stop.set()
        await asyncio.gather(workers, ledger, return_exceptions=True)
