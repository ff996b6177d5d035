"""Build the real question-to-passage sets of benchmarks/retrieval.py from installed docs.

Nothing here was written for retrieval: each set is a project's own FAQ, whose section headings
are questions and whose section bodies answer them. The passage of a question is the start of
its section's answer (the heading itself is left out), cut at a word budget like a RAG chunk;
the corpus of a set is every passage of that set.

- ``python-faq``: the Python FAQ (Debian package ``python3-doc``, HTML) — the tuning set;
- ``debian-faq``: the Debian FAQ (package ``debian-faq``, plain text) — held out: nothing was
  chosen by looking at its figures.

The text is read from the machine and never shipped; ``apt-get install python3-doc debian-faq``
provides it.

    python benchmarks/retrieval_sets.py            # writes JSON under ~/.cache/rkllm/retrieval/
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

PASSAGE_WORDS = 120
"""Words kept per passage: the size of a typical RAG chunk (~160 tokens)."""

MIN_ANSWER_WORDS = 12
"""Sections with a shorter answer ("See above.") are skipped: nothing to retrieve."""

PYTHON_FAQ = Path("/usr/share/doc/python3-doc/html/faq")
DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")

HELD_OUT = ("debian-faq",)


@dataclass(frozen=True)
class QASet:
    """Questions, passages, and the index of the passage answering each question."""

    name: str
    source: str
    questions: list[str]
    passages: list[str]
    answers: list[int]


def _words(text: str, limit: int) -> str:
    return " ".join(text.split()[:limit])


class _Sections(HTMLParser):
    """(heading, body text) pairs of a Sphinx page: text between consecutive headings."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, str]] = []
        self._heading: list[str] | None = None
        self._body: list[str] = []
        self._current = ""
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = dict(attrs).get("class") or ""
        if tag in ("h1", "h2", "h3", "h4"):
            self._flush()
            self._heading = []
        elif tag in ("script", "style") or "headerlink" in classes or (
            tag == "div" and ("sphinxsidebar" in classes or "related" in classes)
        ):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            self._current = " ".join("".join(self._heading).split())
            self._heading = None
        elif self._skip and tag in ("script", "style", "a", "div"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self._current:
            self._body.append(data)

    def _flush(self) -> None:
        if self._current:
            self.sections.append((self._current, " ".join("".join(self._body).split())))
        self._current, self._body = "", []

    def close(self) -> None:
        super().close()
        self._flush()


def _python_faq_sections(folder: Path) -> Iterator[tuple[str, str]]:
    for page in sorted(folder.glob("*.html")):
        if page.name == "index.html":
            continue
        parser = _Sections()
        parser.feed(page.read_text(encoding="utf-8"))
        parser.close()
        yield from parser.sections


_DEBIAN_HEADING = re.compile(r"^(\d+)\.(\d+)\.\s+(.*)$")
_DEBIAN_CHAPTER = re.compile(r"^\d+\.\s+\S")


def _debian_faq_sections(path: Path) -> Iterator[tuple[str, str]]:
    lines = gzip.open(path, "rt", encoding="utf-8").read().replace("\xa0", " ").splitlines()
    heading: list[str] | None = None
    body: list[str] = []
    in_heading = False
    for line in lines:
        match = _DEBIAN_HEADING.match(line)
        if match or _DEBIAN_CHAPTER.match(line):
            if heading:
                yield " ".join(" ".join(heading).split()), " ".join(" ".join(body).split())
            heading, body = ([match.group(3)] if match else None), []
            in_heading = bool(match)
            continue
        if in_heading:
            if line.strip():
                heading.append(line.strip())  # type: ignore[union-attr]
                continue
            in_heading = False
        if heading is not None:
            body.append(line)
    if heading:
        yield " ".join(" ".join(heading).split()), " ".join(" ".join(body).split())


def build(name: str, source: str, sections: Iterator[tuple[str, str]]) -> QASet:
    """One set from (heading, body) pairs: question headings with a real answer."""
    questions: list[str] = []
    passages: list[str] = []
    seen: set[str] = set()
    for heading, body in sections:
        heading = html.unescape(heading).strip().rstrip("¶").strip()
        if not heading.endswith("?") or len(body.split()) < MIN_ANSWER_WORDS:
            continue
        if heading.lower() in seen:  # the same question asked twice: ambiguous
            continue
        seen.add(heading.lower())
        questions.append(heading)
        passages.append(_words(body, PASSAGE_WORDS))
    return QASet(name, source, questions, passages, list(range(len(questions))))


def build_all() -> list[QASet]:
    """Every set whose source is installed (a missing source is an error: say which package)."""
    missing = [p for p in (PYTHON_FAQ, DEBIAN_FAQ) if not p.exists()]
    if missing:
        raise SystemExit(
            f"missing {', '.join(map(str, missing))}: apt-get install python3-doc debian-faq"
        )
    return [
        build("python-faq", str(PYTHON_FAQ), _python_faq_sections(PYTHON_FAQ)),
        build("debian-faq", str(DEBIAN_FAQ), _debian_faq_sections(DEBIAN_FAQ)),
    ]


def cache_dir() -> Path:
    base = Path(os.environ.get("RKLLM_CACHE_DIR", Path.home() / ".cache" / "rkllm"))
    return base / "retrieval"


def load_sets() -> list[QASet]:
    """The sets, built on first use and cached as JSON."""
    folder = cache_dir()
    sets = []
    for qa in build_all():
        path = folder / f"{qa.name}.json"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(qa), indent=1))
        sets.append(qa)
    return sets


if __name__ == "__main__":
    for qa in load_sets():
        words = sum(len(p.split()) for p in qa.passages) / len(qa.passages)
        print(f"{qa.name}: {len(qa.questions)} questions, {words:.0f} words per passage"
              f" ({qa.source})", file=sys.stderr)
        for q, p in list(zip(qa.questions, qa.passages, strict=True))[:3]:
            print(f"  Q: {q}\n  P: {p[:150]}…", file=sys.stderr)
