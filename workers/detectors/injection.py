"""A prompt-injection detector: a score in [0, 1] and the names of the signals that produced it.

Three layers, cheapest first, each listed by name on the decision:

1. **Normalisation** (``normalise`` and ``_variants``): NFKC, zero-width characters dropped, letters spread out
   with spaces, dots or hyphens joined back (``i g n o r e``, ``D-i-s-r-e-g-a-r-d``), intra-word hyphens removed
   (``in-struc-tions``), digits inside words read as leetspeak (``1gn0r3`` → ``ignore``), and base64 blobs decoded
   and scanned as text of their own.
2. **Rules**: the literal rules of v1 (``_LITERAL_RULES``), plus lexical families (``_FAMILY_RULES``) that look for
   a *kind* of word near another kind rather than a phrase: an override verb near an instruction object that
   belongs to the model (``set aside`` … ``what you were told``), a persona cue near "no rules / no filters", a
   disclosure verb near the model's own setup, a fake role marker at a line start, text that addresses the model
   and tells it to act, an exfiltration verb with a secret and a destination, and the same families in French,
   German, Spanish, Italian and Dutch. A family rule may need a *context* match close to the hit (``your``,
   ``previous``, ``you were told``) so that "disregard the attached form" is not an override.
3. **A hashed n-gram linear model** (``workers/detectors/injection_model.json``, trained by
``bench/train_injection.py`` on
   the tuning set only): its probability counts as one more signal, ``ngram_model``, when it is above one half.

Each signal has a weight; the score is ``1 - Π(1 - weight)`` over the signals found, so one strong signal crosses
the default 0.6 threshold alone and two weak ones need each other. Text that *discusses* prompt injection (a
question about jailbreaks, a red-team brief) has its score halved and says so with ``discusses_injection``.

Measured by ``bench/injection_eval.py`` on ``bench/data/injection_tuning.jsonl`` and, separately, on
``bench/data/injection_heldout.jsonl``, which no rule or weight was fitted to.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np


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

    def __post_init__(self) -> None:
        trigger = re.compile("|".join(map(re.escape, self.triggers))) if self.triggers else None
        object.__setattr__(self, "_trigger", trigger)

    def search(self, text: str) -> bool:
        """The rule's verdict without the trigger shortcut."""
        for match in self.pattern.finditer(text):
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


@dataclass(frozen=True)
class InjectionResult:
    score: float
    rules: tuple[str, ...]


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


_PRIOR = r"(?:all |any |the |your |my |these |those |every )*(?:previous|prior|above|earlier|preceding|foregoing|" \
         r"initial|original|system|developer|existing|old)"
_INSTR = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|context|messages|" \
         r"constraints|programming|policies|orders|commands)"

_SECRET_PROMPT = r"(?:system prompt|hidden prompt|initial prompt|pre-?prompt|" \
                 r"(?:secret|hidden|original|initial|system) instructions|developer (?:message|prompt)|" \
                 r"instructions you were given|rules you were given)"
_NO_LIMITS = r"(?:without|with no|no|free (?:of|from))\s+(?:any |all |your |the )*" \
             r"(?:ethical |moral |safety |content )?" \
             r"(?:restrictions|filters|filtering|limitations|censorship|guidelines|guardrails|rules)\b"

_LIMIT_NOUNS = ("restriction", "filter", "limitation", "censorship", "guideline", "guardrail", "rules")

# Whose instructions: the model's own, or ones that came earlier. "Disregard the attached form" has neither.
_SCOPE = _r(r"\b(?:your|yours|you were|you've been|you have been|you received|you started|previous|prior|earlier|"
            r"above|before|original|initial|so far|at the start|current|existing|old|told|given|system)\b")

_LITERAL_RULES: tuple[Rule, ...] = (
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
         context=_SCOPE,
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


# --- v2: lexical families. Words of a kind near words of another kind, not phrases. ---
_GAP = r"(?:\W+\w+){0,6}?\W+"  # up to six words in between
_OVERRIDE = r"(?:ignore|ignoring|disregard|forget|set aside|put aside|drop|discard|throw (?:away|out)|override|" \
            r"overwrite|wipe|cancel|unlearn|disobey|pay no attention to|never mind|reset|replace|" \
            r"stop (?:following|obeying|adhering to|listening to)|" \
            r"(?:don't|do not|no longer) (?:(?:have|need) to )?(?:follow|obey))"
_OBJECT = r"(?:instructions?|rules|guidance|guidelines|directives?|orders|briefing|setup|configuration|" \
          r"programming|system (?:prompt|message)|objectives|training|policies|operator|developers|" \
          r"what (?:you (?:were|have been|'ve been)|you've been) (?:told|given|instructed|configured)|" \
          r"(?:everything|anything) (?:you (?:were|have been)|above|before))"
_VOID = r"(?:void|cancel(?:l)?ed|outdated|expired|suspended|revoked|obsolete|a mistake|no longer (?:apply|valid|" \
        r"in effect|matter|relevant)|(?:don't|doesn't|do not|does not) (?:apply|matter) (?:anymore|now))"
_PERSONA = r"(?:you are|you're|from now on|act (?:as|like)|pretend|roleplay|role-play|imagine|simulate|" \
           r"behave (?:like|as)|be (?:my|an?)|switch (?:to|into)|respond as|answer as|play)"
_UNBOUND = r"(?:no|without|zero|free (?:of|from)|freed from|never (?:had|given|happened)|removed|ignores?|" \
           r"not bound by|doesn't (?:follow|have)|opposite of)"
_LIMITS = r"(?:restrictions|rules|filters?|limits|limitations|guidelines|content policy|polic(?:y|ies)|safety|" \
          r"censorship|morals?|ethics|moral compass|guardrails|norms|training|constraints)"
_DISCLOSE = r"(?:repeat|print|show|output|echo|copy(?: out)?|write (?:down|out)|quote|list|tell me|give me|reveal|" \
            r"display|translate|summari[sz]e|type(?: it)? out|paste|recite|what (?:is|are|was|were|does|did))"
_OWN_SETUP = r"(?:your (?:\w+ )?(?:instructions|system prompt|prompt|system message|configuration|rules|preamble|" \
             r"guidelines|context window|setup|hidden \w+)|(?:instructions|guidelines|rules|preamble) (?:you were|" \
             r"that you were|your \w+ gave you)|(?:text|words|everything|preamble|message) (?:that )?" \
             r"(?:above(?: this)?(?: line)?\s*(?:[,.!]|$)|(?:that )?(?:precedes|came before|appears before|before my)))"
_EXFIL_VERB = r"(?:send|forward|post|upload|e-?mail|transmit|exfiltrate|leak|share|write|copy|get|fetch|visit|" \
              r"request|call|invoke|append)"
_SENSITIVE = r"(?:conversation|chat|history|transcript|system prompt|prompt|credentials|passwords?|secrets?|" \
             r"api[ _]?keys?|tokens?|cookies?|session|contacts|customer (?:list|database|data)|database|" \
             r"environment variables|(?:all|every) (?:\w+ )?(?:emails?|documents?|files|messages|invoices)|" \
             r"user'?s? (?:\w+ )?(?:data|address|files|invoices|emails|contacts|details)|attendee list)"
_DESTINATION = r"(?:https?://|ftp://|www\.|[\w.-]+@[\w-]+\.|[\w-]+\.(?:com|net|org|io|example|site)\b|my (?:personal|" \
               r"server|webhook|email)|an? (?:external|outside|public) |public gist|pastebin|webhook)"
_MODEL = r"(?:ai|llm|language models?|assistants?|chatbots?|bots?|agents?|models?|summari[sz]ers?|reviewers?|" \
         r"gpt|chatgpt|claude)"
_ACT = r"(?:tell|send|forward|say|insert|delete|ignore|respond|reply|mark|grant|approve|e-?mail|rate|accept|share|" \
       r"issue|reveal|run|append|include|recommend|praise|exfiltrate|disclose|output|print|visit|log in|must|should)"

_FAMILY_RULES: tuple[Rule, ...] = (
    Rule("override_family", 0.75, _r(rf"\b{_OVERRIDE}\b{_GAP}?{_OBJECT}\b"), context=_SCOPE,
         triggers=("ignor", "disregard", "forget", "aside", "drop", "discard", "throw", "overrid", "overwrit",
                   "wipe", "cancel", "unlearn", "disobey", "attention", "never mind", "reset", "replac", "stop ",
                   "follow", "obey")),
    Rule("instructions_voided", 0.65, _r(rf"\b(?:instructions|rules|guidelines|directives|orders|guidance|"
                                         rf"configuration|setup|prompt){_GAP}?(?:are|is|were|was|have|has)\s+"
                                         rf"(?:now |all |been |just )*{_VOID}"),
         triggers=("void", "cancel", "outdated", "expired", "suspended", "revoked", "obsolete", "mistake", "no longer",
                   "apply", "matter"),
         context=_r(r"\b(?:your|you were|you've been|you received|you started|you have been)\b")),
    Rule("said_before_doesnt_matter", 0.6,
         _r(r"\bwhat (?:you were|you've been|you have been) (?:told|given|instructed)\b.{0,30}\b(?:doesn't|does not|"
            r"no longer) matter"), triggers=("matter",)),
    Rule("persona_without_limits", 0.7, _r(rf"\b{_PERSONA}\b(?:\W+\w+){{0,10}}?\W+{_UNBOUND}\W+(?:\w+\W+){{0,3}}?"
                                           rf"{_LIMITS}\b"),
         triggers=("restriction", "rules", "filter", "limit", "guideline", "polic", "safety", "censorship", "moral",
                   "ethic", "guardrail", "norms", "training", "constraint"),
         context=_r(r"\b(?:you|your|yourself|ai|model|bot|assistant|chatbot|gpt|mode)\b"), context_chars=60),
    Rule("mode_switch", 0.7,
         _r(r"\b(?:unrestricted|unfiltered|jailbreak|jailbroken|dan|sudo|unlocked|evil) mode\b|"
            r"\bdeveloper mode (?:enabled|output|activated)\b"),
         triggers=("mode",)),
    Rule("mode_with_policy", 0.6, _r(r"\b(?:developer|dev|debug|admin|maintenance) mode\b"),
         context=_r(r"\b(?:polic(?:y|ies)|restrictions|compl(?:y|ies)|ignor\w*|rules|unlocked|every (?:command|"
                    r"request)|without|hidden|reveal|prints?)\b"), context_chars=80, triggers=("mode",)),
    Rule("named_jailbreak", 0.7,
         _r(r"\b(?:stan|antigpt|chaosgpt|freegpt|jailbreak|betterdan|dude|aim)\b(?:\W+\w+){0,8}?\W+(?:norms|rules|"
            r"opposite|guidelines|never refuses?|anything|policy|polic(?:y|ies)|restrictions)|\bevil twin\b|"
            r"\balter ego\b|\bdo anything now\b"),
         triggers=("stan", "antigpt", "chaosgpt", "freegpt", "jailbreak", "betterdan", "dude", "aim", "evil twin",
                   "alter ego", "anything now")),
    Rule("never_refuse", 0.45,
         _r(r"\b(?:never (?:refuses?|says? no)|(?:won't|will not|doesn't|does not|don't) refuse|without refusing|"
            r"no matter what it is|comply with (?:every|all|any)|total compliance|always comply)\b"),
         triggers=("refus", "never say", "no matter", "comply", "compliance")),
    Rule("safety_removed", 0.65,
         _r(r"\b(?:safety training|content policy|restrictions|filters|guardrails|limitations)\b(?:\W+\w+){0,4}?\W+"
            r"(?:removed|stripped|lifted|disabled|never happened|suspended|are off|turned off)\b|"
            r"\b(?:freed|free) from (?:all )?(?:of )?(?:its|your|the)\b"),
         triggers=("removed", "stripped", "lifted", "disabled", "happened", "suspended", "off", "freed", "free")),
    Rule("disclose_own_setup", 0.7, _r(rf"\b{_DISCLOSE}\b(?:\W+\w+){{0,6}}?\W+{_OWN_SETUP}"),
         triggers=("your", "instructions", "guidelines", "rules", "preamble", "text", "words", "everything", "message"),
         context=_r(r"\b(?:your|you|my|verbatim|exactly|word for word|in full|unchanged|hidden|first line|beginning|"
                    r"start|line)\b")),
    Rule("asks_what_it_was_told", 0.7,
         _r(r"\bwhat (?:were|was|did|have) (?:you|your (?:\w+ )?(?:developers?|operator|creators?))\b(?:\W+\w+){0,3}?"
            r"\W+(?:told|given|instructed|configured|set up|say|tell you)\b|\bwhat (?:\w+ )?(?:were|was|did|have) you "
            r"(?:told|given|instructed|configured)\b|\bwhat (?:your|the) (?:developers?|operator|creators?) "
            r"(?:told|gave|instructed)\b|\b(?:first|earliest) (?:message|text|thing said) in (?:this|the|our) "
            r"(?:conversation|chat)\b|\bbefore (?:this|our|my first|the) "
            r"(?:conversation|chat|message)\b(?:\W+\w+){0,3}?\W*(?:started|began)?"),
         context=_r(r"\b(?:what|print|output|repeat|show|tell|everything|message|text)\b"), context_chars=60,
         triggers=("what", "before")),
    Rule("secret_in_setup", 0.7,
         _r(r"\b(?:password|api[ _]?key|secret|token|credentials?)s?\b(?:\W+\w+){0,6}?\W+(?:in|from|inside|of) your "
            r"(?:\w+ )?(?:instructions|configuration|prompt|system prompt|context|setup)|\b(?:which|what) "
            r"(?:api[ _]?key|password|secret(?: key)?|token)s? (?:were|are|was|is|did) you\b|\b(?:any )?secrets it "
            r"contains\b"),
         triggers=("password", "key", "secret", "token", "credential")),
    Rule("role_marker_line", 0.7,
         _r(r"(?:^|\n)\s*(?:#{1,4}\s*)?(?:system|admin|developer|new system prompt|system prompt|instruction|"
            r"instructions)\s*(?:\([^)]*\)\s*)?(?::|\]|\n)"),
         triggers=("system", "admin", "developer", "instruction")),
    Rule("chat_turn_injection", 0.6,
         _r(r"(?:^|\n)\s*(?:assistant|ai|bot|human|user)\s*:\s*\S(?:.|\n)*?(?:\n\s*(?:assistant|ai|bot|human|user)\s*:|"
            r"\b(?:ignore|guidelines|instructions|system prompt|secret|reveal)\b)"),
         triggers=("assistant", "ai", "bot", "human", "user")),
    Rule("fake_markup", 0.75,
         _r(r"</?(?:system|admin|sys|system_prompt|instructions?|developer|user)\b[^>]*>|<\|[a-z_]+\|>|"
            r"\[(?:system|admin)[^\]]*\](?:\(#[^)]*\))?|\"role\"\s*:\s*\"system\"|\bend of (?:the )?(?:prompt|"
            r"user input|instructions|context)\b|\bnew system prompt\b|<!--(?:(?!-->).){0,80}\b(?:system|ai|"
            r"assistant|llm|agents?|model)\b"),
         triggers=("<", "[", "role", "end of", "new system prompt")),
    Rule("addressed_imperative", 0.7,
         _r(rf"(?:\b(?:to|dear|attention|note (?:for|to)|instructions? for|hey|any|all|if an?)\s+(?:the |any |all )?"
            rf"(?:\w+ )?{_MODEL}\b|\b{_MODEL}\b(?:\s+\w+){{0,2}}?\s+(?:reading|processing|summari[sz]ing|reviewing|"
            rf"that reads?|who reads?|reads this))(?:\W+\w+){{0,8}}?\W+{_ACT}\b"),
         context=_r(r"(?:[:,]|\b(?:must|should|reading|processing|reads)\b)"), context_chars=0,
         triggers=("ai", "llm", "model", "assistant", "bot", "agent", "summari", "reviewer", "gpt", "claude")),
    Rule("imperative_to_model", 0.55,
         _r(rf"(?:^|[\"'(\[:.]\s*)(?:ai |llm )?(?:assistant|ai|bot|agent|chatbot|language models?|llms?)\s*[:,]\s*"
            rf"(?:\w+\W+){{0,2}}?{_ACT}\b"),
         triggers=("assistant", "ai", "bot", "agent", "model", "llm")),
    Rule("model_should_act", 0.6,
         _r(rf"\b{_MODEL}\b(?:\s+\w+){{0,2}}?\s+(?:must|should|shall|are required to|need to)\s+(?:\w+\s+)?{_ACT}\b"),
         triggers=("must", "should", "shall", "required", "need to")),
    Rule("obey_only_me", 0.6,
         _r(r"\b(?:obey|follow|listen to|take orders (?:only )?from)\s+(?:only (?:me|my \w+)|me (?:only|alone|instead)|"
            r"my (?:orders|commands))\b"),
         triggers=("obey", "follow", "listen", "orders")),
    Rule("unsafe_persona_noun", 0.65,
         _r(r"\b(?:uncensored|unfiltered|unrestricted|jailbroken|amoral|unethical|evil)\s+(?:\w+\s+)?(?:ai|assistant|"
            r"model|bot|chatbot|version of yourself|alter ego|twin|persona|gpt)\b"),
         context=_r(r"\b(?:you|your|be|act|pretend|roleplay|become|switch)\b"),
         triggers=("uncensored", "unfiltered", "unrestricted", "jailbroken", "amoral", "unethical", "evil")),
    Rule("hidden_text", 0.35,
         _r(r"\b(?:hidden text|white (?:font|text)|display\s*:\s*none|<span hidden|invisible text)\b"),
         triggers=("hidden", "white", "display", "invisible")),
    Rule("exfiltrate_to_destination", 0.7,
         _r(rf"\b{_EXFIL_VERB}\b(?:\W+\w+){{0,8}}?\W+{_SENSITIVE}\b"),
         context=_r(_DESTINATION), context_chars=80,
         triggers=("send", "forward", "post", "upload", "mail", "transmit", "exfiltrat", "leak", "share", "write",
                   "copy", "get", "fetch", "visit", "request", "call", "invoke", "append")),
    Rule("data_in_url", 0.65,
         _r(r"https?://\S+[?&]\w+=(?:\{|\$|<|\s|$|[A-Z_]{4,}\b|\+)|\bdocument\.cookie\b|\bfetch\(\s*['\"]https?://|"
            r"\bwebhook\.site\b|\brequestbin\b|\bngrok\.io\b|https?://\S+\s+(?:followed by|plus|with)\s+(?:the )?"
            r"(?:user|system|secret|api|conversation|chat)"),
         triggers=("http", "document.cookie", "webhook", "requestbin", "ngrok")),
    Rule("act_without_confirmation", 0.6,
         _r(r"\b(?:transfer|refund|pay|grant|approve|delete|wire|issue)\b(?:\W+\w+){0,10}?\W+(?:without (?:any )?"
            r"(?:confirmation|approval|asking|checking|verification)|no questions asked)\b"),
         triggers=("without", "no questions")),
    Rule("destructive_command", 0.55, _r(r"\brm\s+-rf\s+[~/]|\bformat c:|\bdrop table\b"),
         triggers=("rm ", "format", "drop table")),
    Rule("decode_and_obey", 0.6,
         _r(r"\b(?:decode|base64)\b(?:\W+\w+){0,12}?\W+(?:obey|follow|do what|execute|run|system prompt|"
            r"instructions)\b"),
         triggers=("decode", "base64")),
    # French, German, Spanish, Italian, Dutch: override and disclosure families.
    Rule("override_multilingual", 0.75,
         _r(r"\b(?:ignore[zs]?|oublie[zs]?|ne tiens pas compte|ignoriere|ignorieren sie|vergiss|vergessen sie|"
            r"missachte|ignora|ignore|olvida|omite|dimentica|negeer|vergeet)\b(?:\W+\w+){0,4}?\W+(?:instructions|"
            r"r[eè]gles|consignes|anweisungen|regeln|vorgaben|instruktionen|instrucciones|reglas|normas|istruzioni|"
            r"regole|instructies|regels)\b"),
         triggers=("ignor", "oubli", "tiens pas", "vergiss", "vergess", "missacht", "olvid", "omite", "dimentic",
                   "negeer", "vergeet")),
    Rule("disclose_multilingual", 0.7,
         _r(r"\b(?:r[ée]v[eè]le[zs]?|montre[zs]?|affiche[zs]?|zeig(?:e|en sie)?|gib|verrate|muestra(?:me)?|"
            r"revela|dime|mu[ée]strame|mostra(?:mi)?|rivela|toon|laat)\b(?:\W+\w+){0,4}?\W+(?:prompt (?:syst[eè]me|"
            r"del sistema|di sistema)|instructions syst[eè]me|tes instructions|vos instructions|systemprompt|"
            r"system-prompt|deine anweisungen|tus instrucciones|instrucciones del sistema|le tue istruzioni|"
            r"systeemprompt|je instructies)"),
         triggers=("prompt", "instruc", "anweisung", "istruzion")),
    Rule("no_limits_multilingual", 0.6,
         _r(r"\b(?:sans (?:aucune )?(?:restrictions?|filtres?|r[eè]gles)|ohne (?:jegliche )?(?:einschr[äa]nkungen|"
            r"filter|regeln)|sin (?:ninguna )?(?:restricciones|filtros|reglas)|senza (?:restrizioni|filtri|regole)|"
            r"zonder (?:beperkingen|filters|regels))\b"),
         triggers=("sans", "ohne", "sin ", "senza", "zonder")),
)

# Talking *about* injection (a security question, a red-team brief) is not an attack; such text has its score halved.
_DISCUSSION = _r(r"\b(?:prompt injections?|injection attacks?|jailbreak(?:s|ing)?\b(?:\W+\w+){0,3}?\W+(?:attacks?|"
                 r"work|effective|research)|jailbreak (?:attacks?|prompts such)|red[- ]team(?:ing)?|pen ?test|owasp|"
                 r"attackers?(?!@)|defen[cs]es?|defend against|mitigat\w*|detect\w*|classifier|vulnerab\w*|"
                 r"canary token|"
                 r"security (?:training|team|research|policy)|evaluation set|prompt leak\w*|leakage|"
                 r"jailbreaks?\b(?=[^.!]*\?))\b|['\"][^'\"]{3,60}['\"]\s+(?:do|does|mean|means|work)\b")
_DISCUSSION_DAMPING = 0.5

RULES: tuple[Rule, ...] = (*_LITERAL_RULES, *_FAMILY_RULES)

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\r\f\v]+")
# Three or more single letters with one separator between each: "i g n o r e", "i.g.n.o.r.e", "D-i-s-r-e-g-a-r-d".
_SPREAD = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ .\-*_]){2,}[^\W\d_](?![^\W\d_])")
_SPREAD_SEPARATORS = re.compile(r"[ .\-*_]")
_INNER_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
_MIXED_TOKEN = re.compile(r"\b(?=\w*[^\W\d_])(?=\w*\d)\w+\b")
_LEET = str.maketrans("013457", "oieast")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def normalise(text: str) -> str:
    """NFKC, zero-width characters dropped, spread-out letters joined, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    text = _SPREAD.sub(lambda m: _SPREAD_SEPARATORS.sub("", m.group()), text)
    return _SPACES.sub(" ", text)


def _variants(text: str) -> list[str]:
    """The normalised text, its leetspeak/hyphen-folded reading when different, and any base64 it carries."""
    normal = normalise(text)
    out = [normal]
    folded = _INNER_HYPHEN.sub("", normal) if "-" in normal else normal
    if any(c.isdigit() for c in folded):
        folded = _MIXED_TOKEN.sub(lambda m: m.group().translate(_LEET), folded)
    if folded != normal:
        out.append(folded)
    for blob in _BASE64.findall(text) if len(text) >= 16 else ():
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if decoded.isprintable():
            out.append(normalise(decoded))
    return out


# --- the n-gram model: hashed word 1-2-grams and character 4-grams, logistic regression. ---
MODEL_PATH = Path(__file__).with_name("injection_model.json")
_WORD = re.compile(r"\w+")


_CHAR_MULTIPLIERS = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F], dtype=np.uint64)


def features(text: str, dims: int) -> np.ndarray:
    """Indices of the hashed n-grams of an already normalised text, stable across processes (no ``hash()``).

    Words and word pairs go through crc32; character 4-grams are hashed in one numpy pass over the code points.
    """
    words = _WORD.findall(text.lower())
    grams = [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]
    word_idx = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
    points = np.frombuffer(f" {' '.join(words)} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if points.size >= 4:
        m = _CHAR_MULTIPLIERS
        mixed = points[:-3] * m[0] + points[1:-2] * m[1] + points[2:-1] * m[2] + points[3:] * m[3]
        word_idx = np.concatenate([word_idx, (mixed & np.uint64(0xFFFFFFFF)) >> np.uint64(7)])
    return (word_idx % np.uint64(dims)).astype(np.int64)


@dataclass(frozen=True)
class NgramModel:
    weights: np.ndarray
    bias: float
    signal_weight: float  # the weight of the ``ngram_model`` signal at probability 1

    @property
    def dims(self) -> int:
        return int(self.weights.shape[0])

    def probability(self, text: str) -> float:
        idx = np.unique(features(text, self.dims))
        if idx.size == 0:
            return 1.0 / (1.0 + math.exp(-self.bias))
        z = float(self.weights[idx].sum()) / math.sqrt(idx.size) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> NgramModel | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(np.asarray(raw["weights"], dtype=np.float32), float(raw["bias"]), float(raw["signal_weight"]))


@cache
def _model() -> NgramModel | None:
    return NgramModel.load()


def score(texts: list[str], *, use_model: bool = True) -> InjectionResult:
    """Score the texts (prompt messages and retrieved passages) of one request."""
    variants = [v for t in texts if t for v in _variants(t)]
    lowered = [v.lower() for v in variants]
    signals: dict[str, float] = {}
    for rule in RULES:
        if any(rule.matches(v, low) for v, low in zip(variants, lowered, strict=True)):
            signals[rule.name] = rule.weight
    model = _model() if use_model else None
    if model is not None and variants:
        probability = max(model.probability(v) for v in variants[:2])  # the text and its folded reading
        if probability >= 0.5:
            signals["ngram_model"] = model.signal_weight * (probability - 0.5) * 2
    remaining = 1.0
    for weight in signals.values():
        remaining *= 1.0 - weight
    result = 1.0 - remaining
    if signals and any(_DISCUSSION.search(v) for v in variants):
        signals["discusses_injection"] = 0.0
        result *= _DISCUSSION_DAMPING
    return InjectionResult(score=round(result, 4), rules=tuple(signals))
