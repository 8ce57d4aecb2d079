"""The docs against the code: the settings page against the settings table, links that resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from taskapp.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)

_TABLE = re.compile(r"<!-- settings -->\n(.*?)<!-- /settings -->", re.S)
_ROW = re.compile(r"^\|\s*`(?P<name>[A-Z0-9_]+)`\s*\|(?P<default>[^|]*)\|(?P<meaning>.*)\|\s*$")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def settings_rows() -> dict[str, tuple[str, str]]:
    """The page's settings table: name -> (default cell, meaning cell)."""
    block = _TABLE.search(SETTINGS_PAGE.read_text())
    assert block, "docs/settings.md lost its <!-- settings --> table"
    rows: dict[str, tuple[str, str]] = {}
    for line in block.group(1).splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        match = _ROW.match(line)
        if match is None:
            if line.startswith("| name "):
                continue  # the header
            raise AssertionError(f"docs/settings.md: a row without a `NAME`: {line}")
        name = match["name"]
        assert name not in rows, f"docs/settings.md: {name} has two rows"
        rows[name] = (match["default"].strip(), match["meaning"].strip())
    return rows


def documented_default(cell: str) -> tuple[bool, Any]:
    """(is unset, raw value) of a default cell: `value`, "empty" or "unset", then any words."""
    code = re.match(r"`([^`]*)`", cell)
    if code:
        return False, code.group(1)
    if cell.startswith("empty"):
        return False, ""
    if cell.startswith("unset"):
        return True, None
    raise AssertionError(f"a default must start with `value`, empty or unset, not {cell!r}")


def test_every_setting_in_code_has_a_row_on_the_settings_page():
    missing = sorted(set(SETTINGS) - set(settings_rows()))
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def test_every_row_of_the_settings_page_names_a_setting_in_code():
    unknown = sorted(set(settings_rows()) - set(SETTINGS))
    assert not unknown, f"docs/settings.md rows that name no setting in SETTINGS: {unknown}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_settings_page_gives_each_settings_default_and_meaning(name):
    rows = settings_rows()
    if name not in rows:
        pytest.fail(f"{name} has no row in docs/settings.md")
    cell, meaning = rows[name]
    assert meaning, f"{name} has no meaning in docs/settings.md"
    default, convert = SETTINGS[name]
    unset, raw = documented_default(cell)
    if default is None:
        assert unset, f"{name}: the code's default is unset, the page says {cell!r}"
        return
    assert not unset, f"{name}: the page says unset, the code's default is {default!r}"
    assert convert(raw) == default, f"{name}: the page says {cell!r}, the code {default!r}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation gone, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _CODE_BLOCK.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of a page's Markdown links outside code blocks, other than URLs."""
    text = _CODE_BLOCK.sub("", page.read_text())
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_docs_points_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT)})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("What does not hold", "what-does-not-hold"),
        ("The hit path before Flask", "the-hit-path-before-flask"),
        ("Redis data types", "redis-data-types"),
        ("`cache stats` and the CLI", "cache-stats-and-the-cli"),
        ("Tokens and their revocation", "tokens-and-their-revocation"),
        ("FerretDB is a stand-in", "ferretdb-is-a-stand-in"),
    ],
)
def test_anchors_are_made_as_github_makes_them(heading, anchor):
    assert slug(heading) == anchor
