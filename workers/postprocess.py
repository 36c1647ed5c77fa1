"""Post-process stage: output guardrails and the terminal outcome of a successful request."""

from __future__ import annotations

from schemas.envelope import Envelope, PostprocessResult, Status
from workers.context import StageContext

NAME = "postprocess"


async def process(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    for env in batch:
        env.postprocess = PostprocessResult()
        hit = env.cache is not None and env.cache.outcome == "hit"
        env.finish(Status.CACHE_HIT if hit else Status.OK, stage=NAME)
    return batch
