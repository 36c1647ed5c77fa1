"""Re-pricing: price files, the cost of a usage under a price, and a new ledger version from retained usage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from schemas.envelope import Usage
from schemas.errors import ConfigError
from schemas.ledger import RepriceRow
from schemas.response import Response
from workers.ledger.aggregator import Aggregator, totals_by_tenant
from workers.ledger.cells import event_time_ns


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million tokens."""

    input: int
    cached_input: int
    output: int


def load_prices(path: Path) -> dict[str, Price]:
    """A YAML price file: ``model: {input: µ$/Mtok, cached_input: µ$/Mtok, output: µ$/Mtok}`` (integers).

    ``cached_input`` defaults to ``input`` when missing. A top-level ``models:`` mapping is accepted too.
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read price file {path}: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
        doc = doc["models"]
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"price file {path}: expected a mapping of model name to prices")
    prices: dict[str, Price] = {}
    for model, entry in doc.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"price file {path}: {model}: expected a mapping with input/cached_input/output")
        values: dict[str, int] = {}
        for name in ("input", "cached_input", "output"):
            raw = entry.get(name, entry.get("input") if name == "cached_input" else None)
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                raise ConfigError(f"price file {path}: {model}.{name} must be a non-negative integer "
                                  f"(micro-dollars per million tokens), got {raw!r}")
            values[name] = raw
        prices[str(model)] = Price(**values)
    return prices


def price_usage(price: Price, usage: Usage) -> int:
    """Cost in micro-dollars: one exact integer sum over the three token kinds, divided by a million once and
    rounded up (a partial micro-dollar is billed as a whole one; rounding per kind would drift on sums)."""
    numerator = (usage.input_tokens * price.input + usage.cached_input_tokens * price.cached_input
                 + usage.output_tokens * price.output)
    return -(-numerator // 1_000_000)


def reprice(responses: Iterable[tuple[int, int, Response]], prices: Mapping[str, Price], *,
            since_ns: int | None = None, until_ns: int | None = None) -> tuple[list[RepriceRow], Aggregator]:
    """Recompute costs from retained usage: ``(partition, offset, response)`` in partition order → old vs new per
    tenant, and the new ledger version (an :class:`Aggregator` over the repriced responses).

    Only requests whose event time is in ``[since_ns, until_ns)`` are taken; a model missing from the price file
    keeps its recorded cost and is counted in ``unpriced_requests``.
    """
    old, new = Aggregator.empty(), Aggregator.empty()
    unpriced: dict[str, int] = {}
    for partition, offset, response in responses:
        at_ns = event_time_ns(response)
        if (since_ns is not None and at_ns < since_ns) or (until_ns is not None and at_ns >= until_ns):
            continue
        if not old.add(response, partition=partition, offset=offset):
            continue
        price = prices.get(response.model or "")
        if price is None:
            repriced = response
            if response.model:  # requests without a model cost nothing either way
                unpriced[response.tenant] = unpriced.get(response.tenant, 0) + 1
        else:
            # New model prices; the tool calls keep their own per-call prices.
            repriced = response.model_copy(update={"cost_micros": price_usage(price, response.usage)
                                                   + response.tool_cost_micros})
        new.add(repriced, partition=partition, offset=offset)
    before, after = totals_by_tenant(old.rows(window="day")), totals_by_tenant(new.rows(window="day"))
    rows = [
        RepriceRow(tenant=tenant, requests=before[tenant].requests, old_cost_micros=before[tenant].cost_micros,
                   new_cost_micros=after[tenant].cost_micros, unpriced_requests=unpriced.get(tenant, 0))
        for tenant in sorted(before)
    ]
    return rows, new
