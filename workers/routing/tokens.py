"""A deterministic, tokenizer-like token count (no vocabulary file, no download).

Byte-pair tokenizers of the GPT family spend about one token on a common short word, more on long or rare words,
one per punctuation mark and one per group of up to three digits. The regex below reproduces that shape: a run of
letters costs one token per started six characters, digits cost one token per three, every other visible character
costs one. On English prose it lands within ~15 % of cl100k counts, which is what routing and pricing need; a
backend that reports real usage (the ``openai`` backend) always wins over this estimate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from schemas.envelope import Message

_PIECES = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_")
# Chat formatting: each message carries role and separators, and the reply is primed (OpenAI cookbook figures).
PER_MESSAGE_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
_LETTERS_PER_TOKEN = 6


@lru_cache(maxsize=8192)
def count_tokens(text: str) -> int:
    """Token count of ``text``; 0 for the empty string.

    Memoised: one prompt is counted by the router, the difficulty estimate and the backend's usage, and roles and
    system prompts repeat on every request."""
    total = 0
    for piece in _PIECES.findall(text):
        if len(piece) > _LETTERS_PER_TOKEN and piece[0].isalpha():
            total += -(-len(piece) // _LETTERS_PER_TOKEN)
        else:
            total += 1
    return total


def count_message_tokens(messages: Iterable[Message | tuple[str, str]]) -> int:
    """Prompt tokens of a chat: contents plus per-message formatting plus the reply priming."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        role, content = (message.role, message.content) if isinstance(message, Message) else message
        total += PER_MESSAGE_TOKENS + count_tokens(role) + count_tokens(content)
    return total


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` (cut at a piece boundary) whose count is at most ``max_tokens``."""
    if count_tokens(text) <= max_tokens:
        return text
    total = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        cost = -(-len(piece) // _LETTERS_PER_TOKEN) if len(piece) > _LETTERS_PER_TOKEN and piece[0].isalpha() else 1
        if total + cost > max_tokens:
            return text[: match.start()].rstrip()
        total += cost
    return text
