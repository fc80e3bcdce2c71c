"""The README says what the code does: its configuration table, its layout and figures."""

from __future__ import annotations

import re

import yaml
from workflow_copy import REPO

from kvcache_exp.config import schema

README = (REPO / "README.md").read_text()
#: Settings the table describes in words rather than by their YAML value.
IN_WORDS = {"experiments", "models"}


def _section(title: str) -> str:
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _config_rows() -> dict[str, str]:
    """{key: default cell} of the Configuration table (one key per row)."""
    rows = {}
    for line in _section("Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and (m := re.fullmatch(r"`(\w+)`", cells[0])):
            rows[m.group(1)] = cells[1]
    return rows


def test_the_configuration_table_lists_every_setting_with_the_schemas_default():
    rows = _config_rows()
    properties = schema.load_schema()["properties"]
    assert sorted(rows) == sorted(properties), "README table and schema list different keys"
    for key, cell in rows.items():
        if key in IN_WORDS:
            continue
        shown = yaml.safe_load(cell.strip("`")) if cell.startswith("`") else cell
        assert shown == properties[key].get("default"), f"{key}: README says {cell}"


def test_the_layout_section_names_paths_that_exist():
    block = re.search(r"```\n(.*?)```", _section("Layout"), re.S)
    assert block
    for line in block.group(1).splitlines():
        path = line.split()[0] if line.strip() else ""
        if path and not path.startswith("#"):
            for part in path.split(","):
                if part:
                    assert list(REPO.glob(part.rstrip("/"))), f"Layout names {part}, not found"


def test_every_figure_the_workflow_writes_is_described():
    from kvcache_exp.paths import DEFAULT

    written = {path.split("/")[-1] for path in DEFAULT.plots_all}
    assert written
    described = set(re.findall(r"`([\w.]+\.png)`", (REPO / "plots/README.md").read_text()))
    assert written == described
