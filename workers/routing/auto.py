"""The auto quality tier: the calibrated router when parameters are in force for the tenant, else the heuristic.

Both see the same request features (:mod:`workers.routing.features`); neither sees a label. The explanation names
which one decided, the features that moved it and the operating point, so `tollway models route` and
``env.model.routing`` can say why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from schemas.envelope import Envelope
from schemas.errors import ConfigError
from workers.routing.calibrated import DEFAULT_PARAMS_PATH, LearnedDecision, decide, load_params
from workers.routing.difficulty import Difficulty, estimate_envelope
from workers.routing.features import Features, extract_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoTier:
    tier: str
    features: Features
    learned: LearnedDecision | None
    heuristic: Difficulty | None

    @property
    def score(self) -> float:
        if self.learned is not None:
            return self.learned.score
        assert self.heuristic is not None
        return self.heuristic.score

    def explain(self) -> str:
        if self.learned is not None:
            return f"auto {self.tier} ({self.learned.explain()})"
        assert self.heuristic is not None
        return self.heuristic.explain()


def request_features(env: Envelope) -> Features:
    retrieval = env.retrieval
    return extract_messages([(m.role, m.content) for m in env.request.messages],
                            retrieval_confidence=retrieval.confidence if retrieval else 0.0,
                            has_passages=bool(retrieval and retrieval.passages))


def auto_tier(env: Envelope, params_path: Path = DEFAULT_PARAMS_PATH) -> AutoTier:
    """The tier for a request nobody fixed a tier for. A broken parameters file is logged and the heuristic
    decides (a request is never lost to a bad data file)."""
    features = request_features(env)
    try:
        params = load_params(params_path)
    except ConfigError as exc:
        log.warning("router parameters ignored, the heuristic decides: %s", exc)
        params = None
    learned = decide(features, env.tenant, params) if params is not None else None
    if learned is not None:
        return AutoTier(learned.tier, features, learned, None)
    heuristic = estimate_envelope(env)
    return AutoTier(heuristic.tier, features, None, heuristic)
