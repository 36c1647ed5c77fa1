"""The worker's metrics server: /metrics for Prometheus, /healthz for Kubernetes' probes (deploy/k8s)."""

from __future__ import annotations

import urllib.request

from streams.runtime.metrics import STAGE_EVENTS, serve_metrics


def _get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.read()


def test_healthz_answers_ok_and_metrics_stay_on_metrics() -> None:
    STAGE_EVENTS.labels(stage="probe-test").inc()
    port = serve_metrics(0)
    assert port is not None
    assert _get(port, "/healthz") == (200, b"ok\n")
    status, body = _get(port, "/metrics")
    assert status == 200 and b'tollway_stage_events_total{stage="probe-test"}' in body


def test_disabled_metrics_serve_nothing() -> None:
    assert serve_metrics(None) is None


def test_observe_many_counts_like_observe_one_at_a_time() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from streams.runtime.metrics import _LATENCY_BUCKETS, observe_many

    registry = CollectorRegistry()
    one = Histogram("one_seconds", "one at a time", buckets=_LATENCY_BUCKETS, registry=registry)
    many = Histogram("many_seconds", "in one call", buckets=_LATENCY_BUCKETS, registry=registry)
    values = [0.0, 0.0005, 0.00051, 0.001, 0.3, 2.5, 99.0, 0.01, 0.0099, 1e-9]
    for value in values:
        one.observe(value)
    observe_many(many, values)
    observe_many(many, [])

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name.removeprefix(name), s.labels, s.value) for metric in registry.collect()
                if metric.name == name for s in metric.samples if not s.name.endswith("_created")]

    assert len(samples("one_seconds")) == len(_LATENCY_BUCKETS) + 3  # the buckets, +Inf, count and sum
    assert samples("one_seconds") == samples("many_seconds")
