"""API keys: only hashes stored, constant-time checks, principals signed over the request's identity."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.policy import parse_policy
from workers.keys import authenticate, create_key, key_id_of, sign_principal, verify_key, verify_principal


def test_create_and_authenticate() -> None:
    raw, record = create_key("acme", scrypt_n=2**10)
    assert raw.startswith(f"tw_{record.key_id}_") and key_id_of(raw) == record.key_id
    assert raw.split("_", 3)[-1] not in record.model_dump_json(), "the secret is not stored"
    policy = parse_policy({"version": "v", "tenants": {"acme": {"keys": [record.model_dump()]}}})
    found = authenticate(policy, raw)
    assert found is not None and found[0] == "acme" and found[1].key_id == record.key_id
    assert authenticate(policy, raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert authenticate(policy, "not a key") is None
    revoked = parse_policy({"version": "v", "tenants": {"acme": {"keys": [{**record.model_dump(),
                                                                            "revoked": True}]}}})
    assert authenticate(revoked, raw) is None


def test_a_key_does_not_verify_against_another_record() -> None:
    raw, _ = create_key("acme", scrypt_n=2**10)
    _, other = create_key("acme", scrypt_n=2**10)
    assert not verify_key(other, raw)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_principal_signatures_bind_every_field(request_id: str, tenant: str, key_id: str) -> None:
    signature = sign_principal("s3cret", request_id, tenant, key_id)
    assert verify_principal("s3cret", request_id, tenant, key_id, signature)
    assert not verify_principal("other", request_id, tenant, key_id, signature)
    assert not verify_principal("s3cret", request_id + "x", tenant, key_id, signature)
    assert not verify_principal("s3cret", request_id, tenant + "x", key_id, signature)
    assert not verify_principal("s3cret", request_id, tenant, key_id + "x", signature)


def test_field_boundaries_cannot_be_shifted() -> None:
    assert sign_principal("s", "ab", "c", "k") != sign_principal("s", "a", "bc", "k")
