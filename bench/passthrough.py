"""tollway's Kafka shell with pass-through stages: the runner's own cost, with no stage logic on top.

Each stage hands its batch on untouched, except that post-process gives it its terminal outcome (so the response is
published, as in the real pipeline) and audit publishes a small record instead of forwarding.

    python -m bench.passthrough all | <stage> ...   (TOLLWAY_TOPIC_PREFIX names the topics)
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import orjson

from schemas.envelope import Envelope, Status
from streams.settings import Settings
from workers.context import StageContext


async def passthrough(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    if ctx.stage == "postprocess":
        for env in batch:
            env.finish(Status.OK, stage="postprocess")
    if ctx.stage == "audit":
        for env in batch:
            record = {"request_id": env.request_id, "tenant": env.tenant,
                      "status": env.outcome.status if env.outcome else None}
            ctx.publisher.publish(f"{ctx.topic_prefix}.audit.log", orjson.dumps(record), key=env.request_id.encode())
        return []
    return batch


async def run_passthrough(settings: Settings, stages: list[str], *, stop: asyncio.Event | None = None) -> None:
    from streams.runtime.worker_process import run_workers

    await run_workers(settings, stages, stop=stop, process_overrides=dict.fromkeys(stages, passthrough))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", help="stage names, or 'all'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from streams.runtime.worker_process import resolve_stages

    asyncio.run(run_passthrough(Settings(), resolve_stages(args.stages)))


if __name__ == "__main__":
    main()
