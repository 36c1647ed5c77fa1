"""A rule-based prompt-injection detector: a score in [0, 1] and the names of the rules that matched.

Each rule has a weight; the score is ``1 - Π(1 - weight)`` over the matched rules, so one strong signal (an
instruction to ignore the previous instructions) crosses a 0.6 threshold alone while two weak ones (a role change
and a "new task") need each other. Text is NFKC-normalised, zero-width characters are dropped and whitespace is
collapsed first, so full-width letters or ``i\u200bgnore`` do not slip past. Retrieved passages are scanned too:
an indirect injection arrives in a document, not in the user's message.

This catches the common, literal attacks; it does not understand paraphrase. Measured on bench/injection_set.jsonl
by ``bench/injection_eval.py``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Lower-case literals of which every match contains at least one: a cheap ``in`` test skips the regex on the
    # ordinary prompts that are most of the traffic. Empty: always run the regex.
    triggers: tuple[str, ...] = ()
    always_from_length: int | None = None  # run the regex anyway on texts at least this long

    def __post_init__(self) -> None:
        trigger = re.compile("|".join(map(re.escape, self.triggers))) if self.triggers else None
        object.__setattr__(self, "_trigger", trigger)

    def matches(self, text: str, lowered: str) -> bool:
        trigger: re.Pattern[str] | None = getattr(self, "_trigger", None)
        if trigger is not None and trigger.search(lowered) is None and (
                self.always_from_length is None or len(text) < self.always_from_length):
            return False
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class InjectionResult:
    score: float
    rules: tuple[str, ...]


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


_PRIOR = r"(?:all |any |the |your |my |these |those |every )*(?:previous|prior|above|earlier|preceding|foregoing|" \
         r"initial|original|system|developer|existing|old)"
_INSTR = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|context|messages?|" \
         r"constraints|programming|policies|orders|commands)"

_SECRET_PROMPT = r"(?:system prompt|hidden prompt|initial prompt|pre-?prompt|" \
                 r"(?:secret|hidden|original|initial|system) instructions|developer (?:message|prompt)|" \
                 r"instructions you were given|rules you were given)"
_NO_LIMITS = r"(?:without|with no|no|free (?:of|from))\s+(?:any |all |your |the )*" \
             r"(?:ethical |moral |safety |content )?" \
             r"(?:restrictions|filters|filtering|limitations|censorship|guidelines|guardrails|rules)\b"

_LIMIT_NOUNS = ("restriction", "filter", "limitation", "censorship", "guideline", "guardrail", "rules")

RULES: tuple[Rule, ...] = (
    # "ignore all previous instructions": the verb, then only determiners before the "previous/system" word.
    Rule("ignore_previous_instructions", 0.85,
         _r(rf"\b(?:ignore|disregard|forget|override|skip|bypass|neglect|abandon|drop)\s+{_PRIOR}\s+"
            rf"(?:\w+\s+){{0,2}}?{_INSTR}"),
         triggers=("ignore", "disregard", "forget", "override", "skip", "bypass", "neglect",
                   "abandon", "drop")),
    Rule("ignore_everything", 0.7,
         _r(r"\b(?:ignore|disregard|forget)\s+(?:everything|all(?: of)? (?:that|this|it))\b"
            r"(?:.{0,40}\b(?:said|told|above|before|instructions?))"),
         triggers=("ignore", "disregard", "forget")),
    Rule("ignore_the_user", 0.6,
         _r(r"\b(?:ignore|disregard)\s+(?:the\s+)?user(?:'s)?\b(?:\s+(?:question|request|instructions?|message))?"),
         triggers=("ignore", "disregard")),
    # Asking for *your* prompt (or "the" one you were given), not asking how to write one.
    Rule("reveal_system_prompt", 0.75,
         _r(rf"(?:\b(?:reveal|show|print|repeat|output|display|leak|dump|give|tell|what (?:is|are|was|were)|"
            rf"write out|recite|spell out)(?:\s+(?:me|us))?\s+(?:all\s+(?:of\s+)?)?your\s+(?:full\s+|entire\s+|"
            rf"exact\s+)?{_SECRET_PROMPT}|\b(?:reveal|show|print|repeat|output|display|leak|dump|give|tell|write out|"
            rf"recite|spell out)(?:\s+(?:me|us))?\s+the\s+(?:system prompt|developer (?:message|prompt)|"
            rf"(?:hidden|secret) (?:prompt|instructions)|instructions you were given|rules you were given))"),
         triggers=("prompt", "instructions", "developer message", "rules you were given")),
    Rule("repeat_text_above", 0.7,
         _r(r"\b(?:repeat|print|output|copy|return)\b.{0,25}\b(?:words|text|everything|all)\b.{0,15}"
            r"\b(?:above|before this|preceding|prior to this)"),
         triggers=("above", "before this", "preceding", "prior to this")),
    Rule("unsafe_persona", 0.7,
         _r(r"\b(?:act as|acting as|pretend (?:to be|you are|that you are)|roleplay as|you are now|become|play)\s+"
            r"(?:an?\s+|the\s+)?(?:\w+\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|amoral|"
            r"unethical)\b"),
         triggers=("unrestricted", "unfiltered", "uncensored", "jailbroken", "evil", "rogue",
                   "amoral", "unethical")),
    Rule("role_override", 0.3,
         _r(r"\b(?:you are now|from now on,? you(?: are|'re| will| must)|you will now act)\b"),
         triggers=("you are now", "from now on", "you will now act")),
    Rule("jailbreak_persona", 0.7,
         _r(r"(?:(?-i:\bDAN\b)|\bdo anything now\b|\bjailbroken\b|\bjailbreak (?:mode|prompt)\b|"
            r"\b(?:enable|enter|activate|switch to|you are in|you're in|now in)\s+(?:developer|god|dan|jailbreak|"
            r"unrestricted) mode\b|\b(?:developer|god) mode\b.{0,40}\b(?:ignore|no (?:restrictions|rules|filters)|"
            r"content policy)|\bAIM\b.{0,20}machiavellian)"),
         triggers=("dan", "do anything now", "jailbr", " mode", "machiavellian")),
    Rule("answer_without_limits", 0.65,
         _r(rf"\b(?:answer|respond|reply|write|act|operate|speak|talk|you have|you're|you are|with)\s+"
            rf"(?:\w+\s+){{0,3}}?{_NO_LIMITS}"),
         triggers=_LIMIT_NOUNS),
    Rule("no_restrictions", 0.3, _r(rf"\b{_NO_LIMITS}"),
         triggers=_LIMIT_NOUNS),
    Rule("disable_safety", 0.7,
         _r(r"\b(?:disable|turn off|deactivate|switch off|bypass|circumvent|override)\s+(?:your |the |all |any )*"
            r"(?:safety|content|moderation)?\s*(?:filters?|guardrails|safeguards|moderation|safety (?:checks|"
            r"features|protocols|settings|rules)|restrictions|censorship)\b(?!\s+(?:settings|for (?:our|the|my) "
            r"(?:server|channel|account|team)))"),
         triggers=("disable", "turn off", "deactivate", "switch off", "bypass", "circumvent",
                   "override")),
    Rule("fake_system_delimiter", 0.75,
         _r(r"(?:<\|im_start\|>\s*system|<\|system\|>|<\|endoftext\|>|</?system>|\[/?system\]|\[/?INST\]|<<SYS>>|"
            r"^#{2,}\s*(?:system|new instructions)|\bBEGIN (?:SYSTEM|ADMIN) (?:PROMPT|INSTRUCTIONS)|"
            r"^\s*system\s*(?:override|message|prompt)\s*:|^\s*(?:system|admin|developer)\s*:\s+(?:the |you |"
            r"ignore|new |override|grant|always|never))"),
         triggers=("<|", "system", "[inst", "[/inst", "<<sys", "admin", "new instructions")),
    Rule("new_instructions", 0.6,
         _r(r"(?:\bnew (?:instructions|directive|task|objective|rules)\s*:|\binstead,? (?:you (?:must|should|will) )?"
            r"(?:say|output|respond with|reply with|print|write)\b)"),
         triggers=("new ", "instead")),
    Rule("replaced_goal", 0.65,
         _r(r"(?:\byour (?:new|real|actual|true) (?:task|goal|purpose|instructions|objective|job|mission) (?:is|are)\b|"
            r"\bthe (?:above|previous|prior|preceding)(?: \w+)? (?:was|were) (?:just )?(?:a test|fake|false|a joke|"
            r"void|not real)\b)"),
         triggers=("your new", "your real", "your actual", "your true", "the above", "the previous",
                   "the prior", "the preceding")),
    Rule("authority_claim", 0.6,
         _r(r"\b(?:i am|i'm|this is|as) (?:your|the|an?) (?:developer|creator|administrator|admin|system "
            r"administrator|openai|anthropic|owner|operator)\b.{0,60}\b(?:(?:command|order|instruct|authori[sz]e|"
            r"allow|permit|grant) you|override|unlock|disable|bypass)\b"),
         triggers=("developer", "creator", "admin", "openai", "anthropic", "owner", "operator")),
    Rule("exfiltration", 0.65,
         _r(r"(?:!\[[^\]]*\]\(https?://[^)\s]*[?&][^)\s]*=|\b(?:send|post|upload|forward|exfiltrate|leak|transmit|"
            r"email)\b.{0,30}\b(?:conversation|chat|history|system prompt|prompt|context|credentials|passwords?|"
            r"secrets?|api keys?|user'?s?|everything|all data)\b.{0,30}\b(?:to|at|via)\s+(?:https?://|[\w.-]+@|my |"
            r"this |the following )|\bcurl\s+(?:-\w+\s+)*https?://\S+.{0,30}\b(?:upload|send|post|prompt|secret))"),
         triggers=("![", "send", "post", "upload", "forward", "exfiltrate", "leak", "transmit", "email",
                   "curl")),
    Rule("encoded_payload", 0.65,
         _r(r"(?:\b(?:decode|base64|rot13|hex)\b.{0,40}\b(?:and|then)\b.{0,20}\b(?:follow|execute|run|obey|do)\b|"
            r"[A-Za-z0-9+/]{120,}={0,2})"),
         triggers=("decode", "base64", "rot13", "hex"), always_from_length=120),
    Rule("conceal_from_user", 0.4,
         _r(r"\b(?:do not|don't|never) (?:tell|inform|mention|reveal to|alert) (?:the )?(?:user|human)\b"),
         triggers=("user", "human")),
    # Broader than the literal rules above: a dismissal and what it dismisses, a few words apart.
    Rule("dismiss_instructions", 0.7,
         _r(r"\b(?:ignore|disregard|forget|bypass|neglect|abandon|set aside|stop following|stop obeying|"
            r"no longer follow|throw out|discard)\b(?:\W+\w+){0,5}?\W+(?:instructions?|rules?|guidance|guidelines|"
            r"programming|directives?|constraints|training|system (?:message|prompt)|configuration|policies)\b"),
         triggers=("ignore", "disregard", "forget", "bypass", "neglect", "abandon", "set aside", "stop follow",
                   "stop obey", "no longer follow", "throw out", "discard")),
    Rule("disclose_configuration", 0.65,
         _r(r"\b(?:output|print|paste|show|reveal|display|dump|quote|share|list|recite|repeat|tell me|what (?:were|are|"
            r"is|was))\b(?:\W+\w+){0,4}?\W+(?:your\s+(?:\w+\s+){0,2}?(?:prompt|instructions|rules|system message|"
            r"configuration|guidelines)\b|(?:prompt|instructions|rules)\s+(?:that\s+)?(?:(?:was|were)\s+)?(?:used to "
            r"configure|given to you|you were given|you received))"),
         triggers=("prompt", "instructions", "rules", "system message", "configuration", "guidelines")),
    Rule("persona_release", 0.6,
         _r(r"\byou(?:'re| are) no longer (?:a|an|the|bound|restricted|limited)\b|\byou can (?:say|do) anything\b|"
            r"\bno longer (?:bound|restricted|limited) by\b"),
         triggers=("no longer", "anything")),
    Rule("addresses_the_model", 0.5,
         _r(r"\b(?:if you are|if you're|attention|note to|dear|hey|to)\s+(?:an?\s+|the\s+|any\s+)?(?:ai|llm|"
            r"language model|assistant|chatbot|gpt)s?\b(?:\s+(?:model|assistant))?(?:\s*[:,]|\s+(?:reading|"
            r"processing|summari[sz]ing))"),
         triggers=("ai", "llm", "language model", "assistant", "chatbot", "gpt")),
    Rule("respond_only_with", 0.3,
         _r(r"\b(?:respond|reply|answer|say)\s+only\s+(?:with|that)\b"),
         triggers=("only",)),
)

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\r\f\v]+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return _SPACES.sub(" ", text)


def score(texts: list[str]) -> InjectionResult:
    """Score the concatenated texts (prompt messages and retrieved passages) of one request."""
    matched: list[str] = []
    normalised = [normalise(t) for t in texts if t]
    lowered = [t.lower() for t in normalised]
    for rule in RULES:
        if any(rule.matches(t, low) for t, low in zip(normalised, lowered, strict=True)):
            matched.append(rule.name)
    remaining = 1.0
    for rule in RULES:
        if rule.name in matched:
            remaining *= 1.0 - rule.weight
    return InjectionResult(score=round(1.0 - remaining, 4), rules=tuple(matched))
