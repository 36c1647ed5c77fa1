"""Writing a benchmark run: latest.json (everything), latest.md (the table the README shows), latest.png (a plot,
only when matplotlib is importable — it is not a dependency)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Row:
    figure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    min_ratio: float | None = None  # pass when value / baseline ≥ this
    max_ratio: float | None = None  # pass when value / baseline ≤ this
    max_value: float | None = None  # pass when value ≤ this
    note: str = ""
    verdict: bool | None = None  # another module's own pass/fail, kept as it said

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.verdict is not None:
            return self.verdict
        checks: list[bool] = []
        ratio = self.ratio
        if self.min_ratio is not None:
            checks.append(ratio is not None and ratio >= self.min_ratio)
        if self.max_ratio is not None:
            checks.append(ratio is not None and ratio <= self.max_ratio)
        if self.max_value is not None:
            checks.append(self.value is not None and self.value <= self.max_value)
        return all(checks) if checks else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        ratio = self.ratio
        data["ratio"] = round(ratio, 3) if ratio is not None else None
        data["pass"] = self.passed
        return data

    @classmethod
    def from_extra(cls, scenario: str, row: dict[str, Any]) -> Row:
        """A row reported by another area's bench module (its own verdict is kept when it gives one)."""
        return cls(figure=f"{scenario}: {row.get('figure', '?')}", value=_num(row.get("value")),
                   unit=str(row.get("unit") or ""), baseline=_num(row.get("baseline")),
                   baseline_name=str(row.get("baseline_name") or ""), target=str(row.get("target") or ""),
                   note=str(row.get("note") or ""),
                   verdict=row["pass"] if isinstance(row.get("pass"), bool) else None)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _clients(setting: str) -> str:
    """Which Kafka client each system ran on (TOLLWAY_KAFKA_CLIENT; bench/relay.py follows it only when it names
    librdkafka)."""
    if setting == "auto":
        return "Kafka clients: tollway's lone stages librdkafka, its chains aiokafka, the floor and the relay aiokafka"
    peers = "librdkafka" if setting == "librdkafka" else "aiokafka"
    return f"Kafka clients: tollway {setting}, the floor and the relay {peers}"


def markdown(results: dict[str, Any]) -> str:
    run = results["run"]
    lines = [
        f"Run {run['started_at']} on {run['host']} ({run['cpus']} CPUs, load {run['loadavg_start'][0]:.1f} → "
        f"{run.get('loadavg_end', [0])[0]:.1f}), commit {run['git']}, {run['requests']:,} requests per burst, "
        f"{run['partitions']} partitions, {_clients(run.get('settings', {}).get('kafka_client', 'aiokafka'))}; "
        "every ratio is against a baseline measured in this run.",
        "",
        "| figure | value | baseline | ratio | target | pass |",
        "|---|---:|---:|---:|---|:---:|",
    ]
    for row in results["rows"]:
        value = f"{_fmt(row['value'])} {row['unit']}".strip() if row["value"] is not None else row.get("note", "")
        baseline = "–" if row["baseline"] is None else _fmt(row["baseline"]) + (
            f" ({row['baseline_name']})" if row["baseline_name"] else "")
        ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "–"
        verdict = {True: "✅", False: "❌", None: ""}[row["pass"]]
        note = f" {row['note']}" if row["note"] and row["value"] is not None else ""
        lines.append(f"| {row['figure']} | {value}{note} | {baseline} | {ratio} | {row['target']} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results["scenarios"]
    systems = {name: scenarios[key] for name, key in (("relay", "1_physical_limit"), ("shell", "2_3_shell"),
                                                      ("tollway", "2_3_tollway")) if key in scenarios}
    layouts = sorted({layout for data in systems.values() for layout in data})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(systems))
    for i, (name, data) in enumerate(systems.items()):
        left.bar([x + i * width for x in range(len(layouts))],
                 [data.get(k, {}).get("throughput", {}).get("req_per_s", 0) for k in layouts], width, label=name)
    left.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(layouts))], layouts)
    left.set_ylabel("req/s through six hops")
    left.set_title("max throughput (burst)")
    left.legend()
    for name, data in systems.items():
        for layout in layouts:
            latency = data.get(layout, {}).get("latency", {})
            rates = list(latency)
            for pct, style in (("p50_ms", "-"), ("p99_ms", "--")):
                right.plot([float(r) for r in rates], [latency[r]["overhead"].get(pct, 0) for r in rates], style,
                           marker="o", label=f"{name} {pct[:3]} ({layout})")
    right.set_xlabel("offered load (req/s)")
    right.set_ylabel("overhead latency (ms)")
    right.set_title("overhead latency, open loop")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "latest.json", "md": out_dir / "latest.md"}
    paths["json"].write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    paths["md"].write_text(markdown(results))
    if plot(results, out_dir / "latest.png"):
        paths["png"] = out_dir / "latest.png"
    return paths
