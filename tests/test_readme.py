"""The docs say what the code does: the configuration table, the layout, the figures, and
links that lead somewhere.

The README stays short (what the project is, how to run it, what it writes) and links
to the rest; these tests check what those pages claim against the schema, the tree and
the rules, and that every relative link, anchors included, still resolves after a page
or a heading moves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_copy import REPO

from kvcache_exp.config import schema

#: The pages a reader reaches from the README; their relative links are checked.
DOCS = sorted(
    [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "benchmarks/README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / d / "README.md" for d in ("plots", "results", "prompts")),
    ]
)
#: Settings the table describes in words rather than by their YAML value.
IN_WORDS = {"experiments", "models", "conversations"}
#: A newcomer reads the README first; the rest belongs in the pages it links to.
README_MAX_BYTES = 12 * 1024


def _section(path: Path, title: str) -> str:
    text = path.read_text()
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text)
    assert match, f"{path.relative_to(REPO)} has no '## {title}' section"
    return match.group(1)


def _config_rows() -> dict[str, str]:
    """{key: default cell} of the settings table (one key per row)."""
    rows = {}
    for line in _section(REPO / "docs/configuration.md", "Settings").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and (m := re.fullmatch(r"`(\w+)`", cells[0])):
            rows[m.group(1)] = cells[1]
    return rows


def test_the_configuration_table_lists_every_setting_with_the_schemas_default():
    rows = _config_rows()
    properties = schema.load_schema()["properties"]
    assert sorted(rows) == sorted(properties), "docs table and schema list different keys"
    for key, cell in rows.items():
        if key in IN_WORDS:
            continue
        shown = yaml.safe_load(cell.strip("`")) if cell.startswith("`") else cell
        assert shown == properties[key].get("default"), f"{key}: docs/configuration.md says {cell}"


def test_the_layout_section_names_paths_that_exist():
    block = re.search(r"```\n(.*?)```", _section(REPO / "CONTRIBUTING.md", "Layout"), re.S)
    assert block
    for line in block.group(1).splitlines():
        path = line.split()[0] if line.strip() else ""
        if path and not path.startswith("#"):
            for part in path.split(","):
                if part:
                    assert list(REPO.glob(part.rstrip("/"))), f"Layout names {part}, not found"


def test_every_figure_the_workflow_writes_is_described():
    from kvcache_exp.paths import DEFAULT

    written = {path.split("/")[-1] for path in [*DEFAULT.plots_all, *DEFAULT.conversation_plots]}
    assert written
    described = set(re.findall(r"`([\w.]+\.png)`", (REPO / "plots/README.md").read_text()))
    assert written == described


def test_the_readme_stays_short():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/"


# --- Links ---------------------------------------------------------------------------


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text``."""
    return re.findall(r"\]\(([^)\s]+)\)", _prose(text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text``: lower case, punctuation dropped,
    spaces made hyphens, and -1, -2, ... after repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", re.sub(r"(?ms)^```.*?^```", "", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_anchors_follow_githubs_rule():
    text = "# The method\n## Reproducing the seed exactly (GPT-2)\n## Notes\n## Notes\n"
    assert anchors(text) == {
        "the-method",
        "reproducing-the-seed-exactly-gpt-2",
        "notes",
        "notes-1",
    }


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    assert page.is_file(), f"{page.relative_to(REPO)} is missing"
    broken = []
    for link in _links(page.read_text()):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            broken.append(f"{link}: no heading with that anchor in {target.name}")
    assert not broken, broken


def test_the_readme_links_every_page_of_the_docs():
    linked = {
        (REPO / link.partition("#")[0]).resolve()
        for link in _links((REPO / "README.md").read_text())
    }
    pages = {p.resolve() for p in DOCS if p.name != "README.md" or p.parent != REPO}
    assert pages <= linked, sorted(str(p.relative_to(REPO)) for p in pages - linked)
