"""Where a sweep's trainings run: here, several at once (`LocalPool`), or on a SLURM cluster (`SlurmQueue`,
through submitit). Either way each run writes only into its own folder, so the sweep folder stays the one
source of truth: a run is done when its summary.json says so, whoever ran it.

Local runs are child processes this sweep supervises, not submitit's LocalExecutor: that one starts every
job at once in a detached controller, so it could neither cap how many run together nor pass a Ctrl-C on.
Each slot's single-process trainings run one after another in one long-lived worker (study/worker.py) unless
--fresh-process asks for a process each; SLURM's array tasks are each a process of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, Stopped

REQUEUE = Stopped.exit_code  # a training stopped by a signal saved its step: run it again and it resumes


@dataclass
class Job:
    name: str
    command: list[str]
    run_dir: Path
    gpus: int = 1  # GPUs the run needs on its node, when there are GPUs


@dataclass
class Outcome:
    exit_code: int | None = None  # None while queued or running


# -- on this machine -----------------------------------------------------------------------------------------


@dataclass
class LocalPool:
    """Up to `slots` trainings at once. On a GPU machine each run gets its own GPUs (CUDA_VISIBLE_DEVICES);
    on a CPU each gets an equal share of the cores (OMP_NUM_THREADS, unless already set), so runs do not fight
    over them. Bit-identical results across slot counts need the same threads per run: set OMP_NUM_THREADS.

    By default each slot keeps one long-lived worker (study/worker.py) that runs its single-process trainings
    one after another, so each slot starts Python and torch, reads the data and compiles once; `fresh` (the
    --fresh-process flag) starts a process per training instead, as do launchers (torchrun, horovodrun)."""

    slots: int
    gpus: int = 0
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    fresh: bool = False
    keep: bool = False  # workers outlive `run` for the next one (a study's next stage); `close()` ends them
    command: str = "sweep"  # whose trainings these are (sweep or study), named in what the pool says and logs
    workers: dict[int, Worker] = field(default_factory=dict, repr=False, compare=False)

    def env(self, slot: int, job: Job) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.gpus:
            per_run = job.gpus
            first = slot * per_run % self.gpus
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str((first + i) % self.gpus) for i in range(per_run))
        elif "OMP_NUM_THREADS" not in os.environ:  # the user's own setting wins (same threads, same float sums)
            env["OMP_NUM_THREADS"] = str(max(1, self.cores // self.slots))
        return env

    def run(self, jobs: list[Job], outcomes: dict[str, Outcome], progress: Callable[[set[str]], None]) -> None:
        """Runs every job, `slots` at a time; a failed one does not stop the others. A job that exits with the
        requeue code (it was sent a signal and saved) goes back in the queue and resumes."""
        queue = list(jobs)
        running: dict[int, _Running] = {}
        with forwarding_signals(lambda: [r.process for r in running.values()], tell(self.command)) as stop:
            try:
                while running or (queue and not stop.signal_name):  # once stopped, queued jobs wait for a rerun
                    for slot in range(self.slots):
                        if slot not in running and queue and not stop.signal_name:
                            running[slot] = self.start(slot, queue.pop(0))
                    for slot, run in list(running.items()):
                        code = run.ended()
                        if code is None:
                            continue
                        del running[slot]
                        if run.worker is not None and code == REQUEUE:
                            run.worker.close()  # it stops after a stopped training: the slot's next gets a new one
                        if code == REQUEUE and not stop.signal_name:
                            queue.append(run.job)
                        else:
                            outcomes[run.job.name].exit_code = code
                    progress({run.job.name for run in running.values()})
                    if running:
                        wait_any([r.process for r in running.values() if r.worker is None], timeout=2.0,
                                 pipes=[r.worker.results for r in running.values() if r.worker is not None])
            finally:
                for run in running.values():  # only on an error of the pool's own: its trainings save and stop
                    run.process.send_signal(signal.SIGTERM)
                if not self.keep or stop.signal_name or sys.exc_info()[0] is not None:
                    self.close()
            if stop.signal_name and stop.forced:
                raise Stopped(f"the {self.command} was stopped by {stop.signal_name}, and its running trainings ended "
                              "at once by a second signal; rerun the same command to resume them from their last "
                              "checkpoints")
            if stop.signal_name:
                raise Stopped(f"the {self.command} was stopped by {stop.signal_name}; its running trainings saved their "
                              "progress; rerun the same command to resume them")

    def close(self) -> None:
        """Ends the idle workers (each finishes at the end of its input) and waits for them."""
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    def start(self, slot: int, job: Job) -> _Running:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        env = self.env(slot, job)
        args = None if self.fresh else in_process_args(job.command)
        if args is None:
            log = open(job.run_dir / "train.log", "a")  # noqa: SIM115 (closed when the job ends)
            process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            return _Running(job, process, log=log)
        workers = self.workers
        worker = workers.get(slot)
        if worker is not None and (worker.env != env or worker.process.poll() is not None):
            worker.close()
            worker = None
        if worker is None:
            worker = workers[slot] = Worker(env, self.command)
        worker.command = self.command
        try:
            worker.send(args, job.run_dir / "train.log")
        except BrokenPipeError:  # it died while idle: a new one
            worker.close()
            worker = workers[slot] = Worker(env, self.command)
            worker.send(args, job.run_dir / "train.log")
        return _Running(job, worker.process, worker=worker)


def in_process_args(command: list[str]) -> list[str] | None:
    """The training flags of `python -m batchscale.cli train FLAGS`, which a worker can run; None for anything
    else (a launcher, another program), which runs as a process of its own."""
    if command[:4] == [sys.executable, "-m", "batchscale.cli", "train"]:
        return command[4:]
    return None


class Worker:
    """A long-lived trial worker process (study/worker.py) and the pipes it is driven through."""

    def __init__(self, env: dict[str, str], command: str = "sweep") -> None:
        self.env = env
        self.command = command  # the batchscale command it trains for, named in the line it leaves in a log
        # Unbuffered binary pipes: a readable pipe then always means an unread result, or the worker's end.
        self.process = subprocess.Popen([sys.executable, "-m", "batchscale.study.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, bufsize=0)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.jobs, self.results = self.process.stdin, self.process.stdout
        self.log: Path | None = None

    def send(self, args: list[str], log: Path) -> None:
        self.log = log
        self.jobs.write((json.dumps({"args": args, "log": str(log)}) + "\n").encode())

    def result(self) -> int | None:
        """The exit code of the training it was given, once it ended; if the worker itself died (killed, a
        crash in C code), its own exit status, said in the training's log. None while it runs."""
        if not select.select([self.results], [], [], 0)[0]:
            return None
        line = self.results.readline()
        if line:
            return int(json.loads(line)["exit_code"])
        code = self.process.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if self.log is not None and code != REQUEUE:  # REQUEUE: stopped before it began, nothing to report
            with contextlib.suppress(OSError), open(self.log, "a") as log:  # a full disk: the exit code says it
                log.write(f"batchscale {self.command}: error: the trial worker running this training (pid "
                          f"{self.process.pid}) ended with {how}; rerun the same command to resume it "
                          "(the next trainings run in a new worker)\n")
        return code

    def close(self) -> None:
        """Ends an idle worker (end of its input), and waits for it; one that does not end is killed."""
        with contextlib.suppress(OSError):
            self.jobs.close()
        try:
            self.process.wait(timeout=TEARDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.results.close()


TEARDOWN_SECONDS = 120  # a worker asked to stop mid-training saves a step checkpoint first


@dataclass
class _Running:
    """A training in a slot: its own process (`log` is its train.log), or a worker's current one."""

    job: Job
    process: subprocess.Popen
    log: IO[str] | None = None
    worker: Worker | None = None

    def ended(self) -> int | None:
        if self.worker is not None:
            return self.worker.result()
        code = self.process.poll()
        if code is not None and self.log is not None:
            self.log.close()
        return code


def wait_any(processes: list[subprocess.Popen], timeout: float, pipes: Sequence[IO[bytes]] = ()) -> None:
    """Returns when one of `processes` ends or one of `pipes` turns readable, or after `timeout` seconds (for
    the progress line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return
        left = min(0.2, max(0.0, deadline - time.monotonic()))
        if pipes:
            if select.select(list(pipes), [], [], left if processes else deadline - time.monotonic())[0]:
                return
            continue
        try:
            processes[0].wait(timeout=left)
        except subprocess.TimeoutExpired:
            pass


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class _Stop:
    signal_name: str | None = None
    forced: bool = False  # a second signal ended the trainings at once


@contextmanager
def forwarding_signals(children: Callable[[], list[subprocess.Popen]],
                       say: Callable[[str], None] | None = None) -> Iterator[_Stop]:
    """While trainings run, SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 to the sweep go on to each as SIGTERM (its
    graceful stop), so they save and end with the sweep instead of living on as orphans. (A sweep killed outright
    is seen by its trainings, which stop themselves: stopping.py.) A training saves at the end of its step, which on
    a CPU may be minutes away (a large batch, an evaluation): `say` tells the user at once what happens, and a
    second signal ends the trainings there and then (each resumes from its last checkpoint)."""
    stop = _Stop()

    def forward(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        running = children()
        if stop.signal_name is not None:
            if running and not stop.forced:
                stop.forced = True
                for process in running:
                    process.kill()
                if say is not None:
                    say(f"{name} again: ended the {len(running)} running training(s) at once; a rerun resumes each "
                        "from its last checkpoint")
            return
        stop.signal_name = name
        for process in running:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)  # a stopped child must run to act on it
        if running and say is not None:
            say(f"{name}: asked the {len(running)} running training(s) to save at the end of their step and stop "
                "(a step may take a while on this machine); a second signal ends them at once")

    if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
        yield stop
        return
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tell(command: str) -> Callable[[str], None]:
    """One line on stderr from `batchscale COMMAND`, as its errors are."""
    return lambda line: print(f"batchscale {command}: {line}", file=sys.stderr, flush=True)


# -- on a SLURM cluster --------------------------------------------------------------------------------------


@dataclass
class SlurmQueue:
    """One job array, one training per array task; each job runs its training's launcher (python, torchrun or
    horovodrun) inside the allocation, and requeues itself when the training was stopped by SLURM's signal."""

    folder: Path
    partition: str | None = None
    time_minutes: int = 60
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    sbatch: dict[str, str] = field(default_factory=dict)
    max_parallel: int = 64
    nodes: int = 1

    def submit(self, jobs: list[Job]) -> dict[str, str]:
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor slurm needs submitit: pip install 'batchscale[slurm]' (or pip install "
                              "submitit)") from None
        usable_cluster()
        executor = submitit.SlurmExecutor(folder=str(self.folder / "%j"), max_num_timeout=0)
        params: dict[str, Any] = {"time": self.time_minutes, "ntasks_per_node": 1, "nodes": self.nodes,
                                  "cpus_per_task": self.cpus_per_run, "array_parallelism": self.max_parallel,
                                  "signal_delay_s": 120, "additional_parameters": {"requeue": True, **self.sbatch}}
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        executor.update_parameters(**params)
        try:
            with executor.batch():
                submitted = [executor.submit(TrainingJob(job.command, str(job.run_dir))) for job in jobs]
        except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
            said = getattr(err, "stderr", None) or getattr(err, "output", None) or str(err)
            said = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
            first = next((line.strip() for line in said.splitlines() if line.strip()), type(err).__name__)
            raise ConfigError(f"SLURM refused the job array ({first}); nothing was submitted: check --partition, "
                              "--time, --gpus-per-run and --sbatch against the cluster (sinfo shows it)") from None
        return {job.name: str(s.job_id) for job, s in zip(jobs, submitted)}

    @staticmethod
    def alive(job_ids: list[str]) -> set[str]:
        """The jobs SLURM still has queued or running (squeue; no accounting database needed)."""
        if not job_ids:
            return set()
        out = ask_slurm(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(job_ids)])
        return set(out.split()) & set(job_ids)


def ask_slurm(command: list[str]) -> str:
    """A SLURM command's output, or one line saying why SLURM cannot be asked."""
    if shutil.which(command[0]) is None:
        raise ConfigError(f"--executor slurm needs SLURM's commands, and {command[0]} is not on PATH: run on the "
                          "cluster's login node, or use --executor local")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"SLURM did not answer {command[0]} within 60 s; try again, or use --executor local") from None
    if done.returncode != 0:
        first = next((line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()),
                     f"exit {done.returncode}")
        raise ConfigError(f"SLURM does not answer here ({command[0]}: {first}); start its controller or run on the "
                          "cluster's login node, or use --executor local")
    return done.stdout


def usable_cluster() -> None:
    """Before anything is submitted: sbatch exists and the controller answers (sinfo)."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs SLURM's sbatch, which is not on PATH: run on the cluster's login "
                          "node, or use --executor local")
    ask_slurm(["sinfo", "-h", "-o", "%P"])


class TrainingJob:
    """What an array task runs (pickled by submitit): the training, with its output in the run's train.log.

    SLURM's warning signal (scancel --signal, or a preemption) reaches the training, which saves a step
    checkpoint and exits with the requeue code; the job then requeues itself and resumes there."""

    def __init__(self, command: list[str], run_dir: str) -> None:
        self.command, self.run_dir = command, run_dir

    def __call__(self) -> int:
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        head = head_node() if any("{head}" in part for part in self.command) else ""
        command = [part.replace("{head}", head) for part in self.command]
        with open(run_dir / "train.log", "a") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})

            def forward(signum: int, frame: Any) -> None:
                process.send_signal(signal.SIGTERM)

            for sig in FORWARDED:
                signal.signal(sig, forward)
            code = process.wait()
        if os.environ.get("SLURM_NODEID", "0") != "0":
            return code  # the first node's task speaks for the job
        record = {"exit_code": code, "slurm_job": this_job(), "time": time.time()}
        (run_dir / "job.json").write_text(json.dumps(record) + "\n")
        if code == REQUEUE and "SLURM_JOB_ID" in os.environ:
            subprocess.run(["scontrol", "requeue", this_job()], check=False)
            return code
        if code != 0:
            raise RuntimeError(f"training exited {code}; see {run_dir / 'train.log'}")
        return code


def head_node() -> str:
    """The first node of this SLURM job: where a multi-node torchrun meets."""
    nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
    names = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split()
    return names[0] if names else "localhost"


def this_job() -> str:
    """This array task's own id, ARRAY_TASK. Not SLURM_JOB_ID: for an array's first task it equals the array's
    id, and requeueing that requeues every task of the array."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")
