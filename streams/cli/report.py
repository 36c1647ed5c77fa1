"""``tollway report``: a run's per-stage latency as a waterfall picture, a percentile table and an HTML page."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.response import Response
from streams.settings import Settings

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class StageLatency:
    stage: str
    count: int
    queue_ms: dict[int, float]
    service_ms: dict[int, float]


@dataclass(frozen=True)
class LatencyReport:
    stages: list[StageLatency]
    end_to_end_ms: dict[int, float]
    requests: int


def summarise(responses: Iterable[Response]) -> LatencyReport:
    queue: dict[str, list[float]] = {}
    service: dict[str, list[float]] = {}
    end_to_end: list[float] = []
    for response in responses:
        if response.replay:
            continue
        end_to_end.append((response.completed_at_ns - response.created_at_ns) / 1e6)
        for hop in response.hops:
            queue.setdefault(hop.stage, []).append(hop.queue_ms)
            service.setdefault(hop.stage, []).append(hop.service_ms)

    def pct(values: list[float]) -> dict[int, float]:
        if not values:
            return dict.fromkeys(PERCENTILES, 0.0)
        return {p: float(np.percentile(values, p)) for p in PERCENTILES}

    stages = [StageLatency(s, len(queue[s]), pct(queue[s]), pct(service[s])) for s in queue]
    return LatencyReport(stages, pct(end_to_end), len(end_to_end))


def waterfall_png(report: LatencyReport, title: str = "tollway — per-stage latency") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.55 * max(1, len(report.stages))))
    start = 0.0
    labels = []
    for row, stage in enumerate(report.stages):
        q, s = stage.queue_ms[50], stage.service_ms[50]
        ax.barh(row, q, left=start, color="#c7d7ee", edgecolor="#6b8cbf", label="queue (p50)" if row == 0 else None)
        ax.barh(row, s, left=start + q, color="#2f6db5", label="service (p50)" if row == 0 else None)
        p99 = stage.queue_ms[99] + stage.service_ms[99]
        ax.plot([start + p99], [row], marker="|", markersize=14, color="#b5422f",
                label="queue+service p99" if row == 0 else None)
        labels.append(f"{stage.stage}  ({q + s:.1f} ms)")
        start += q + s
    ax.set_yticks(range(len(report.stages)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request was published (medians stacked)")
    ax.set_title(f"{title}\n{report.requests} requests · end to end p50 {report.end_to_end_ms[50]:.1f} ms, "
                 f"p99 {report.end_to_end_ms[99]:.1f} ms", fontsize=10)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def html_page(report: LatencyReport, png: bytes) -> str:
    head = "".join(f"<th>queue p{p}</th>" for p in PERCENTILES) + "".join(f"<th>service p{p}</th>" for p in PERCENTILES)
    rows = "".join(
        f"<tr><td>{html.escape(s.stage)}</td><td>{s.count}</td>"
        + "".join(f"<td>{s.queue_ms[p]:.2f}</td>" for p in PERCENTILES)
        + "".join(f"<td>{s.service_ms[p]:.2f}</td>" for p in PERCENTILES) + "</tr>"
        for s in report.stages
    )
    e2e = " · ".join(f"p{p} {v:.1f} ms" for p, v in report.end_to_end_ms.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tollway latency report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>tollway latency report</h1><p>{report.requests} requests · end to end {e2e}</p>
<img alt="per-stage latency waterfall" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Per-stage percentiles (ms)</h2><table><tr><th>stage</th><th>hops</th>{head}</tr>{rows}</table></body></html>
"""


def write_report(responses: Iterable[Response], out_dir: Path) -> tuple[Path, Path]:
    report = summarise(responses)
    png = waterfall_png(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    png_path, html_path = out_dir / "latency.png", out_dir / "latency.html"
    png_path.write_bytes(png)
    html_path.write_text(html_page(report, png))
    return png_path, html_path


async def read_responses(settings: Settings, topic: str) -> list[Response]:
    """Every response on the topic, from its start to its end as of now (undecodable records skipped)."""
    from schemas.errors import BadEvent
    from streams.followers.base import read_to_end
    from streams.runtime.codec import decode_as

    responses: list[Response] = []
    for record in await read_to_end(settings, topic):
        try:
            responses.append(decode_as(record.value, Response))
        except BadEvent:
            continue
    return responses
