"""Numbers as the summary and the verdicts print them: a unit, an interval, or n/a.

Shared by the verdicts on the claims, the cures' verdicts and the report, so that a
number reads the same wherever it appears.
"""

from __future__ import annotations

import math


def num(value: float | None, fmt: str, unit: str = "") -> str:
    """A number with its unit, or n/a when it is not defined."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):{fmt}}{unit}"


def ci(low: float | None, high: float | None, fmt: str, unit: str = "") -> str:
    """A confidence interval as [low, high], or n/a when it is not defined."""
    if low is None or high is None:
        return "n/a"
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return "n/a"
    return f"[{float(low):{fmt}}{unit}, {float(high):{fmt}}{unit}]"


def with_ci(estimate: float, low: float, high: float, fmt: str, unit: str = "") -> str:
    """An estimate followed by its interval, e.g. ``28.1 [27.9, 28.4]``."""
    text = num(estimate, fmt, unit)
    return text if text == "n/a" else f"{text} {ci(low, high, fmt, unit)}"


def finite(*values: float) -> bool:
    """Whether every value is a finite number: a verdict needs all of its numbers."""
    return all(math.isfinite(float(v)) for v in values)


def pct(share: float, fmt: str) -> str:
    """A share as a percentage, e.g. ``pct(0.123, "+.1f")`` is ``+12.3%``; n/a when undefined."""
    return num(share * 100, fmt, "%")


def pct_ci(low: float, high: float, fmt: str) -> str:
    """The interval of a share as percentages, e.g. ``[+10.1%, +14.0%]``; n/a when undefined."""
    return ci(low * 100, high * 100, fmt, "%")
