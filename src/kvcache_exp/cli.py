"""Plain command lines, without Snakemake, as in the seed::

    kvcache-exp --size-a 512 --size-b 256     # one configuration -> the two CSVs
    kvcache-chat                              # the conversation replay -> one CSV per job
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

from kvcache_exp import paths
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


def _config_and_model(p: argparse.ArgumentParser) -> None:
    """The two flags every measuring command takes, spelled once."""
    p.add_argument(
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="configuration file (default: config.yaml, when present)",
    )
    p.add_argument("--model", help="a catalog name or a path to a .gguf file")


def experiment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvcache-exp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size-a", type=int, required=True, help="tokens of context A (removed)")
    p.add_argument("--size-b", type=int, required=True, help="tokens of context B (kept)")
    _config_and_model(p)
    for name, kind in _overrides().items():
        flag = f"--{name.replace('_', '-')}"
        help_text = schema.describe_key(name).replace("%", "%%")
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--results-dir", type=Path, default=Path(paths.DEFAULT.results))
    p.add_argument("--prompts-dir", type=Path, default=Path(paths.DEFAULT.prompts))
    p.add_argument("--log", type=Path, default=None, help="also write the log to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Measure one configuration, like the seed's ``phase3b_experiment.py``: the same
    files as the workflow's job (results, prompts, cures, provenance record), through the
    same function."""
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
        catalog.make_ready(config, path, entry)
        exp = settings.merge(config, experiment, n_threads=os.cpu_count() or 1)
        layout = paths.Layout(results=str(args.results_dir), prompts=str(args.prompts_dir))
        run_experiment(path, exp, layout.configuration(paths.tag(exp.size_a, exp.size_b)))
    except (settings.SettingsError, files.ModelError, ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvcache-plot", description=plot_main.__doc__)
    p.add_argument("--results-dir", type=Path, default=Path(paths.DEFAULT.results))
    p.add_argument("--prompts-dir", type=Path, default=Path(paths.DEFAULT.prompts))
    p.add_argument("--plots-dir", type=Path, default=Path(paths.DEFAULT.plots))
    p.add_argument(
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="configuration file, for the model's name and the report's pages "
        "(default: config.yaml, when present)",
    )
    p.add_argument("--model-name", default=None, help="the model's name in titles")
    p.add_argument(
        "--allow-mixed-provenance",
        action="store_true",
        help=schema.describe_key("allow_mixed_provenance"),
    )
    return p


def _tags(layout: paths.Layout) -> list[str]:
    """The tags of the configurations whose results CSV is in the layout's folder."""
    found = sorted(Path(layout.results).glob(Path(layout.results_csv("*")).name))
    return [p.name.removeprefix("results_phase3b_").removesuffix(".csv") for p in found]


def plot_main(argv: list[str] | None = None) -> int:
    """Everything the workflow makes from the CSVs, like the seed's ``plot_results.py``:
    the summary (CSV, Markdown, report page), the cures' summary, every figure, the run's
    metadata and the report's pages, with the same functions as the workflow's rules."""
    from kvcache_exp.logs import log_to
    from kvcache_exp.provenance import write_run_metadata
    from kvcache_exp.report import pages
    from kvcache_exp.report import protocol as report_protocol
    from kvcache_exp.report.cures_plot import plot_cures_csvs
    from kvcache_exp.report.plotting import plot_results
    from kvcache_exp.report.summary import PoolingError, write_summary

    args = plot_parser().parse_args(argv)
    log_to(None)
    layout = paths.Layout(str(args.results_dir), str(args.prompts_dir), str(args.plots_dir))
    tags = _tags(layout)
    config = {**schema.defaults(), **_load_config(args.config)}
    name = args.model_name or str(config.get("model", "model"))
    if not tags:
        if _conversation_outputs(layout, name):
            return 0
        log.error("no %s files in %s", Path(layout.results_csv("a*_b*")).name, args.results_dir)
        return 2
    results = [layout.results_csv(t) for t in tags]
    records = [layout.record_json(t) for t in tags if Path(layout.record_json(t)).is_file()]
    cures = [layout.cures_csv(t) for t in tags if Path(layout.cures_csv(t)).is_file()]
    try:
        write_summary(
            results,
            layout.summary_csv,
            layout.summary_md,
            name,
            out_html=layout.summary_page,
            record_paths=records,
            allow_mixed=args.allow_mixed_provenance,
            cure_paths=cures,
            out_cures_csv=layout.cures_summary_csv if cures else None,
        )
    except (PoolingError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    plot_results(results, layout.main_plot, layout.tokens_plot, layout.throughput_plot, name)
    if cures:
        plot_cures_csvs(cures, layout.cures_plot, name)
    _conversation_outputs(layout, name)
    for tag in tags:
        if Path(layout.prompts_csv(tag)).is_file():
            label = paths.title(*paths.sizes(tag))
            pages.prompts_page(Path(layout.prompts_csv(tag)), Path(layout.prompts_page(tag)), label)
    if records:
        run_config = {k: v for k, v in config.items() if k != "models"}
        write_run_metadata(records, layout.run_metadata, name, run_config)
        pages.run_page(Path(layout.run_metadata), Path(layout.run_page))
    configurations = settings.expand_experiments(config)
    protocol = {key: config[key] for key in report_protocol.PROTOCOL_SETTINGS}
    report_protocol.protocol_page(protocol, configurations, Path(layout.protocol_page))
    return 0


def _conversation_outputs(layout: paths.Layout, name: str) -> bool:
    """The replay's summary and figures, when there are replay CSVs (whether there were)."""
    from kvcache_exp.report.conversations import (
        plot_conversation_csvs,
        write_conversations_summary,
    )

    found = sorted(Path(layout.conversations).glob("*/*.csv"))
    if not found:
        return False
    write_conversations_summary(
        found,
        layout.conversations_summary_csv,
        layout.conversations_quality_csv,
        layout.conversations_summary_md,
        layout.conversations_page,
        name,
    )
    plot_conversation_csvs(found, *layout.conversation_plots, name)
    return True


def chat_parser() -> argparse.ArgumentParser:
    from kvcache_exp.chat.columns import CACHE_BEHAVIOURS

    p = argparse.ArgumentParser(prog="kvcache-chat", description=chat_main.__doc__)
    _config_and_model(p)
    p.add_argument("--policy", help="one label of conversations.policies (default: each)")
    p.add_argument("--cache", choices=CACHE_BEHAVIOURS, help="one cache behaviour (default: each)")
    for key in ("conversations_file", "chat_template_file"):
        flag = f"--{key.replace('_', '-')}"
        p.add_argument(flag, dest=key, default=None, help=schema.describe_key(key))
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--log", type=Path, default=None, help="also write the log to this file")
    return p


def chat_main(argv: list[str] | None = None) -> int:
    """Replay conversations turn by turn, as the workflow's replay jobs do: every policy
    and cache behaviour of config.yaml's ``conversations`` block (or the ones named), one
    CSV each under results/conversations/. ``kvcache-plot`` then writes the summary and
    figures. The conversation file, the template and every setting are checked before
    the model is fetched or loaded."""
    from kvcache_exp.chat.source import ConversationError, read_conversations, set_name
    from kvcache_exp.chat.source import shard_names as shards
    from kvcache_exp.config import conversations
    from kvcache_exp.logs import log_to
    from kvcache_exp.measure.replay_job import prepare, run_replay

    args = chat_parser().parse_args(argv)
    log_to(args.log)
    config = {**schema.defaults(), **_load_config(args.config)}
    if args.model:
        config["model"] = args.model
    config.update({k: getattr(args, k) for k in ("conversations_file", "chat_template_file")
                   if getattr(args, k) is not None})  # fmt: skip
    layout = paths.Layout(results=str(args.results_dir))
    try:
        problems = schema.problems(config) or conversations.check_conversations(config)
        if problems:
            raise settings.SettingsError("; ".join(problems))
        replay = conversations.ConversationSettings.from_mapping(config.get("conversations"))
        labels = [args.policy] if args.policy else replay.labels()
        server = settings.ServerSettings.from_mapping(config.get("server"))
        caches = [args.cache] if args.cache else replay.caches(config["engine"], server)
        file = config.get("conversations_file")
        count = len(read_conversations(file)) if file else replay.builtin["conversations"]
        path, _, entry = catalog.resolve(config)
        catalog.make_ready(config, path, entry)
        jobs = [
            conversations.conversation_job(config, job_set, label, cache, os.cpu_count() or 1)
            for job_set in shards(set_name(file), count, replay.shard_size)
            for label in labels
            for cache in caches
        ]
        for job in jobs:  # every conversation fits every policy, before any weights load
            _, renderer = prepare(path, job)
            if renderer is not None:
                renderer.close()
        for job in jobs:
            run_replay(
                path,
                job,
                Path(layout.conversation_csv(job.set, job.label, job.cache)),
                Path(layout.conversation_record(job.set, job.label, job.cache)),
            )
    except (settings.SettingsError, ConversationError, ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
