"""The command line: the original's flags (and ours) filled into a Config; a thin layer over `train()`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .config import BACKENDS, LR_SCALINGS, LR_SCHEDULES, MODELS, PRECISIONS, BatchscaleError, Config
from .distributed import launcher_rank

DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message says what to change.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _decay_epochs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 30,60,80, got {text!r}") from None


def add_train_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("data and outputs")
    g.add_argument("--train-dir", default=d.train_dir, help="folder holding cifar-10-batches-py/ for training (default: %(default)s)")
    g.add_argument("--val-dir", default=d.val_dir, help="folder holding cifar-10-batches-py/ for validation (default: %(default)s)")
    g.add_argument("--no-download", dest="download", action="store_false", help="never download CIFAR-10; stop if it is missing")
    g.add_argument("--log-dir", default=d.log_dir, help="TensorBoard events, metrics.jsonl and summary.json (default: %(default)s)")
    g.add_argument(
        "--checkpoint-format",
        default=d.checkpoint_format,
        help="checkpoint path with {epoch} (and optionally {log_dir}) (default: %(default)s)",
    )
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh even if checkpoints exist")
    g.add_argument("--resume", dest="resume_from", metavar="PATH", help="resume from this checkpoint (default: the newest of this run)")
    g.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=d.checkpoint_every_steps,
        metavar="K",
        help="also checkpoint every K steps inside an epoch, so a crash loses at most K steps (default: 0, off)",
    )
    g.add_argument(
        "--keep-checkpoints",
        type=int,
        default=d.keep_checkpoints,
        metavar="N",
        help="keep only the newest N epoch checkpoints (default: 0, keep all, as the original)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (epoch lines only)")

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs to train (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch per worker (default: %(default)s)")
    g.add_argument("--val-batch-size", type=int, default=d.val_batch_size, help="validation batch per worker (default: %(default)s)")
    g.add_argument(
        "--batches-per-allreduce",
        type=int,
        default=d.batches_per_allreduce,
        help="micro-batches accumulated locally per allreduce (default: %(default)s)",
    )

    g = p.add_argument_group("optimizer and learning rate")
    g.add_argument("--base-lr", type=float, default=d.base_lr, help="LR of one worker's batch (default: %(default)s)")
    g.add_argument("--lr-scaling", choices=LR_SCALINGS, default=d.lr_scaling, help="peak LR = base LR x this rule of workers x batches-per-allreduce (default: %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule, help="decay after warmup (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="epochs of per-step ramp from base LR to peak LR (default: %(default)s)")
    g.add_argument(
        "--warmup-start-lr",
        type=float,
        default=None,
        help="LR at the first warmup step (default: --base-lr, Goyal et al.'s ramp; set it lower to warm up one worker)",
    )
    g.add_argument("--lr-decay-epochs", type=_decay_epochs, default=d.lr_decay_epochs, help="epochs where --lr-schedule step multiplies the LR by --lr-decay-factor (default: 30,60,80)")
    g.add_argument("--lr-decay-factor", type=float, default=d.lr_decay_factor, help="(default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov, help="Nesterov momentum (default: on)")
    g.add_argument("--wd", type=float, default=d.wd, help="weight decay (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=d.model, help="(default: %(default)s)")
    g.add_argument("--width", type=int, default=d.width, help="channels of the first stage of --model resnet18 (default: %(default)s)")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="autocast dtype; fp16 adds a gradient scaler; auto = bf16 on GPUs, fp32 on CPUs (default: %(default)s)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is reported apart)")

    g = p.add_argument_group("distributed")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend, help="auto: from the launcher's environment (default: %(default)s)")
    g.add_argument("--fp16-allreduce", action="store_true", help="send gradients as fp16")
    g.add_argument("--bf16-allreduce", action="store_true", help="send gradients as bf16")
    g.add_argument("--use-adasum", action="store_true", help="combine gradients with Adasum instead of averaging")
    g.add_argument(
        "--gradient-predivide-factor",
        type=float,
        default=d.gradient_predivide_factor,
        help="divide gradients by this before the sum and by world size / this after, as Horovod (default: %(default)s)",
    )
    g.add_argument(
        "--simulate-workers",
        type=int,
        default=d.simulate_workers,
        metavar="N",
        help="run N workers' arithmetic in this process: each worker's batch its own forward pass (its own "
        "batch-norm statistics), gradients averaged, same data order and LR as N real workers (default: 1)",
    )
    g.add_argument(
        "--collective-timeout",
        type=float,
        default=d.collective_timeout,
        metavar="SECONDS",
        help="a rank waiting this long in a collective ends the job instead of hanging (default: %(default)s)",
    )

    g = p.add_argument_group("measurement")
    g.add_argument(
        "--target-accuracy",
        type=float,
        default=d.target_accuracy,
        help="summary.json records the steps and time to reach this test accuracy (default: %(default)s)",
    )
    g.add_argument(
        "--noise-every",
        type=int,
        default=d.noise_every,
        metavar="N",
        help="estimate the gradient noise scale every N steps (default: %(default)s)",
    )

    g = p.add_argument_group("reproducibility and devices")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels: bit-identical reruns on one machine")
    g.add_argument("--no-cuda", action="store_true", help="train on the CPU even if a GPU is present")
    g.add_argument(
        "--finite-check-every",
        type=int,
        default=d.finite_check_every,
        metavar="N",
        help="check for a NaN/inf loss every N steps and at epoch end (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    fields = Config.__dataclass_fields__
    return Config(**{k: v for k, v in vars(args).items() if k in fields})


def train_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train ResNet-18 on CIFAR-10 with synchronous data-parallel SGD.")
    add_train_flags(p)
    return p


def guarded(prog: str, work: Callable[[], str | None]) -> int:
    """Runs a command: its errors become one line and an exit code (2 for bad input), no traceback.

    One line per job: rank 0 says it, or the lowest rank that found a problem the ranks agreed on.
    """
    try:
        message = work()
    except BatchscaleError as err:
        if not err.quiet and (err.agreed or launcher_rank() == 0):
            print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if launcher_rank() == 0:
            print(f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    if message and launcher_rank() == 0:
        print(message)
    return 0


def run_train(argv: Sequence[str], prog: str) -> int:
    args = train_parser(prog).parse_args(argv)
    from .trainer import train

    def work() -> None:
        train(config_from_args(args))  # rank 0 has printed every epoch and written summary.json

    return guarded(prog, work)


def bench_parser() -> argparse.ArgumentParser:
    from .bench import BenchConfig

    d = BenchConfig()
    p = _Parser(prog="batchscale bench", description="Time training steps, ours against the original's pipeline.")
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds of ours and the bare loop (default: %(default)s)")
    p.add_argument("--data", choices=("synthetic", "real"), default=d.data)
    p.add_argument("--train-dir", default=d.train_dir, help="for --data real (default: %(default)s)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the original's pipeline")
    p.add_argument("--baseline-steps", type=int, default=d.baseline_steps)
    p.add_argument("--output", default=d.output, help="JSON results (default: %(default)s)")
    p.add_argument("--no-cuda", action="store_true")
    return p


def run_bench(argv: Sequence[str]) -> int:
    from .bench import BenchConfig, describe, run

    args = bench_parser().parse_args(argv)
    return guarded("batchscale bench", lambda: describe(run(BenchConfig(**vars(args)))))


def run_sweep(argv: Sequence[str]) -> int:
    from .sweep import LAUNCHERS, PRESETS, from_args, sweep

    argv = list(argv)
    train_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1 :]
    p = _Parser(prog="batchscale sweep", description="Run a grid of trainings; flags after -- go to every run.")
    p.add_argument("--out", default="sweep", help="sweep folder (default: %(default)s)")
    p.add_argument("--preset", choices=PRESETS, help="paper: the original's grid; critical-batch: global batch 32-8192")
    p.add_argument("--batch-sizes", help="per-worker batch sizes, comma-separated (critical-batch: global) (default: 64,128,256)")
    p.add_argument("--workers", default="1", help="worker counts (default: %(default)s)")
    p.add_argument("--lr-scalings", default="linear", help="(default: %(default)s)")
    p.add_argument("--base-lrs", default="0.1", help="(default: %(default)s)")
    p.add_argument("--seeds", default="42", help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=50, help="(default: %(default)s)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="simulate",
                   help="simulate: N workers' arithmetic in one process; torchrun/horovodrun: N real processes")
    args = p.parse_args(argv)

    def work() -> str:
        folders = sweep(from_args(args, train_args))
        return f"{len(folders)} runs done; next: batchscale report {folders[0].parent}"

    return guarded("batchscale sweep", work)


def run_report(argv: Sequence[str]) -> int:
    from .report import report

    p = _Parser(prog="batchscale report", description="Write report.md and PNG plots for a sweep folder.")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    return guarded("batchscale report", lambda: f"wrote {report(args.sweep_dir)}")


def run_plan(argv: Sequence[str]) -> int:
    from .plan import Network, describe_plan, measure_loopback, plan
    from .sweep import parse_list

    p = _Parser(prog="batchscale plan", description="Predict step time and time to target for N workers (alpha-beta ring allreduce).")
    p.add_argument("sweep_dir", help="a sweep folder with real single-worker runs")
    p.add_argument("--workers", default="1,2,4,8", help="worker counts to predict (default: %(default)s)")
    p.add_argument("--bandwidth", type=float, default=25.0, help="GB/s per link (default: %(default)s, 200 Gb/s)")
    p.add_argument("--latency", type=float, default=5.0, help="microseconds per message (default: %(default)s)")
    p.add_argument("--measure-loopback", action="store_true", help="fit bandwidth and latency to gloo on this machine instead")
    p.add_argument("--fp16-allreduce", action="store_true", help="2-byte gradients on the wire")
    args = p.parse_args(argv)

    def work() -> str:
        network = measure_loopback() if args.measure_loopback else Network(args.bandwidth, args.latency)
        result = plan(args.sweep_dir, network, parse_list(args.workers, int), 2 if args.fp16_allreduce else 4)
        return describe_plan(result)

    return guarded("batchscale plan", work)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": "train ResNet-18 on CIFAR-10 (see batchscale train --help)",
        "bench": "time training steps against the original's pipeline (see batchscale bench --help)",
        "sweep": "run a grid of trainings over batch sizes and workers (see batchscale sweep --help)",
        "report": "turn a sweep folder into report.md and plots",
        "plan": "predict step time and time to target for N workers from a sweep",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        listing = "\n".join(f"  {name:8s} {text}" for name, text in commands.items())
        print(f"usage: batchscale COMMAND [FLAGS]\n\ncommands:\n{listing}", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    runners = {"bench": run_bench, "sweep": run_sweep, "report": run_report, "plan": run_plan}
    if argv[0] in runners:
        return runners[argv[0]](argv[1:])
    return run_train(argv[1:], "batchscale train")


if __name__ == "__main__":
    import sys

    sys.exit(main())
