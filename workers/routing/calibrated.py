"""The calibrated router: fitted parameters as versioned data, and the tier decision they make.

``tollway router calibrate --labels FILE`` (:mod:`workers.routing.calibrate`) fits, per tenant, two regularised
logistic models over :mod:`workers.routing.features`: P(the request needs at least medium) and P(it needs large).
The decision is ordinal: large when P(large) ≥ the operating point's ``large_at``, else medium when P(≥ medium) ≥
``medium_at``, else small. The operating point is chosen on held-out folds of the labels (the cheapest point of the
saving/quality frontier whose quality meets the target), so it is part of the data, not of the code.

The parameters live in a JSON file (``router.params.json`` beside this module is the shipped one) with a
``schema_version``, a content ``version`` (sha256 of the fitted numbers) and where the labels came from. The file is
re-read when it changes on disk (checked at most once a second), like policy; a missing file means the heuristic
estimator (:mod:`workers.routing.difficulty`) decides. A tenant without its own fit uses the ``*`` fit.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from operator import mul, sub, truediv
from pathlib import Path
from typing import Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError
from workers.routing.features import FEATURE_NAMES, Features

DEFAULT_PARAMS_PATH: Final = Path(__file__).with_name("router.params.json")
SCHEMA_VERSION: Final = 1
ANY_TENANT: Final = "*"
RELOAD_EVERY_S: Final = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Logistic(_Strict):
    """P = σ(bias + Σ weight × (x − mean) / scale)."""

    weights: tuple[float, ...]
    bias: float

    def probability(self, z: tuple[float, ...]) -> float:
        return _sigmoid(self.bias + sum(self.terms(z)))

    def terms(self, z: tuple[float, ...]) -> list[float]:
        """Each feature's contribution, weight × z (``z`` as long as ``weights``: the fit's validator sees to it)."""
        return list(map(mul, self.weights, z))


def _sigmoid(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, s))))


class OperatingPoint(_Strict):
    medium_at: float = Field(ge=0, le=1)
    large_at: float = Field(ge=0, le=1)
    # What the held-out folds of the labels measured at this point (for the explanation and the audit trail).
    saving: float
    quality: float
    under_routed: float


class TenantRouter(_Strict):
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    at_least_medium: Logistic
    large: Logistic
    operating_point: OperatingPoint
    rows: int = Field(ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> TenantRouter:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.at_least_medium.weights) == len(self.large.weights)
                == n):
            raise ValueError("features, mean, scale and weights must have the same length")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale must be positive")
        return self


class RouterParams(_Strict):
    schema_version: int = SCHEMA_VERSION
    version: str = ""  # sha256 prefix of the fitted numbers; filled by :func:`seal`
    fitted_at: str
    labels: dict[str, str | int]
    target_quality: float
    tenants: dict[str, TenantRouter]

    @model_validator(mode="after")
    def _known_schema(self) -> RouterParams:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}; re-run calibrate")
        return self

    def for_tenant(self, tenant: str) -> tuple[str, TenantRouter] | None:
        if tenant in self.tenants:
            return tenant, self.tenants[tenant]
        if ANY_TENANT in self.tenants:
            return ANY_TENANT, self.tenants[ANY_TENANT]
        return None


def seal(params: RouterParams) -> RouterParams:
    """The same parameters with ``version`` = sha256 of everything but the version and the time of the fit."""
    body = orjson.dumps(params.model_dump(mode="json", exclude={"version", "fitted_at"}),
                        option=orjson.OPT_SORT_KEYS)
    return params.model_copy(update={"version": hashlib.sha256(body).hexdigest()[:12]})


def dump_params(params: RouterParams, path: Path) -> None:
    path.write_bytes(orjson.dumps(params.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n")


def parse_params(raw: bytes, *, source: str = "<router params>") -> RouterParams:
    try:
        return RouterParams.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"router parameters {source} are invalid: {exc}") from exc


@dataclass
class _Cached:
    path: Path
    mtime_ns: int
    checked_at: float
    params: RouterParams | None


_cache: dict[Path, _Cached] = {}


def load_params(path: Path = DEFAULT_PARAMS_PATH, *, now: float | None = None) -> RouterParams | None:
    """The parameters at ``path`` (None when there is no file), re-read when the file changes (hot reload)."""
    now = time.monotonic() if now is None else now
    cached = _cache.get(path)
    if cached is not None and now - cached.checked_at < RELOAD_EVERY_S:
        return cached.params
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        _cache[path] = _Cached(path, -1, now, None)
        return None
    if cached is not None and cached.mtime_ns == mtime_ns:
        cached.checked_at = now
        return cached.params
    params = parse_params(path.read_bytes(), source=str(path))
    _cache[path] = _Cached(path, mtime_ns, now, params)
    return params


@dataclass(frozen=True)
class LearnedDecision:
    tier: str
    p_medium: float  # P(needs at least medium)
    p_large: float
    tenant_fit: str
    version: str
    operating_point: OperatingPoint
    drivers: tuple[tuple[str, float], ...]  # the features that moved the deciding score most, signed

    @property
    def score(self) -> float:
        """One number in [0, 1] for tables: the expected tier rank / 2."""
        return round((self.p_medium + self.p_large) / 2, 3)

    def explain(self) -> str:
        op = self.operating_point
        why = ", ".join(f"{name} {value:+.2f}" for name, value in self.drivers) or "no strong feature"
        return (f"calibrated: P(≥medium) {self.p_medium:.2f} vs {op.medium_at:.2f}, P(large) "
                f"{self.p_large:.2f} vs {op.large_at:.2f}; params {self.version}, fit {self.tenant_fit}; "
                f"drivers: {why}")


def decide(features: Features, tenant: str, params: RouterParams) -> LearnedDecision | None:
    """The calibrated tier for ``features`` (None when ``params`` has no fit for the tenant or these features)."""
    found = params.for_tenant(tenant)
    if found is None:
        return None
    fit_name, fit = found
    if fit.features != features.names:
        return None  # fitted on another feature set: the heuristic decides until calibrate is re-run
    # Plain floats through map() rather than numpy: 32 features, and the same operations in the same order as
    # (x − mean) / scale and bias + Σ w·z, so every probability is bit-identical to the formula.
    z = tuple(map(truediv, map(sub, features.values, fit.mean), fit.scale))
    medium_terms, large_terms = fit.at_least_medium.terms(z), fit.large.terms(z)
    p_medium = _sigmoid(fit.at_least_medium.bias + sum(medium_terms))
    p_large = _sigmoid(fit.large.bias + sum(large_terms))
    op = fit.operating_point
    tier = "large" if p_large >= op.large_at else "medium" if p_medium >= op.medium_at else "small"
    deciding = large_terms if tier == "large" or p_medium >= op.medium_at else medium_terms
    # The four largest contributions by magnitude, ties in feature order (a stable sort, descending).
    magnitudes = list(map(abs, deciding))
    top = sorted(range(len(deciding)), key=magnitudes.__getitem__, reverse=True)[:4]
    drivers = tuple((fit.features[i], round(deciding[i], 2)) for i in top if magnitudes[i] >= 0.05)
    return LearnedDecision(tier, round(p_medium, 3), round(p_large, 3), fit_name, params.version, op, drivers)


__all__ = ["ANY_TENANT", "DEFAULT_PARAMS_PATH", "FEATURE_NAMES", "LearnedDecision", "Logistic", "OperatingPoint",
           "RouterParams", "TenantRouter", "decide", "dump_params", "load_params", "parse_params", "seal"]
