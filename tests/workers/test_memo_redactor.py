from workers.detectors.redaction import BasicRedactor, MemoRedactor


class Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.inner = BasicRedactor()

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        self.calls += 1
        return self.inner.redact(text)


def test_memo_redactor_gives_the_redactors_answer_once_per_text() -> None:
    inner = Counting()
    memo = MemoRedactor(inner, max_entries=2, max_chars=100)
    text = "mail bob@example.com"
    assert memo.redact(text) == inner.inner.redact(text)
    counts = memo.redact(text)[1]
    counts["email"] = 99  # the caller's copy: the memo is not changed
    assert memo.redact(text) == ("mail [EMAIL]", {"email": 1})
    assert inner.calls == 1
    long = "x" * 101 + " bob@example.com"
    memo.redact(long)
    memo.redact(long)
    assert inner.calls == 3  # too long to keep
    memo.redact("a")
    memo.redact("b")  # full: starts over
    memo.redact(text)
    assert inner.calls == 6
