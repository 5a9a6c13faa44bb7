"""The command line: the original's flags (and ours) filled into a Config; a thin layer over `train()`. The
training command itself (its parser, Config and one-line errors) lives in command.py, below the study too."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .command import Parser as _Parser
from .command import guarded, run_train
from .command import train_config as train_config  # scripts' and tests' way in, as before the move
from .command import train_parser as train_parser
from .errors import BatchscaleError
from .flags import add_flags, build


def bench_parser() -> argparse.ArgumentParser:
    from .training.bench import BenchConfig

    p = _Parser(prog="batchscale bench", description="Time training steps, ours against the original's pipeline.")
    add_flags(p, BenchConfig)
    return p


def run_bench(argv: Sequence[str]) -> int:
    from .training.bench import BenchConfig, describe, run

    args = bench_parser().parse_args(argv)
    return guarded("batchscale bench", lambda: describe(run(build(BenchConfig, args))))


def split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the command's own flags, the flags after -- that go to every training)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def run_sweep(argv: Sequence[str]) -> int:
    from .study.sweep import SweepConfig, preset, status, sweep

    argv, train_args = split_train_args(argv)
    p = _Parser(prog="batchscale sweep", description="Run a grid of trainings; flags after -- go to every run.")
    add_flags(p, SweepConfig, only_given=True)
    given = vars(p.parse_args(argv))

    def work() -> str:
        config = SweepConfig(**given, train_args=tuple(train_args))
        if config.status:
            status(config)
            return ""
        if config.preset:
            config = preset(config.preset, config, set(given))
        folders = sweep(config)
        if not config.wait:
            return f"submitted; look again with: batchscale sweep --status --out {config.out}"
        return f"{len(folders)} runs done; next: batchscale report {folders[0].parent}"

    return guarded("batchscale sweep", work)


def run_study(argv: Sequence[str]) -> int:
    from .study.study import StudyConfig, study, study_preset
    from .study.runs import pyplot
    from .study.study_report import closing_line, write_report

    argv, train_args = split_train_args(argv)
    p = _Parser(prog="batchscale study", description="Measure the critical batch size (an LR grid per batch, trials "
                "that stop at a held-out target) and test the paper's grid; flags after -- go to every training.")
    add_flags(p, StudyConfig, only_given=True)
    for word in argv:
        name = word.split("=")[0]
        # The retired share of each trial's budget; "--warmup" would otherwise abbreviate --warmup-images.
        if name == "--warmup" or (name.startswith("--warmup-s") and "--warmup-share".startswith(name)):
            p.error(f"{name} is gone: the warmup is now the same in images at every batch size, --warmup-images N")
    given = vars(p.parse_args(argv))

    def work() -> str:
        config = StudyConfig(**given, train_args=tuple(train_args))
        if config.preset:
            config = study_preset(config.preset, config, set(given))
        if config.wait and not config.dry_run:
            pyplot()  # the report at the end draws plots: say now, not after hours of trials, if it cannot
        failed = study(config)
        if config.dry_run:
            return ""
        if not config.wait:
            return f"submitted; rerun the same command to wait for it and write the report in {config.out}"
        report = write_report(Path(config.out), config)
        if failed:
            raise BatchscaleError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see each folder's train.log, "
                                  f"fix, and rerun the same command (finished trials are kept). The report so far: {report}")
        return closing_line(report)

    return guarded("batchscale study", work)


def run_report(argv: Sequence[str]) -> int:
    from .study.sweep_report import report

    p = _Parser(prog="batchscale report", description="Write report.md and PNG plots for a sweep or study folder.")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)

    def work() -> str:
        folder = Path(args.sweep_dir)
        if (folder / "study.json").is_file():
            from .study.study import read_study
            from .study.study_report import write_report

            return f"wrote {write_report(folder, read_study(folder))}"
        return f"wrote {report(args.sweep_dir)}"

    return guarded("batchscale report", work)


def run_plan(argv: Sequence[str]) -> int:
    from .study.plan import Network, PlanConfig, describe_plan, measure_loopback, plan

    p = _Parser(prog="batchscale plan", description="Predict step time and time to target for N workers (alpha-beta ring allreduce).")
    p.add_argument("sweep_dir", help="a sweep folder with real single-worker runs")
    add_flags(p, PlanConfig)
    args = p.parse_args(argv)

    def work() -> str:
        config = build(PlanConfig, args)
        network = measure_loopback() if config.measure_loopback else Network(config.bandwidth, config.latency)
        result = plan(args.sweep_dir, network, config.workers, 2 if config.fp16_allreduce else 4)
        return describe_plan(result)

    return guarded("batchscale plan", work)


COMMANDS = {
    "train": "train ResNet-18 on CIFAR-10 (the same as python train.py)",
    "bench": "time training steps against the original's pipeline",
    "sweep": "run a grid of trainings over batch sizes and workers",
    "study": "measure the critical batch size and test the paper's grid",
    "report": "turn a sweep or study folder into report.md and plots",
    "plan": "predict step time and time to target for N workers from a sweep",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("batchscale")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def top_parser() -> argparse.ArgumentParser:
    """`batchscale COMMAND ...`: argparse subcommands for the listing, --version and an unknown command; each command
    then parses its own flags (a sweep's or study's flags after -- belong to its trainings, not to it)."""
    p = _Parser(prog="batchscale", description="Train ResNet-18 on CIFAR-10 with synchronous data-parallel SGD and "
                "measure how batch size and worker count change throughput and accuracy.",
                epilog="batchscale COMMAND --help shows a command's flags.")
    p.add_argument("--version", action="version", version=f"batchscale {version()}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(f"batchscale: error: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} "
              "(see batchscale --help)", file=sys.stderr)
        return 2
    try:
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv[:1])  # --help, --version, or a bad top-level flag; the command's own flags come next
    except SystemExit as exit:
        return int(exit.code or 0)
    runners = {"bench": run_bench, "sweep": run_sweep, "study": run_study, "report": run_report, "plan": run_plan}
    if argv[0] in runners:
        return runners[argv[0]](argv[1:])
    return run_train(argv[1:], "batchscale train")


if __name__ == "__main__":
    sys.exit(main())
