"""Prometheus metrics shared by every worker (units in names, ``_total`` counters)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_EVENTS = Counter("tollway_stage_events_total", "Records consumed by a stage", ["stage"])
STAGE_QUEUE_SECONDS = Histogram("tollway_stage_queue_seconds", "Upstream produce to start of work",
                                ["stage"], buckets=_LATENCY_BUCKETS)
STAGE_SERVICE_SECONDS = Histogram("tollway_stage_service_seconds", "Stage service time per batch",
                                  ["stage"], buckets=_LATENCY_BUCKETS)
OUTCOMES = Counter("tollway_outcomes_total", "Terminal outcomes by the stage that decided them",
                   ["stage", "status"])
DEADLETTERS = Counter("tollway_deadletters_total", "Records sent to the dead-letter topic", ["stage", "reason"])
