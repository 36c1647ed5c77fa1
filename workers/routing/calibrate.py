"""Fitting the calibrated router from labels (numpy only): ``tollway router calibrate --labels FILE``.

A label row is one JSON object per line: ``prompt`` (or ``messages``: [{role, content}, …]) and either ``tier``
(small|medium|large: the smallest tier that answers it well) or ``model`` (a catalog model whose tier is meant);
optionally ``tenant``, ``group`` (rows of one group stay in one fold) and ``split`` (with ``--split``, only rows of
that split are read, so a held-out split stays unseen).

Per tenant, two L2-regularised logistic regressions over the standardised features (Newton's method; the regulariser
pulls a tenant's weights towards the all-tenant fit, so a tenant with few labels stays close to it): P(≥ medium)
and P(large). Out-of-fold probabilities (group k-fold) are swept over a grid of operating points; each point's
saving is against sending every row to the large tier (each tier priced at its cheapest catalog model for the row's
tokens), its quality the share of rows routed to a tier ≥ their label. The frontier is the set of points no other
point beats on both; the chosen point is the cheapest whose quality meets the target. The final weights are fitted on
every row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from schemas.envelope import Usage
from schemas.errors import ConfigError
from workers.routing.calibrated import (
    ANY_TENANT,
    Logistic,
    OperatingPoint,
    RouterParams,
    TenantRouter,
    seal,
)
from workers.routing.catalog import QUALITY_TIERS, ModelCatalog
from workers.routing.features import FEATURE_NAMES, extract_messages
from workers.routing.tokens import count_message_tokens

Array = npt.NDArray[np.float64]
GRID = tuple(round(float(x), 3) for x in np.linspace(0.02, 0.98, 49))


@dataclass(frozen=True)
class LabelledRow:
    messages: tuple[tuple[str, str], ...]
    tier_rank: int
    tenant: str
    group: str


def read_labels(path: Path, catalog: ModelCatalog, *, split: str | None = None,
                group_by: str = "group") -> list[LabelledRow]:
    """The label rows of ``path``; a bad line is a ConfigError naming the line and what is wrong with it.

    ``group_by`` names the field whose rows share a fold: ``group`` keeps paraphrases of one request together;
    a coarser field (``task``) holds out whole kinds of request, which is what a router meets in production
    (requests unlike any it was fitted on) and so gives a more careful operating point."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc}") from exc
    rows: list[LabelledRow] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        if split is not None and "split" in item and item["split"] != split:
            continue
        rows.append(_row(item, where, catalog, number, group_by))
    if not rows:
        raise ConfigError(f"{path} has no label rows" + (f" in split {split!r}" if split else ""))
    return rows


def _row(item: dict[str, object], where: str, catalog: ModelCatalog, number: int, group_by: str) -> LabelledRow:
    messages: list[tuple[str, str]]
    if isinstance(item.get("prompt"), str) and item["prompt"]:
        messages = [("user", str(item["prompt"]))]
    elif isinstance(item.get("messages"), list) and item["messages"]:
        raw = item["messages"]
        assert isinstance(raw, list)
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in raw):
            raise ConfigError(f"{where}: messages must be objects with role and content")
        messages = [(str(m.get("role", "user")), str(m["content"])) for m in raw]
    else:
        raise ConfigError(f"{where}: needs a non-empty 'prompt' or 'messages'")
    tier = item.get("tier")
    if tier is None and isinstance(item.get("model"), str):
        model = str(item["model"])
        if model not in catalog:
            raise ConfigError(f"{where}: model {model!r} is not in the catalog")
        tier = catalog.get(model).quality_tier
    if tier not in QUALITY_TIERS:
        raise ConfigError(f"{where}: 'tier' must be one of {', '.join(QUALITY_TIERS)} (or give a catalog 'model'),"
                          f" not {tier!r}")
    assert isinstance(tier, str)
    return LabelledRow(tuple(messages), QUALITY_TIERS.index(tier), str(item.get("tenant") or ANY_TENANT),
                       str(item.get(group_by) or f"row-{number}"))


def tier_costs(rows: Sequence[LabelledRow], catalog: ModelCatalog) -> Array:
    """(n, 3) expected cost in µ$ of each row on the cheapest model of each tier (catalog's expected output)."""
    out = np.zeros((len(rows), len(QUALITY_TIERS)))
    for i, row in enumerate(rows):
        usage = Usage(input_tokens=count_message_tokens(row.messages), output_tokens=catalog.expected_output_tokens)
        for t, tier in enumerate(QUALITY_TIERS):
            out[i, t] = min(m.cost_micros(usage) for m in catalog.models if m.quality_tier == tier)
    return out


def feature_matrix(rows: Iterable[LabelledRow]) -> Array:
    return np.array([extract_messages(row.messages).values for row in rows], dtype=np.float64)


def fit_logistic(z: Array, y: Array, lam: float, prior: Array | None = None, iterations: int = 30) -> Array:
    """Weights [bias, w…] minimising log-loss + lam/2 ‖w − prior‖² (bias not regularised), by Newton's method."""
    n, d = z.shape
    x = np.hstack([np.ones((n, 1)), z])
    target = np.zeros(d + 1) if prior is None else prior
    beta = target.copy()
    penalty = np.full(d + 1, lam)
    penalty[0] = 1e-6
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60)))
        grad = x.T @ (p - y) + penalty * (beta - target)
        hessian = (x.T * (p * (1 - p))) @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, grad)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return beta


def _sigmoid(values: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(values, -60, 60))), dtype=np.float64)


@dataclass(frozen=True)
class Fit:
    mean: Array
    scale: Array
    medium: Array  # [bias, w…] of P(≥ medium)
    large: Array

    def probabilities(self, x: Array) -> tuple[Array, Array]:
        z = (x - self.mean) / self.scale
        ones = np.ones((len(z), 1))
        return _sigmoid(np.hstack([ones, z]) @ self.medium), _sigmoid(np.hstack([ones, z]) @ self.large)


def fit(x: Array, ranks: Array, lam: float, prior: Fit | None = None) -> Fit:
    mean = prior.mean if prior else x.mean(axis=0)
    scale = prior.scale if prior else np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    z = (x - mean) / scale
    return Fit(mean, scale, fit_logistic(z, (ranks >= 1).astype(float), lam, prior.medium if prior else None),
               fit_logistic(z, (ranks >= 2).astype(float), lam, prior.large if prior else None))


def out_of_fold(x: Array, ranks: Array, groups: Sequence[str], lam: float, folds: int = 5,
                prior: Fit | None = None) -> tuple[Array, Array]:
    """P(≥ medium), P(large) for each row from a fit that never saw its group."""
    fold_of = np.array([int(hashlib.sha256(g.encode()).hexdigest(), 16) % folds for g in groups])
    p_medium, p_large = np.zeros(len(x)), np.zeros(len(x))
    for k in range(folds):
        held = fold_of == k
        if not held.any() or held.all():
            continue
        model = fit(x[~held], ranks[~held], lam, prior)
        p_medium[held], p_large[held] = model.probabilities(x[held])
    return p_medium, p_large


def route_ranks(p_medium: Array, p_large: Array, medium_at: float, large_at: float) -> Array:
    return np.where(p_large >= large_at, 2, np.where(p_medium >= medium_at, 1, 0))


def measure(routed: Array, ranks: Array, costs: Array) -> dict[str, float]:
    n = len(ranks)
    spent = float(costs[np.arange(n), routed].sum())
    return {"saving": round(1 - spent / float(costs[:, 2].sum()), 4),
            "quality": round(float((routed >= ranks).mean()), 4),
            "under_routed": round(float((routed < ranks).mean()), 4),
            "over_routed": round(float((routed > ranks).mean()), 4)}


def frontier(p_medium: Array, p_large: Array, ranks: Array, costs: Array) -> list[dict[str, float]]:
    """Every grid point that no other beats on both saving and quality, by quality descending."""
    points = []
    for medium_at in GRID:
        for large_at in GRID:
            figures = measure(route_ranks(p_medium, p_large, medium_at, large_at), ranks, costs)
            points.append({"medium_at": medium_at, "large_at": large_at, **figures})
    points.sort(key=lambda p: (-p["quality"], -p["saving"]))
    best: list[dict[str, float]] = []
    for point in points:
        if not best or point["saving"] > best[-1]["saving"]:
            best.append(point)
    return best


def choose(points: Sequence[dict[str, float]], target_quality: float) -> dict[str, float]:
    meeting = [p for p in points if p["quality"] >= target_quality]
    return max(meeting, key=lambda p: p["saving"]) if meeting else points[0]


@dataclass(frozen=True)
class TenantReport:
    tenant: str
    rows: int
    frontier: list[dict[str, float]]
    chosen: dict[str, float]
    router: TenantRouter


def _tenant_router(model: Fit, point: dict[str, float], rows: int) -> TenantRouter:
    def logistic(beta: Array) -> Logistic:
        return Logistic(weights=tuple(round(float(w), 6) for w in beta[1:]), bias=round(float(beta[0]), 6))

    return TenantRouter(
        features=FEATURE_NAMES, mean=tuple(round(float(v), 6) for v in model.mean),
        scale=tuple(round(float(v), 6) for v in model.scale), at_least_medium=logistic(model.medium),
        large=logistic(model.large), rows=rows,
        operating_point=OperatingPoint(medium_at=point["medium_at"], large_at=point["large_at"],
                                       saving=point["saving"], quality=point["quality"],
                                       under_routed=point["under_routed"]))


def calibrate(rows: Sequence[LabelledRow], catalog: ModelCatalog, *, target_quality: float = 0.97,
              lam: float = 1.0, min_tenant_rows: int = 100, source: str = "<labels>", folds: int = 8,
              ) -> tuple[RouterParams, list[TenantReport]]:
    """Fit the all-tenant router and one per tenant with at least ``min_tenant_rows`` labels."""
    x, costs = feature_matrix(rows), tier_costs(rows, catalog)
    ranks = np.array([row.tier_rank for row in rows])
    groups = [row.group for row in rows]
    tenants = [row.tenant for row in rows]
    reports: list[TenantReport] = []
    base = fit(x, ranks, lam)
    p_medium, p_large = out_of_fold(x, ranks, groups, lam, folds)
    points = frontier(p_medium, p_large, ranks, costs)
    chosen = choose(points, target_quality)
    reports.append(TenantReport(ANY_TENANT, len(rows), points, chosen, _tenant_router(base, chosen, len(rows))))
    for tenant in sorted(set(tenants) - {ANY_TENANT}):
        mask = np.array([t == tenant for t in tenants])
        if mask.sum() < min_tenant_rows:
            continue
        own = fit(x[mask], ranks[mask], lam, prior=base)
        tenant_groups = [g for g, m in zip(groups, mask, strict=True) if m]
        pm, pl = out_of_fold(x[mask], ranks[mask], tenant_groups, lam, folds, prior=base)
        tenant_points = frontier(pm, pl, ranks[mask], costs[mask])
        pick = choose(tenant_points, target_quality)
        reports.append(TenantReport(tenant, int(mask.sum()), tenant_points, pick,
                                    _tenant_router(own, pick, int(mask.sum()))))
    params = RouterParams(fitted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                          labels={"source": source, "rows": len(rows), "folds": folds, "lambda": str(lam)},
                          target_quality=target_quality,
                          tenants={r.tenant: r.router for r in reports})
    return seal(params), reports
