"""A throwaway one-node SLURM cluster for tests, started and stopped around a ``with`` block.

Why a helper of its own: SLURM is only worth testing against real daemons (sbatch, GRES
accounting, the Snakemake executor plugin's status polling), but a test must neither touch a
SLURM installation that may already run on the machine nor leave daemons behind. So
everything lives under the test's ``tmp_path``: the configuration, a munge key and socket of
our own, the state and spool folders, the logs and the device node that stands in for a GPU.
The daemons run in the foreground as our children (so we notice at once when one dies, and
reap it), on ports picked free at start, and are stopped by the PIDs in their PID files.

What it needs: Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` (``make
slurm`` installs them; so does :func:`ensure_installed` when it may) and root, since slurmd
starts jobs as their owner. When something is missing or a daemon does not come up,
:class:`SlurmUnavailable` says why, with the daemon's log tail, for ``pytest.skip``.

Measured on a 2-core container with the packages installed: about 0.4 s from nothing to an
idle node, 0.2 s to stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The daemons are in /usr/sbin, which a non-login root shell may not have on its PATH.
SBIN_PATH = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel", "scontrol", "srun")
# Commands that get a wrapper pinning SLURM_CONF (see _write_client_wrappers).
WRAPPED = (*CLIENTS, "sacct", "salloc", "sattach", "sstat")
DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "localhost"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; ``str(exc)`` is a reason fit for a skip."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def missing_programs() -> list[str]:
    """The SLURM and munge programs the cluster needs that are not installed."""
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def ensure_installed(*, install: bool = True, timeout_s: float = 600.0) -> None:
    """Make sure the programs are there, installing them with ``make slurm`` if allowed.

    ``mk/slurm.mk`` is the one place that knows how to install them (and when not to try:
    not root, no apt-get); it never fails, so we check again afterwards.
    """
    missing = missing_programs()
    if not missing:
        return
    note = ""
    if install and shutil.which("make"):
        try:
            proc = subprocess.run(
                ["make", "--no-print-directory", "-s", "-f", str(REPO / "mk/slurm.mk"), "slurm"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            note = (proc.stdout + proc.stderr).strip()
        except subprocess.TimeoutExpired:
            note = f"`make slurm` did not finish within {timeout_s:.0f} s"
        missing = missing_programs()
        if not missing:
            return
    raise SlurmUnavailable(
        f"SLURM is not installed (missing: {', '.join(missing)}); `make slurm` installs it "
        "as root with apt-get" + (f": {note}" if note else "")
    )


def _free_port() -> int:
    """A TCP port nobody listens on now (a SLURM already running keeps 6817/6818)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _total_memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name}: no log)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name}: empty)"


def client_environment(
    conf: Path, bin_dir: Path | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: ours) pointed at ``conf``, without another cluster's job variables.

    When the tests themselves run inside a SLURM job, its SLURM_JOB_ID and friends would make
    Snakemake believe it is already in a job of *this* cluster. ``bin_dir``, the wrappers of
    :func:`_write_client_wrappers`, goes first on the PATH.
    """
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_"))
    }
    env["SLURM_CONF"] = str(conf)
    if bin_dir is not None:
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    return env


def _write_client_wrappers(bin_dir: Path, conf: Path) -> None:
    """Client commands that always use ``conf``, whatever the caller did to SLURM_CONF.

    snakemake-executor-plugin-slurm-jobstep (0.6.1) starts each job's `srun` with every
    SLURM_* variable removed but the job's id and a few others, SLURM_CONF included. A real
    cluster keeps its slurm.conf where `srun` looks by default (/etc/slurm, or the configless
    cache); ours is under tmp_path, so without these wrappers srun finds no configuration
    ("Could not establish a configuration source") and every job fails.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in WRAPPED:
        real = _which(name)
        if real is None:
            continue
        wrapper = bin_dir / name
        wrapper.write_text(
            f'#!/bin/sh\nSLURM_CONF="{conf}"\nexport SLURM_CONF\nexec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)


@dataclass
class Cluster:
    """A running throwaway cluster: where it lives and how to talk to it."""

    root: Path
    conf: Path
    env: dict[str, str]
    partition: str
    node: str
    cpus: int
    gpus: int
    real_memory_mb: int
    logs: dict[str, Path] = field(default_factory=dict)

    def run(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``sinfo``, ``squeue``...) against this cluster."""
        proc = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def node_state(self) -> str:
        """The node's state as sinfo prints it: idle, mix, alloc, drain, down*, ..."""
        out = self.run("sinfo", "--noheader", "--Node", "--format=%T", "--nodes", self.node)
        return out.stdout.strip()

    def queued_job_ids(self) -> list[str]:
        """Jobs the controller still holds as pending or running."""
        out = self.run("squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING")
        return out.stdout.split()

    def jobs(self) -> dict[str, dict]:
        """Every job the controller remembers (finished ones for MinJobAge), by job id.

        What each job really asked SLURM for and got: its ``state``, ``cpus``, ``memory``
        as squeue prints it (``512M``, ``1G``) and ``mem_mb`` (512, 1024; None if unknown),
        ``gres`` (``gres:gpu:1`` for a job that asked for a GPU, else
        ``N/A``), and ``start_unix``/``end_unix``, SLURM's own allocation times (whole
        seconds, None while unknown).
        """
        columns = ("JobID", "State", "NumCPUs", "MinMemory", "tres-per-job", "StartTime", "EndTime")
        out = self.run(
            "squeue",
            "--states=all",
            "--noheader",
            "--Format=" + ",".join(f"{c}:|" for c in columns),
        ).stdout
        jobs: dict[str, dict] = {}
        for line in out.splitlines():
            fields = [f.strip() for f in line.split("|")][: len(columns)]
            if len(fields) < len(columns) or not fields[0]:
                continue
            job_id, state, cpus, memory, gres, start, end = fields
            jobs[job_id] = {
                "state": state,
                "cpus": cpus,
                "memory": memory,
                "mem_mb": _memory_mb(memory),
                "gres": gres,
                "start_unix": _slurm_time(start),
                "end_unix": _slurm_time(end),
            }
        return jobs

    def log_tails(self, lines: int = 15) -> str:
        """The end of every daemon log, for a failure message."""
        return "\n".join(
            f"--- {name} ({path}):\n{_tail(path, lines)}" for name, path in self.logs.items()
        )

    def cancel_all(self, wait_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel every job of this cluster and wait until the controller has none left.

        Jobs must end before slurmd does: the slurmstepd of a running job would outlive it.
        """
        with contextlib.suppress(Exception):
            self.run("scancel", "--partition", self.partition, check=False)
            deadline = time.monotonic() + wait_s
            while self.queued_job_ids() and time.monotonic() < deadline:
                time.sleep(0.2)

    def run_snakemake(
        self,
        workdir: Path,
        *args: str,
        timeout: float = 120.0,
        python: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run ``python -m snakemake *args`` in ``workdir`` against this cluster, bounded.

        Snakemake does not exit on SIGTERM while SLURM jobs are active, so a run that overruns
        ``timeout`` is killed as a whole process group (SIGTERM, then SIGKILL), its jobs are
        cancelled, and an AssertionError carries its output and the daemon logs.
        """
        cmd = [python or sys.executable, "-m", "snakemake", *args]
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out = _kill_group(proc)
            self.cancel_all()
            raise AssertionError(
                f"{' '.join(cmd)} did not finish within {timeout:.0f} s; output tail:\n"
                f"{out[-6000:]}\n{self.log_tails()}"
            ) from None
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}); output tail:\n{out[-6000:]}"
            )
        return result


def _slurm_time(text: str) -> float | None:
    """A time as squeue prints it (local time, e.g. 2026-01-31T12:00:05) as a Unix time."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:  # N/A, Unknown, NONE
        return None


def _memory_mb(text: str) -> int | None:
    """squeue's memory (``1000M``, ``1G``, ``512K``; no unit means MB) in MB."""
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    unit = text[-1:].upper()
    try:
        if unit in scale:
            return round(float(text[:-1]) * scale[unit])
        return round(float(text))
    except ValueError:
        return None


def _kill_group(proc: subprocess.Popen) -> str:
    """Stop a process started in its own session, with everything it started; its output."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            out, _ = proc.communicate(timeout=grace)
            return out or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def _write_configs(
    root: Path, *, cpus: int, gpus: int, real_memory_mb: int, partition: str, min_job_age: int
) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """slurm.conf (and gres.conf) under ``root``; returns the conf, the PID files and logs."""
    etc, state, spool, log, run, dev = (
        root / d for d in ("etc", "state", "spool", "log", "run", "dev")
    )
    for d in (etc, state, spool, log, run, dev):
        d.mkdir(parents=True, exist_ok=True)
    pids = {
        "munged": run / "munged.pid",
        "slurmctld": run / "slurmctld.pid",
        "slurmd": run / "slurmd.pid",
    }
    logs = {
        "munged": log / "munged.log",
        "slurmctld": log / "slurmctld.log",
        "slurmd": log / "slurmd.log",
    }
    munge_socket = root / "munge" / "socket" / "munge.socket"
    (etc / "plugstack.conf").write_text("")  # not the system's SPANK plugins
    gres_line = ""
    node_gres = ""
    if gpus:
        # slurmd only keeps a GPU whose File= is a character device; /dev/null's numbers do.
        for i in range(gpus):
            node = dev / f"gpu{i}"
            if not node.exists():
                os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        files = str(dev / "gpu0") if gpus == 1 else f"{dev}/gpu[0-{gpus - 1}]"
        (etc / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={files}\n")
        gres_line = "GresTypes=gpu\n"
        node_gres = f" Gres=gpu:{gpus}"
    conf = etc / "slurm.conf"
    conf.write_text(
        f"""\
# Written by tests/slurm_cluster.py for one test run; everything under {root}.
ClusterName=throwaway
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={pids["slurmctld"]}
SlurmdPidFile={pids["slurmd"]}
SlurmctldLogFile={logs["slurmctld"]}
SlurmdLogFile={logs["slurmd"]}
PlugStackConfig={etc / "plugstack.conf"}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
# Start a submitted batch job at once (default: up to 3 s later), and schedule again within
# a tenth of a second of a job end (default: 2 s).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue this long: the Snakemake plugin's squeue status
# checks need it (it falls back to sacct, which fails without slurmdbd, when it is short).
MinJobAge={min_job_age}
KillWait=2
InactiveLimit=0
{gres_line}NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb}{node_gres} \
State=UNKNOWN
PartitionName={partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf, pids, logs


def _start_munged(root: Path, pid_file: Path, log_file: Path) -> subprocess.Popen:
    """Our own munged: own key, socket, PID and seed files, so a system one is untouched.

    ``--force``: munged refuses a socket whose parent folders are not world-searchable, and
    pytest's tmp folders are 0700. Every client here runs as root, so that is harmless.
    In the foreground munged logs to its stderr, which goes to ``log_file``.
    """
    base = root / "munge"
    key_dir, sock_dir, lib_dir = base / "etc", base / "socket", base / "lib"
    for d, mode in ((key_dir, 0o700), (sock_dir, 0o755), (lib_dir, 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    key = key_dir / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    with open(log_file, "w") as err:
        return subprocess.Popen(
            [
                _which("munged") or "munged",
                "--foreground",
                "--force",
                f"--socket={sock_dir / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={pid_file}",
                f"--seed-file={lib_dir / 'munged.seed'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start_daemon(
    name: str, args: Sequence[str], env: Mapping[str, str], log_file: Path
) -> subprocess.Popen:
    with open(log_file.with_suffix(".stderr"), "w") as err:
        return subprocess.Popen(
            [_which(name) or name, *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen, pid_file: Path) -> None:
    """Stop one daemon we started, by the PID its PID file records.

    The daemons run in the foreground as our children, so that PID is our child's; a PID
    file naming any other process (a stale file, a daemon that forked) is not trusted, and
    our child's PID is used: we never signal a process we did not start.
    """
    pid = proc.pid
    with contextlib.suppress(OSError, ValueError, IndexError):
        recorded = int(pid_file.read_text().split()[0])
        if recorded == proc.pid:
            pid = recorded
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def throwaway_cluster(
    tmp_path: Path,
    *,
    gpus: int = 1,
    cpus: int | None = None,
    partition: str = "debug",
    real_memory_mb: int | None = None,
    min_job_age: int = 600,
    install: bool = True,
) -> Iterator[Cluster]:
    """Start a one-node cluster under ``tmp_path``, yield it, and stop it again.

    ``cpus`` defaults to the cores we have (with more, the node registers as INVAL and
    never becomes idle); ``gpus`` fake GPUs (GRES) are declared, each backed by a device node.
    ``min_job_age``: how long squeue shows finished jobs (see :meth:`Cluster.jobs`).

    Raises :class:`SlurmUnavailable` when SLURM is missing and cannot be installed, we are not
    root, or a daemon does not come up. On exit every job is cancelled and every daemon
    stopped; nothing outside ``tmp_path`` is written or removed (``make slurm`` may install
    packages first, when they are missing and ``install`` is true).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("the throwaway SLURM cluster needs root (slurmd runs jobs)")
    ensure_installed(install=install)
    ncpu = os.cpu_count() or 1
    cpus = ncpu if cpus is None else cpus
    if not 1 <= cpus <= ncpu:
        raise ValueError(f"cpus must be between 1 and {ncpu}, not {cpus}")
    if real_memory_mb is None:
        real_memory_mb = max(256, int(_total_memory_mb() * 0.8))
    root = Path(tmp_path) / "slurm"
    conf, pids, logs = _write_configs(
        root,
        cpus=cpus,
        gpus=gpus,
        real_memory_mb=real_memory_mb,
        partition=partition,
        min_job_age=min_job_age,
    )
    _write_client_wrappers(root / "bin", conf)
    env = client_environment(conf, root / "bin")
    cluster = Cluster(
        root=root,
        conf=conf,
        env=env,
        partition=partition,
        node=NODE,
        cpus=cpus,
        gpus=gpus,
        real_memory_mb=real_memory_mb,
        logs=logs,
    )
    started: list[tuple[str, subprocess.Popen]] = []
    try:
        started.append(("munged", _start_munged(root, pids["munged"], logs["munged"])))
        _wait_for(lambda: (root / "munge/socket/munge.socket").exists(), "munged", started, cluster)
        started.append(
            (
                "slurmctld",
                _start_daemon("slurmctld", ["-D", "-f", str(conf)], env, logs["slurmctld"]),
            )
        )
        _wait_for(lambda: _responds(cluster), "slurmctld", started, cluster)
        started.append(
            (
                "slurmd",
                _start_daemon("slurmd", ["-D", "-N", NODE, "-f", str(conf)], env, logs["slurmd"]),
            )
        )
        _wait_for(lambda: _node_ready(cluster), "slurmd", started, cluster)
        yield cluster
    finally:
        if any(name == "slurmctld" for name, _ in started):
            cluster.cancel_all()
        for name, proc in reversed(started):
            _stop(proc, pids[name])


def _responds(cluster: Cluster) -> bool:
    with contextlib.suppress(Exception):
        return cluster.run("scontrol", "ping", check=False, timeout=10).returncode == 0
    return False


def _node_ready(cluster: Cluster) -> bool:
    """True once the node is idle; raises when it went down or drained (it will not recover)."""
    try:
        state = cluster.node_state()
    except Exception:
        return False
    # inval: slurmd found less hardware than slurm.conf declares (e.g. more CPUs than cores).
    if state.startswith(("drain", "down", "fail", "inval")) and "*" not in state:
        reason = cluster.run("scontrol", "show", "node", cluster.node, check=False).stdout
        raise SlurmUnavailable(
            f"the throwaway node is {state}:\n{reason.strip()}\n{cluster.log_tails()}"
        )
    return state == "idle"


def _wait_for(
    ready, what: str, started: list[tuple[str, subprocess.Popen]], cluster: Cluster
) -> None:
    """Poll ``ready`` until it holds; a dead daemon or the deadline raises SlurmUnavailable."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if ready():
            return
        dead = [(n, p.returncode) for n, p in started if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = (
                ", ".join(f"{n} exited with status {rc}" for n, rc in dead)
                if dead
                else f"{what} not ready after {START_TIMEOUT_S:.0f} s"
            )
            stderr_tails = "\n".join(
                f"--- {n} stderr:\n{_tail(cluster.logs[n].with_suffix('.stderr'))}"
                for n, _ in started
                if cluster.logs[n].with_suffix(".stderr").exists()
            )
            raise SlurmUnavailable(
                f"the throwaway SLURM cluster did not start: {why}\n"
                f"{cluster.log_tails()}\n{stderr_tails}"
            )
        time.sleep(0.1)


def slurm_profile(
    dest: Path,
    cluster: Cluster,
    *,
    source: Path = REPO / "profiles" / "slurm",
    status_check_s: int = 1,
) -> Path:
    """A copy of ``profiles/slurm`` for ``cluster``: its partition, and quick status checks.

    Everything else stays as the user gets it, so that the tests exercise the real profile.
    The plugin's first status check comes ``status_check_s`` after a submission (40 s by
    default); memory asks are cut down to what the throwaway node has.
    """
    import yaml

    config = yaml.safe_load((source / "config.yaml").read_text())
    resources = dict(config.get("default-resources") or {})
    resources["slurm_partition"] = cluster.partition
    if int(resources.get("mem_mb", 0)) > cluster.real_memory_mb // 4:
        resources["mem_mb"] = cluster.real_memory_mb // 4
    config["default-resources"] = resources
    config["slurm-init-seconds-before-status-checks"] = status_check_s
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def overlapping_pairs(
    records: Sequence[Mapping], start: str = "start_unix", end: str = "end_unix"
) -> list[tuple[int, int]]:
    """Index pairs of records whose [start, end] intervals overlap (all times set).

    Strictly: one ending the second the next starts (SLURM's times are whole seconds) is
    not an overlap.
    """
    return [
        (i, j)
        for i in range(len(records))
        for j in range(i + 1, len(records))
        if max(records[i][start], records[j][start]) < min(records[i][end], records[j][end])
    ]
