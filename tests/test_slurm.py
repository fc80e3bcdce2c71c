"""The project's own workflow under SLURM, on a throwaway one-node cluster with one "GPU".

Why: profiles/slurm is a supported way to run the experiment. This runs it as a user would
(`snakemake --workflow-profile profiles/slurm`, in a copy of the repository, only the
partition and the status-check delay changed), at small sizes, and checks what matters for
the measurement:

* every experiment ran as a SLURM job, asking SLURM for the threads, memory and GPU of the
  configuration (its record names the job; squeue still knows what the job asked for);
* the results are complete and every trial's cache state was verified;
* experiments never overlapped: SLURM's GRES accounting alone keeps them apart, with no
  `--resources gpu=1` on Snakemake's side (profiles/default, which has it, must not apply);
* the control: without the GPU request (`--set-resources run_experiment:gpu=0`) the same
  experiments do run side by side, so "never overlapped" above is SLURM's doing and not a
  cluster that runs one job at a time.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import (
    Cluster,
    overlapping_pairs,
    slurm_profile,
)
from workflow_copy import copy_workflow, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SIZES = [(64, 32), (32, 64), (48, 48)]
MEM_MB = 1024
CONFIG = {
    "experiments": [{"size_a": a, "size_b": b} for a, b in SIZES],
    "trials": 2,
    "cures": False,  # scheduling is what is tested here; the cures are tested elsewhere
    "settle_ms": 0,
    "experiment_threads": 1,
    "experiment_mem_mb": MEM_MB,
}
RUN_TIMEOUT_S = 900


def _workflow(tmp: Path, cluster: Cluster, model_path: Path) -> tuple[Path, Path]:
    """A copy of the repository with the small configuration, and its SLURM profile."""
    workdir = copy_workflow(tmp / "repo")
    write_config(workdir, "small.yaml", {**CONFIG, "model": str(model_path)})
    profile = slurm_profile(tmp / "profile", cluster, source=workdir / "profiles" / "slurm")
    return workdir, profile


def _records(workdir: Path, sizes: list[tuple[int, int]] = SIZES) -> dict[tuple[int, int], dict]:
    """The experiments' own records (results/run_phase3b_a{A}_b{B}.json), by sizes."""
    return {
        (a, b): json.loads((workdir / f"results/run_phase3b_a{a}_b{b}.json").read_text())
        for a, b in sizes
    }


@pytest.fixture(scope="module")
def run(
    cluster: Cluster, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, dict[tuple[int, int], dict]]:
    """The whole workflow under SLURM: (workdir, snakemake's output, experiment records)."""
    workdir, profile = _workflow(tmp_path_factory.mktemp("slurm-run"), cluster, model_path)
    proc = cluster.run_snakemake(
        workdir,
        "--workflow-profile",
        str(profile),
        "--configfile",
        "small.yaml",
        timeout=RUN_TIMEOUT_S,
    )
    return workdir, proc.stdout, _records(workdir)


def test_slurm_profile_replaces_the_default_profile(run) -> None:
    """profiles/default (cores: all, resources gpu=1) is in the copy but must not be read."""
    workdir, output, _ = run
    assert (workdir / "profiles/default/config.yaml").is_file()
    used = [line for line in output.splitlines() if "for setting default command line" in line]
    assert used and "profiles/default" not in used[0], used


def test_every_experiment_ran_as_a_slurm_job(run, cluster: Cluster) -> None:
    _, _, records = run
    ids = [r["slurm_job_id"] for r in records.values()]
    assert all(ids), f"an experiment ran outside SLURM: {records}"
    assert len(set(ids)) == len(SIZES), f"experiments share a SLURM job: {records}"
    jobs = cluster.jobs()
    for job_id in map(str, ids):
        job = jobs[job_id]
        assert job["state"] == "COMPLETED", job
        assert job["cpus"] == str(CONFIG["experiment_threads"]), job
        assert job["mem_mb"] == MEM_MB, job
        assert "gpu" in job["gres"], job


def test_records(run) -> None:
    _, _, records = run
    for record in records.values():
        assert record["host"]
        assert record["n_threads"] == CONFIG["experiment_threads"]
        assert record["start_unix"] <= record["end_unix"]
        started = datetime.fromisoformat(record["started_at"])
        finished = datetime.fromisoformat(record["finished_at"])
        for stamp in (started, finished):
            assert stamp.utcoffset() is not None and not stamp.utcoffset(), record
        assert started <= finished


def test_results_complete_and_verified(run) -> None:
    workdir, _, _ = run
    for a, b in SIZES:
        results = pd.read_csv(workdir / f"results/results_phase3b_a{a}_b{b}.csv")
        assert len(results) > 0
        assert results["cache_verified"].astype(bool).all(), (a, b)
    for name in ("results/summary.csv", "results/run_metadata.json"):
        assert (workdir / name).is_file(), name


def test_gpu_experiments_never_overlapped(run, cluster: Cluster) -> None:
    _, _, records = run
    measured = list(records.values())
    assert overlapping_pairs(measured) == [], f"experiments overlapped: {measured}"
    jobs = cluster.jobs()
    allocations = [jobs[str(r["slurm_job_id"])] for r in measured]
    assert overlapping_pairs(allocations) == [], f"SLURM ran them at once: {allocations}"


def test_control_without_gpu_request_overlaps(
    cluster: Cluster, model_path: Path, tmp_path: Path
) -> None:
    """Two of the experiments without the GPU request, at once on two one-thread slots.

    Only those experiments' outputs are asked for (two suffice to show that SLURM runs
    jobs side by side here; a third would only wait for a slot). Overlap is judged on
    SLURM's allocation times: two jobs allocated together stay so for the whole of their
    Snakemake run, while the experiments' own measured windows, short at these sizes, may
    just miss each other.
    """
    if cluster.cpus < 2:
        pytest.skip("the control needs two cores for two one-thread experiments at once")
    workdir, profile = _workflow(tmp_path, cluster, model_path)
    pair = SIZES[:2]
    targets = [f"results/run_phase3b_a{a}_b{b}.json" for a, b in pair]
    cluster.run_snakemake(
        workdir,
        *targets,  # first: --configfile and --set-resources take every word that follows
        "--workflow-profile",
        str(profile),
        "--configfile",
        "small.yaml",
        "--set-resources",
        "run_experiment:gpu=0",
        timeout=RUN_TIMEOUT_S,
    )
    records = _records(workdir, pair)
    ids = [str(r["slurm_job_id"]) for r in records.values()]
    assert all(r["slurm_job_id"] for r in records.values()), records
    jobs = cluster.jobs()
    allocations = [jobs[i] for i in ids]
    assert not any("gpu" in job["gres"] for job in allocations), allocations
    assert overlapping_pairs(allocations), f"SLURM never ran two experiments at once: {jobs}"
