"""The auto quality tier: the learning router when one runs (:mod:`workers.routing.online`, warm-started from the
calibrated router's logits when parameters are in force), else the calibrated router when parameters are in force
for the tenant, else the heuristic.

Both see the same request features (:mod:`workers.routing.features`); neither sees a label. The explanation names
which one decided, the features that moved it and the operating point, so `tollway models route` and
``env.model.routing`` can say why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from schemas.envelope import Envelope, RouteRecord
from schemas.errors import ConfigError
from workers.routing.calibrated import DEFAULT_PARAMS_PATH, LearnedDecision, decide, load_params
from workers.routing.difficulty import Difficulty, estimate_envelope
from workers.routing.features import Features, extract_messages
from workers.routing.online import OnlineDecision, OnlineRouter, task_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoTier:
    tier: str
    features: Features
    learned: LearnedDecision | None
    heuristic: Difficulty | None
    online: OnlineDecision | None = None

    @property
    def decided_by(self) -> str:
        return "online" if self.online else "calibrated" if self.learned else "heuristic"

    @property
    def probabilities(self) -> tuple[float, float] | None:
        """(P(≥ medium), P(large)) of the deciding learnt model; None for the heuristic."""
        if self.online is not None:
            return self.online.p_medium, self.online.p_large
        if self.learned is not None:
            return self.learned.p_medium, self.learned.p_large
        return None

    @property
    def score(self) -> float:
        if self.online is not None:
            return round((self.online.p_medium + self.online.p_large) / 2, 3)
        if self.learned is not None:
            return self.learned.score
        assert self.heuristic is not None
        return self.heuristic.score

    def explain(self) -> str:
        if self.online is not None:
            base = f"; warm start: {self.learned.explain()}" if self.learned is not None else "; cold start"
            return f"auto {self.tier} ({self.online.explain()}{base})"
        if self.learned is not None:
            return f"auto {self.tier} ({self.learned.explain()})"
        assert self.heuristic is not None
        return self.heuristic.explain()


def route_record(auto: AutoTier, env: Envelope) -> RouteRecord:
    """What the learning router will learn from when the verdict on this request comes back."""
    prior_medium = prior_large = 0.0
    if auto.learned is not None:
        prior_medium, prior_large = _logit(auto.learned.p_medium), _logit(auto.learned.p_large)
    kind = auto.online.kind if auto.online is not None else task_kind(auto.features)
    return RouteRecord(kind=kind, features=list(auto.features.values), tier=auto.tier,
                       probe=bool(auto.online and auto.online.probe), prior_medium=round(prior_medium, 4),
                       prior_large=round(prior_large, 4))


def request_features(env: Envelope) -> Features:
    retrieval = env.retrieval
    return extract_messages([(m.role, m.content) for m in env.request.messages],
                            retrieval_confidence=retrieval.confidence if retrieval else 0.0,
                            has_passages=bool(retrieval and retrieval.passages))


def _logit(p: float) -> float:
    p = min(1 - 1e-6, max(1e-6, p))
    return math.log(p / (1 - p))


def auto_tier(env: Envelope, params_path: Path = DEFAULT_PARAMS_PATH, online: OnlineRouter | None = None,
              ) -> AutoTier:
    """The tier for a request nobody fixed a tier for. A broken parameters file is logged and the heuristic
    decides (a request is never lost to a bad data file). With ``online``, the learning router decides, its
    offset the calibrated router's logits when they exist."""
    features = request_features(env)
    try:
        params = load_params(params_path)
    except ConfigError as exc:
        log.warning("router parameters ignored, the heuristic decides: %s", exc)
        params = None
    learned = decide(features, env.tenant, params) if params is not None else None
    if online is not None:
        prior = (_logit(learned.p_medium), _logit(learned.p_large)) if learned is not None else (0.0, 0.0)
        decision = online.decide(features, env.tenant, env.request_id, prior_medium=prior[0], prior_large=prior[1])
        return AutoTier(decision.tier, features, learned, None, decision)
    if learned is not None:
        return AutoTier(learned.tier, features, learned, None)
    heuristic = estimate_envelope(env)
    return AutoTier(heuristic.tier, features, None, heuristic)
