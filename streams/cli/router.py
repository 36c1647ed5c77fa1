"""`tollway router calibrate|show`: fit the calibrated router from labels, and show the parameters in force."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import ConfigError
from streams.cli.common import EXIT_USAGE
from streams.settings import get_settings
from workers.routing.calibrate import TenantReport, calibrate, read_labels
from workers.routing.calibrated import DEFAULT_PARAMS_PATH, dump_params, load_params
from workers.routing.catalog import load_catalog

router_app = typer.Typer(help="The calibrated router: fit it from labels, show it.", no_args_is_help=True)
console = Console()


def _frontier_table(report: TenantReport) -> Table:
    table = Table(title=f"tenant {report.tenant}: saving/quality frontier on held-out folds ({report.rows} rows; "
                        "quality ≥ 85 %, thinned)")
    for col in ("P(≥medium) at", "P(large) at", "saving vs all-large", "quality", "under-routed", "over-routed", ""):
        table.add_column(col, justify="right")
    shown = [p for p in report.frontier if p["quality"] >= 0.85 or p is report.chosen]
    step = max(1, len(shown) // 16)
    for point in [p for i, p in enumerate(shown) if i % step == 0 or p is report.chosen]:
        mark = "◀ chosen" if point is report.chosen else ""
        table.add_row(f"{point['medium_at']:.2f}", f"{point['large_at']:.2f}", f"{100 * point['saving']:.1f} %",
                      f"{100 * point['quality']:.1f} %", f"{100 * point['under_routed']:.1f} %",
                      f"{100 * point['over_routed']:.1f} %", mark)
    return table


Point = dict[str, float]


def plot_frontier(curves: dict[str, tuple[list[Point], Point | None]], path: Path, *,
                  extra: dict[str, Point] | None = None, title: str = "routing: saving vs quality") -> None:
    """Saving (x) against quality (y), one line per curve with its chosen point marked, plus single points
    (e.g. the router before calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.6), dpi=120)
    for label, (points, chosen) in curves.items():
        axes.plot([100 * p["saving"] for p in points], [100 * p["quality"] for p in points], marker=".", label=label)
        if chosen is not None:
            axes.scatter([100 * chosen["saving"]], [100 * chosen["quality"]], s=90, zorder=3, edgecolors="black")
    for label, point in (extra or {}).items():
        axes.scatter([100 * point["saving"]], [100 * point["quality"]], marker="x", s=70, zorder=3, label=label)
    axes.axhline(95, color="grey", linestyle=":", linewidth=1)
    axes.axhline(97, color="grey", linestyle="--", linewidth=1)
    axes.axvline(60, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("saving vs always-largest (%)")
    axes.set_ylabel("quality: routed to a tier ≥ label (%)")
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


@router_app.command("calibrate")
def calibrate_command(
    labels: Annotated[Path, typer.Option("--labels", help="JSONL: prompt|messages, tier|model, [tenant, group, "
                                         "split]")],
    out: Annotated[Path, typer.Option(help="where to write the parameters")] = DEFAULT_PARAMS_PATH,
    split: Annotated[str | None, typer.Option(help="only rows of this split (rows without one are kept)")] = None,
    group_by: Annotated[str, typer.Option(help="field whose rows share a fold (group, task …)")] = "group",
    target_quality: Annotated[float, typer.Option(min=0.5, max=1.0, help="share routed to a tier ≥ its label")]
    = 0.97,
    regularisation: Annotated[float, typer.Option(min=0.0, help="L2 strength on standardised features")] = 1.0,
    min_tenant_rows: Annotated[int, typer.Option(min=10, help="labels a tenant needs for its own fit")] = 100,
    plot: Annotated[Path | None, typer.Option(help="also draw the frontier as a PNG")] = None,
    dry_run: Annotated[bool, typer.Option(help="fit and print, write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Fit the router per tenant, print the saving/quality frontier and the chosen operating point, write the
    parameters (versioned; the router re-reads the file when it changes)."""
    try:
        catalog = load_catalog(get_settings().models_file)
        rows = read_labels(labels, catalog, split=split, group_by=group_by)
        params, reports = calibrate(rows, catalog, target_quality=target_quality, lam=regularisation,
                                    min_tenant_rows=min_tenant_rows, source=f"{labels.name}"
                                    + (f" split={split}" if split else "") + f" group_by={group_by}")
    except ConfigError as exc:
        console.print(f"[red]cannot calibrate:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc
    if not dry_run:
        dump_params(params, out)
    if plot is not None:
        plot_frontier({f"tenant {r.tenant} (held-out folds)": (r.frontier, r.chosen) for r in reports}, plot)
    if as_json:
        typer.echo(orjson.dumps({"version": params.version, "written": None if dry_run else str(out),
                                 "tenants": {r.tenant: {"rows": r.rows, "chosen": r.chosen, "frontier": r.frontier}
                                             for r in reports}}).decode())
        return
    for report in reports:
        console.print(_frontier_table(report))
        c = report.chosen
        met = "meets" if c["quality"] >= target_quality else "[red]misses[/]"
        console.print(f"tenant {report.tenant}: operating point P(≥medium) ≥ {c['medium_at']:.2f}, P(large) ≥ "
                      f"{c['large_at']:.2f} — saving {100 * c['saving']:.1f} %, quality {100 * c['quality']:.1f} % "
                      f"({met} the {100 * target_quality:.0f} % target)")
    console.print(f"parameters {params.version} " + ("not written (--dry-run)" if dry_run else f"written to {out}"))


@router_app.command("show")
def show(path: Annotated[Path, typer.Option(help="parameters file")] = DEFAULT_PARAMS_PATH) -> None:
    """The calibrated parameters in force: version, labels, per-tenant operating point."""
    try:
        params = load_params(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from exc
    if params is None:
        console.print(f"no parameters at {path}: the heuristic estimator decides")
        return
    console.print(f"parameters {params.version} fitted {params.fitted_at} on {params.labels}")
    for tenant, fit in params.tenants.items():
        op = fit.operating_point
        console.print(f"· {tenant}: {fit.rows} rows; P(≥medium) ≥ {op.medium_at:.2f}, P(large) ≥ {op.large_at:.2f}"
                      f" (held-out saving {100 * op.saving:.1f} %, quality {100 * op.quality:.1f} %)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(router_app, name="router")
