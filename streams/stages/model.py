"""Wiring for the model stage: the catalog from ``TOLLWAY_MODELS`` (or the default) and one client per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from streams.settings import Settings
from workers.backends.base import ModelBackend
from workers.backends.local import LocalBackend
from workers.backends.openai_compat import OpenAICompatBackend
from workers.context import StageContext, derive
from workers.model import ModelContext
from workers.routing.catalog import ModelCatalog, load_catalog
from workers.routing.online import OnlineRouter


def build_backends(catalog: ModelCatalog, settings: Settings) -> dict[str, ModelBackend]:
    backends: dict[str, ModelBackend] = {}
    for name, spec in catalog.backends.items():
        if spec.kind == "local":
            backends[name] = LocalBackend(latency_scale=settings.model_latency_scale)
        else:
            assert spec.base_url is not None  # validated by the catalog
            backends[name] = OpenAICompatBackend(name, spec.base_url, api_key=settings.model_api_key,
                                                 api_key_required=spec.api_key_required, timeout_s=spec.timeout_s)
    return backends


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[ModelContext]:
    catalog = load_catalog(settings.models_file)
    async with AsyncExitStack() as stack:
        backends = build_backends(catalog, settings)
        for backend in backends.values():
            stack.push_async_callback(backend.aclose)
        online = None
        if settings.router_learning != "off":
            from streams.followers.routing import follow_outcomes
            from streams.runtime.acls import stage_principal

            online = await stack.enter_async_context(follow_outcomes(
                settings, OnlineRouter(frozen=settings.router_learning == "frozen"),
                role=stage_principal(["model"])))
        yield derive(ModelContext, base, catalog=catalog, backends=backends, online=online,
                     cascade_below=settings.router_cascade_below,
                     cascade_verify_served=settings.router_cascade_verify_served,
                     cascade_self_consistency=settings.router_cascade_self_consistency,
                     eval_grounded_min=settings.eval_grounded_min)
