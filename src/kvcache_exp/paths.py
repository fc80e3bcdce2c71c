"""Every file the workflow writes, named in one place.

The seed fixed some of these names (``results/results_phase3b_a{A}_b{B}.csv``,
``prompts/prompts_phase3b_a{A}_b{B}.csv``, ``plots/experiment1_all_configs_phase3b.png``);
tools that read the seed's outputs keep working only if they never drift. The rules, the
``rule all`` target list, the command line and the tests all ask this module, so that a
name is spelled once.

A *configuration* is one (A, B) point; its *tag* is the seed's ``a{A}_b{B}``, which every
per-configuration file name carries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_TAG = re.compile(r"a(\d+)_b(\d+)")

#: The tag of a configuration as Snakemake wildcards (the rules' patterns use it).
TAG_PATTERN = "a{size_a}_b{size_b}"
#: A replay job's set, policy and cache behaviour as Snakemake wildcards.
REPLAY_PATTERN = ("{set}", "{policy}", "{cache}")


def tag(size_a: int, size_b: int) -> str:
    """The seed's file-name tag of a configuration, e.g. ``a512_b256``."""
    return f"a{int(size_a)}_b{int(size_b)}"


def sizes(tag: str) -> tuple[int, int]:
    """(size_a, size_b) of a tag such as ``a512_b256``."""
    match = _TAG.fullmatch(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a configuration tag such as a512_b256")
    return int(match.group(1)), int(match.group(2))


def title(size_a: int, size_b: int) -> str:
    """A configuration for people, e.g. ``A=512, B=256`` (report labels and titles)."""
    return f"A={int(size_a)}, B={int(size_b)}"


@dataclass(frozen=True)
class ConfigurationFiles:
    """What one experiment job writes for one configuration."""

    results: Path
    prompts: Path
    record: Path
    cures: Path

    def __iter__(self) -> Iterator[Path]:
        """results, prompts, record, cures: so that ``a, b, c, d = files`` reads them."""
        return iter((self.results, self.prompts, self.record, self.cures))

    def aside(self, folder: str) -> ConfigurationFiles:
        """The same files in a side folder beside the results (``unverified`` when trials
        failed verification, ``incomplete`` when the engine failed mid-experiment), so
        that nothing measured is lost and nothing unproven takes the final names."""
        side = self.results.parent / folder
        return ConfigurationFiles(
            *(side / p.name for p in (self.results, self.prompts, self.record, self.cures))
        )


@dataclass(frozen=True)
class Layout:
    """Where outputs go: the three top-level folders of the seed, and everything in them.

    The workflow uses the default folders; the command line lets a user move them
    (``--results-dir`` and friends) and gets the same file names inside.
    """

    results: str = "results"
    prompts: str = "prompts"
    plots: str = "plots"

    # -- per configuration (``tag`` may be TAG_PATTERN, for the rules) ------------------

    def results_csv(self, tag: str) -> str:
        return f"{self.results}/results_phase3b_{tag}.csv"

    def prompts_csv(self, tag: str) -> str:
        return f"{self.prompts}/prompts_phase3b_{tag}.csv"

    def cures_csv(self, tag: str) -> str:
        return f"{self.results}/cures_phase3b_{tag}.csv"

    def record_json(self, tag: str) -> str:
        """The experiment job's provenance record, beside its CSVs."""
        return f"{self.results}/run_phase3b_{tag}.json"

    def configuration(self, tag: str) -> ConfigurationFiles:
        """The four files of one configuration's experiment job."""
        return ConfigurationFiles(
            results=Path(self.results_csv(tag)),
            prompts=Path(self.prompts_csv(tag)),
            record=Path(self.record_json(tag)),
            cures=Path(self.cures_csv(tag)),
        )

    def prompts_page(self, tag: str) -> str:
        """The report's page of one configuration's prompts."""
        return f"{self.report}/prompts_{tag}.html"

    # -- the whole run --------------------------------------------------------------

    @property
    def summary_csv(self) -> str:
        return f"{self.results}/summary.csv"

    @property
    def summary_md(self) -> str:
        return f"{self.results}/summary.md"

    @property
    def cures_summary_csv(self) -> str:
        return f"{self.results}/cures_summary.csv"

    @property
    def run_metadata(self) -> str:
        return f"{self.results}/run_metadata.json"

    @property
    def main_plot(self) -> str:
        """The seed's figure."""
        return f"{self.plots}/experiment1_all_configs_phase3b.png"

    @property
    def tokens_plot(self) -> str:
        return f"{self.plots}/ttft_vs_tokens_recomputed.png"

    @property
    def throughput_plot(self) -> str:
        return f"{self.plots}/throughput.png"

    @property
    def cures_plot(self) -> str:
        return f"{self.plots}/cures_cost_quality.png"

    @property
    def plots_all(self) -> list[str]:
        """Every figure, in the order the README's plots table lists them."""
        return [self.main_plot, self.tokens_plot, self.throughput_plot, self.cures_plot]

    @property
    def report(self) -> str:
        """The folder of the report's HTML pages."""
        return f"{self.results}/report"

    @property
    def summary_page(self) -> str:
        return f"{self.report}/summary.html"

    @property
    def run_page(self) -> str:
        return f"{self.report}/run.html"

    @property
    def protocol_page(self) -> str:
        """The report's Method page: the protocol, with the run's settings."""
        return f"{self.report}/protocol.html"

    # -- the conversation replay (``job_set`` etc. may be REPLAY_PATTERN's wildcards) ---

    @property
    def conversations(self) -> str:
        """The folder of the replay's CSVs, one subfolder per conversation set."""
        return f"{self.results}/conversations"

    def conversation_csv(self, job_set: str, policy: str, cache: str) -> str:
        """One replay job's turns: a set (or shard), a policy, a cache behaviour."""
        return f"{self.conversations}/{job_set}/{policy}-{cache}.csv"

    def conversation_record(self, job_set: str, policy: str, cache: str) -> str:
        """The replay job's provenance record, beside its CSV."""
        return f"{self.conversations}/{job_set}/{policy}-{cache}.json"

    @property
    def conversations_summary_csv(self) -> str:
        return f"{self.conversations}/summary.csv"

    @property
    def conversations_quality_csv(self) -> str:
        return f"{self.conversations}/quality.csv"

    @property
    def conversations_summary_md(self) -> str:
        return f"{self.conversations}/summary.md"

    @property
    def conversations_page(self) -> str:
        """The report's page of the replay's summary."""
        return f"{self.report}/conversations.html"

    @property
    def conversations_ttft_plot(self) -> str:
        return f"{self.plots}/conversations_ttft.png"

    @property
    def conversations_tokens_plot(self) -> str:
        return f"{self.plots}/conversations_tokens.png"

    @property
    def conversations_quality_plot(self) -> str:
        return f"{self.plots}/conversations_quality.png"

    @property
    def conversation_plots(self) -> list[str]:
        """The replay's figures, in the order plots/README.md lists them."""
        return [
            self.conversations_ttft_plot,
            self.conversations_tokens_plot,
            self.conversations_quality_plot,
        ]

    def conversation_summaries(self) -> list[str]:
        """What the replay's summary writes."""
        return [
            self.conversations_summary_csv,
            self.conversations_quality_csv,
            self.conversations_summary_md,
            self.conversations_page,
        ]


#: The workflow's layout.
DEFAULT = Layout()
