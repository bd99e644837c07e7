"""Comments, docstrings, configs and docs cite only what a clone of the repository contains.

A maintainer who clones the repository cannot follow a citation of a shared design note (``REFERENCE.md``,
``DESIGN.md``), of a numbered issue or of a numbered seed file: citations name the repository's own docs
(``docs/methods.md``, ``docs/architecture.md``, ...) by section, or the paper. And a citation of a docs page
or of one of its sections must point at something that exists.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = "tests/test_docs.py"

#: A citation nobody with only the repository can follow.
OUTSIDE_CITATION = re.compile(r"REFERENCE\.md|DESIGN\.md|\bissues?\s+#?\d+|\bseeds?\s+00\d", re.IGNORECASE)

#: ``docs/<page>.md`` as a repository path (not ``foo/docs/x.md``, not a URL path segment).
DOC_PATH = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)\b")

#: ``docs/methods.md, "A", "B" and "C"`` / ``docs/architecture.md ("A")``, with optional Markdown backticks.
SECTION_CITATION = re.compile(
    r'docs/(methods|architecture)\.md`?(?:,|:)?\s*\(?\s*((?:"[^"]+"(?:\s*(?:,|;|and)\s*(?="))?)+)'
)


@cache
def tracked_text_files() -> dict[str, str]:
    """Every tracked file that is UTF-8 text, by repository-relative path (binary files are skipped)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, timeout=60
    ).stdout.decode()
    texts: dict[str, str] = {}
    for rel in filter(None, out.split("\0")):
        path = ROOT / rel
        if rel == THIS or not path.is_file():
            continue
        try:
            texts[rel] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def outside_citations(text: str) -> list[str]:
    return [f"{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in OUTSIDE_CITATION.finditer(text)]


def headings(page: str) -> set[str]:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def joined(text: str) -> str:
    """The text with line breaks (and a comment's leading ``#`` / ``#:``) folded into single spaces, so a
    citation wrapped over two lines reads as one."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#:?[ \t]*)?", " ", text)


def test_the_patterns_catch_what_they_name() -> None:
    caught = [
        'as REFERENCE.md asks', '(DESIGN.md, "Audit")', '(issue 7, "Container")', "Issue 6's evidence",
        "see issue #4", "(seed 001)", "Seed 000 (Watson et al.)",
    ]
    for text in caught:
        assert outside_citations(text), text
    for text in ["tissue 5", "seed: 0", "seed 0", "derive_seed(seed, 1)", "the seed papers", "docs/x.md"]:
        assert not outside_citations(text), text
    wrapped = 'x (docs/methods.md, "Sanity\n    checks" and "Gaze metrics"): y'
    found = SECTION_CITATION.findall(joined(wrapped))
    assert found == [("methods", '"Sanity checks" and "Gaze metrics"')]


def test_no_file_cites_an_outside_document() -> None:
    offenders = {
        rel: hits
        for rel, text in tracked_text_files().items()
        if (hits := outside_citations(text))
    }
    assert not offenders, (
        "cite docs/methods.md, docs/architecture.md, ... by section, or the paper, instead of shared notes, "
        f"issue or seed numbers: {offenders}"
    )


def test_cited_docs_pages_exist() -> None:
    missing = {
        f"{rel}: docs/{page}"
        for rel, text in tracked_text_files().items()
        for page in DOC_PATH.findall(text)
        if not (ROOT / "docs" / page).is_file()
    }
    assert not missing, f"citations of docs pages that do not exist: {sorted(missing)}"


def test_cited_sections_exist() -> None:
    sections = {page: headings(f"{page}.md") for page in ("methods", "architecture")}
    cited = 0
    missing = set()
    for rel, text in tracked_text_files().items():
        for page, names in SECTION_CITATION.findall(joined(text)):
            for name in re.findall(r'"([^"]+)"', names):
                cited += 1
                if name not in sections[page]:
                    missing.add(f'{rel}: docs/{page}.md, "{name}"')
    assert cited > 0, "no section citation found: the pattern no longer matches how the code cites"
    assert not missing, f"cited sections that docs/methods.md / docs/architecture.md lack: {sorted(missing)}"
