"""The SLURM harness itself, on a three-job Snakefile of its own (not the project workflow).

Why: before trusting a SLURM run of the real workflow we must know that the throwaway
cluster really runs Snakemake's jobs as SLURM jobs, that SLURM's GRES accounting alone (no
`--resources gpu=1` on Snakemake's side, none in profiles/slurm) keeps jobs asking for a GPU
apart, and that without the GPU request the same jobs do run side by side, so that "never
overlapped" is a finding and not an artefact of a cluster that runs one job at a time.

Overlap is decided by construction, not by timing: each job marks itself running, then
waits until it sees another job running (both run now: they overlap) or one already done
(its partner has been and gone), or its wait runs out; only then does it record its end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slurm_cluster import (
    Cluster,
    overlapping_pairs,
    slurm_profile,
)

pytestmark = pytest.mark.slurm

N_JOBS = 3

SNAKEFILE = """\
import json, os, socket, time
from pathlib import Path

WAIT_S = float(config.get("wait_s", 5))


rule all:
    input:
        expand("out/{i}.json", i=range(N_JOBS)),


rule work:
    output:
        "out/{i}.json",
    threads: 1
    resources:
        gpu=1,
    run:
        marks = Path("marks")
        marks.mkdir(exist_ok=True)
        start = time.time()
        running = marks / f"running.{wildcards.i}"
        running.touch()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            others = [p for p in marks.iterdir() if not p.name.endswith(f".{wildcards.i}")]
            if others:
                break
            time.sleep(0.05)
        end = time.time()
        (marks / f"done.{wildcards.i}").touch()
        running.unlink()
        Path(output[0]).write_text(json.dumps({
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_job_gpus": os.environ.get("SLURM_JOB_GPUS"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "host": socket.gethostname(),
            "start_unix": start,
            "end_unix": end,
        }))
""".replace("N_JOBS", str(N_JOBS))


def _run(cluster: Cluster, workdir: Path, *extra: str, wait_s: float) -> list[dict]:
    """Run the tiny workflow through the SLURM executor with profiles/slurm; the job records."""
    workdir.mkdir()
    (workdir / "Snakefile").write_text(SNAKEFILE)
    profile = slurm_profile(workdir / "profile", cluster)
    cluster.run_snakemake(
        workdir,
        "--workflow-profile",
        str(profile),
        "--config",
        f"wait_s={wait_s}",
        *extra,
        timeout=150,
    )
    return [json.loads((workdir / f"out/{i}.json").read_text()) for i in range(N_JOBS)]


def test_gpu_jobs_run_as_slurm_jobs_one_at_a_time(cluster: Cluster, tmp_path: Path) -> None:
    records = _run(cluster, tmp_path / "gpu", wait_s=5)
    ids = [r["slurm_job_id"] for r in records]
    assert all(ids), f"a job ran outside SLURM: {records}"
    assert len(set(ids)) == N_JOBS, f"jobs share a SLURM job: {records}"
    jobs = cluster.jobs()
    assert all("gpu" in jobs[i]["gres"] for i in ids), f"a job asked SLURM for no GPU: {jobs}"
    assert all(r["cuda_visible_devices"] for r in records), f"SLURM gave a job no GPU: {records}"
    assert overlapping_pairs(records) == [], f"GPU jobs overlapped: {records}"
    allocations = [jobs[i] for i in ids]
    assert overlapping_pairs(allocations) == [], f"SLURM ran GPU jobs at once: {allocations}"


def test_jobs_without_gpu_request_overlap(cluster: Cluster, tmp_path: Path) -> None:
    """The control: same jobs, no GPU request (gpu=0), and cores for two at once."""
    if cluster.cpus < 2:
        pytest.skip("the control needs two cores for two one-thread jobs at once")
    records = _run(cluster, tmp_path / "control", "--set-resources", "work:gpu=0", wait_s=30)
    ids = [r["slurm_job_id"] for r in records]
    assert all(ids), f"a job ran outside SLURM: {records}"
    jobs = cluster.jobs()
    assert not any("gpu" in jobs[i]["gres"] for i in ids), f"gpu=0 still asked: {jobs}"
    assert overlapping_pairs(records), f"no two jobs overlapped without a GPU request: {records}"
    allocations = [jobs[i] for i in ids]
    assert overlapping_pairs(allocations), f"SLURM never ran two jobs at once: {allocations}"
