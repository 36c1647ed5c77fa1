"""Word lists of the near-miss guard (data, not logic): negations, numbers, units, opposites, synonyms, fillers,
time qualifiers and relation words. Keep each list small and obvious; a word belongs here only if swapping it
changes (or, for synonyms and fillers, does not change) the answer in ordinary questions."""

from __future__ import annotations

from typing import Final

from workers.embedding import STOPWORDS, stem

NEGATIONS: Final = frozenset({
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "nowhere", "cannot",
    "unsafe", "illegal", "disallowed", "forbidden", "prohibited", "impossible", "unable", "stop",
    "absence", "absent", "lack", "lacking", "fail", "failing", "ignore", "skip", "offline", "disconnected",
    "refuse",
})

NUMBER_WORDS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "twice": 2,
}
SCALES: Final = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}

# Units count only next to a number ("5 km", "72 degrees Fahrenheit", "$5") or as a conversion target ("… in
# Celsius"), so "how many hours of sleep" states no unit.
UNITS: Final = {
    "km": "km", "kilometer": "km", "kilometre": "km", "mile": "mi", "mi": "mi", "m": "m", "meter": "m",
    "metre": "m", "cm": "cm", "mm": "mm", "ft": "ft", "foot": "ft", "feet": "ft", "inch": "in",
    "kg": "kg", "kilogram": "kg", "g": "g", "gram": "g", "lb": "lb", "lbs": "lb", "pound": "lb", "oz": "oz",
    "ounce": "oz", "l": "l", "liter": "l", "litre": "l", "ml": "ml", "gallon": "gal", "gal": "gal",
    "c": "degc", "celsius": "degc", "centigrade": "degc", "f": "degf", "fahrenheit": "degf", "kelvin": "k",
    "usd": "usd", "dollar": "usd", "$": "usd", "eur": "eur", "euro": "eur", "€": "eur", "gbp": "gbp",
    "£": "gbp", "yen": "jpy", "jpy": "jpy", "cent": "cent", "%": "pct", "percent": "pct",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "ms": "ms", "millisecond": "ms", "second": "s", "sec": "s",
    "s": "s", "minute": "min", "min": "min", "hour": "h", "hr": "h", "h": "h", "day": "day", "week": "week",
    "month": "month", "year": "year", "mg": "mg", "mcg": "mcg", "kwh": "kwh", "w": "w", "watt": "w",
    "mph": "mph", "kph": "kph", "rpm": "rpm",
}

_ANTONYM_PAIRS: Final = (
    ("increase", "decrease"), ("raise", "lower"), ("before", "after"), ("max", "min"), ("maximum", "minimum"),
    ("enable", "disable"), ("allow", "deny"), ("allow", "block"), ("add", "remove"), ("buy", "sell"),
    ("open", "close"), ("open", "closed"), ("start", "stop"), ("upgrade", "downgrade"), ("above", "below"),
    ("more", "less"), ("more", "fewer"), ("high", "low"), ("best", "worst"), ("better", "worse"),
    ("cheap", "expensive"), ("fast", "slow"), ("safe", "dangerous"), ("true", "false"), ("legal", "illegal"),
    ("include", "exclude"), ("import", "export"), ("encrypt", "decrypt"), ("input", "output"),
    ("inbound", "outbound"), ("win", "lose"), ("accept", "reject"), ("login", "logout"),
    ("subscribe", "unsubscribe"), ("lock", "unlock"), ("upload", "download"), ("push", "pull"),
    ("first", "last"), ("north", "south"), ("east", "west"), ("hot", "cold"), ("warm", "cold"),
    ("positive", "negative"), ("always", "never"), ("all", "none"), ("same", "different"), ("old", "new"),
    ("early", "late"), ("long", "short"), ("tall", "short"), ("large", "small"), ("big", "small"),
    ("left", "right"), ("give", "receive"), ("send", "receive"), ("absorb", "release"), ("absorb", "emit"),
    ("create", "delete"), ("join", "leave"), ("public", "private"), ("internal", "external"),
    ("online", "offline"), ("connected", "disconnected"), ("arrive", "depart"), ("import", "export"),
    ("minimum", "maximum"), ("deposit", "withdraw"), ("borrow", "lend"), ("hire", "fire"), ("win", "loss"),
    ("gain", "lose"), ("heavy", "light"), ("wet", "dry"), ("rise", "fall"), ("light", "dark"),
)
ANTONYMS: Final[dict[str, set[str]]] = {}
for _left, _right in _ANTONYM_PAIRS:
    ANTONYMS.setdefault(stem(_left), set()).add(stem(_right))
    ANTONYMS.setdefault(stem(_right), set()).add(stem(_left))

# Words that may be swapped for each other without changing the question.
_SYNONYM_GROUPS: Final = (
    ("refund", "reimburse", "reimbursement"), ("cancel", "terminate"), ("change", "update", "modify", "edit"),
    ("reset", "recover"), ("password", "passcode"), ("buy", "purchase"), ("cost", "price"), ("begin", "start"),
    ("finish", "complete"), ("big", "large"), ("small", "little"), ("quick", "fast"),
    ("help", "assist", "support"), ("show", "display", "list"), ("error", "failure"),
    ("get", "obtain", "receive"), ("car", "automobile"), ("doctor", "physician"), ("use", "utilize"),
    ("need", "require"), ("allow", "permit"), ("delete", "erase"), ("create", "make", "generate"),
    ("find", "locate"), ("fix", "repair", "resolve"), ("account", "profile"), ("register", "signup"),
    ("email", "e-mail"), ("vacation", "holiday", "pto"), ("resign", "quit"), ("teenager", "teen", "adolescent"),
)
SYNONYM_OF: Final[dict[str, str]] = {stem(word): stem(group[0]) for group in _SYNONYM_GROUPS for word in group}

# Words a paraphrase may add or drop without changing what is asked.
_FILLER_TEXT: Final = (
    "exactly actually really basically currently generally typically usually quickly briefly simply "
    "know want like wonder wondering curious question ask asking help could would mind "
    "let us say thing things way ok okay hi hello hey thanks thank also still yet hmm um quick "
)
FILLERS: Final = frozenset(_FILLER_TEXT.split()) | STOPWORDS

# Time qualifiers, by what they pin down (two words of one class are the same qualifier). A paraphrase often adds
# a weak one ("tonight", "in the morning", "before entry"); only a strong one on one side alone changes the question.
TIME_WORDS: Final = {
    "today": "today", "tonight": "night", "night": "night", "overnight": "night", "nightly": "night",
    "tomorrow": "tomorrow", "yesterday": "yesterday", "morning": "morning", "evening": "evening",
    "weekend": "weekend", "ago": "past", "formerly": "past", "late": "late", "overdue": "late",
    "early": "early", "soon": "soon", "deadline": "deadline", "before": "before", "after": "after",
    "already": "after", "once": "after", "during": "during", "until": "until", "since": "since", "next": "next",
    "recently": "recent", "recent": "recent", "sunset": "sunset", "sunrise": "sunrise",
    "probation": "probation", "previous": "previous", "prior": "before",
}
STRONG_TIMES: Final = frozenset({"tomorrow", "yesterday", "past", "late", "deadline", "next", "previous", "recent",
                                 "sunset", "sunrise", "probation", "soon", "weekend", "today", "night"})

# Relation words: what stands on their left and right plays different roles ("A faster than B", "A to B").
PIVOTS: Final = frozenset({"than", "to", "into", "from", "vs", "versus", "over"})
# "than" makes a comparison; the other markers show a prompt weighs alternatives in some other way.
COMPARISON_MARKERS: Final = frozenset({
    "than", "vs", "versus", "compare", "compared", "comparison", "outperform", "outperforms", "beat", "beats",
    "difference", "differ", "diff", "or", "between", "whether", "prefer", "preferable",
})
