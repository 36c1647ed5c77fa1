"""Turning a raw API key into a signed principal, at the edge (HTTP ingress, SDK, backfill).

Verifying a key costs one scrypt (~30 ms of CPU, see workers/keys.py): far too much to pay per request at a few
hundred requests a second. :class:`KeyCache` verifies each key once per policy version and remembers the outcome under
an HMAC of the key with a per-process random secret, so neither the key nor a reusable hash of it is kept. The scrypt
runs in a thread (the event loop keeps serving), and concurrent first requests with the same key share one
verification. Failures are not cached: a key that does not verify costs its caller the scrypt every time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from schemas.envelope import Envelope, Principal
from workers.keys import authenticate, sign_principal
from workers.policy import PolicySource

__all__ = ["Identity", "KeyCache", "PolicySource", "sign_envelope"]


@dataclass(frozen=True)
class Identity:
    """Who a verified key belongs to. ``key_id`` is None for dev-mode requests that carry no key."""

    tenant: str
    key_id: str | None = None


class KeyCache:
    def __init__(self, source: PolicySource) -> None:
        self.source = source
        self._salt = secrets.token_bytes(32)
        self._verified: dict[bytes, Identity] = {}
        self._version: str | None = None
        self._inflight: dict[bytes, asyncio.Future[Identity | None]] = {}
        self.verifications = 0  # scrypt runs, for tests and /metrics

    async def authenticate(self, raw_key: str) -> Identity | None:
        """The identity of a valid, unrevoked key under the policy in force; None when there is none or no policy."""
        policy = self.source.current()
        if policy is None:
            return None
        if policy.version != self._version:
            self._verified.clear()  # a new document may revoke or rotate keys: verify again, once
            self._version = policy.version
        digest = hmac.new(self._salt, raw_key.encode(), hashlib.sha256).digest()
        known = self._verified.get(digest)
        if known is not None:
            return known
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            self.verifications += 1
            found = await asyncio.to_thread(authenticate, policy, raw_key)
            identity = Identity(tenant=found[0], key_id=found[1].key_id) if found else None
            if identity is not None and policy.version == self._version:
                self._verified[digest] = identity
            future.set_result(identity)
            return identity
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[digest]


def sign_envelope(env: Envelope, identity: Identity, secret: str | bytes) -> Envelope:
    """Put the principal on ``env``: the key id and an HMAC over (request_id, tenant, key id). Never the key."""
    env.tenant = identity.tenant
    if identity.key_id is not None:
        env.principal = Principal(key_id=identity.key_id,
                                  signature=sign_principal(secret, env.request_id, identity.tenant, identity.key_id))
    return env
