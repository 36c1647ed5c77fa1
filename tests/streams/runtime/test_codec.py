import contextlib
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import Envelope
from schemas.errors import BadEvent, UnknownSchemaVersion
from streams.runtime.codec import decode, encode


def test_round_trip(make_envelope: Callable[..., Envelope]) -> None:
    env = make_envelope("héllo — 你好 🙂")
    assert decode(encode(env)) == env


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"schema_version": 1}', "schema_violation"),
    ],
)
def test_bad_bytes_get_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        decode(raw)
    assert info.value.reason == reason


def test_unknown_schema_version(make_envelope: Callable[..., Envelope]) -> None:
    data = orjson.loads(encode(make_envelope()))
    data["schema_version"] = 99
    with pytest.raises(UnknownSchemaVersion, match="99"):
        decode(orjson.dumps(data))


def test_wrong_types_name_the_field(make_envelope: Callable[..., Envelope]) -> None:
    data = orjson.loads(encode(make_envelope()))
    data["request"]["params"]["max_tokens"] = "lots"
    with pytest.raises(BadEvent, match=r"request\.params\.max_tokens"):
        decode(orjson.dumps(data))


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    with contextlib.suppress(BadEvent):
        decode(raw)


@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200))
def test_any_prompt_round_trips(prompt: str) -> None:
    from streams.clients.envelopes import new_envelope

    env = new_envelope(prompt, tenant="acme", budget_ms=1000)
    assert decode(encode(env)).request.prompt == prompt
