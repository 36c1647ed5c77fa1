"""Retrieval stage: attaches the tenant's most relevant passages to each request."""

from __future__ import annotations

from schemas.envelope import Envelope, RetrievalResult
from workers.context import StageContext

NAME = "retrieval"


async def process(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    for env in batch:
        env.retrieval = RetrievalResult(skipped="no index configured")
    return batch
