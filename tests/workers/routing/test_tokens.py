from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import Message
from workers.routing.tokens import count_message_tokens, count_tokens, truncate_to_tokens


def test_counts_like_a_bpe_tokenizer() -> None:
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("12345") == 2  # digits in groups of three
    assert count_tokens("internationalization") == 4  # long words cost more
    assert count_message_tokens([Message(role="user", content="Hello, world!")]) == 3 + 4 + 1 + 4


@settings(deadline=None)  # a shared CI machine stalls now and then; the property is what matters
@given(st.text(max_size=300), st.integers(min_value=0, max_value=50))
def test_truncation_never_exceeds_and_is_a_prefix(text: str, limit: int) -> None:
    cut = truncate_to_tokens(text, limit)
    assert count_tokens(cut) <= limit
    assert text.startswith(cut)
    if count_tokens(text) <= limit:
        assert cut == text
