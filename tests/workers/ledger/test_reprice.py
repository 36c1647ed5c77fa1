"""Prices: integer costs rounded up, price files, a new ledger version from retained usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.envelope import Usage
from schemas.errors import ConfigError
from tests.workers.ledger.factories import HOUR_NS, T0, response
from workers.ledger.reprice import Price, load_prices, price_usage, reprice


def test_price_usage_integer_round_up() -> None:
    price = Price(input=3_000_000, cached_input=300_000, output=15_000_000)  # $3 / $0.30 / $15 per Mtok
    assert price_usage(price, Usage(input_tokens=1000, cached_input_tokens=0, output_tokens=1000)) == 18_000
    assert price_usage(price, Usage(input_tokens=1, cached_input_tokens=1, output_tokens=0)) == 4  # 3.3 → 4
    assert price_usage(price, Usage()) == 0


def test_load_prices(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  small: {input: 100000, output: 400000}\n  large: {input: 1, cached_input: 0, "
                    "output: 2}\n")
    prices = load_prices(path)
    assert prices["small"] == Price(input=100_000, cached_input=100_000, output=400_000)
    assert prices["large"].cached_input == 0
    path.write_text("small: {input: 1.5, output: 2}\n")
    with pytest.raises(ConfigError, match=r"small\.input"):
        load_prices(path)


def test_reprice_old_vs_new_per_tenant_and_window_range() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=0)
    records = [
        (0, 0, response("a", cost=1_000, usage=usage)),
        (0, 1, response("b", cost=1_000, usage=usage, model="unknown")),
        (1, 0, response("c", tenant="globex", cost=5, usage=usage)),
        (1, 1, response("c", tenant="globex", cost=5, usage=usage)),  # replay: once
        (1, 2, response("late", cost=1, usage=usage, at_ns=T0 + 10 * HOUR_NS)),
    ]
    rows, version = reprice(records, {"small": Price(input=2_000, cached_input=0, output=0)},
                            since_ns=T0, until_ns=T0 + HOUR_NS)
    by_tenant = {r.tenant: r for r in rows}
    assert (by_tenant["acme"].old_cost_micros, by_tenant["acme"].new_cost_micros) == (2_000, 3_000)
    assert by_tenant["acme"].unpriced_requests == 1 and by_tenant["acme"].requests == 2
    assert (by_tenant["globex"].old_cost_micros, by_tenant["globex"].new_cost_micros) == (5, 2_000)
    assert by_tenant["globex"].delta_micros == 1_995
    assert sum(r.cost_micros for r in version.rows(window="day")) == 5_000
