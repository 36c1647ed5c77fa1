"""Wiring for the postprocess stage: the PII redactor, the output guardrails, and two ``after_finish`` hooks —
cache fill (workers/cache/stage.py) and conversation-memory append (workers/memory.py) — run on each batch's answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from schemas.envelope import Envelope
from streams.runtime.connections import redis_client
from streams.settings import Settings
from streams.stages import cache as stage_cache
from workers.cache import stage as cache
from workers.context import StageContext, derive
from workers.detectors.redaction import PiiRedactor
from workers.memory import RedisMemory, append_turns
from workers.postprocess import PostprocessContext


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[PostprocessContext]:
    memory_client = redis_client(settings)
    try:
        async with stage_cache.open_context(settings, base) as cache_ctx:
            memory = RedisMemory(memory_client, namespace=settings.topic_prefix, ttl_s=settings.memory_ttl_s,
                                 max_turns=settings.memory_max_turns)

            async def fill_cache(batch: list[Envelope], _ctx: StageContext) -> None:
                await cache.fill(batch, cache_ctx)

            async def remember_turns(batch: list[Envelope], _ctx: StageContext) -> None:
                await append_turns(batch, memory)

            yield derive(PostprocessContext, base, redactor=PiiRedactor(), blocked_terms=settings.output_blocked_terms,
                         max_answer_chars=settings.output_max_chars, after_finish=(fill_cache, remember_turns),
                         eval_sample_rate=settings.eval_sample_rate, eval_grounded_min=settings.eval_grounded_min)
    finally:
        await memory_client.aclose()
