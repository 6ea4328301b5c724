"""The docs: a short README, links that resolve, and a configuration page that is current."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from transcribed import config_docs
from transcribed.config import Settings

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
#: ``[text](target)`` and ``[text]: target``; images too.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)
#: Something that looks like an abbreviated or full commit hash: 7-40 hex digits, with a digit
#: and a letter among them.
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in headings}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [first or second for first, second in LINK.findall(text)]


def test_configuration_page_is_generated_from_the_schema_and_current() -> None:
    page = DOCS / "configuration.md"
    assert page.read_text(encoding="utf-8") == config_docs.render(), (
        "docs/configuration.md is out of date: run `make docs`"
    )


def test_configuration_page_has_every_key() -> None:
    text = config_docs.render()
    for top in msgspec.structs.fields(Settings):
        section = top.type
        if isinstance(section, type) and issubclass(section, msgspec.Struct):
            assert f"## `[{top.name}]`" in text
            for key in msgspec.structs.fields(section):
                assert f"### `{top.name}.{key.name}`" in text
        else:
            assert f"### `{top.name}`" in text


def test_a_key_without_a_description_stops_the_generator() -> None:
    class Bare(msgspec.Struct):
        size: int = 1

    info = msgspec.inspect.type_info(Bare)
    assert isinstance(info, msgspec.inspect.StructType)
    with pytest.raises(ValueError, match=r"bare\.size has no description"):
        list(config_docs._key(info.fields[0], "bare", int))


def test_readme_is_a_front_door_of_at_most_10_kb() -> None:
    size = len(README.read_bytes())
    assert size <= 10 * 1024, f"README.md is {size} bytes; move the detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    """Each relative link resolves, and a link to a heading finds that heading."""
    assert page.is_file()
    missing = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a URL (https:, mailto:)
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files or headings: {missing}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.name)
def test_docs_describe_the_software_not_its_history(page: Path) -> None:
    """Commit hashes belong in git and the changelog, not in the docs."""
    found = COMMIT.findall(page.read_text(encoding="utf-8"))
    assert not found, f"{page.relative_to(ROOT)} names commits: {found}"
