from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.envelope import Usage
from schemas.errors import ConfigError
from workers.routing.catalog import (
    DEFAULT_CATALOG_PATH,
    QUALITY_TIERS,
    expected_cost_micros,
    load_catalog,
    parse_catalog,
    price_of,
)


def test_default_catalog_spans_regions_tiers_and_runs_offline() -> None:
    catalog = load_catalog()
    assert {m.region for m in catalog.models} >= {"eu", "us"}
    assert {m.quality_tier for m in catalog.models} == set(QUALITY_TIERS)
    assert all(catalog.backends[m.backend].kind == "local" for m in catalog.models)
    for tier in QUALITY_TIERS:  # a higher tier always costs more per output token
        cheapest = min(m.prices.output_micros_per_mtok for m in catalog.models if m.quality_tier == tier)
        assert cheapest > 0


def test_price_is_exact_integer_micro_dollars() -> None:
    # 800 uncached × 2.5 $/M + 200 cached × 1.25 $/M + 300 out × 10 $/M = 0.00525 $ = 5250 µ$
    assert price_of("max-us", Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=300)) == 5250


def test_price_rounds_half_up_once_per_request() -> None:
    # 5 input tokens on nano-us at 100000 µ$/M = 0.5 µ$ → 1; 4 tokens = 0.4 µ$ → 0
    assert price_of("nano-us", Usage(input_tokens=5)) == 1
    assert price_of("nano-us", Usage(input_tokens=4)) == 0
    # rounding is once for the whole request, not per token class: 0.4 + 0.4 = 0.8 → 1
    assert price_of("nano-us", Usage(input_tokens=4, output_tokens=1)) == 1


def test_cache_hit_with_no_usage_costs_nothing_even_for_an_unknown_model() -> None:
    assert price_of("", Usage()) == 0
    with pytest.raises(ConfigError, match="unknown model"):
        price_of("gpt-nope", Usage(input_tokens=1))


def test_expected_cost_matches_price_of() -> None:
    assert expected_cost_micros("core-eu", 1000, 256) == price_of("core-eu", Usage(input_tokens=1000,
                                                                                   output_tokens=256))


def _document() -> dict[str, object]:
    return yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["models"][0].update(backend="nowhere"), "names backend 'nowhere'"),
    (lambda d: d["models"].append(dict(d["models"][0])), "duplicate model name"),
    (lambda d: d["models"][0]["prices"].update(cached_input_micros_per_mtok=10**9), "must not exceed"),
    (lambda d: d["models"][0]["prices"].update(input_micros_per_mtok=-1), "models.0.prices.input_micros_per_mtok"),
    (lambda d: d["models"][0].update(quality_tier="huge"), "models.0.quality_tier"),
    (lambda d: d["models"][0].update(capcity=3), "models.0.capcity"),
    (lambda d: d["backends"].update(remote={"kind": "openai"}), "needs base_url"),
])
def test_invalid_catalogs_name_the_field(mutate: object, message: str) -> None:
    document = _document()
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="model catalog") as info:
        parse_catalog(document)
    assert message in str(info.value)


def test_user_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog(bad)
    good = tmp_path / "models.yaml"
    good.write_text(DEFAULT_CATALOG_PATH.read_text())
    assert len(load_catalog(good).models) == len(load_catalog().models)
