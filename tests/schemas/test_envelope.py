import random
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from schemas.envelope import DEFAULT_ROUTE, Envelope, Hop, Outcome, Status, Usage, ms_rounded
from streams.runtime.codec import encode


def test_default_route_is_the_six_stages(make_envelope: Callable[..., Envelope]) -> None:
    assert make_envelope().route == list(DEFAULT_ROUTE)
    assert DEFAULT_ROUTE == ("retrieval", "policy", "cache", "model", "postprocess", "audit")


def test_unknown_stage_in_route_is_rejected(make_envelope: Callable[..., Envelope]) -> None:
    data = make_envelope().model_dump()
    data["route"] = ["retrieval", "telepathy"]
    with pytest.raises(ValidationError, match="unknown stage"):
        Envelope.model_validate(data)


def test_unknown_fields_are_rejected(make_envelope: Callable[..., Envelope]) -> None:
    data = make_envelope().model_dump()
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        Envelope.model_validate(data)


def test_finish_collapses_route_to_audit(make_envelope: Callable[..., Envelope]) -> None:
    env = make_envelope()
    env.route = ["cache", "model", "postprocess", "audit"]
    env.finish(Status.DENIED, code="pii_blocked", stage="policy")
    assert env.route == ["audit"]
    assert env.terminal and env.outcome is not None and env.outcome.code == "pii_blocked"


@pytest.mark.parametrize("retry_after_s", [None, 2.5, 0.0, float("inf"), 3, True, 10**400])
@pytest.mark.parametrize("status", [Status.OK, Status.DENIED, "failed"])
@pytest.mark.parametrize("stage", ["model", "audit", ""])
def test_finish_builds_the_validated_outcome(make_envelope: Callable[..., Envelope], status: Status | str,
                                             stage: str, retry_after_s: float | None) -> None:
    """finish writes the Outcome validation builds (or validates, where a value is not already what validation
    gives: an int retry is written as a float, a status as its enum): same fields, order, fields set, bytes."""
    kwargs = {"status": status, "code": "c", "message": "m é", "stage": stage, "retry_after_s": retry_after_s}
    try:
        validated = Outcome(**kwargs)  # type: ignore[arg-type]
    except ValidationError:
        with pytest.raises(ValidationError):
            make_envelope().finish(status, code="c", message="m é", stage=stage,  # type: ignore[arg-type]
                                   retry_after_s=retry_after_s)
        return
    env = make_envelope()
    by_assignment = env.model_copy(deep=True)
    env.finish(status, code="c", message="m é", stage=stage, retry_after_s=retry_after_s)  # type: ignore[arg-type]
    by_assignment.outcome = validated
    by_assignment.route = ["audit"] if stage != "audit" else []
    direct = env.outcome
    assert direct is not None
    assert list(direct.__dict__.items()) == list(validated.__dict__.items())
    assert [type(v) for v in direct.__dict__.values()] == [type(v) for v in validated.__dict__.values()]
    assert direct.__pydantic_fields_set__ == validated.__pydantic_fields_set__
    assert (direct.__pydantic_extra__, direct.__pydantic_private__) == (None, None)
    assert direct.model_dump_json() == validated.model_dump_json()
    assert list(env.__dict__.items()) == list(by_assignment.__dict__.items())
    assert env.__pydantic_fields_set__ == by_assignment.__pydantic_fields_set__
    assert env.model_dump_json() == by_assignment.model_dump_json()
    assert encode(env) == encode(by_assignment)


def test_hop_arithmetic() -> None:
    hop = Hop(stage="cache", worker_id="w", produced_at_ns=1_000_000_000, received_at_ns=1_002_000_000,
              started_at_ns=1_003_500_000, finished_at_ns=1_004_000_000)
    assert hop.queue_ms == pytest.approx(3.5)
    assert hop.service_ms == pytest.approx(0.5)


def test_hop_clock_skew_never_negative() -> None:
    hop = Hop(stage="cache", worker_id="w", produced_at_ns=2_000_000, received_at_ns=1_000_000,
              started_at_ns=1_000_000, finished_at_ns=900_000)
    assert hop.queue_ms == 0 and hop.service_ms == 0


def test_remaining_budget(make_envelope: Callable[..., Envelope]) -> None:
    env = make_envelope(budget_ms=500)
    assert env.remaining_budget_ms(env.created_at_ns + 200_000_000) == pytest.approx(300)


def test_usage_adds() -> None:
    total = Usage(input_tokens=3, output_tokens=1) + Usage(input_tokens=2, cached_input_tokens=5)
    assert total == Usage(input_tokens=5, cached_input_tokens=5, output_tokens=1)


@pytest.mark.parametrize(("stage", "worker_id", "produced", "received"),
                         [("cache", "w-1", 1_700_000_000_000_000_000, 1_700_000_000_001_000_000), ("audit", "", 0, 5)])
def test_an_arrived_hop_is_the_validated_hop(stage: str, worker_id: str, produced: int, received: int) -> None:
    validated = Hop(stage=stage, worker_id=worker_id, produced_at_ns=produced, received_at_ns=received,
                    started_at_ns=received)
    direct = Hop.arrived(stage, worker_id, produced, received)
    assert direct == validated
    assert list(direct.__dict__.items()) == list(validated.__dict__.items())
    assert direct.__pydantic_fields_set__ == validated.__pydantic_fields_set__
    assert (direct.__pydantic_extra__, direct.__pydantic_private__) == (None, None) == (
        validated.__pydantic_extra__, validated.__pydantic_private__)
    assert direct.model_dump_json() == validated.model_dump_json()


def test_rounded_ms_is_round_to_the_microsecond() -> None:
    """Hop.rounded_ms's integer rounding gives the floats round(ns / 1e6, 3) gives: ties, clock skew, huge values."""
    rng = random.Random(18)
    spans = [*range(0, 20_000), *(rng.randrange(0, 10**13) for _ in range(20_000)),
             *(k * 1000 + 500 for k in range(5_000)), *((1 << 53) + d for d in range(-600, 600)), 10**18 + 500]
    for span in spans:
        for skew in (0, -span - 1):
            hop = Hop(stage="s", worker_id="w", produced_at_ns=10**18, received_at_ns=10**18,
                      started_at_ns=10**18 + span + skew, finished_at_ns=10**18 + 2 * span + skew)
            started = hop.started_at_ns
            queued, served = started - hop.produced_at_ns, hop.finished_at_ns - started
            expected = round(max(0, queued) / 1e6, 3), round(max(0, served) / 1e6, 3)
            assert hop.rounded_ms() == expected
            assert [repr(v) for v in hop.rounded_ms()] == [repr(v) for v in expected]


def test_ms_rounded_is_round_of_the_milliseconds() -> None:
    rng = random.Random(19)
    values = [*range(-20_000, 20_000), *(rng.randrange(-10**13, 10**13) for _ in range(40_000)),
              *(k * 1000 + 500 for k in range(-5_000, 5_000)), *((1 << 53) + d for d in range(-600, 600)),
              -(1 << 53) - 500, -(10**18) - 500]
    for ns in values:
        assert repr(ms_rounded(ns)) == repr(round(ns / 1e6, 3)), ns
