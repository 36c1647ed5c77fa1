"""Model stage: routes each request to a model and calls it."""

from __future__ import annotations

from schemas.envelope import Envelope, ModelResult, Usage
from workers.context import StageContext

NAME = "model"


async def process(batch: list[Envelope], ctx: StageContext) -> list[Envelope]:
    for env in batch:
        prompt = env.request.prompt
        env.answer = f"echo: {prompt}"
        env.model = ModelResult(model="echo", backend="local", region="local",
                                usage=Usage(input_tokens=len(prompt.split()), output_tokens=len(prompt.split()) + 1))
    return batch
