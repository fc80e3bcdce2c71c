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

from kvcache_exp.config import schema, settings
from kvcache_exp.models import catalog, files

log = logging.getLogger("kvcache_exp")


def _flag_type(spec: dict[str, Any]) -> Any:
    """The argparse type of a top-level setting, or None when it is not a scalar flag."""
    types = spec.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    kinds.discard("null")
    if kinds == {"integer"}:
        return int
    if kinds == {"string"}:
        return str
    if kinds == {"boolean"}:
        return bool
    return None


def _overrides() -> dict[str, Any]:
    """The settings that are flags, read from the schema: every scalar but the model."""
    props = schema.load_schema()["properties"]
    return {
        key: kind
        for key, spec in props.items()
        if key != "model" and (kind := _flag_type(spec)) is not None
    }


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
    for name, kind in _overrides().items():
        flag = f"--{name.replace('_', '-')}"
        help_text = schema.describe_key(name).replace("%", "%%")
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--prompts-dir", type=Path, default=Path("prompts"))
    p.add_argument("--log", type=Path, default=None, help="also write the log to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one configuration, like the seed's ``phase3b_experiment.py``."""
    from kvcache_exp.logs import log_to
    from kvcache_exp.measure.experiment import run_experiment

    args = experiment_parser().parse_args(argv)
    log_to(args.log)
    config = _load_config(args.config)
    if args.model:
        config["model"] = args.model
    config.update({k: getattr(args, k) for k in _overrides() if getattr(args, k) is not None})
    experiment = {"size_a": args.size_a, "size_b": args.size_b}
    try:
        path, name, entry = catalog.resolve(config)
        context = files.model_context_length(path) if path.is_file() else None
        checked = {**config, "experiments": [experiment]}
        problems = schema.problems(checked) or settings.check_experiments(
            checked, context, model_name=name
        )
        if problems:
            raise settings.SettingsError("; ".join(problems))
        if entry is not None:
            catalog.ensure_model(
                entry,
                path,
                pip_index_url=config.get("pip_index_url"),
                hf_base_url=config.get("hf_base_url", "https://huggingface.co"),
            )
        else:
            files.check_gguf(path)
        exp = settings.merge(config, experiment, n_threads=os.cpu_count() or 1)
        run_experiment(
            path,
            exp,
            args.results_dir / f"results_phase3b_{exp.label}.csv",
            args.prompts_dir / f"prompts_phase3b_{exp.label}.csv",
            args.results_dir / f"run_phase3b_{exp.label}.json",
        )
    except (settings.SettingsError, files.ModelError, ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def plot_main(argv: list[str] | None = None) -> int:
    """Summary and figures from the results CSVs, like the seed's ``plot_results.py``."""
    from kvcache_exp.analysis.load import load_results
    from kvcache_exp.logs import log_to
    from kvcache_exp.report.plotting import plot_all_configs, plot_throughput, plot_ttft_vs_tokens
    from kvcache_exp.report.summary import PoolingError, write_summary

    p = argparse.ArgumentParser(prog="kvcache-plot", description=plot_main.__doc__)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--plots-dir", type=Path, default=Path("plots"))
    p.add_argument("--model-name", default="model")
    p.add_argument(
        "--allow-mixed-provenance",
        action="store_true",
        help=schema.describe_key("allow_mixed_provenance"),
    )
    args = p.parse_args(argv)
    log_to(None)
    paths = sorted(args.results_dir.glob("results_phase3b_a*_b*.csv"))
    if not paths:
        log.error("no results_phase3b_a*_b*.csv files in %s", args.results_dir)
        return 2
    records = [p.with_name(p.name.replace("results_", "run_", 1)) for p in paths]
    records = [r.with_suffix(".json") for r in records]
    try:
        write_summary(
            paths,
            args.results_dir / "summary.csv",
            args.results_dir / "summary.md",
            args.model_name,
            record_paths=[r for r in records if r.is_file()],
            allow_mixed=args.allow_mixed_provenance,
        )
    except PoolingError as exc:
        log.error("%s", exc)
        return 2
    df = load_results(paths)
    name = args.model_name
    plot_all_configs(df, args.plots_dir / "experiment1_all_configs_phase3b.png", name)
    plot_ttft_vs_tokens(df, args.plots_dir / "ttft_vs_tokens_recomputed.png", name)
    plot_throughput(df, args.plots_dir / "throughput.png", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
