"""A real one-node SLURM cluster on localhost for the tests: Debian's slurm-wlm and munge, installed with apt
when missing, slurmctld and slurmd started with a private slurm.conf, stopped afterwards.

Two settings make a requeue quick without changing what happens: a requeued job may start again only after the
credential lifetime (cred_expire, 120 s by default), and a pending job whose begin time has passed is started by
the next periodic scheduling pass (sched_interval, 60 s; the backfill's 30 s). Measured here: a job requeued
by `scontrol requeue` started again after 131 s with the defaults, after 11 s with cred_expire=10 and
sched_interval=2. 20 s leaves a credential ten times what slurmd needs to take it on a busy machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from workers import free_port

CONF = """ClusterName=batchscale-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AuthInfo=cred_expire=20
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("SLURM is not installed and cannot be: this needs apt-get as root (Debian's slurm-wlm and munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], check=True, capture_output=True, env=env)


def start_munge() -> None:
    if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    subprocess.run(["munged", "--force"], check=True, capture_output=True)


@contextmanager
def cluster(root: Path) -> Iterator[dict[str, str]]:
    """Yields the environment (SLURM_CONF) under which sbatch, squeue and scancel reach the test cluster."""
    ensure_installed()
    start_munge()
    for folder in ("spool", "state"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, ctld_port=free_port(), d_port=free_port(), cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    try:
        deadline = time.monotonic() + 300  # about a second on an idle machine
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout:
            assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)  # daemons starting: nothing to wait on but their answer
        yield {"SLURM_CONF": str(conf)}
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
