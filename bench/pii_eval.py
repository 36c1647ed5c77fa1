"""Precision and recall of the PII detectors per entity type on a labelled set written for tollway.

Each type has valid samples (must be found) and near misses that are not PII (checksum-invalid cards and IBANs,
never-issued SSNs, impossible IP addresses and phone numbers, things that look like secrets or e-mails but are not),
in several formats and embedded in sentences. A second set, ``bench/data/pii_outsider.jsonl`` (a copy of
``/work/evalsets/pii.jsonl``, written by someone who had not read the detectors), is scored on its ``test`` split.
Run: ``.venv/bin/python -m bench.pii_eval``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workers.detectors.pii import PRIORITY, detect

# (value, entity or None for a negative)
VALID: dict[str, list[str]] = {
    "email": ["jane.doe@example.com", "j.smith+billing@mail.acme.co.uk", "ops_team@globex.io", "x@y.dev",
              "first.last@sub.domain.example.org", "ALERTS@EXAMPLE.COM", "a1b2c3@mx.example.net",
              "support-desk@helpdesk.example.com", "o'connor@example.ie".replace("'", ""), "k.lee@uni.edu.au"],
    "phone": ["(415) 555-2671", "415-555-2671", "+1 415 555 2671", "+44 20 7946 0958", "+49 30 901820",
              "+33 1 42 68 53 00", "212.555.0143".replace("0143", "7788"), "+81 3-1234-5678", "(646) 555-3890",
              "+61 2 9876 5432"],
    "credit_card": ["4111 1111 1111 1111", "4012888888881881", "5555-5555-5555-4444", "5105 1051 0510 5100",
                    "3782 822463 10005", "371449635398431", "6011 1111 1111 1117", "6011000990139424",
                    "3530111333300000", "2223 0031 2200 3222"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606",
             "NL91ABNA0417164300", "ES91 2100 0418 4502 0005 1332", "IT60X0542811101000000123456",
             "CH93 0076 2011 6238 5295 7", "BE68539007547034", "AT611904300234573201", "PL61109010140000071219812874"],
    "us_ssn": ["536-22-1234", "123-45-6789", "212-67-8901", "401-33-5566", "078-05-1121", "665-12-3456",
               "772-10-9988", "001-01-0001", "536 22 1234".replace("1234", "4321"), "345-67-8912"],
    "ip_address": ["192.168.1.20", "10.0.0.1", "8.8.8.8", "172.16.254.3", "203.0.113.77", "2001:db8::1",
                   "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "255.255.255.0",
                   "100.64.12.9"],
    "secret": ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
               "sk-proj-Abc123Def456Ghi789Jkl012Mno345", "xoxb-123456789012-abcdefGHIJKL",
               "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
               "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
               "tw_k_0123456789abcdef_Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"],
}
# Near misses: must NOT be reported as any PII type. Keyed by the type they imitate.
INVALID: dict[str, list[str]] = {
    "email": ["jane.doe at example dot com", "@jane_doe", "user@localhost", "name@domain", "mailto:",
              "icon@2x.png", "foo@bar", "john..@", "a@b.c"],
    "phone": ["(123) 456-7890", "555-0100", "+1 000 000 0000", "12345", "1-800", "(999) 999-9999",
              "order 1234567", "+44 12"],
    "credit_card": ["4111 1111 1111 1112", "4012888888881882", "5555-5555-5555-4445", "5105 1051 0510 5101",
                    "3782 822463 10006", "6011 1111 1111 1118", "1234 5678 9012 3456", "0000 0000 0000 0000",
                    "9111 1111 1111 1111"],
    "iban": ["DE88 3704 0044 0532 0130 00", "GB83WEST12345698765432", "NL91ABNA041716430", "XX12 3456 7890 1234",
             "FR15 2004 1010 0505 0001 3M02 606", "DE89 3704 0044 0532 0130", "CH94 0076 2011 6238 5295 7"],
    "us_ssn": ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000", "078-05-1120",
               "219-09-9999", "987-65-4321"],
    "ip_address": ["999.1.1.1", "256.256.256.256", "1.2.3", "192.168.1", "12:30:45", "2001:db8:::1", "::",
                   "10.0.0.300"],
    "secret": ["sk-learn", "the password policy requires 12 characters", "AKIA", "ghp_short",
               "xoxb-", "use an API key from the dashboard", "eyJhbGciOiJIUzI1NiJ9"],
}
TEMPLATES = ["{}", "Please contact {} today.", "My details: {}.", "value={} (see ticket)",
             "Here it is:\n{}\nthanks", "« {} »"]
# Ordinary text with numbers that no detector should touch.
CLEAN = ["Order 1234567 shipped on 2026-11-29 at 12:30:45.", "Version v2.10.3 fixes bug #4521.",
         "The invoice total is $1,234.56 for 3 seats.", "Call the 24/7 line, option 2.",
         "Our Q3 revenue grew 12.5% to 4,500,000.", "Room 101, floor 3, building 7.",
         "Use sklearn's train_test_split with random_state=42.", "Set max_tokens=256 and temperature=0.2.",
         "The ratio is 16:9 and the time is 10:45.", "ISBN 978-3-16-148410-0 is on the shelf."]


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def cases() -> list[tuple[str, list[tuple[str, str]]]]:
    """(text, [(entity, value) expected]) — every valid sample in every template, every near miss likewise."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for entity, values in VALID.items():
        for value in values:
            for template in TEMPLATES:
                out.append((template.format(value), [(entity, value)]))
    for values in INVALID.values():
        for value in values:
            for template in TEMPLATES:
                out.append((template.format(value), []))
    out += [(text, []) for text in CLEAN]
    return out


def evaluate() -> tuple[dict[str, Score], int, int]:
    scores = {entity: Score() for entity in PRIORITY}
    near_miss_samples = sum(len(v) for v in INVALID.values()) * len(TEMPLATES) + len(CLEAN)
    for text, expected in cases():
        found = Counter((f.entity, f.text) for f in detect(text))
        wanted = Counter(expected)
        for key, n in wanted.items():
            hit = min(n, found.get(key, 0))
            scores[key[0]].tp += hit
            scores[key[0]].fn += n - hit
        for key, n in found.items():
            extra = n - min(n, wanted.get(key, 0))
            scores[key[0]].fp += extra
    valid_samples = sum(len(v) for v in VALID.values()) * len(TEMPLATES)
    return scores, valid_samples, near_miss_samples


OUTSIDER_FILE = Path(__file__).parent / "data" / "pii_outsider.jsonl"
_OUTSIDER_TYPES = {"ssn": "us_ssn"}  # the outsider's type names where they differ from ours


def evaluate_outsider(split: str = "test", path: Path = OUTSIDER_FILE) -> tuple[dict[str, Score], int]:
    """Precision and recall per type on one split of the outsider's set; a finding counts by (type, exact text)."""
    scores = {entity: Score() for entity in PRIORITY}
    rows = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] != split:
            continue
        rows += 1
        wanted = Counter((_OUTSIDER_TYPES.get(s["type"], s["type"]), s["value"]) for s in row["spans"])
        found = Counter((f.entity, f.text) for f in detect(row["text"]))
        for key, n in wanted.items():
            hit = min(n, found.get(key, 0))
            scores[key[0]].tp += hit
            scores[key[0]].fn += n - hit
        for key, n in found.items():
            scores[key[0]].fp += n - min(n, wanted.get(key, 0))
    return scores, rows


def _print_scores(scores: dict[str, Score]) -> None:
    print(f"{'entity':<12} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>10} {'recall':>8}")
    for entity, s in scores.items():
        print(f"{entity:<12} {s.tp:>4} {s.fp:>4} {s.fn:>4} {s.precision:>10.3f} {s.recall:>8.3f}")


def main() -> int:
    scores, valid, near = evaluate()
    print(f"PII detection on {valid} valid samples and {near} near misses/clean texts")
    _print_scores(scores)
    outsider, rows = evaluate_outsider("test")
    print(f"\noutsider set ({OUTSIDER_FILE.name}), test split, {rows} rows")
    _print_scores(outsider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
