"""House style, checked like any other behaviour: ruff, snakefmt and Snakemake's linter,
and the rules' code inputs against what their scripts import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

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
    """The package's source files that ``path`` imports, directly or through others
    (an independent walk, to check the package's own)."""
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


def _rules() -> dict[str, str]:
    """{rule name: its text} of every rule in workflow/rules/*.smk."""
    found = {}
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for match in re.finditer(r"(?ms)^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text()):
            found[match.group(1)] = match.group(2)
    return found


SCRIPTED = {name: body for name, body in _rules().items() if "script:" in body}


@pytest.mark.parametrize("rule", sorted(SCRIPTED))
def test_every_rule_takes_the_code_its_script_runs_as_input(rule: str) -> None:
    """Each scripted rule's code input is computed from its own script, so that editing
    any module the script runs reruns the rule."""
    body = SCRIPTED[rule]
    unpacked = re.search(r"unpack\((\w+)\)", body)
    if unpacked:  # the inputs come from a function of common.smk
        common = (REPO / "workflow/rules/common.smk").read_text()
        body += re.search(rf"(?ms)^def {unpacked.group(1)}\(.*?(?=^\S)", common).group(0)
    script = re.search(r'script:\s*"\.\./scripts/([\w.]+)"', body)
    code = re.search(r'code(?:=|": )code\("([\w.]+)"\)', body)
    assert script, f"rule {rule}: no script"
    assert code, f"rule {rule}: no code=code(...) input"
    assert code.group(1) == script.group(1), f"rule {rule} takes another script's code"


@pytest.mark.parametrize("script", sorted((REPO / "workflow/scripts").glob("[!a]*.py")))
def test_the_code_inputs_cover_every_module_a_script_imports(script: Path) -> None:
    """The package's closure of a script's imports (the rules' code inputs) holds every
    module an independent walk of the imports finds, and the script's adapter."""
    from kvcache_exp.provenance import imported_files

    found = set(imported_files(script))
    missing = _package_imports(script, set()) - found
    assert not missing, sorted(str(p.relative_to(REPO)) for p in missing)
    assert REPO / "workflow/scripts/adapter.py" in found


#: A module longer than this says at its top why it stays one module.
MODULE_LINES = 400


@pytest.mark.parametrize(
    "module", sorted((REPO / "src/kvcache_exp").rglob("*.py")), ids=lambda p: p.name
)
def test_a_long_module_says_why_it_is_one(module: Path) -> None:
    """Rooms hold one concern: a module over MODULE_LINES lines must give, in its
    docstring, its length and the reason it is not split."""
    lines = module.read_text().count("\n")
    if lines <= MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(module.read_text())) or ""
    assert re.search(r"\b\d+\s+lines\b", doc), (
        f"{module.relative_to(REPO)} has {lines} lines and its docstring does not say why"
    )
