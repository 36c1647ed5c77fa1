"""Prometheus counters of the model calls: a slow or failing backend shows here before it shows in outcomes."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CALLS = Counter("tollway_model_calls_total", "Backend calls by model and result (ok, timeout, error)",
                ["model", "result"])
CALL_SECONDS = Histogram("tollway_model_call_seconds", "Backend call time by model (timeouts included)", ["model"],
                         buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
FALLBACKS = Counter("tollway_model_fallbacks_total", "Requests moved to the next model of their chain after a "
                    "failed attempt", ["from_model", "to_model"])
