"""Wiring for the postprocess stage: the redactor and the output guardrails from settings.

``after_finish`` is the hook point for cache fill and conversation-memory append (see workers/postprocess.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from streams.settings import Settings
from workers.context import StageContext
from workers.postprocess import PostprocessContext
from workers.redaction import BasicRedactor


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[StageContext]:
    yield PostprocessContext(stage=base.stage, worker_id=base.worker_id, clock=base.clock, publisher=base.publisher,
                             topic_prefix=base.topic_prefix, redactor=BasicRedactor(),
                             blocked_terms=settings.output_blocked_terms, max_answer_chars=settings.output_max_chars)
