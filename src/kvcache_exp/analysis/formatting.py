"""Numbers as the summary and the verdicts print them: a unit, an interval, or n/a."""

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
