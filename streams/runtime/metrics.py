"""Prometheus metrics shared by every worker (units in names, ``_total`` counters)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_EVENTS = Counter("tollway_stage_events_total", "Records consumed by a stage", ["stage"])
STAGE_QUEUE_SECONDS = Histogram("tollway_stage_queue_seconds", "Upstream produce to start of work",
                                ["stage"], buckets=_LATENCY_BUCKETS)
STAGE_SERVICE_SECONDS = Histogram("tollway_stage_service_seconds", "Stage service time per batch",
                                  ["stage"], buckets=_LATENCY_BUCKETS)
OUTCOMES = Counter("tollway_outcomes_total", "Terminal outcomes by the stage that decided them",
                   ["stage", "status"])
DEADLETTERS = Counter("tollway_deadletters_total", "Records sent to the dead-letter topic", ["stage", "reason"])
REFUSED = Counter("tollway_refused_total", "Requests refused for an unverified policy decision or outcome",
                  ["stage", "code"])

BUDGET_VIOLATIONS = Counter("tollway_budget_violations_total",
                            "Hops whose queue + service time exceeded the stage's allocation", ["tier", "stage"])
CONSUMER_LAG = Gauge("tollway_consumer_lag_records", "Records behind the partition end, by stage and lane",
                     ["stage", "lane"])
LANE_PAUSED = Gauge("tollway_batch_lane_paused", "1 while a stage holds its batch lane back for interactive traffic",
                    ["stage"])


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> int | None:
    """Expose /metrics on ``port`` (0 picks a free one); returns the bound port, or None when disabled."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
