"""Plain command lines, without Snakemake, as in the seed::

    kvcache-exp --size-a 512 --size-b 256     # one configuration -> the two CSVs
    kvcache-plot                              # summary + figures from results/*.csv

Settings come from ``config.yaml`` (when present) and the flags override them, with the
same checks as the workflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from kvcache_exp import models, settings

log = logging.getLogger("kvcache_exp")

#: Flags that override a setting of the same name.
_OVERRIDES = (
    "trials",
    "query_tokens",
    "n_ctx",
    "max_tokens",
    "warmup_tokens",
    "settle_ms",
    "n_gpu_layers",
    "n_threads",
    "n_batch",
    "seed",
    "prompt_text_file",
)


#: The workflow's schema; present when the package runs from its repository.
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _schema_problems(config: dict[str, Any]) -> list[str]:
    """The same schema checks as the workflow, when the schema is at hand."""
    if not SCHEMA.is_file():
        return []
    return settings.schema_problems(config, yaml.safe_load(SCHEMA.read_text()))


def _load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def experiment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvcache-exp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size-a", type=int, required=True, help="tokens of context A (removed)")
    p.add_argument("--size-b", type=int, required=True, help="tokens of context B (kept)")
    p.add_argument(
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="configuration file (default: config.yaml, when present)",
    )
    p.add_argument("--model", help="a catalog name or a path to a .gguf file")
    for name in _OVERRIDES:
        kind = str if name == "prompt_text_file" else int
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--prompts-dir", type=Path, default=Path("prompts"))
    p.add_argument("--log", type=Path, default=None, help="also write the log to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one configuration, like the seed's ``phase3b_experiment.py``."""
    from kvcache_exp.experiment import run_experiment
    from kvcache_exp.logs import log_to

    args = experiment_parser().parse_args(argv)
    log_to(args.log)
    config = _load_config(args.config)
    if args.model:
        config["model"] = args.model
    config.update({k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None})
    experiment = {"size_a": args.size_a, "size_b": args.size_b}
    try:
        path, name, entry = models.resolve(config)
        context = models.model_context_length(path) if path.is_file() else None
        checked = {**config, "experiments": [experiment]}
        problems = _schema_problems(checked) or settings.check_experiments(
            checked, context, model_name=name
        )
        if problems:
            raise settings.SettingsError("; ".join(problems))
        if entry is not None:
            models.ensure_model(
                entry,
                path,
                pip_index_url=config.get("pip_index_url"),
                hf_base_url=config.get("hf_base_url", "https://huggingface.co"),
            )
        else:
            models.check_gguf(path)
        exp = settings.merge(config, experiment, n_threads=os.cpu_count() or 1)
        run_experiment(
            path,
            exp,
            args.results_dir / f"results_phase3b_{exp.label}.csv",
            args.prompts_dir / f"prompts_phase3b_{exp.label}.csv",
        )
    except (settings.SettingsError, models.ModelError, ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def plot_main(argv: list[str] | None = None) -> int:
    """Summary and figures from the results CSVs, like the seed's ``plot_results.py``."""
    from kvcache_exp.logs import log_to
    from kvcache_exp.plotting import plot_all_configs, plot_ttft_vs_tokens
    from kvcache_exp.summary import load_results, write_summary

    p = argparse.ArgumentParser(prog="kvcache-plot", description=plot_main.__doc__)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--plots-dir", type=Path, default=Path("plots"))
    p.add_argument("--model-name", default="model")
    args = p.parse_args(argv)
    log_to(None)
    paths = sorted(args.results_dir.glob("results_phase3b_a*_b*.csv"))
    if not paths:
        log.error("no results_phase3b_a*_b*.csv files in %s", args.results_dir)
        return 2
    write_summary(
        paths, args.results_dir / "summary.csv", args.results_dir / "summary.md", args.model_name
    )
    df = load_results(paths)
    plot_all_configs(df, args.plots_dir / "experiment1_all_configs_phase3b.png", args.model_name)
    plot_ttft_vs_tokens(df, args.plots_dir / "ttft_vs_tokens_recomputed.png", args.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
