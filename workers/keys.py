"""API keys and signed principals. No raw key is ever put on a topic, in a log or in an audit record.

A raw key looks like ``tw_<key_id>_<secret>``: the key id lets the ingress find the one record to check (one scrypt,
not one per key), the 32-byte secret is what the salted hash protects. The ingress authenticates the raw key, then
puts ``Principal(key_id, signature)`` on the envelope, the signature being an HMAC over the request id, the tenant
and the key id with ``settings.principal_secret``; the policy stage verifies that HMAC in constant time, so a
producer on the topic cannot claim someone else's key without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from schemas.policy import KeyRecord, PolicyDocument

KEY_PREFIX = "tw"
_RAW_KEY = re.compile(r"^tw_(k_[0-9a-f]{8,32})_([A-Za-z0-9_-]{20,})$")
# scrypt cost: 2**14 x 8 x 1 (16 MiB, ~30 ms). Keys carry 256 random bits, so the hash only has to make a leaked
# policy document useless, not resist a dictionary; the cost is stored per record and can be raised later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _hash(secret: str, salt: bytes, n: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)


def create_key(tenant: str, *, description: str = "", scrypt_n: int = SCRYPT_N) -> tuple[str, KeyRecord]:
    """A new key for ``tenant``: the raw key (show it once) and the record to store in the policy document."""
    key_id = f"k_{secrets.token_hex(8)}"
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = KeyRecord(key_id=key_id, salt=salt.hex(), hash=_hash(secret, salt, scrypt_n).hex(), scrypt_n=scrypt_n,
                       created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                       description=description or f"created for {tenant}")
    return f"{KEY_PREFIX}_{key_id}_{secret}", record


def key_id_of(raw_key: str) -> str | None:
    """The key id a raw key claims (not yet checked), or None when it is not shaped like a tollway key."""
    match = _RAW_KEY.match(raw_key)
    return match.group(1) if match else None


def verify_key(record: KeyRecord, raw_key: str) -> bool:
    match = _RAW_KEY.match(raw_key)
    if match is None or match.group(1) != record.key_id:
        return False
    digest = _hash(match.group(2), bytes.fromhex(record.salt), record.scrypt_n)
    return hmac.compare_digest(digest, bytes.fromhex(record.hash))


def authenticate(policy: PolicyDocument, raw_key: str) -> tuple[str, KeyRecord] | None:
    """(tenant, record) for a valid, unrevoked key; None otherwise. The raw key is never logged or kept."""
    key_id = key_id_of(raw_key)
    if key_id is None:
        return None
    for tenant_name, tenant in policy.tenants.items():
        record = tenant.key(key_id)
        if record is not None:
            return (tenant_name, record) if not record.revoked and verify_key(record, raw_key) else None
    return None


def _message(request_id: str, tenant: str, key_id: str) -> bytes:
    # Length-prefixed fields: "a|bc" and "ab|c" must never sign the same bytes.
    return b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in (request_id, tenant, key_id))


def sign_principal(secret: str | bytes, request_id: str, tenant: str, key_id: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, _message(request_id, tenant, key_id), hashlib.sha256).hexdigest()


def verify_principal(secret: str | bytes, request_id: str, tenant: str, key_id: str, signature: str) -> bool:
    expected = sign_principal(secret, request_id, tenant, key_id)
    return hmac.compare_digest(expected.encode(), signature.encode())
