"""House style, checked like any other behaviour: ruff, snakefmt and Snakemake's linter,
and the rules' code inputs against what their scripts import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "cmd",
    [
        [str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "workflow/scripts"],
        [str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks", "workflow/scripts"],
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        [sys.executable, "-m", "snakemake", "--lint"],
    ],
    ids=["ruff", "ruff-format", "snakefmt", "snakemake-lint"],
)
def test_clean(cmd):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    if "--lint" in cmd:
        assert "Lints for" not in out, out


def _package_imports(path: Path, seen: set[Path]) -> set[Path]:
    """The package's source files that ``path`` imports, directly or through others."""
    package = REPO / "src"
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kvcache_exp"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("kvcache_exp")]
        for name in names:
            base = package / name.replace(".", "/")
            for found in (base.with_suffix(".py"), base / "__init__.py"):
                if found.is_file() and found not in seen:
                    seen.add(found)
                    _package_imports(found, seen)
    return seen


def _has_code(path: Path) -> bool:
    """Whether a module holds more than its docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _rule_code() -> dict[str, set[Path]]:
    """common.smk's code() for each kind, run as the workflow runs it."""
    text = (REPO / "workflow/rules/common.smk").read_text()
    block = text[text.index("PACKAGE = ") : text.index("def experiment_inputs")]
    namespace = {"Path": Path, "workflow": SimpleNamespace(basedir=str(REPO))}
    exec(block, namespace)
    return {kind: {Path(p) for p in namespace["code"](kind)} for kind in namespace["CODE"]}


@pytest.mark.parametrize(
    ("kind", "script"),
    [
        ("experiment", "run_experiment.py"),
        ("summary", "summarize.py"),
        ("plot", "plot_results.py"),
        ("plot_cures", "plot_cures.py"),
    ],
)
def test_rules_rerun_when_any_code_they_run_changes(kind: str, script: str) -> None:
    """Every package module a rule's script imports is among the rule's code inputs, so
    that editing it reruns the rule (the subpackages' docstring-only __init__ files aside)."""
    needed = _package_imports(REPO / "workflow/scripts" / script, set())
    needed = {p for p in needed if p.name != "__init__.py" or _has_code(p)}
    missing = needed - _rule_code()[kind]
    assert not missing, sorted(str(p.relative_to(REPO)) for p in missing)
