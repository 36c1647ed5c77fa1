"""The injection detector's rule tables, read from a data file beside this module (``injection_rules.yaml``).

The file has four sections:

- ``fragments``: named pieces of regex (``override``, ``object`` …) that rules splice in as ``{name}``; a fragment
  may use the fragments defined before it. ``{0,6}``-style quantifiers are left alone (a reference is a name).
- ``lists``: lists of trigger words shared by several rules through YAML anchors; not read otherwise.
- ``rules``: each with a ``name``, a ``layer`` (``literal`` or ``family``), a ``weight`` in (0, 1], a ``pattern``,
  optional lower-case ``triggers``, an optional ``context`` pattern that must match within ``context_chars`` of the
  hit, an optional ``unless`` pattern that cancels a hit when it matches within ``unless_chars`` of it (a how-to
  question: "how do I make my colleague an admin?"), and ``always_from_length``. A pattern may be written as a list
  of strings, which are joined.
- ``discussion``: the pattern of text that talks *about* injection, and the damping applied to it.
- ``typo_vocabulary``: words the rules look for that are worth reading through a typing slip (``Igonre``).

A rule's ``kind`` is ``command`` (the default: the text tells the model to do something) or ``mention`` (the text
names a thing attackers use, such as "DAN" or "developer mode", which a discussion of attacks names too). Only
mentions, and commands that sit inside quotes, are damped when the text discusses injection.

Every pattern is compiled case-insensitive and multi-line. A file that does not validate raises
:class:`~schemas.errors.ConfigError` naming the file, the rule and what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import ConfigError

RULES_PATH = Path(__file__).with_name("injection_rules.yaml")
_FLAGS = re.IGNORECASE | re.MULTILINE
_REFERENCE = re.compile(r"(?<!\\)\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Lower-case literals of which every match contains at least one: a cheap test skips the regex on the
    # ordinary prompts that are most of the traffic. Empty: always run the regex.
    triggers: tuple[str, ...] = ()
    always_from_length: int | None = None  # run the regex anyway on texts at least this long
    # A family rule may also need ``context`` within ``context_chars`` of its match ("your", "previous").
    context: re.Pattern[str] | None = None
    context_chars: int = 40
    mention: bool = False  # names an attack rather than commands one: damped in a discussion
    # A hit is cancelled when ``unless`` matches within ``unless_chars`` of it (before or after).
    unless: re.Pattern[str] | None = None
    unless_chars: int = 60

    def __post_init__(self) -> None:
        trigger = re.compile("|".join(map(re.escape, self.triggers))) if self.triggers else None
        object.__setattr__(self, "_trigger", trigger)

    def search(self, text: str) -> bool:
        """The rule's verdict without the trigger shortcut."""
        for match in self.pattern.finditer(text):
            if self.unless is not None and self.unless.search(
                    text[max(0, match.start() - self.unless_chars):match.end() + self.unless_chars]) is not None:
                continue
            if self.context is None:
                return True
            window = text[max(0, match.start() - self.context_chars):match.end() + self.context_chars]
            if self.context.search(window) is not None:
                return True
        return False

    def matches(self, text: str, lowered: str) -> bool:
        trigger: re.Pattern[str] | None = getattr(self, "_trigger", None)
        if trigger is not None and trigger.search(lowered) is None and (
                self.always_from_length is None or len(text) < self.always_from_length):
            return False
        return self.search(text)


class TriggerIndex:
    """The rules worth running on a text, found with one pass over the distinct triggers of all the rules.

    Many rules share trigger words ("give", "your", "admin"), and a compiled alternation per rule scans the text
    once per rule; testing each distinct trigger once with ``in`` and each rule's set with ``isdisjoint`` gives the
    same answer as :meth:`Rule.matches`'s shortcut at about half the cost.
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.triggers = tuple(sorted({t for rule in rules for t in rule.triggers}))
        self._sets = tuple(frozenset(rule.triggers) for rule in rules)

    def candidates(self, text: str, lowered: str) -> list[Rule]:
        present = {t for t in self.triggers if t in lowered}
        return [rule for rule, triggers in zip(self.rules, self._sets, strict=True)
                if not triggers or not triggers.isdisjoint(present)
                or (rule.always_from_length is not None and len(text) >= rule.always_from_length)]


@dataclass(frozen=True)
class RuleBook:
    rules: tuple[Rule, ...]
    discussion: re.Pattern[str]
    discussion_damping: float
    typo_vocabulary: tuple[str, ...] = ()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Pattern = str | list[str]


class _RuleSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    layer: Literal["literal", "family"]
    kind: Literal["command", "mention"] = "command"
    weight: float = Field(gt=0.0, le=1.0)
    pattern: Pattern
    triggers: list[str] = Field(default_factory=list)
    always_from_length: int | None = Field(default=None, ge=1)
    context: Pattern | None = None
    context_chars: int = Field(default=40, ge=0)
    unless: Pattern | None = None
    unless_chars: int = Field(default=60, ge=0)


class _DiscussionSpec(_Strict):
    pattern: Pattern
    damping: float = Field(ge=0.0, le=1.0)


class _RuleFile(_Strict):
    fragments: dict[str, Pattern] = Field(default_factory=dict)
    lists: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[_RuleSpec] = Field(min_length=1)
    discussion: _DiscussionSpec
    typo_vocabulary: list[str] = Field(default_factory=list)


def _joined(pattern: Pattern) -> str:
    return pattern if isinstance(pattern, str) else "".join(pattern)


def _expand(pattern: Pattern, fragments: dict[str, str], where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise ConfigError(f"{where}: unknown fragment {{{name}}} (defined: {', '.join(fragments) or 'none'})")
        return fragments[name]

    return _REFERENCE.sub(substitute, _joined(pattern))


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, _FLAGS)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression: {exc}") from None


def parse_rules(raw: object, source: str = "<rules>") -> RuleBook:
    """Validate and compile a rule file already read as YAML; ConfigError names what is wrong and where."""
    try:
        spec = _RuleFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid injection rule file:\n{exc}") from None
    fragments: dict[str, str] = {}
    for name, fragment in spec.fragments.items():
        if _REFERENCE.fullmatch("{" + name + "}") is None:
            raise ConfigError(f"{source}: fragment name {name!r} must be lower_snake_case")
        fragments[name] = _expand(fragment, fragments, f"{source}: fragment {name!r}")
        _compile(fragments[name], f"{source}: fragment {name!r}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for rule in spec.rules:
        where = f"{source}: rule {rule.name!r}"
        if rule.name in seen:
            raise ConfigError(f"{where}: the name is used twice")
        seen.add(rule.name)
        bad = [t for t in rule.triggers if not t or t != t.lower()]
        if bad:
            raise ConfigError(f"{where}: triggers are matched on lower-cased text and must be non-empty lower case: "
                              f"{bad}")
        context = None if rule.context is None else _compile(_expand(rule.context, fragments, where), where)
        unless = None if rule.unless is None else _compile(_expand(rule.unless, fragments, where), where)
        rules.append(Rule(rule.name, rule.weight, _compile(_expand(rule.pattern, fragments, where), where),
                          triggers=tuple(rule.triggers), always_from_length=rule.always_from_length,
                          context=context, context_chars=rule.context_chars, mention=rule.kind == "mention",
                          unless=unless, unless_chars=rule.unless_chars))
    where = f"{source}: discussion"
    bad_words = [w for w in spec.typo_vocabulary if not w.isalpha() or w != w.lower()]
    if bad_words:
        raise ConfigError(f"{source}: typo_vocabulary holds lower-case words only: {bad_words}")
    return RuleBook(tuple(rules), _compile(_expand(spec.discussion.pattern, fragments, where), where),
                    spec.discussion.damping, tuple(spec.typo_vocabulary))


def load_rules(path: Path = RULES_PATH) -> RuleBook:
    """Read, validate and compile the rule file at ``path``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the injection rule file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(raw, str(path))
