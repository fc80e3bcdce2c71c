"""One set of versions: every pin in envs/*.yaml is the pin pyproject.toml holds.

The rules' conda environments and the project's own environment (``make setup``) must
measure with the same libraries, or a result would depend on how it was run. The pins
live in pyproject.toml; the environments repeat the ones they need, and this test keeps
them equal.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+?)\s*==\s*([^\s;]+)\s*$")


def _name(requirement: str) -> str:
    """A distribution's normalised name (PEP 503), extras dropped."""
    return re.sub(r"[-_.]+", "-", requirement.split("[")[0]).lower()


def project_pins() -> dict[str, str]:
    """Every ``name==version`` of pyproject.toml's dependencies and optional extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        assert match, f"pyproject.toml: {requirement!r} is not pinned with =="
        pins[_name(match.group(1))] = match.group(2)
    return pins


def env_pins(path: Path) -> dict[str, str]:
    """The pip pins of a conda environment file."""
    pins = {}
    for dependency in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(dependency, dict):
            for requirement in dependency.get("pip", []):
                match = PIN.match(requirement)
                assert match, f"{path.name}: {requirement!r} is not pinned with =="
                pins[_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_environment_pins_what_pyproject_pins(env: Path) -> None:
    project = project_pins()
    pins = env_pins(env)
    assert pins, f"{env.name} pins nothing"
    unknown = sorted(set(pins) - set(project))
    assert not unknown, f"{env.name} pins {unknown}, which pyproject.toml does not"
    differ = {n: (v, project[n]) for n, v in pins.items() if project[n] != v}
    assert not differ, f"{env.name} (env, pyproject): {differ}"
