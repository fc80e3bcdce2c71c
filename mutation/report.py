"""The report of ``make mutation``: kill rate per module, the survivors, and the
equivalent mutants, from the results mutmut left in ``mutants/``.

mutmut (pinned in pyproject.toml's ``mutation`` extra, configured in its
``[tool.mutmut]``) mutates the core modules and runs each mutant against the tests
that call the mutated function. Its own summary counts every mutant alike; this report
counts per module, sets aside the mutants that cannot change behaviour (named with a
reason in ``mutation/equivalent.toml``), and lists each survivor with its one-line
change, so that a survivor is either killed by a new test or explained there.

An equivalent mutant is matched by its function and its changed line (``was`` and
``now``), not by mutmut's number, which shifts whenever the function changes; an entry
that no longer matches any mutant is reported as stale.

Run from the repository root after ``mutmut run``: ``python mutation/report.py``
(``--min 90`` exits 1 when the overall kill rate is below 90%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

EQUIVALENT = Path(__file__).with_name("equivalent.toml")
#: A mutant whose tests failed, ran past mutmut's CPU limit, or crashed was detected.
CAUGHT = {"killed", "timeout", "segfault"}
#: Not run yet (an interrupted run): outside the rate, counted apart.
UNRUN = "not checked"
_NUMBER = re.compile(r"__mutmut_\d+$")


@dataclass(frozen=True)
class Mutant:
    name: str  # e.g. kvcache_exp.measure.checks.x_check_trial__mutmut_12
    module: str  # e.g. measure/checks.py
    status: str
    was: str  # the original line (stripped), '' when the mutant only adds one
    now: str  # the mutated line (stripped), '' when the mutant only removes one

    @property
    def function(self) -> str:
        return _NUMBER.sub("", self.name)


def _changed_lines(diff: str) -> tuple[str, str]:
    """The first removed and the first added line of a unified diff, stripped."""
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    was = next((line[1:].strip() for line in body if line.startswith("-")), "")
    now = next((line[1:].strip() for line in body if line.startswith("+")), "")
    return was, now


def read_mutants() -> list[Mutant]:
    """Every mutant of the configured modules with its status and changed line."""
    found = []
    for path in walk_mutatable_files():
        meta = Path("mutants") / (str(path) + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(path.relative_to("src/kvcache_exp"))
        for name, code in codes.items():
            status = status_by_exit_code[code]
            was, now = ("", "")
            if status not in CAUGHT and status != UNRUN:
                was, now = _changed_lines(get_diff_for_mutant(name, path=path))
            found.append(Mutant(name, module, status, was, now))
    return found


def read_equivalent() -> list[dict[str, str]]:
    """The named equivalent mutants: function, was, now, why."""
    text = EQUIVALENT.read_text() if EQUIVALENT.exists() else ""
    entries = tomllib.loads(text).get("equivalent", [])
    for entry in entries:
        missing = {"function", "was", "now", "why"} - set(entry)
        if missing:
            raise SystemExit(f"{EQUIVALENT}: an entry lacks {sorted(missing)}: {entry}")
    return entries


def _key(function: str, was: str, now: str) -> tuple[str, str, str]:
    return function, was.strip(), now.strip()


_UPPER_FIXED_POINT = re.compile(r"""(['"])([+ -]?\d*\.\d+)F\1""")
_FORMATTERS = re.compile(r"\b_?(num|ci|pct|pct_ci|with_ci)\(")


def fixed_point_case(was: str, now: str) -> bool:
    """Whether the mutant only turns a fixed-point format given to the formatting helpers
    (``num``, ``ci``, ``pct``, ``pct_ci``, ``with_ci``) into upper case: ``'.1f'`` into
    ``'.1F'``. Those helpers format finite numbers only (n/a otherwise), and for a finite
    number ``f`` and ``F`` print the same characters (they differ in inf and nan alone)."""
    lowered = _UPPER_FIXED_POINT.sub(r"\1\2f\1", now)
    return now != was and lowered == was and _FORMATTERS.search(was) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=None, help="least overall kill rate, in %%")
    args = parser.parse_args(argv)

    mutants = read_mutants()
    if not mutants:
        print("no mutation results in mutants/: run `make mutation` (or `mutmut run`) first")
        return 1
    equivalent = {_key(e["function"], e["was"], e["now"]): e["why"] for e in read_equivalent()}
    used: set[tuple[str, str, str]] = set()
    by_rule = 0  # equivalent by fixed_point_case
    rows, survivors = [], []
    for module in sorted({m.module for m in mutants}):
        counts: Counter[str] = Counter()
        for m in (m for m in mutants if m.module == module):
            key = _key(m.function, m.was, m.now)
            if m.status in CAUGHT:
                counts["caught"] += 1
                counts["timeout"] += m.status == "timeout"
            elif m.status == UNRUN:
                counts["unrun"] += 1
            elif key in equivalent:
                counts["equivalent"] += 1
                used.add(key)
            elif fixed_point_case(m.was, m.now):
                counts["equivalent"] += 1
                by_rule += 1
            else:
                counts[m.status] += 1
                survivors.append(m)
        rows.append((module, counts))

    print(f"Mutation testing of the core, {datetime.date.today().isoformat()} (mutmut)")
    print()
    header = (
        f"{'module':28} {'mutants':>7} {'unrun':>5} {'equiv':>5} {'caught':>6} {'(time':>5} "
        f"{'out)':<4} {'left':>5} {'kill rate':>9}"
    )
    print(header)
    print("-" * len(header))
    total: Counter[str] = Counter()
    for module, counts in rows:
        total.update(counts)
        print(_row(module, counts))
    print("-" * len(header))
    print(_row("all", total))
    print()
    left = len(survivors)
    print(
        "caught: the tests failed, or ran past mutmut's CPU limit (timeout: the mutant loops),"
        " or crashed"
    )
    print(
        f"equivalent: named in {EQUIVALENT.name}, or ({by_rule} here) a fixed-point format "
        "in upper case ('.1f' to '.1F') given to the formatting helpers, which print "
        "finite numbers only: the same text"
    )
    if total["unrun"]:
        print(f"{total['unrun']} mutants were not run (an interrupted run): outside the rates")
    print(f"{left} mutants left (survived, no tests, suspicious):")
    for m in survivors:
        print(f"  [{m.status}] {m.name}")
        print(f"      - {m.was}")
        print(f"      + {m.now}")
    stale = [k for k in equivalent if k not in used]
    if stale:
        print()
        print(f"{len(stale)} entries of {EQUIVALENT.name} match no surviving mutant (stale):")
        for function, was, now in stale:
            print(f"  {function}: {was!r} -> {now!r}")
    rate = _rate(total)
    if args.min is not None and rate < args.min:
        print(f"\nthe kill rate {rate:.1f}% is below {args.min:.0f}%")
        return 1
    return 0


def _rate(counts: Counter[str]) -> float:
    """Caught mutants over the mutants run, less the equivalent ones, in %."""
    judged = sum(counts.values()) - counts["timeout"] - counts["equivalent"] - counts["unrun"]
    return 100.0 * counts["caught"] / judged if judged else 100.0


def _row(module: str, counts: Counter[str]) -> str:
    n = sum(counts.values()) - counts["timeout"]
    left = n - counts["caught"] - counts["equivalent"] - counts["unrun"]
    return (
        f"{module:28} {n:7d} {counts['unrun']:5d} {counts['equivalent']:5d} "
        f"{counts['caught']:6d} {counts['timeout']:5d}      {left:5d} {_rate(counts):8.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
