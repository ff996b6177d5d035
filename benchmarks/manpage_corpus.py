"""Training text for the embedding adapters, from the man pages installed on this machine.

The adapters are fitted on text nobody wrote for retrieval and that no benchmark set holds:
- the one-line description of each man page (its NAME section: ``ls - list directory
  contents``) and the first 120 words of its DESCRIPTION (the size of a RAG chunk);
- more passages from the same pages (the next DESCRIPTION words, NOTES, EXAMPLES, BUGS);
- questions found in man pages and in /usr/share/doc, leaving out both FAQ benchmark sources
  (the Python docs and the Debian FAQ) and any question of the benchmark sets.

Machine-generated pages (the gcloud reference) are capped so they do not dominate.
"""

from __future__ import annotations

import gzip
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAN = Path("/usr/share/man")
SECTIONS = ("man1", "man3", "man5", "man7", "man8")
PASSAGE_WORDS = 120
GENERATED_CAP = 300
MAX_PAIRS = 2400
MAX_EXTRA_PASSAGES = 800
_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ESCAPE = re.compile(r"\\(\(..|\[[^\]]*\]|\*\(..|\*.|[&|^%:/,])")
_QUESTION = re.compile(r"(?:^|(?<=[.!] ))([A-Z][^.?!]{15,140}\?)")
_ASKS = re.compile(r"^(How|What|Why|When|Where|Which|Can|Is|Are|Does|Do|Should|Who|Will|Could"
                   r"|Would)\b")


@dataclass(frozen=True)
class Corpus:
    """Short texts (queries) and chunk-sized passages."""

    queries: list[str]
    passages: list[str]


def _clean(line: str) -> str:
    line = _FONT.sub("", line)
    line = line.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace('\\"', "")
    return _ESCAPE.sub("", line).strip()


def sections(raw: str) -> dict[str, list[str]]:
    """A man page's text by section name (roff macros dropped, fonts and escapes removed)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        heading = re.match(r'^\.S[Hh]\s+"?([^"]*)"?', line)
        if heading:
            current = heading.group(1).strip().upper()
            found.setdefault(current, [])
            continue
        if current is None:
            continue
        if line.startswith((".", "'")):
            styled = re.match(r"^\.(B|I|BI|BR|IR|RB|RI|IB)\s+(.*)", line)
            if styled:
                found[current].append(_clean(styled.group(2).replace('"', "")))
            continue
        found[current].append(_clean(line))
    return found


def _pages() -> Iterator[tuple[str, dict[str, list[str]]]]:
    for section in SECTIONS:
        folder = MAN / section
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink() or not path.name.endswith(".gz"):
                continue
            try:
                with gzip.open(path, "rt", errors="replace") as handle:
                    raw = handle.read(200_000)
            except (OSError, EOFError):
                continue
            if raw.lstrip().startswith(".so "):
                continue
            yield path.name, sections(raw)


def _doc_questions() -> list[str]:
    # the two FAQ benchmark sources (Python docs, Debian FAQ) are left out
    script = r"""cd /usr/share/doc && for f in $(find . -type f \( -name "*.gz" -o -name "*.txt" \
        -o -name "README*" -o -name "FAQ*" -o -name "*.html" -o -name "*.md" \) \
        -not -path "./python3*" -not -path "./debian-faq/*" -not -path "./debian/*"); do
        case $f in *.gz) zcat "$f" 2>/dev/null;; *) cat "$f";; esac; done \
        | sed 's/<[^>]*>//g' | grep -aE "^\s*[A-Z][^?]{15,120}\?\s*$" | sort -u"""
    lines = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                           errors="replace").stdout.splitlines()
    return [re.sub(r"^[\s\d.)*-]+", "", line).strip() for line in lines]


def build(exclude_questions: set[str]) -> Corpus:
    """The adapter training corpus; ``exclude_questions`` (lower-cased) never enter it."""
    pairs: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    pages: dict[str, dict[str, list[str]]] = {}  # in reading order
    found_questions: set[str] = set()
    for name, text in _pages():
        generated = name.startswith("gcloud")
        if not generated:
            for lines in text.values():
                found_questions.update(q.strip() for q in _QUESTION.findall(" ".join(lines)))
        description = " ".join(text.get("NAME", []))
        if " - " not in description:
            continue
        query = description.split(" - ", 1)[1].strip()
        body = " ".join(text.get("DESCRIPTION", [])).split()
        if len(body) < 40 or len(query.split()) < 3:
            continue
        passage = " ".join(body[:PASSAGE_WORDS])
        if (query.lower(), passage[:200]) in seen:
            continue
        seen.add((query.lower(), passage[:200]))
        pairs.append((name, query, passage))
        if not generated:
            pages[name] = text
    rng = random.Random(0)
    machine = [p for p in pairs if p[0].startswith("gcloud")]
    written = [p for p in pairs if not p[0].startswith("gcloud")]
    rng.shuffle(machine)
    rng.shuffle(written)
    chosen = written + machine[:GENERATED_CAP]
    rng.shuffle(chosen)
    chosen = chosen[:MAX_PAIRS]
    names = {p[0] for p in chosen}
    extra: list[str] = []
    for name, text in pages.items():
        if name not in names:
            continue
        body = " ".join(text.get("DESCRIPTION", [])).split()
        if len(body) >= PASSAGE_WORDS + 60:
            extra.append(" ".join(body[PASSAGE_WORDS : 2 * PASSAGE_WORDS]))
        for section in ("NOTES", "EXAMPLES", "BUGS", "OVERVIEW"):
            words = " ".join(text.get(section, [])).split()
            if len(words) >= 60:
                extra.append(" ".join(words[:PASSAGE_WORDS]))
    random.Random(0).shuffle(extra)
    asked = [q for q in found_questions if _ASKS.match(q) and len(q.split()) >= 4]
    questions = sorted({q for q in set(asked) | set(_doc_questions())
                        if q.lower().strip() not in exclude_questions})
    return Corpus(
        queries=[p[1] for p in chosen] + questions,
        passages=[p[2] for p in chosen] + extra[:MAX_EXTRA_PASSAGES],
    )
