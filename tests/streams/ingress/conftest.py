"""Fixtures for the ingress tests: a key, the in-memory gateway, and a test client of the app over both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.policy import KeyRecord
from streams.ingress.app import build_app
from streams.ingress.idempotency import MemoryIdempotencyStore
from tests.streams.ingress.fakes import FakeGateway, make_ingress
from workers.keys import create_key


@pytest.fixture
def key() -> tuple[str, KeyRecord]:
    return create_key("acme", scrypt_n=2**10)


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def store() -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore()


@pytest.fixture
async def client(gateway: FakeGateway, key: tuple[str, KeyRecord],
                 store: MemoryIdempotencyStore) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(build_app(make_ingress(gateway, key, store=store)))) as test_client:
        yield test_client
