"""The user docs (README.md, docs/) stand alone: no pointer to documents outside the repository,
and every relative link reaches a file that is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: How the team's own notes (not shipped with the repository) would be cited.
OUTSIDE = re.compile(r"\.\./shared|reference §|reference-behaviour|deviations(\.md| #)|reliability-plan")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_a_user_doc_cites_nothing_outside_the_repository(doc):
    found = [f"{doc.name}:{number}: {line.strip()[:120]}" for number, line in enumerate(doc.read_text().splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(doc):
    missing = [target for target, _anchor in LINK.findall(doc.read_text())
               if not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"
