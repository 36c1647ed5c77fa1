"""CPU per request with OpenTelemetry tracing off and on, in the same run (issue 23).

The same requests go through every stage's real runner and ``process`` over in-memory topics (``run_pipeline``, no
broker, so the figure is the pipeline's own CPU and the ratio an upper bound for a real deployment, where the Kafka
client adds CPU tracing does not touch). Three configurations, interleaved round by round so machine noise hits them
alike: tracing off (the default), on with every trace kept, on at a 10 % sample rate. "On" exports over OTLP/HTTP
with the batch span processor to a receiver in a separate process on loopback (its CPU is not counted; the
exporter's thread is: each round ends with a flush). Figures are process CPU time (all threads), the minimum over
rounds, per request.

    python -m bench.tracing_bench [--requests 300] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import orjson

from streams.clients.envelopes import EnvelopeFactory
from streams.runtime import tracing
from streams.settings import Settings, load_settings
from streams.testing import run_pipeline

# A receiver that accepts every export (an empty ExportTraceServiceResponse is an empty protobuf body).
_RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

QUESTIONS = ("How do I rotate an API key?", "What is the refund policy for annual plans?",
             "Which regions can store EU customer data?", "How are rate limits applied per tenant?")


async def cpu_per_request(settings: Settings, requests: int) -> float:
    """Process CPU µs per request for one pass of ``requests`` through the pipeline (exports flushed)."""
    factory = EnvelopeFactory(settings)
    started = time.process_time_ns()
    envs = [factory.new(f"{QUESTIONS[i % len(QUESTIONS)]} #{uuid.uuid4().hex[:6]}", tenant=f"t{i % 5}")
            for i in range(requests)]
    result = await run_pipeline(envs, settings=settings)
    traced = tracing.tracer_for(settings)
    if traced is not None:
        traced.force_flush()
    spent = time.process_time_ns() - started
    assert len(result.responses) == requests, "every request must be answered"
    return spent / requests / 1e3


async def main(endpoint: str, requests: int, rounds: int) -> dict[str, object]:
    base = {"topic_prefix": "bench", "model_latency_scale": 0.0, "embedder": "hashing"}
    configs = {
        "off": load_settings(**base),
        "on, every trace": load_settings(**base, otel_endpoint=endpoint, otel_sample_rate=1.0),
        "on, 10 % sampled": load_settings(**base, otel_endpoint=endpoint + "/v1/traces", otel_sample_rate=0.1),
    }
    for settings in configs.values():  # warm-up: imports, embedder tables, the exporter's connection
        await cpu_per_request(settings, min(requests, 50))
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, settings in configs.items():
            samples[name].append(await cpu_per_request(settings, requests))
    best = {name: min(values) for name, values in samples.items()}
    return {"requests_per_round": requests, "rounds": rounds, "cpu_us_per_request": best,
            "ratio_vs_off": {name: round(v / best["off"], 3) for name, v in best.items()},
            "samples_us": samples, "load_avg": os.getloadavg()}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        report = asyncio.run(main(endpoint, args.requests, args.rounds))
    finally:
        receiver.terminate()
        receiver.wait(5)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    best = report["cpu_us_per_request"]
    ratios = report["ratio_vs_off"]
    assert isinstance(best, dict) and isinstance(ratios, dict)
    print(f"CPU per request, in-memory pipeline, min of {args.rounds} rounds × {args.requests} requests "
          f"(load {report['load_avg'][0]:.1f}):")  # type: ignore[index]
    for name, value in best.items():
        print(f"  tracing {name:<18} {value:8.0f} µs   {ratios[name]:.2f}× off")


if __name__ == "__main__":
    run()
