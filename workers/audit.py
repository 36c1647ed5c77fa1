"""Audit stage: one audit record per request outcome."""

from __future__ import annotations

import orjson

from schemas.envelope import Envelope
from workers.context import StageContext

NAME = "audit"


async def process(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    for env in batch:
        record = {
            "request_id": env.request_id,
            "tenant": env.tenant,
            "status": env.outcome.status if env.outcome else None,
            "hops": [h.stage for h in env.hops],
        }
        ctx.publisher.publish(f"{ctx.topic_prefix}.audit.log", orjson.dumps(record), key=env.request_id.encode())
    return []
