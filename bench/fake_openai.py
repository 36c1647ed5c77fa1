"""A fake OpenAI-compatible model server for the gateway benchmark: answers every chat completion at once (or after
``--latency-ms``), so what a gateway in front of it adds is what is measured.

    python -m bench.fake_openai --port 8100 [--latency-ms 0]

Both gateways of bench/gateway_bench.py (LiteLLM's proxy and tollway) call this same process.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web


def completion(body: dict[str, object]) -> dict[str, object]:
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages, list) and messages else {}
    prompt = str(last.get("content", "")) if isinstance(last, dict) else ""
    answer = f"fake answer to: {prompt[:200]}"
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(answer.split()),
                  "total_tokens": 12 + len(answer.split())},
    }


def build_app(latency_ms: float) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)  # the emulated model's service time
        return web.Response(body=orjson.dumps(completion(body)), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(build_app(args.latency_ms), host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
