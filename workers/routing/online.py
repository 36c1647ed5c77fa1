"""The learning router: tier choice adjusted online from the outcomes the pipeline already sees.

What it learns from (no label is ever read): each routed request's features and the tier it was served at, joined
with a verdict on that answer — the task's outcome (``tollway outcome TASK resolved|failed``, the SDK) or the
online evaluators' (grounded, structured output valid, refusal). A verdict says something only about the tier that
served the request, so the observations are *censored*:

    served small,  resolved → it did not need medium        served small,  failed → it needed at least medium
    served medium, resolved → it did not need large          served medium, failed → it needed large
    served large,  either   → nothing about the tier (a large model failing is not a routing problem)

Per tenant, two Bayesian logistic models over the router's features plus a one-hot **task kind** (so the fit
adjusts per tenant × task kind): P(needs ≥ medium) and P(needs large), each with a Gaussian prior (its mean is
the calibrated router's logit when parameters are in force — a warm start — else 0: a cold start) and a Laplace
posterior refitted by Newton's method every ``refit_every`` observations.

The decision: with λ the price of a failure (in units of a large call), serve the cheapest tier t for which the
expected failure cost does not outweigh the saving, i.e. small when P(≥ medium) < (c_medium − c_small) / λ, else
medium when P(large) < (c_large − c_medium) / λ, else large. λ is the operating point and is itself learnt: it
rises after every observed failure and falls slowly after every success, so the observed failure rate settles at
``target_failure`` (a dual-ascent controller). A cold learner knows nothing (P = ½), so it serves large.

Exploration is bounded and deterministic: a request is a **probe** (served one tier below the greedy choice) when
a hash of its id falls under the probe rate of its tenant × task kind, which starts at ``explore_rate`` and decays
with the verdicts that kind has *on the cheaper tier* (never below ``explore_min``); a probe is sent only while the
optimistic P(needs the greedy tier) — ``probe_optimism`` posterior standard deviations below the mean — is under
``probe_ceiling``. (Before: the rate decayed with all of the kind's verdicts and the ceiling read the mean, so a cold
start's early failures elsewhere could lift every kind's P(≥ medium) above the ceiling before any of it was served
small, and 4 of 5 tune seeds never served small again: ~34 % of requests over-routed.) A redelivered request gets
the same decision. ``frozen`` stops learning and probing (the setting ``TOLLWAY_ROUTER_LEARNING=frozen``) and
chooses on the logits ``frozen_caution`` posterior standard deviations up: a frozen learner meets requests unlike
those it learnt from and no failure will correct it. The state is the observations, so it is rebuilt by replaying
the responses and outcomes topics (:mod:`streams.followers.routing`).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from schemas.envelope import Evaluation, RouteRecord, Status
from schemas.response import Response
from workers.routing.features import FEATURE_NAMES, Features

Array = npt.NDArray[np.float64]
Verdict = Literal["resolved", "failed"]
TASK_KINDS: Final = ("greeting", "lookup", "transform_short", "transform_long", "code", "maths", "proof", "plan",
                     "design", "writing", "reasoning", "other")
TIERS: Final = ("small", "medium", "large")
# Relative price of a call on each tier (the default catalog's cheapest model per tier, input and output alike:
# nano 0.1/0.4, core 0.4/1.6, max 2.5/10 $ per M tokens).
DEFAULT_TIER_COST: Final = (0.04, 0.16, 1.0)


_KIND_FEATURES: Final = ("proof", "plan", "constraints_log", "writing", "design", "code", "math", "transform",
                          "material_over_short", "greeting", "reasoning", "sources", "lookup")
_KIND_VALUES: Final = itemgetter(*(FEATURE_NAMES.index(name) for name in _KIND_FEATURES))
_TWO_CONSTRAINTS_LOG: Final = math.log1p(2)


def task_kind(features: Features) -> str:
    """The coarse kind of request, from the features (the order is the precedence)."""
    if features.names is FEATURE_NAMES:  # the extractor's layout (an immutable tuple): read by position, no dict
        return _kind(*_KIND_VALUES(features.values))
    v = features.as_dict()
    return _kind(*[v[name] for name in _KIND_FEATURES])


def _kind(proof: float, plan: float, constraints_log: float, writing: float, design: float, code: float,
          maths: float, transform: float, material_over_short: float, greeting: float, reasoning: float,
          sources: float, lookup: float) -> str:
    if proof >= 1:
        return "proof"
    if plan >= 1 and (constraints_log >= _TWO_CONSTRAINTS_LOG or writing):
        return "plan"
    if design >= 1 and code >= 1:
        return "design"
    if code >= 1:
        return "code"
    if maths >= 1:
        return "maths"
    if transform:
        return "transform_long" if material_over_short else "transform_short"
    if greeting:
        return "greeting"
    if writing:
        return "writing"
    if reasoning >= 1 or sources:
        return "reasoning"
    if lookup:
        return "lookup"
    return "other"


def design_row(features: Features, kind: str) -> Array:
    """[1, features…, one-hot kind]: what the online models read."""
    onehot = [1.0 if kind == k else 0.0 for k in TASK_KINDS]
    return np.array([1.0, *features.values, *onehot], dtype=np.float64)


COLUMN_NAMES: Final = ("bias", *FEATURE_NAMES, *(f"kind={k}" for k in TASK_KINDS))


@dataclass(frozen=True)
class LearnerConfig:
    prior_variance: float = 4.0  # of each weight around its prior mean
    explore_rate: float = 0.2  # probe share of a tenant × task kind with no verdicts on the tier below
    explore_min: float = 0.01  # … and after many
    explore_halflife: int = 40  # verdicts of a kind on the tier below that halve its probe rate
    probe_ceiling: float = 0.7  # no probe where even the optimistic P(needs more than the probed tier) is above this
    probe_optimism: float = 0.25  # the optimistic P: the logit this many posterior standard deviations lower
    # Frozen, the P the tiers are chosen on is the logit this many posterior standard deviations higher: a frozen
    # learner meets requests unlike those it learnt from (wide posterior) and no failure will correct it.
    frozen_caution: float = 1.5
    target_failure: float = 0.02  # the failure rate λ steers to, above the large tier's own (see target_failure)
    base_failure_prior: float = 50.0  # pseudo-verdicts (all resolved) shrinking the large tier's failure rate
    lambda_start: float = 5.0
    lambda_step: float = 0.3  # log-λ step per observed failure (a success moves it target/(1−target) as far back)
    lambda_min: float = 0.5
    lambda_max: float = 1000.0
    # Never serve a tier the model thinks likely (P > 0.7) to fail, however low λ falls (below λ ≈ 0.84 the
    # large tier's threshold would pass 1: the router would stop serving large until failures pushed λ back up).
    threshold_cap: float = 0.7
    refit_every: int = 5
    window: int = 5000  # observations kept per tenant (oldest dropped)
    tier_cost: tuple[float, float, float] = DEFAULT_TIER_COST


@dataclass(frozen=True)
class Observation:
    """One served request and the verdict on its answer."""

    tenant: str
    kind: str
    row: tuple[float, ...]  # design_row(...) as a tuple
    served_rank: int
    failed: bool
    probe: bool = False  # served below the greedy choice to learn: its verdict does not steer λ
    prior_medium: float = 0.0  # the calibrated logits at the time (0: cold)
    prior_large: float = 0.0


@dataclass
class _Head:
    """One Bayesian logistic model: posterior mean and covariance (Laplace)."""

    mean: Array
    cov: Array

    def logit(self, x: Array) -> float:
        return float(x @ self.mean)

    def std(self, x: Array) -> float:
        return float(math.sqrt(max(0.0, float(x @ self.cov @ x))))


def _fit_head(x: Array, y: Array, offset: Array, prior_var: float, iterations: int = 25) -> _Head:
    d = x.shape[1]
    beta = np.zeros(d)
    precision = np.full(d, 1.0 / prior_var)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta + offset, -60, 60)))
        grad = x.T @ (p - y) + precision * beta
        hessian = (x.T * (p * (1 - p))) @ x + np.diag(precision)
        step = np.linalg.solve(hessian, grad)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta + offset, -60, 60)))
    hessian = (x.T * (p * (1 - p))) @ x + np.diag(precision)
    return _Head(beta, np.asarray(np.linalg.inv(hessian), dtype=np.float64))


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, value))))


@dataclass
class _TenantState:
    observations: deque[Observation]
    medium: _Head
    large: _Head
    since_fit: int = 0
    per_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Verdicts per "kind/tier" served below large: how much is known about serving that kind on that tier (a
    # medium answer's verdict says nothing about small, so the small probes of a kind decay with its small verdicts).
    tried: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    log_lambda: float = 0.0
    failures: int = 0
    successes: int = 0
    large_served: int = 0  # greedy verdicts on the large tier, and how many of them failed
    large_failed: int = 0


@dataclass(frozen=True)
class OnlineDecision:
    tier: str
    greedy_tier: str
    probe: bool
    kind: str
    p_medium: float
    p_large: float
    medium_at: float  # the thresholds in force (from λ)
    large_at: float
    failure_price: float  # λ
    observations: int  # of the tenant
    kind_observations: int
    frozen: bool
    drivers: tuple[tuple[str, float], ...]
    caution: float = 0.0  # frozen: the P above are this many posterior standard deviations up
    optimistic: float | None = None  # learning, greedy above small: the optimistic P(needs the greedy tier)
    tried: int = 0  # … and the verdicts this kind has on the tier below the greedy one

    def explain(self) -> str:
        state = "frozen" if self.frozen else "learning"
        unsure = f" (+{self.caution:g} sd: frozen, unsure is served up)" if self.caution else ""
        probe = ""
        if self.optimistic is not None:
            below = TIERS[TIERS.index(self.greedy_tier) - 1]
            probe = (f"; {'probe' if self.probe else 'no probe'} one tier below {self.greedy_tier} (optimistic P "
                     f"{self.optimistic:.2f}, {self.tried} verdicts of kind {self.kind} on {below})")
        why = ", ".join(f"{name} {value:+.2f}" for name, value in self.drivers) or "prior only"
        return (f"online ({state}, {self.observations} outcomes, {self.kind_observations} of kind {self.kind}): "
                f"P(≥medium) {self.p_medium:.2f} vs {self.medium_at:.3f}, P(large) {self.p_large:.2f} vs "
                f"{self.large_at:.3f}{unsure} at failure price λ={self.failure_price:.2g}{probe}; learnt: {why}")


def _hash_unit(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


class OnlineRouter:
    """Per-tenant online tier models. Not thread-safe; one per process, fed by one follower."""

    def __init__(self, config: LearnerConfig | None = None, *, frozen: bool = False) -> None:
        self.config = config or LearnerConfig()
        self.frozen = frozen
        self._tenants: dict[str, _TenantState] = {}
        self._dim = len(COLUMN_NAMES)

    # ------------------------------------------------------------------------------------------- state
    def _state(self, tenant: str) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            cov = np.eye(self._dim) * self.config.prior_variance
            state = self._tenants[tenant] = _TenantState(
                deque(maxlen=self.config.window), _Head(np.zeros(self._dim), cov.copy()),
                _Head(np.zeros(self._dim), cov.copy()), log_lambda=math.log(self.config.lambda_start))
        return state

    def observations(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return len(state.observations) if state else 0

    def observe(self, obs: Observation) -> None:
        """Learn from one verdict (ignored when frozen). Every greedy verdict steers λ (a large-tier one as a
        success: under-routing cannot fail it); only verdicts below large teach the models."""
        if self.frozen:
            return
        cfg = self.config
        state = self._state(obs.tenant)
        failed = obs.failed and obs.served_rank < 2
        if not obs.probe:
            if obs.served_rank >= 2:
                state.large_served += 1
                state.large_failed += obs.failed
            target = self.target_failure(obs.tenant)
            if failed:
                state.failures += 1
                state.log_lambda += cfg.lambda_step
            else:
                state.successes += 1
                state.log_lambda -= cfg.lambda_step * target / (1 - target)
            state.log_lambda = min(math.log(cfg.lambda_max), max(math.log(cfg.lambda_min), state.log_lambda))
        if obs.served_rank >= 2:
            return
        state.observations.append(obs)
        state.per_kind[obs.kind] += 1
        state.tried[f"{obs.kind}/{TIERS[obs.served_rank]}"] += 1
        state.since_fit += 1
        if state.since_fit >= cfg.refit_every:
            self.refit(obs.tenant)

    def target_failure(self, tenant: str) -> float:
        """The failure rate λ steers to: ``target_failure`` on top of the failures no routing can avoid — the share
        of the large tier's answers that fail (a noisy outcome signal, tasks beyond any model), shrunk towards 0 by
        ``base_failure_prior`` pseudo-observations and scaled by the share of verdicts served below large."""
        cfg = self.config
        state = self._tenants.get(tenant)
        if state is None:
            return cfg.target_failure
        base = state.large_failed / (state.large_served + cfg.base_failure_prior)
        verdicts = state.failures + state.successes
        below = 1.0 - state.large_served / verdicts if verdicts else 1.0
        return min(0.5, cfg.target_failure + base * max(0.0, below))

    def refit(self, tenant: str) -> None:
        state = self._state(tenant)
        state.since_fit = 0
        obs = list(state.observations)
        # P(≥ medium): served small → failed says yes, resolved says no; served medium and failed says yes.
        med = [(o.row, float(o.failed), o.prior_medium) for o in obs if o.served_rank == 0 or o.failed]
        # P(large): served medium → failed yes / resolved no; served small and resolved says no.
        lar = [(o.row, float(o.failed), o.prior_large) for o in obs if o.served_rank == 1 or not o.failed]
        for name, rows in (("medium", med), ("large", lar)):
            if not rows:
                continue
            x = np.array([r[0] for r in rows], dtype=np.float64)
            y = np.array([r[1] for r in rows], dtype=np.float64)
            offset = np.array([r[2] for r in rows], dtype=np.float64)
            setattr(state, name, _fit_head(x, y, offset, self.config.prior_variance))

    # ------------------------------------------------------------------------------------------- decision
    def thresholds(self, tenant: str) -> tuple[float, float, float]:
        """(medium_at, large_at, λ): serve small below medium_at, medium below large_at."""
        state = self._tenants.get(tenant)
        lam = math.exp(state.log_lambda) if state else self.config.lambda_start
        cost, cap = self.config.tier_cost, self.config.threshold_cap
        return min(cap, (cost[1] - cost[0]) / lam), min(cap, (cost[2] - cost[1]) / lam), lam

    def decide(self, features: Features, tenant: str, request_id: str, *, prior_medium: float = 0.0,
               prior_large: float = 0.0) -> OnlineDecision:
        cfg = self.config
        kind = task_kind(features)
        x = design_row(features, kind)
        state = self._tenants.get(tenant)
        medium_at, large_at, lam = self.thresholds(tenant)
        if state is None:
            p_medium, p_large = _sigmoid(prior_medium), _sigmoid(prior_large)
            logit_medium, logit_large, std_medium, std_large = prior_medium, prior_large, 0.0, 0.0
            seen = kind_seen = 0
            caution = 0.0
            drivers: tuple[tuple[str, float], ...] = ()
        else:
            logit_medium, logit_large = state.medium.logit(x) + prior_medium, state.large.logit(x) + prior_large
            std_medium, std_large = state.medium.std(x), state.large.std(x)
            caution = cfg.frozen_caution if self.frozen else 0.0
            p_medium = _sigmoid(logit_medium + caution * std_medium)
            p_large = _sigmoid(logit_large + caution * std_large)
            seen, kind_seen = len(state.observations), state.per_kind.get(kind, 0)
            head = state.large if p_medium >= medium_at else state.medium
            contributions = sorted(((n, float(w * v)) for n, w, v in zip(COLUMN_NAMES, head.mean, x, strict=True)
                                    if v), key=lambda pair: -abs(pair[1]))
            drivers = tuple((n, round(c, 2)) for n, c in contributions[:4] if abs(c) >= 0.05)
        p_large = min(p_large, p_medium)  # ordinal: needing large implies needing at least medium
        greedy = 2 if p_large >= large_at else 1 if p_medium >= medium_at else 0
        tier, probe, optimistic, tried = greedy, False, None, 0
        if not self.frozen and greedy > 0:
            # A probe serves one tier below the greedy choice. Its rate decays with the verdicts this kind already
            # has on that cheaper tier (not with all its verdicts: served medium says nothing about small), and
            # it is allowed while the optimistic P(needs more) — the logit ``probe_optimism`` posterior standard
            # deviations lower — is under the ceiling: a model that has never seen the kind served cheaper is
            # unsure, however high its mean, and a cold start's guess must not lock a kind out of the cheap tier.
            tried = state.tried.get(f"{kind}/{TIERS[greedy - 1]}", 0) if state is not None else 0
            rate = max(cfg.explore_min, cfg.explore_rate * 0.5 ** (tried / cfg.explore_halflife))
            logit, std = (logit_large, std_large) if greedy == 2 else (logit_medium, std_medium)
            optimistic = _sigmoid(logit - cfg.probe_optimism * std)  # P(needs more than the probed tier)
            if optimistic <= cfg.probe_ceiling and _hash_unit(f"probe:{request_id}") < rate:
                tier, probe = greedy - 1, True
        return OnlineDecision(TIERS[tier], TIERS[greedy], probe, kind, round(p_medium, 4), round(p_large, 4),
                              round(medium_at, 4), round(large_at, 4), round(lam, 2), seen, kind_seen,
                              self.frozen, drivers, caution=caution,
                              optimistic=None if optimistic is None else round(optimistic, 4), tried=tried)


# ------------------------------------------------------------------------------------------- verdicts
def observations_of(tenant: str, record: RouteRecord, verdict: Verdict | None) -> list[Observation]:
    """What one routed request teaches: a cascade whose cheaper answer failed verification says the cheaper tier
    failed; ``verdict`` (None: none yet) is about the tier that answered."""
    row = (1.0, *record.features, *(1.0 if record.kind == k else 0.0 for k in TASK_KINDS))
    out: list[Observation] = []
    if len(row) != len(COLUMN_NAMES):
        return out  # routed on another feature set (an older version): nothing to learn
    if record.cascade_failed_tier in TIERS:
        out.append(Observation(tenant, record.kind, row, TIERS.index(record.cascade_failed_tier), True, True,
                               record.prior_medium, record.prior_large))
    if verdict is not None and record.tier in TIERS:
        out.append(Observation(tenant, record.kind, row, TIERS.index(record.tier), verdict == "failed",
                               record.probe, record.prior_medium, record.prior_large))
    return out


def evaluators_verdict(evaluation: Evaluation | None) -> Verdict | None:
    """The online evaluators' verdict on an answer: failed when one that applies failed, resolved when at least
    one applied and all passed, None when none applied (or the request was not sampled)."""
    if evaluation is None:
        return None
    checks = [evaluation.grounded, evaluation.structured_valid,
              None if evaluation.refusal is None else not evaluation.refusal]
    applied = [c for c in checks if c is not None]
    if not applied:
        return None
    return "resolved" if all(applied) else "failed"


@dataclass
class OutcomeJoin:
    """Joins responses (their route records and evaluators' verdicts) with task outcomes, into observations.

    A response whose task is known waits for the task's outcome (``tollway outcome TASK resolved|failed``), which
    then judges every request of the task; a response without a task is judged by the evaluators alone. At most
    ``max_waiting`` tasks wait (the oldest are dropped: their outcome, if it comes, teaches nothing)."""

    max_waiting: int = 100_000
    waiting: dict[tuple[str, str], list[RouteRecord]] = field(default_factory=dict)

    def on_response(self, response: Response) -> list[Observation]:
        record = response.route
        if record is None or response.replay:
            return []
        verdict = evaluators_verdict(response.evaluation)
        if response.status is not Status.OK:
            verdict = None  # a denial, a failure of the backend, a deadline: not a verdict on the tier
        if verdict != "failed" and response.task_id:
            self.waiting.setdefault((response.tenant, response.task_id), []).append(record)
            while len(self.waiting) > self.max_waiting:
                self.waiting.pop(next(iter(self.waiting)))
            return observations_of(response.tenant, record, None)  # the task's outcome will judge the answer
        return observations_of(response.tenant, record, verdict)

    def on_outcome(self, tenant: str, task_id: str, outcome: Verdict) -> list[Observation]:
        records = self.waiting.pop((tenant, task_id), [])
        out: list[Observation] = []
        for record in records:
            out += observations_of(tenant, record.model_copy(update={"cascade_failed_tier": None}), outcome)
        return out


__all__ = ["COLUMN_NAMES", "DEFAULT_TIER_COST", "TASK_KINDS", "LearnerConfig", "Observation", "OnlineDecision",
           "OnlineRouter", "OutcomeJoin", "design_row", "evaluators_verdict", "observations_of", "task_kind"]
