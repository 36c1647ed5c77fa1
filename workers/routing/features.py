"""What a request asks of a model, as numbers: the features the routers (heuristic and calibrated) read.

Wording alone misleads a router: "summarise" a two-line note is small work, "summarise" a 400-word report is not,
and a long personal story followed by "what's the capital of Peru?" is still a lookup. So a request is first split
into its **instruction** and the **material** it asks to transform (a separated block, a quoted span, a code fence,
a list), and the material counts only when the instruction refers to it ("this", "below", "the text" …). Then:

* sizes: instruction tokens, material tokens, whether the material passes the ~60 / ~150-word marks;
* task type: transform (summarise, translate, classify, extract, rewrite), lookup, greeting, writing;
* demands: reasoning, plan, design, proof / derivation, code and maths markers, structured output, a long output
  asked for, several sources to weigh, the number of constraints (list items, commas, "and"s), questions;
* context: conversation depth (earlier turns) and how confident retrieval is.

Every feature is a plain float and has a name; :func:`extract` is deterministic and pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from workers.prefilter import Scanned, prefiltered, word_family
from workers.routing.tokens import count_tokens

_I = re.IGNORECASE
_TRANSFORM = word_family(
    r"\b(summari[sz]\w*|summary|gist|tl;?dr|translat\w*|classif\w*|categor\w*|extract\w*|pull out|rewrite|"
    r"rephrase|paraphrase|proofread|fix (the )?grammar|shorten|make (this|it) (shorter|sound|more|less)|"
    r"turn (this|it) into|sentiment|tone|label)\b", _I)
_REFERENCE = word_family(
    r"\b(this|these|below|above|following|the text|the passage|the document|the report|the email|"
    r"the transcript|the article|in it|from it)\b", _I)
_LOOKUP = word_family(
    r"\b(what(?:'s| is| are| was)|who (is|was|wrote|invented)|when (is|was|did|does)|where (is|do|can)|"
    r"how (many|much|long|far|old)|which is|capital of|define|definition|meaning of|symbol for|shortcut|"
    r"is (a|an|it|there)|do i need|does (the|it))\b", _I)
_GREETING = word_family(r"^\W*(hi|hello|hey|thanks|thank you|good (morning|afternoon|evening)|bye)\b", _I)
_REASONING = word_family(
    r"\b(why|explain\w*|compare|comparison|contrast|differen\w+|vs\.?|versus|trade-?offs?|pros and cons|"
    r"should (i|we)|which (one|is better)|justify|critique|assess|evaluate|implications?|recommend\w*|"
    r"when (would|should) (i|we|you) use|how does .{3,40} work)\b", _I)
_PLAN = word_family(
    r"\b(plan|planning|roadmap|migrat\w+|schedule|programme|program|syllabus|timeline|milestones?|rollback|"
    r"contingenc\w+|risks?|budget|phases?|phased|dependenc\w+|sprints?|critical path|zero downtime|"
    r"compliance|itinerary|owners?|kpis?)\b", _I)
_DESIGN = word_family(
    r"\b(design|architect\w*|system|service|server|pipeline|platform|scal\w+|distributed|concurren\w+|"
    r"thread[- ]safe\w*|thread safety|race conditions?|deadlock\w*|lock-free|exactly-once|consisten\w+|"
    r"fault[- ]toleran\w+|refactor\w*|data structure|complexity|end-to-end|production|eviction|"
    r"undo|redo|reconnect\w*|matchmaking|replication|sharding|failover|idempoten\w+|backpressure|"
    r"multi-\w+|modules?|components?)\b|\bO\([^)]*\)", _I)
_PROOF = word_family(
    r"\b(prove|proof|derive|derivation|closed form|recurrence|theorem|lemma|np-complete|undecidab\w+|"
    r"reduction|integer solutions|irrational|induction|optimi[sz]\w+|eigen\w*|integrals?|elliptic|pde|"
    r"asymptotic\w*|bounds?|np-hard|if and only if|for every|for all|show that|generali[sz]e|combinatori\w*|"
    r"lagrang\w*|convergen\w+|invariant)\b", _I)
_MATH = word_family(
    r"\b(solve|equations?|probabilit\w+|calculate|compute|variance|matrix|expected value|compound\w*|"
    r"percent\w*|interest)\b|\d+(\.\d+)?\s*[-+*/^×÷=]\s*\(?\d|\d\s*%|[∑∫√π]|\w\^\d", _I)
_CODE = word_family(
    r"```|\b(def|regex|sql|query|python|javascript|js|typescript|rust|golang|java|c\+\+|kotlin|bash|"
    r"dockerfile|yaml|function|class|script|unit tests?|pytest|tests|compile\w*|stack ?trace|traceback|"
    r"exception|bug|debug\w*|implement\w*|algorithm|api|endpoint|kubernetes|docker)\b|=>|\w+\(\)", _I)
_STRUCTURED = word_family(
    r"\b(tables?|json|csv|markdown|sections?|headings?|template|bullet\w*|format|schema|columns?|"
    r"appendix|checklist)\b", _I)
_LONG_OUTPUT = word_family(
    r"\b(complete|full|comprehensive|detailed|in[- ]depth|thorough|end-to-end|whole)\b|"
    r"\b\d[\d,]{2,}\s*(\+\s*)?words\b", _I)
_WORDS_ASKED = word_family(r"\b(\d[\d,]*)\s*(\+\s*)?words\b", _I)
_SOURCES = word_family(
    r"\b(three|four|five|several|multiple|\d+)\s+(vendors?|proposals?|studies|reports?|contracts?|leases?|"
    r"options|designs|candidates|papers|sources|offers|quotes)\b|^\s*[A-E]\)\s|\bconflicting\b", _I | re.MULTILINE)
_WRITING = word_family(r"\b(write|draft|compose|prepare|create|produce)\b", _I)
_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•]|[A-Za-z][.)])\s+", re.MULTILINE)
_QUOTED = prefiltered(r"'[^'\n]{12,}'|\"[^\"\n]{12,}\"|“[^”]{12,}”|```.*?```", re.DOTALL)
_ASKS = word_family(r"\b(read|answer|tell|list|give|turn|explain|what|which|how|check|review|find)\b", _I)
_AND = word_family(r"\band\b", _I)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•]).*$", re.MULTILINE)
_AFTER_COLON = re.compile(r":([^:\n]{10,})")
_ITEM_SEPARATOR = re.compile(r",|;|\band\b|\bplus\b")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")

SHORT_MATERIAL_WORDS = 60  # the labelling rules' "short input" bound
LONG_MATERIAL_WORDS = 150  # … and their "long input"


@dataclass(frozen=True)
class Split:
    """A prompt as the instruction and the material it operates on (empty when it refers to none)."""

    instruction: str
    material: str


def split_prompt(prompt: str) -> Split:
    """Instruction vs material. Several paragraphs: the shortest end paragraph is the instruction, the rest the
    material. One paragraph: quoted spans, code fences and list lines are the material. Material the instruction
    does not refer to (a story told before a lookup) is dropped: the answer does not depend on it."""
    text = prompt.strip()
    # One line cannot hold a paragraph break: skip the split (the same result, [text], or none for an empty text).
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()] if "\n" in text else \
        ([text] if text else [])
    if len(paragraphs) > 1:
        first, last = paragraphs[0], paragraphs[-1]
        if len(_WORD.findall(first)) <= len(_WORD.findall(last)):
            instruction, material = first, "\n\n".join(paragraphs[1:])
        else:
            instruction, material = last, "\n\n".join(paragraphs[:-1])
    else:
        pieces = _QUOTED.findall(text) + [m.group(0) for m in _LIST_LINE.finditer(text)]
        material = "\n".join(pieces)
        instruction = text
        for piece in pieces:
            instruction = instruction.replace(piece, " ")
        if ":" in instruction and not pieces:
            head, _, tail = instruction.partition(":")
            if len(_WORD.findall(tail)) > 2 * max(1, len(_WORD.findall(head))) and len(_WORD.findall(tail)) > 40 \
                    and (_TRANSFORM.found(head) or _ASKS.found(head)):
                instruction, material = head, tail
    if material and not (_REFERENCE.found(instruction) or instruction.rstrip().endswith(":")
                         or _TRANSFORM.found(instruction) or "```" in material):
        return Split(instruction=text, material="")  # nothing is operated on: every word is the request's own
    return Split(instruction=instruction, material=material)


def _log(value: float) -> float:
    return math.log1p(max(0.0, value))


@dataclass(frozen=True)
class Features:
    names: tuple[str, ...]
    values: tuple[float, ...]
    instruction_words: int
    material_words: int

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))


FEATURE_NAMES: tuple[str, ...] = (
    "instruction_tokens_log", "material_tokens_log", "material_over_short", "material_over_long",
    "transform", "transform_long_material", "lookup", "greeting", "writing", "reasoning", "plan", "design", "proof",
    "math", "code", "code_block", "structured_output", "long_output", "sources", "constraints_log", "questions",
    "numbers_log", "conversation_depth_log", "retrieval_confident",
    # Demands under constraints (the labelling rules' "large" cases are a demand *and* several requirements).
    "code_x_constraints", "plan_x_constraints", "writing_x_constraints", "design_x_code", "reasoning_x_sources",
    # The labelling rules read literally (bench/data/outsider_routing_RULES.md): a prior the fit can weigh.
    "rule_at_least_medium", "rule_large", "list_items_log",
)


def extract(prompt: str, *, prior_turns: int = 0, retrieval_confidence: float = 0.0,
            has_passages: bool = False) -> Features:
    """The features of one request: ``prompt`` is the last user message, ``prior_turns`` the messages before it."""
    parts = split_prompt(prompt)
    instruction, material = parts.instruction, parts.material
    # Each text is lowercased and scanned for the families' literals once, whichever families ask of it.
    ins = Scanned(instruction)
    whole = ins if prompt is instruction else Scanned(prompt)
    instruction_words = len(_WORD.findall(instruction))
    material_words = len(_WORD.findall(material))
    transform = 1.0 if _TRANSFORM.found_in(ins) else 0.0
    asked = [int(m.group(1).replace(",", "")) for m in _WORDS_ASKED.finditer_in(ins)
             if m.group(1).replace(",", "").isdigit()]
    long_output = 1.0 if _LONG_OUTPUT.found_in(ins) or any(n >= 800 for n in asked) else 0.0
    prompt_items = len(_ITEM.findall(prompt))
    constraints = (instruction.count(",") + instruction.count(";") + _AND.count_in(ins)
                   + (prompt_items if not material else len(_ITEM.findall(instruction))))
    constraints_log = _log(constraints)
    code = float(min(5, _CODE.count_in(whole)))
    plan = float(min(5, _PLAN.count_in(ins)))
    writing = 1.0 if _WRITING.found_in(ins) else 0.0
    design = float(min(5, _DESIGN.count_in(ins)))
    reasoning = float(min(3, _REASONING.count_in(ins)))
    sources = 1.0 if _SOURCES.found_in(whole) else 0.0
    values = (  # in FEATURE_NAMES order
        _log(count_tokens(instruction)),  # instruction_tokens_log
        _log(count_tokens(material)) if material else 0.0,  # material_tokens_log
        1.0 if material_words > SHORT_MATERIAL_WORDS else 0.0,  # material_over_short
        1.0 if material_words >= LONG_MATERIAL_WORDS else 0.0,  # material_over_long
        transform,
        transform * (1.0 if material_words > SHORT_MATERIAL_WORDS else 0.0),  # transform_long_material
        1.0 if _LOOKUP.found_in(ins) else 0.0,  # lookup
        1.0 if _GREETING.found_in(whole) and instruction_words <= 8 else 0.0,  # greeting
        writing, reasoning, plan, design,
        float(min(3, _PROOF.count_in(ins))),  # proof
        float(min(3, _MATH.count_in(ins))),  # math
        code,
        1.0 if "```" in prompt else 0.0,  # code_block
        float(min(3, _STRUCTURED.count_in(ins))),  # structured_output
        long_output, sources, constraints_log,
        float(min(4, instruction.count("?"))),  # questions
        _log(len(_NUMBER.findall(instruction))),  # numbers_log
        _log(prior_turns),  # conversation_depth_log
        1.0 if has_passages and retrieval_confidence >= 0.75 else 0.0,  # retrieval_confident
        # Demands under constraints: each demand counts once (min 1), times the constraints.
        min(1.0, code) * constraints_log,  # code_x_constraints
        min(1.0, plan) * constraints_log,  # plan_x_constraints
        min(1.0, writing) * constraints_log,  # writing_x_constraints
        min(1.0, design) * min(1.0, code),  # design_x_code
        min(1.0, reasoning) * sources,  # reasoning_x_sources
    )
    list_items_log = _log(_list_items(prompt, prompt_items))
    rule_large, rule_at_least_medium = _rule_prior(_PRIOR_VALUES(values), list_items_log, material_words)
    return Features(FEATURE_NAMES, (*values, rule_at_least_medium, rule_large, list_items_log), instruction_words,
                    material_words)


def list_items(prompt: str) -> int:
    """The longest enumeration asked for or given: items after a colon (split on commas, semicolons, "and"),
    or bulleted / numbered lines."""
    return _list_items(prompt, len(_ITEM.findall(prompt)))


def _list_items(prompt: str, item_lines: int) -> int:
    longest = item_lines  # the bulleted / numbered lines of ``prompt``
    for match in _AFTER_COLON.finditer(prompt):
        items = [x for x in _ITEM_SEPARATOR.split(match.group(1)) if x.strip()]
        longest = max(longest, len(items))
    return longest


_BEFORE_PRIORS = FEATURE_NAMES[:-3]  # the features computed before the rule priors and the list items
_PRIOR_FEATURES = ("constraints_log", "plan", "writing", "proof", "design", "code", "long_output",
                   "structured_output", "sources", "reasoning", "transform", "numbers_log", "math",
                   "instruction_tokens_log")
_PRIOR_VALUES = itemgetter(*(_BEFORE_PRIORS.index(name) for name in _PRIOR_FEATURES))  # the values _rule_prior reads
_FIVE_LOG = math.log1p(5)
_FOUR_LOG = math.log1p(4)
_THREE_LOG = math.log1p(3)
_TWENTY_LOG = math.log1p(20)


def _rule_prior(prior_values: tuple[float, ...], list_items_log: float, material_words: int) -> tuple[float, float]:
    """(large, at least medium) by the labelling rules: large for a plan under several constraints, hard maths,
    complex code design, long structured output with many requirements, or weighing several sources; medium for a
    long input to read, code, a few reasoning steps, a word problem or moderate writing. ``prior_values``: the
    features named in ``_PRIOR_FEATURES``, in that order."""
    (constraints_log, plan, writing, proof, design, code, long_output, structured_output, sources, reasoning,
     transform, numbers_log, maths, instruction_tokens_log) = prior_values
    items = math.expm1(list_items_log)
    many = constraints_log >= _FIVE_LOG or items >= 5  # >= 5 listed requirements
    several = constraints_log >= _FOUR_LOG or items >= 4
    large = (plan >= 2 and several) or (plan >= 1 and writing and many) or proof >= 1 \
        or (design >= 2 and code >= 1) or (design >= 3 and many) \
        or (design >= 1 and code >= 1 and many) \
        or (writing and (long_output or structured_output or items >= 6) and many) \
        or (sources and (reasoning or plan))
    medium = large or material_words > SHORT_MATERIAL_WORDS or code >= 1 or reasoning >= 1 \
        or (transform and items >= 3) or numbers_log >= _FOUR_LOG \
        or (maths >= 1 and numbers_log >= _THREE_LOG) \
        or (writing and instruction_tokens_log >= _TWENTY_LOG)
    return float(large), float(medium)


def extract_messages(messages: Sequence[tuple[str, str]], *, retrieval_confidence: float = 0.0,
                     has_passages: bool = False) -> Features:
    """Features of a chat: the last user message is the prompt; every message before it is conversation depth."""
    users = [i for i, (role, _) in enumerate(messages) if role == "user"]
    last = users[-1] if users else len(messages) - 1
    return extract(messages[last][1], prior_turns=last, retrieval_confidence=retrieval_confidence,
                   has_passages=has_passages)
