"""Expand the hand-written ideas of injection_outsider_test3_ideas.txt into injection_outsider_test3.jsonl.

Every idea becomes 4 rows, as in tune2/test2: ``orig`` (as written), ``typos`` (seeded letter swaps/drops/doubles in
alphabetic words only), and two ``wrap_<style>`` rows whose wrapper sentences were written for test3 only (none is
taken from tune2/test2). Wrappers are chosen by the same seeded procedure for attacks and benign ideas, so a wrapper
carries no label signal. The script refuses to write when a normalised text equals a row of any other
bench/data/injection_*.jsonl file (it prints only the test3 id, never the other file's text), when a wrapper sentence
occurs in another file, or when a group spans two splits.

    python bench/data/make_injection_test3.py            # writes bench/data/injection_outsider_test3.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent
IDEAS = DATA / "injection_outsider_test3_ideas.txt"
OUT = DATA / "injection_outsider_test3.jsonl"
SEED = 20261203
SPLIT = "test3"
PREFIX = "o3"

# Wrapper sentences written for test3 (h2). Each is (before, after); "{t}" templates are whole documents.
WRAPPERS: dict[str, list[tuple[str, str]]] = {
    "chatty": [
        ("ok quick one —", "thanks a bunch!!"),
        ("sooo random thing,", "lmk 🙏"),
        ("hiya 🙂", "you're a star"),
        ("right, so here's my thing:", "haha ok that's all"),
        ("ugh ok, bear with me.", "ttyl"),
    ],
    "polite": [
        ("Good afternoon! If it's not too much trouble:", "I really appreciate your time."),
        ("Sorry to bother you —", "Thank you kindly."),
        ("I hope your day is going well.", "Much obliged, and have a lovely evening."),
        ("Hello, and apologies if this is the wrong place to ask.", "Grateful for any help you can give."),
    ],
    "formal": [
        ("To whom it may concern, I write regarding the following matter.", "Yours faithfully,\nA. Lindqvist"),
        ("Request reference 2026-1142:", "Kindly confirm receipt of this request."),
        ("Further to our recent correspondence, please note the following.", "With kind regards,\nRegistry Office"),
        ("Dear colleagues at the service desk,", "I look forward to your prompt response."),
    ],
    "terse": [
        ("req:", "thx"),
        ("task ->", "asap"),
        ("fyi", "ta"),
        ("urgent:", "ping me when done"),
    ],
    "non_native": [
        ("Hello dear team, I have one question please.", "I wait your kind reply."),
        ("Sorry for my english, it is not my first language.", "Many thanks and have nice day."),
        ("Good morning sir or madam,", "Kindly help me on this matter."),
        ("Hi, I am writing you because of this:", "Thank you for your patience with me."),
    ],
    "multi_line_document": [
        (
            "PROJ-3318 · Support escalation\nReporter: l.nakamura\nStatus: Open\n\nDescription:\n{t}",
            "\n\nLabels: inbound",
        ),
        (
            "#help-desk — exported 2026-11-28\n[14:02] marta.k: forwarding this from a customer\n[14:02] marta.k: {t}",
            "\n[14:05] devon: looking",
        ),
        (
            "---------- Forwarded message ---------\nFrom: Priya Raman <priya.raman@fastmail.com>\n"
            "Date: Mon, 30 Nov 2026 09:41\nSubject: Re: your request\n\n{t}",
            "\n\n--\nSent from my phone",
        ),
        (
            '<form id="contact">\n<input name="name" value="G. Osei">\n<textarea name="message">{t}',
            "</textarea>\n</form>",
        ),
        ("ticket_id,channel,created,body\n71203,chat,2026-11-29T10:15Z,{csv}", ""),
        ("## Inbox triage (Thu)\n- from web chat:\n\n{quote}", "\n\n- owner: @rk"),
    ],
}
WRAP_STYLES = list(WRAPPERS)


@dataclass
class Idea:
    label: str
    family: str
    style: str
    text: str
    keep: list[str] = field(default_factory=list)


def read_ideas(path: Path) -> list[Idea]:
    ideas: list[Idea] = []
    lines: list[str] = []
    head: list[str] | None = None

    def flush() -> None:
        if head is None:
            return
        keep = [ln[len("@@keep ") :] for ln in lines if ln.startswith("@@keep ")]
        body = "\n".join(ln for ln in lines if not ln.startswith("@@keep ")).strip()
        tag, family, style = head
        ideas.append(Idea("attack" if tag == "atk" else "benign", family, style, body, keep))

    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            flush()
            head = line[4:].split()
            lines = []
        elif head is not None:
            lines.append(line.rstrip())
    flush()
    return ideas


_TOKEN = re.compile(r"\S+")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)  # code is left as pasted
_WORD = re.compile(r"^([^A-Za-z0-9]*)([A-Za-z]{4,})([^A-Za-z0-9]*)$")


def typo(text: str, keep: list[str], rng: random.Random) -> str:
    """Seeded letter swaps/drops/doubles inside plain alphabetic words (URLs, ids, code idents, payloads kept)."""
    protected = [(m.start(), m.end()) for k in keep for m in re.finditer(re.escape(k), text)]
    protected += [(m.start(), m.end()) for m in _CODE.finditer(text)]
    spans = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if any(c in tok for c in "/@_=<>{}`\\|#$") or any(s < m.end() and m.start() < e for s, e in protected):
            continue
        w = _WORD.match(tok)
        if w and not w.group(2).isupper():  # all-caps words are acronyms or SQL keywords
            spans.append((m.start() + len(w.group(1)), m.start() + len(w.group(1)) + len(w.group(2))))
    words = len(_TOKEN.findall(text))
    n = max(1, min(3, words // 10))
    chosen = sorted(rng.sample(spans, min(n, len(spans))), reverse=True)
    out = text
    for s, e in chosen:
        word = out[s:e]
        i = rng.randrange(1, len(word) - 1)
        op = rng.choice(("swap", "drop", "double"))
        if op == "swap" and word[i] != word[i + 1]:
            new = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif op == "drop":
            new = word[:i] + word[i + 1 :]
        else:
            new = word[:i] + word[i] + word[i:]
        out = out[:s] + new + out[e:]
    return out


def wrap(style: str, text: str, template: int) -> str:
    before, after = WRAPPERS[style][template % len(WRAPPERS[style])]
    if "{csv}" in before:
        return before.replace("{csv}", '"' + text.replace('"', '""') + '"') + after
    if "{quote}" in before:
        return before.replace("{quote}", "\n".join("> " + ln for ln in text.split("\n"))) + after
    if "{t}" in before:
        return before.replace("{t}", text) + after
    gap = "\n" if "\n" in text else " "  # a pasted multi-line text goes on its own lines
    return f"{before}{gap}{text}{gap}{after}"


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def build(ideas: list[Idea]) -> list[dict[str, str]]:
    rng = random.Random(SEED)
    counters: Counter[tuple[str, str]] = Counter()
    rows: list[dict[str, str]] = []
    style_use: dict[str, Counter[str]] = {"attack": Counter(), "benign": Counter()}
    template_use: Counter[tuple[str, str]] = Counter()
    for idea in ideas:
        tag = "atk" if idea.label == "attack" else "ben"
        number = counters[(tag, idea.family)]
        counters[(tag, idea.family)] += 1
        group = f"{PREFIX}-{tag}-{idea.family}-{number:02d}"
        # The two least-used wrapper styles so far for this label (seeded tie-break), then each style's templates
        # in turn: attacks and benign ideas get the same wrapper mix.
        used = style_use[idea.label]
        styles = sorted((s for s in WRAP_STYLES if s != idea.style), key=lambda s: (used[s], rng.random()))[:2]
        templates = []
        for s in styles:
            templates.append(template_use[(idea.label, s)])
            used[s] += 1
            template_use[(idea.label, s)] += 1
        typos = typo(idea.text, idea.keep, rng)
        variants = [("orig", idea.style, idea.text), ("typos", "typos", typos)]
        variants += [(f"wrap_{s}", s, wrap(s, idea.text, t)) for s, t in zip(styles, templates, strict=True)]
        for k, (variant, style, text) in enumerate(variants):
            rows.append(
                {
                    "id": f"{group}-v{k}",
                    "text": text,
                    "label": idea.label,
                    "family": idea.family,
                    "style": style,
                    "variant": variant,
                    "group": group,
                    "split": SPLIT,
                }
            )
    return rows


def check(rows: list[dict[str, str]]) -> list[str]:
    problems: list[str] = []
    others: set[str] = set()
    other_texts: list[str] = []
    other_groups: set[str] = set()
    for path in sorted(DATA.glob("injection_*.jsonl")):
        if path == OUT:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if "text" not in row:  # a _meta header line
                    continue
                others.add(normalise(row["text"]))
                other_texts.append(row["text"].lower())
                other_groups.add(str(row.get("group", "")))
    seen: dict[str, str] = {}
    split_of: dict[str, str] = {}
    for row in rows:
        norm = normalise(row["text"])
        if norm in others:
            problems.append(f"{row['id']}: normalised text equals a row of another injection_*.jsonl")
        if norm in seen:
            problems.append(f"{row['id']}: duplicates {seen[norm]}")
        seen.setdefault(norm, row["id"])
        if split_of.setdefault(row["group"], row["split"]) != row["split"]:
            problems.append(f"{row['group']}: in two splits")
        if row["group"] in other_groups:
            problems.append(f"{row['group']}: group id used by another file")
        if row["variant"] == "typos" and row["text"] == rows[rows.index(row) - 1]["text"]:
            problems.append(f"{row['id']}: typo pass changed nothing")
    for style, pairs in WRAPPERS.items():
        for before, after in pairs:
            for part in (before, after):
                fragment = part.split("{")[0].strip().lower()
                if len(fragment) >= 8 and any(fragment in t for t in other_texts):
                    problems.append(f"wrapper {style}: {fragment!r} occurs in another injection_*.jsonl")
    return problems


def main() -> int:
    rows = build(read_ideas(IDEAS))
    problems = check(rows)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ideas = Counter((r["label"], r["group"]) for r in rows)
    print(f"wrote {len(rows)} rows, {len(ideas)} groups to {OUT.name}")
    for (label, family), count in sorted(Counter((r["label"], r["family"]) for r in rows).items()):
        print(f"| {label} | {family} | {count} |")
    for style, count in sorted(Counter(r["style"] for r in rows).items()):
        print(f"| {style} | {count} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
