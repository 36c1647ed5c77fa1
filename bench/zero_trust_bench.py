"""CPU of zero trust, layer 2, per request: sealing the policy decision, verifying it at each governed stage (cache,
model, post-process, audit), signing the outcome and verifying it (audit, ledger) — on a realistic envelope.

    python -m bench.zero_trust_bench [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import time

import orjson

from schemas.envelope import PolicyDecision, Status
from streams.clients.envelopes import new_envelope
from streams.settings import load_settings
from workers.decisions import DecisionKeys, decision_problem, outcome_verifies, sign_decision, sign_outcome

GOVERNED = ("cache", "model", "postprocess", "audit")


def measure(requests: int) -> dict[str, float]:
    settings = load_settings(topic_prefix="bench")
    keys = DecisionKeys.parse(settings.decision_keys.get_secret_value())
    prompt = "Summarise our refund policy for enterprise customers in three bullet points. " * 8
    envs = [new_envelope(prompt, tenant="acme", settings=settings) for _ in range(requests)]
    for env in envs:
        env.route = ["cache", "model", "postprocess", "audit"]
        env.policy = PolicyDecision(policy_version="v1", allowed_models=["nano-us", "lite-us"], decisions=["allow"])
    started = time.process_time_ns()
    for env in envs:
        sign_decision(env, keys)
    seal_us = (time.process_time_ns() - started) / requests / 1000
    started = time.process_time_ns()
    for env in envs:
        for stage in GOVERNED:
            env.route.pop(0)
            assert decision_problem(env, keys, stage) is None
    verify_us = (time.process_time_ns() - started) / requests / 1000
    for env in envs:
        env.finish(Status.OK, stage="postprocess")
    started = time.process_time_ns()
    for env in envs:
        sign_outcome(env, keys)
        assert outcome_verifies(env, keys)
        assert outcome_verifies(env, keys)
    outcome_us = (time.process_time_ns() - started) / requests / 1000
    return {"requests": requests, "envelope_bytes": len(orjson.dumps(envs[0].model_dump(mode="json"))),
            "seal_decision_us": round(seal_us, 1), "verify_decision_4_stages_us": round(verify_us, 1),
            "sign_and_verify_outcome_twice_us": round(outcome_us, 1),
            "total_us_per_request": round(seal_us + verify_us + outcome_us, 1), "loadavg": list(os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    print(orjson.dumps(measure(parser.parse_args().requests)).decode())


if __name__ == "__main__":
    main()
