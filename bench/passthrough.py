"""tollway's Kafka shell with pass-through stages: the runner's own cost, with no stage logic on top.

Each stage hands its batch on untouched, except that post-process gives it its terminal outcome (so the response is
published, as in the real pipeline) and audit publishes a small record instead of forwarding.

    python -m bench.passthrough all | <stage> ...   (TOLLWAY_TOPIC_PREFIX names the topics)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

import orjson

from schemas.envelope import Envelope, Status
from streams.runtime.stage import Stage, base_context
from streams.settings import Settings, load_settings
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


def passthrough_stages(names: Sequence[str]) -> list[Stage[StageContext]]:
    """The registry's stages (names, entry and sink flags) with the pass-through ``process`` and no backends: the
    Kafka shell alone."""
    from streams.stages.registry import resolve

    return [Stage(s.name, StageContext, passthrough, base_context, sink=s.sink, entry=s.entry)
            for s in resolve(list(names))]


async def run_passthrough(settings: Settings, stages: Sequence[str], *, stop: asyncio.Event | None = None) -> None:
    from streams.runtime.worker_process import run_workers

    await run_workers(settings, passthrough_stages(stages), stop=stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", help="stage names, or 'all'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_passthrough(load_settings(), args.stages))


if __name__ == "__main__":
    main()
