"""`tollway models list|route`: the model catalog in force, and the router's decision for a prompt, explained."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.envelope import PolicyDecision
from schemas.errors import ConfigError, TollwayError
from streams.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE
from streams.clients.envelopes import new_envelope
from streams.settings import get_settings
from workers.routing.auto import auto_tier
from workers.routing.catalog import QUALITY_TIERS, ModelCatalog, load_catalog
from workers.routing.online import OnlineRouter
from workers.routing.router import route

models_app = typer.Typer(help="The model catalog and the router.", no_args_is_help=True)
console = Console()


def _catalog() -> ModelCatalog:
    try:
        return load_catalog(get_settings().models_file)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from exc


@models_app.command("list")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The catalog in force (TOLLWAY_MODELS or the shipped default): prices, tiers, latency, capacity."""
    catalog = _catalog()
    if as_json:
        typer.echo(orjson.dumps(catalog.model_dump(mode="json")).decode())
        return
    table = Table(title="model catalog (prices in µ$ per million tokens)")
    for col in ("model", "backend", "region", "tier", "input", "cached in", "output", "context", "latency", "cap"):
        table.add_column(col)
    for m in catalog.models:
        lat = m.latency
        table.add_row(m.name, m.backend, m.region, m.quality_tier, f"{m.prices.input_micros_per_mtok:,}",
                      f"{m.prices.cached_input_micros_per_mtok:,}", f"{m.prices.output_micros_per_mtok:,}",
                      f"{m.context_window:,}", f"{lat.overhead_ms:g}+{lat.prefill_ms_per_1k_tokens:g}/1k+"
                      f"{lat.decode_ms_per_token:g}/tok ms", str(m.capacity))
    console.print(table)


async def _rebuilt_learner() -> OnlineRouter:
    from streams.followers.routing import follow_outcomes
    from streams.runtime.acls import stage_principal

    settings = get_settings()
    async with follow_outcomes(settings, OnlineRouter(frozen=True), role=stage_principal(["model"])) as router:
        return router


@models_app.command("route")
def explain_route(
    prompt: Annotated[str, typer.Argument(help="the user prompt")],
    tier: Annotated[str | None, typer.Option(help="quality tier (small|medium|large); default: auto")] = None,
    budget_ms: Annotated[int, typer.Option(help="latency budget left", min=0)] = 10_000,
    region: Annotated[list[str] | None, typer.Option(help="allowed region (repeatable)")] = None,
    tenant: Annotated[str, typer.Option(help="the tenant whose learnt router decides")] = "cli",
    learnt: Annotated[bool, typer.Option("--learnt", help="rebuild the learning router from the responses and "
                                         "outcomes topics (as a model worker with TOLLWAY_ROUTER_LEARNING does) "
                                         "and let it decide")] = False,
    cascade_below: Annotated[float | None, typer.Option(help="explain the verified cascade at this threshold "
                                                        "(default: TOLLWAY_ROUTER_CASCADE_BELOW)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Which model the router would choose for PROMPT, and why (no model is called)."""
    if tier is not None and tier not in (*QUALITY_TIERS, "auto"):
        console.print(f"[red]--tier is a quality tier: {', '.join(QUALITY_TIERS)} or auto, not {tier!r}[/] (the SLO "
                      "tiers interactive/standard/batch are `tollway submit --tier`)")
        raise typer.Exit(EXIT_USAGE)
    env = new_envelope(prompt, tenant=tenant, budget_ms=budget_ms, quality_tier=tier)
    if region:
        env.policy = PolicyDecision(allowed_regions=region)
    try:
        online = asyncio.run(_rebuilt_learner()) if learnt else None
    except TollwayError as exc:
        console.print(f"[red]cannot rebuild the learning router:[/] {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    below = cascade_below if cascade_below is not None else get_settings().router_cascade_below
    decision = route(env, _catalog(), time.time_ns(), online=online, cascade_below=below,
                     verify_served=get_settings().router_cascade_verify_served)
    chosen = decision.chosen
    auto = decision.auto or auto_tier(env, online=online)
    learned = auto.learned
    step = decision.cascade
    explanation = {"decided_by": auto.decided_by, "auto_tier": auto.tier,
                   "online": None if auto.online is None else {
                       "kind": auto.online.kind, "p_at_least_medium": auto.online.p_medium,
                       "p_large": auto.online.p_large, "medium_at": auto.online.medium_at,
                       "large_at": auto.online.large_at, "failure_price": auto.online.failure_price,
                       "observations": auto.online.observations, "kind_observations": auto.online.kind_observations,
                       "probe": auto.online.probe, "frozen": auto.online.frozen,
                       "probe_optimistic_p": auto.online.optimistic, "verdicts_on_tier_below": auto.online.tried,
                       "frozen_caution_sd": auto.online.caution, "drivers": dict(auto.online.drivers)},
                   "cascade": None if step is None else {
                       "first_tier": step.first_tier, "then_tier": step.then_tier, "p_needs_then": step.p_needs_then,
                       "escalate_to": [m.name for m in decision.escalate_to]},
                   "score": auto.score, "features": auto.features.as_dict(),
                   "material_words": auto.features.material_words,
                   "operating_point": learned.operating_point.model_dump() if learned else None,
                   "p_at_least_medium": learned.p_medium if learned else None,
                   "p_large": learned.p_large if learned else None,
                   "params_version": learned.version if learned else None,
                   "drivers": dict(learned.drivers) if learned else None}
    if as_json:
        typer.echo(orjson.dumps({"model": chosen.name if chosen else None, "tier": decision.tier,
                                 "failure": decision.failure_code, "message": decision.failure_message,
                                 "reasons": decision.reasons, "auto": explanation}).decode())
    else:
        table = Table(title=f"features (auto tier {auto.tier} by the {explanation['decided_by']} router, score "
                            f"{auto.score:.2f})")
        table.add_column("feature")
        table.add_column("value", justify="right")
        for name, value in auto.features.as_dict().items():
            if value:
                table.add_row(name, f"{value:.2f}")
        console.print(table)
        if auto.online is not None:
            console.print(auto.online.explain())
        if learned is not None:
            op = learned.operating_point
            console.print(f"operating point (params {learned.version}, fit {learned.tenant_fit}): large when "
                          f"P(large) ≥ {op.large_at:.2f}, else medium when P(≥medium) ≥ {op.medium_at:.2f}; "
                          f"here P(large) = {learned.p_large:.2f}, P(≥medium) = {learned.p_medium:.2f}")
        for reason in decision.reasons:
            console.print(f"· {reason}")
        if step is not None:
            console.print(f"verified cascade: {step.first_tier} first, escalated to "
                          f"{', '.join(m.name for m in decision.escalate_to)} if the evaluators fail its answer")
        if chosen is None:
            console.print(f"[red]{decision.failure_code}[/]: {decision.failure_message}")
    if chosen is None:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(models_app, name="models")
