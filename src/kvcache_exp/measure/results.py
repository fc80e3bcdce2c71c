"""What one configuration's job measured, and where it is written.

Rows are collected as they are measured (:class:`Measured`), so that an engine failing
half-way loses nothing; :class:`Outputs` then writes them to one of three places, and
only there: the final names (every trial verified, or verification not required),
``unverified/`` beside the results (some trials contradict the design and verification
is required: kept, then the run fails), or ``incomplete/`` (the engine failed
mid-experiment). Each write is atomic (:mod:`kvcache_exp.outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kvcache_exp import provenance
from kvcache_exp.columns import (
    CURE_COLUMNS,
    PROMPT_COLUMNS,
    PROMPT_NAMES,
    RESULT_COLUMNS,
)
from kvcache_exp.measure.prompts import PromptSet
from kvcache_exp.outputs import write_csv
from kvcache_exp.paths import ConfigurationFiles

#: The side folders: trials that failed verification, and a run the engine broke off.
UNVERIFIED, INCOMPLETE = "unverified", "incomplete"


@dataclass(frozen=True)
class ExperimentResult:
    """The three tables of one configuration: the seed's results and prompts, and the
    cures (header only when they were not measured)."""

    results: pd.DataFrame
    prompts: pd.DataFrame
    cures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURE_COLUMNS)))

    def unverified(self) -> pd.DataFrame:
        """Every row, seed trial or cure, whose counts contradict the design: condition
        (or cure), trial and the reason."""
        columns = ["condition", "trial", "cache_verified", "cache_note"]
        rows = pd.concat(
            [
                self.results[columns],
                self.cures.rename(columns={"cure": "condition"})[columns],
            ],
            ignore_index=True,
        )
        return rows[~rows["cache_verified"].astype(bool)]


@dataclass
class Measured:
    """The rows measured so far, added to as each trial ends."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    cure_rows: list[dict[str, Any]] = field(default_factory=list)
    #: The first trial's generated text per prompt name, for the prompts CSV.
    samples: dict[str, str] = field(default_factory=dict)
    prompts: PromptSet | None = None

    @property
    def anything(self) -> bool:
        """Whether there is a measurement to keep."""
        return self.prompts is not None and bool(self.rows or self.cure_rows)

    def result(self) -> ExperimentResult:
        """The tables of what was measured, trials in the order they ran."""
        if self.prompts is None:
            raise ValueError("no prompts were built: nothing was measured")
        results = pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS))
        results = results.sort_values(["trial", "order"], kind="stable", ignore_index=True)
        prompt_rows = [
            {
                "prompt_name": name,
                "token_count": len(self.prompts.tokens(name)),
                "prompt_text": self.prompts.text(name),
                "sample_output": self.samples.get(name, ""),
            }
            for name in PROMPT_NAMES
        ]
        return ExperimentResult(
            results=results,
            prompts=pd.DataFrame(prompt_rows, columns=list(PROMPT_COLUMNS)),
            cures=pd.DataFrame(self.cure_rows, columns=list(CURE_COLUMNS)),
        )


@dataclass(frozen=True)
class Outputs:
    """Writes one configuration's tables and its provenance record, to the final names
    or to a side folder beside the results."""

    files: ConfigurationFiles

    def write(
        self, result: ExperimentResult, record: dict[str, Any], aside: str | None = None
    ) -> ConfigurationFiles:
        """Write every file, under the final names or in the side folder ``aside``
        (:data:`UNVERIFIED` or :data:`INCOMPLETE`); return where they went."""
        where = self.files if aside is None else self.files.aside(aside)
        write_csv(result.results, where.results)
        write_csv(result.prompts, where.prompts)
        write_csv(result.cures, where.cures)
        provenance.write_json(where.record, record)
        return where
