"""mutation/report.py's rule for equivalent mutants: it decides which survivors leave the
published kill rate, so it must take only what cannot change the text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("mutmut", reason="mutmut comes with the mutation extra (make setup)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mutation"))
from report import fixed_point_case  # noqa: E402

LINE = """f"{num(r['ttft_ms'], '.1f', ' ms')}, {_pct_with_ci(r, 'share_of_miss')} of the \""""


def test_a_fixed_point_format_in_upper_case_given_to_a_formatter_is_equivalent():
    assert fixed_point_case(LINE, LINE.replace("'.1f'", "'.1F'"))
    assert fixed_point_case('return pct(value, "+.1f")', 'return pct(value, "+.1F")')
    assert fixed_point_case("return pct_ci(low, high, '.0f')", "return pct_ci(low, high, '.0F')")


def test_everything_else_is_not():
    # 'g' and 'G' differ as soon as a number needs an exponent
    assert not fixed_point_case('return pct(value, ".3g")', 'return pct(value, ".3G")')
    # a format not given to the helpers, which could meet inf or nan
    assert not fixed_point_case('x = f"{v:.1f}" + ".1f"', 'x = f"{v:.1f}" + ".1F"')
    # another change beside it, or no change at all
    assert not fixed_point_case(LINE, LINE.replace("'.1f'", "'.1F'").replace("ms", "s"))
    assert not fixed_point_case(LINE, LINE)
