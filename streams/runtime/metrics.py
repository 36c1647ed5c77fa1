"""Prometheus metrics shared by every worker (units in names, ``_total`` counters)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

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


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one increment per bucket instead of one per value (a
    batch's queue times: hundreds per batch under load). Through prometheus_client's bucket values when they are
    where it has always kept them, else one ``observe`` at a time."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    if not values:
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound ≥ value, as observe() counts it (+Inf last)
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(values))


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_healthz(metrics_app: WsgiApp) -> WsgiApp:
    """``GET /healthz`` answers ``200 ok`` (Kubernetes' probes; the server starts once the worker has found its topics
    and opened its stages); every other path is Prometheus' app (which answers /metrics on any path)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> int | None:
    """Expose /metrics and /healthz on ``port`` (0 picks a free one); returns the bound port, or None when disabled."""
    if port is None:
        return None
    server = make_server(host, port, with_healthz(make_wsgi_app()), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return int(server.server_port)
