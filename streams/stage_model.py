"""Wiring for the model stage: builds its context (backends) from settings for the Kafka shell."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from streams.settings import Settings
from workers.context import StageContext


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[StageContext]:
    yield base
