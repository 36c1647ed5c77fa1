"""Prometheus metrics of the cache and retrieval stages (units in names, ``_total`` counters)."""

from __future__ import annotations

from prometheus_client import Counter

LOOKUPS = Counter("tollway_cache_lookups_total", "Cache lookups by outcome (hit/miss/bypass/error) and kind",
                  ["outcome", "kind"])
NEAR_MISSES = Counter("tollway_cache_near_miss_rejections_total",
                      "Semantic candidates above the threshold refused by the near-miss guard or the pair verifier",
                      ["reason"])
ERRORS = Counter("tollway_cache_errors_total", "Cache store failures (Redis down or slow); each became a miss",
                 ["operation"])
FILLS = Counter("tollway_cache_fills_total", "Answers written to the cache")
SAVED_MICROS = Counter("tollway_cache_saved_micros_total", "Model cost avoided by cache hits, in micro-dollars")
RETRIEVAL_ERRORS = Counter("tollway_retrieval_errors_total", "Retrieval backend failures (the request went on)",
                           ["operation"])
RETRIEVAL_POLICY_FIRST = Counter("tollway_retrieval_policy_first_total",
                                 "Requests sent to the policy stage before a remote embedder could read their prompt")
