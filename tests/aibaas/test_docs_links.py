"""The manual's links resolve: every relative link in README.md and docs/*.md names a file or
folder of the repository, and every #anchor a heading of the page it points to (GitHub's
anchor rules), so a reorganised section cannot leave a dead link behind."""

import re
from pathlib import Path

import pytest

from aibaas.settings.env import BASE_DIR

PAGES = [BASE_DIR / "README.md", *sorted((BASE_DIR / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (word characters, spaces and
    hyphens kept), spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        anchor = github_anchor(heading)
        suffix, candidate = 0, anchor
        while candidate in found:  # GitHub numbers repeated headings: x, x-1, x-2
            suffix += 1
            candidate = f"{anchor}-{suffix}"
        found.add(candidate)
    return found


def links(page: Path) -> list[str]:
    prose = _INLINE_CODE.sub("", _FENCE.sub("", page.read_text()))
    return _LINK.findall(prose)


def test_anchor_rules_match_github():
    assert github_anchor("Operators: `manage.py` commands") == "operators-managepy-commands"
    assert github_anchor("Model servers: vLLM, Ollama, llama.cpp") == (
        "model-servers-vllm-ollama-llamacpp"
    )
    assert github_anchor("Machine API (`/v1`, API key)") == "machine-api-v1-api-key"
    assert github_anchor("Billing (Stripe)") == "billing-stripe"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(BASE_DIR).as_posix())
def test_relative_links_and_anchors_resolve(page):
    found = links(page)
    assert found or page.name != "README.md", "no links found: the pattern is broken"
    broken = []
    for target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and resolved.is_file() and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: " + "; ".join(broken)
