"""The model catalog: which models exist, where they run, what they cost and how fast they are.

A catalog is a YAML document (the default ships as ``workers/routing/catalog.default.yaml``; ``TOLLWAY_MODELS``
points at
a user's own file) with named ``backends`` and a list of ``models``. Prices are integers in micro-dollars per
million tokens, so every cost is computed exactly in integers:

    cost_micros = round_half_up((uncached_input × input + cached_input × cached_input_price + output × output) / 1e6)

where ``uncached_input = input_tokens − cached_input_tokens`` (``Usage.input_tokens`` counts every prompt token,
cached ones included, the way OpenAI-compatible servers report ``prompt_tokens``). Rounding happens once per
request, never per token class, so re-pricing the same usage always gives the same number.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.envelope import Usage
from schemas.errors import ConfigError

DEFAULT_CATALOG_PATH = Path(__file__).with_name("catalog.default.yaml")
QUALITY_TIERS: tuple[str, ...] = ("small", "medium", "large")  # ascending quality
QualityTier = Literal["small", "medium", "large"]
_MILLION = 1_000_000


def tier_rank(tier: str) -> int:
    """Position of a quality tier (small=0 …); raises ConfigError for an unknown name."""
    try:
        return QUALITY_TIERS.index(tier)
    except ValueError:
        raise ConfigError(f"unknown quality tier {tier!r}; choose from {', '.join(QUALITY_TIERS)}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prices(_Strict):
    """Integer micro-dollars per million tokens ($0.15 / M tokens = 150000)."""

    input_micros_per_mtok: int = Field(ge=0)
    cached_input_micros_per_mtok: int = Field(ge=0)
    output_micros_per_mtok: int = Field(ge=0)

    @model_validator(mode="after")
    def _cached_not_dearer(self) -> Prices:
        if self.cached_input_micros_per_mtok > self.input_micros_per_mtok:
            raise ValueError("cached_input_micros_per_mtok must not exceed input_micros_per_mtok")
        return self


class LatencyProfile(_Strict):
    """How long a call takes: fixed overhead, prefill per 1k prompt tokens, decode per output token.

    ``decode_batch_slowdown`` is the fractional decode slowdown per extra sequence in one batch (a batched decode
    step is a little slower than a single one, but far cheaper than running the sequences one after another).
    """

    overhead_ms: float = Field(ge=0)
    prefill_ms_per_1k_tokens: float = Field(ge=0)
    decode_ms_per_token: float = Field(ge=0)
    decode_batch_slowdown: float = Field(default=0.02, ge=0, le=1)

    def expected_ms(self, input_tokens: int, output_tokens: int) -> float:
        return self.overhead_ms + self.prefill_ms_per_1k_tokens * input_tokens / 1000 + \
            self.decode_ms_per_token * output_tokens

    def batch_ms(self, input_tokens: list[int], output_tokens: list[int]) -> float:
        """One batched call: prefill of every prompt, then decode steps shared until the longest reply is done."""
        if not input_tokens:
            return 0.0
        slowdown = 1 + self.decode_batch_slowdown * (len(input_tokens) - 1)
        return self.overhead_ms + self.prefill_ms_per_1k_tokens * sum(input_tokens) / 1000 + \
            self.decode_ms_per_token * max(output_tokens) * slowdown


class BackendSpec(_Strict):
    kind: Literal["local", "openai"]
    base_url: str | None = None  # for openai: up to and including /v1
    api_key_required: bool = False
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _url_for_openai(self) -> BackendSpec:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("an openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return self


class ModelSpec(_Strict):
    name: str = Field(min_length=1, max_length=100)
    backend: str
    upstream_model: str | None = None  # the name the backend knows the model by; defaults to ``name``
    region: str = Field(min_length=1)
    quality_tier: QualityTier
    prices: Prices
    context_window: int = Field(ge=256)
    latency: LatencyProfile
    capacity: int = Field(ge=1, description="max requests in flight (and in one batched call)")
    max_batch: int = Field(default=32, ge=1, description="max requests in one call to a batch-capable backend")

    @property
    def served_as(self) -> str:
        return self.upstream_model or self.name

    @property
    def tier_rank(self) -> int:
        return QUALITY_TIERS.index(self.quality_tier)

    def cost_micros(self, usage: Usage) -> int:
        uncached = max(0, usage.input_tokens - usage.cached_input_tokens)
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        numerator = (uncached * self.prices.input_micros_per_mtok
                     + cached * self.prices.cached_input_micros_per_mtok
                     + usage.output_tokens * self.prices.output_micros_per_mtok)
        return (numerator + _MILLION // 2) // _MILLION  # round half up, once per request


class ModelCatalog(_Strict):
    version: Literal[1] = 1
    # What the router assumes a reply costs in tokens when it only knows max_tokens (capped by max_tokens).
    expected_output_tokens: int = Field(default=160, ge=1)
    backends: dict[str, BackendSpec]
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCatalog:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model name(s): {', '.join(duplicates)}")
        for model in self.models:
            if model.backend not in self.backends:
                raise ValueError(f"model {model.name!r} names backend {model.backend!r}, which is not in "
                                 f"backends ({', '.join(sorted(self.backends)) or 'none'})")
        return self

    def get(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise ConfigError(f"unknown model {name!r}; the catalog has {', '.join(m.name for m in self.models)}")

    def __contains__(self, name: object) -> bool:
        return any(m.name == name for m in self.models)


def parse_catalog(document: object, *, source: str = "<catalog>") -> ModelCatalog:
    try:
        return ModelCatalog.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"model catalog {source} is invalid: {problems}") from exc


def load_catalog(path: Path | None = None) -> ModelCatalog:
    """Read and validate a catalog file (the shipped default when ``path`` is None)."""
    path = path or DEFAULT_CATALOG_PATH
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model catalog {path} does not exist (TOLLWAY_MODELS points at it?)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"model catalog {path} is not valid YAML: {exc}") from exc
    return parse_catalog(document, source=str(path))


@lru_cache(maxsize=8)
def get_catalog(path: Path | None = None) -> ModelCatalog:
    """A cached :func:`load_catalog` for importers that price many requests (cache, policy, ledger)."""
    return load_catalog(path)


def price_of(model_name: str, usage: Usage, catalog: ModelCatalog | None = None) -> int:
    """Exact cost in micro-dollars of ``usage`` on ``model_name`` (0 for no usage, even for an unknown model)."""
    if usage.input_tokens == usage.output_tokens == 0:
        return 0
    return (catalog or get_catalog()).get(model_name).cost_micros(usage)


def expected_cost_micros(model_name: str, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0,
                         catalog: ModelCatalog | None = None) -> int:
    """Cost of a request not yet made (e.g. output_tokens=max_tokens for a budget reservation's upper bound)."""
    usage = Usage(input_tokens=input_tokens, cached_input_tokens=cached_input_tokens, output_tokens=output_tokens)
    return price_of(model_name, usage, catalog)
