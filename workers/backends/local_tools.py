"""The local model's tool use: deterministic, so an agent loop runs offline and tests can name every step.

Turn 1 (:func:`plan`): when the prompt asks for something an offered tool does, the model answers with tool calls
instead of text, in the order the prompt asks:

* ``calculate 17*23`` / ``what is (2+3)*4`` → ``calculator {expression}``;
* ``status of ticket T-1001`` / ``look up ticket T-1001`` → ``ticket_lookup {ticket_id}``;
* ``close|resolve|reopen ticket T-1001`` → ``ticket_update {ticket_id, status}``;
* ``refund $40 on ticket T-1001`` → ``issue_refund {ticket_id, amount}``;
* for any offered tool, ``use <tool> with {"json": "arguments"}``.

Turn 2 (:func:`answer_from_results`): with the tools' results in hand it answers in one sentence per call, saying
plainly when a call was refused or failed (the structured error's code and message).

A later turn of the session (:func:`recall`): a prompt that asks about what was found earlier ("what did you find
earlier?", "remind me of the result again") is answered from the newest tool results in the conversation memory.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from schemas.envelope import Message, ToolCall, ToolCallRecord
from workers.tools.modes import results_in

_ID = r"#?([A-Za-z]{1,8}-\d{1,10})"
_EXPRESSION = r"([-+*/().%^×÷\d\s]*\d[-+*/().%^×÷\d\s]*)"
_CALC = re.compile(r"\b(?:calculate|compute|evaluate|what(?:'s| is))\s+" + _EXPRESSION, re.I)
_HAS_OPERATOR = re.compile(r"[\d)]\s*(?:[-+*/%^×÷]|\*\*)\s*[-(\d]")
_LOOKUP = re.compile(r"\b(?:status of|look\s?up|check|show|find)\s+(?:the\s+)?ticket\s+" + _ID, re.I)
_UPDATE = re.compile(r"\b(close|resolve|reopen)\s+(?:the\s+)?ticket\s+" + _ID, re.I)
_REFUND = re.compile(r"\brefund\s+(?:of\s+)?\$?\s?(\d+(?:\.\d+)?)\s*(?:usd|dollars?)?\s+(?:on|for|to)\s+(?:the\s+)?"
                     r"ticket\s+" + _ID, re.I)
_GENERIC = re.compile(r"\b(?:use|call)\s+(?:the\s+)?(?:tool\s+)?([a-z_][a-z0-9_]{0,63})\s+(?:with\s+)?(\{[^\n]*\})",
                      re.I)
_STATUS = {"close": "closed", "resolve": "resolved", "reopen": "open"}


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def plan(prompt: str, offered: list[str], step: int) -> list[ToolCall]:
    """The tool calls the prompt asks for, among ``offered`` (none: the model answers in text)."""
    found: list[tuple[int, str, dict[str, Any]]] = []
    for match in _CALC.finditer(prompt):
        expression = match.group(1).strip().rstrip(".")
        if _HAS_OPERATOR.search(expression):
            found.append((match.start(), "calculator", {"expression": expression}))
    for match in _LOOKUP.finditer(prompt):
        found.append((match.start(), "ticket_lookup", {"ticket_id": match.group(1).upper()}))
    for match in _UPDATE.finditer(prompt):
        found.append((match.start(), "ticket_update",
                      {"ticket_id": match.group(2).upper(), "status": _STATUS[match.group(1).lower()]}))
    for match in _REFUND.finditer(prompt):
        found.append((match.start(), "issue_refund",
                      {"ticket_id": match.group(2).upper(), "amount": _number(match.group(1))}))
    for match in _GENERIC.finditer(prompt):
        try:
            arguments = orjson.loads(match.group(2))
        except orjson.JSONDecodeError:
            continue
        if isinstance(arguments, dict):
            found.append((match.start(), match.group(1), arguments))
    allowed = set(offered)
    calls = [(name, arguments) for _pos, name, arguments in sorted(found, key=lambda f: f[0]) if name in allowed]
    return [ToolCall(id=f"call_{step}_{i}", name=name, arguments=arguments) for i, (name, arguments) in
            enumerate(calls)]


_RECALL = re.compile(r"\b(?:earlier|previously|last time|remind me|you (?:found|said|got))\b", re.I)


def recall(prompt: str, history: list[Message]) -> str | None:
    """The answer to a question about earlier tool results, from the session's memory (None: not such a question,
    or no tool results remembered)."""
    if not _RECALL.search(prompt):
        return None
    records = results_in(history)
    return "Earlier: " + answer_from_results(records) if records else None


def answer_from_results(records: list[ToolCallRecord]) -> str:
    """The model's answer once its tool calls came back: one sentence per call of the latest step."""
    if not records:
        return "I have no tool results to answer from."
    last = max(r.step for r in records)
    return " ".join(_sentence(r) for r in records if r.step == last)


def _sentence(record: ToolCallRecord) -> str:
    try:
        content: Any = orjson.loads(record.content) if record.content else {}
    except orjson.JSONDecodeError:
        content = record.content
    if record.status != "ok":
        message = content.get("message", "") if isinstance(content, dict) else str(content)
        verb = "was refused by policy" if record.status == "denied" else "failed"
        return f"The {record.name} call {verb} ({record.code}): {message}."
    if not isinstance(content, dict):
        return f"{record.name} returned {record.content}."
    if record.name == "calculator" and "result" in content:
        return f"{content.get('expression', '')} = {content['result']}."
    if record.name == "ticket_lookup":
        return (f"Ticket {content.get('ticket_id')} (\"{content.get('subject', '')}\") is "
                f"{content.get('status', 'unknown')}.")
    if record.name == "ticket_update":
        return f"Ticket {content.get('ticket_id')} is now {content.get('status')}."
    if record.name == "issue_refund":
        return (f"Refund {content.get('refund_id')} of ${content.get('amount')} was issued on ticket "
                f"{content.get('ticket_id')}.")
    return f"{record.name} returned {record.content}."
