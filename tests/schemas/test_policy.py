"""The policy document parser: the example validates, errors name the field's path, arbitrary input never crashes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import ConfigError
from schemas.policy import PolicyDocument, load_policy_yaml, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "policy.example.yaml"


def test_the_example_policy_validates() -> None:
    doc = load_policy_yaml(EXAMPLE.read_text())
    assert set(doc.tenants) == {"acme", "acme-support", "globex"}
    assert doc.tenants["globex"].regions == ["eu"]
    assert doc.tenants["acme-support"].tools.denied == ["ticket_update"]  # the demo's refused tool call


@pytest.mark.parametrize(("patch", "path"), [
    ({"tenants": {"acme": {"regions": "eu"}}}, "tenants.acme.regions"),
    ({"tenants": {"acme": {"pii": {"email": "shred"}}}}, "tenants.acme.pii.email"),
    ({"tenants": {"acme": {"rate_limits": {"requests_per_minute": 0}}}}, "tenants.acme.rate_limits"),
    ({"tenants": {"acme": {"budgets": {"daily_micros": -1}}}}, "tenants.acme.budgets.daily_micros"),
    ({"tenants": {"acme": {"injection": {"threshold": 1.5}}}}, "tenants.acme.injection.threshold"),
    ({"tenants": {"acme": {"allowed_models": ["gpt-9"]}}, "models": {"lite-us": {"region": "us"}}},
     "allowed_models"),
    ({"tenants": {"acme": {"rate_limit": {}}}}, "tenants.acme.rate_limit"),
    ({"models": {"m": {"price": 3}}}, "models.m.region"),
    ({"version": ""}, "version"),
])
def test_errors_name_the_offending_field(patch: dict[str, Any], path: str) -> None:
    data: dict[str, Any] = {"version": "v1", **patch}
    with pytest.raises(ConfigError) as err:
        parse_policy(data)
    assert path in str(err.value)


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="YAML"):
        load_policy_yaml("version: [unclosed")
    with pytest.raises(ConfigError, match="mapping"):
        load_policy_yaml("- just a list")


def test_the_same_key_under_two_tenants_is_refused() -> None:
    key = {"key_id": "k_0123456789abcdef", "salt": "00" * 16, "hash": "11" * 32}
    with pytest.raises(ConfigError, match="k_0123456789abcdef"):
        parse_policy({"version": "v", "tenants": {"a": {"keys": [key]}, "b": {"keys": [key]}}})


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4), max_leaves=20)
fields = st.sampled_from(["version", "models", "tenants", "default_tenant", "embedder", "default_price", "kind"])


@given(st.dictionaries(fields, json_values, max_size=5))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_documents_either_parse_or_raise_config_error(data: dict[str, Any]) -> None:
    try:
        doc = parse_policy(data)
    except ConfigError:
        return
    assert isinstance(doc, PolicyDocument)


@given(st.text(max_size=200))
def test_arbitrary_yaml_text_never_escapes_as_another_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        load_policy_yaml(text)


@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                       st.fixed_dictionaries({}, optional={"require_principal": st.booleans(),
                                                           "regions": st.lists(st.sampled_from(["us", "eu"])),
                                                           "budgets": st.fixed_dictionaries(
                                                               {}, optional={"daily_micros": st.integers(0, 10**12)})}),
                       max_size=4))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_valid_documents_round_trip_through_yaml(tenants: dict[str, Any]) -> None:
    doc = parse_policy({"version": "v", "tenants": tenants})
    assert load_policy_yaml(yaml.safe_dump(doc.model_dump(mode="json"))) == doc
