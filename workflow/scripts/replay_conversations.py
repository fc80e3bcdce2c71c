"""Snakemake adapter: replay one conversation set (or shard) under one policy and cache
behaviour, one row per turn."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.config.conversations import ConversationJob
from kvcache_exp.measure.replay_job import run_replay

settings = dict(snakemake.params.settings)
if settings["n_threads"] is None:
    settings["n_threads"] = snakemake.threads
run_rule(
    snakemake,
    lambda: run_replay(
        Path(snakemake.input.get("model", snakemake.params.model_file)),
        ConversationJob(**settings),
        Path(snakemake.output.csv),
        Path(snakemake.output.record),
    ),
)
