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
