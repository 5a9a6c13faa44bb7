"""One vocabulary across commands: a setting has the same flag in train, sweep and study (old spellings kept as
aliases), the original's flags all still parse, and each command's --help lists what it measures before where it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchscale.errors import ConfigError
from batchscale.study.sweep import Run, SweepConfig, command

# Every flag of the original train.py (its README's table and examples), with a value it took.
ORIGINAL = [("--train-dir", "./d"), ("--val-dir", "./d"), ("--log-dir", "./logs"), ("--checkpoint-format",
            "./checkpoint-{epoch}.pth.tar"), ("--epochs", "50"), ("--batch-size", "256"), ("--val-batch-size", "256"),
            ("--base-lr", "0.1"), ("--warmup-epochs", "5"), ("--batches-per-allreduce", "1"), ("--fp16-allreduce",),
            ("--use-adasum",)]


def help_of(command_name: str) -> str:
    result = subprocess.run([sys.executable, "-m", "batchscale.cli", command_name, "--help"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def headings(text: str) -> list[str]:
    """The group headings of an argparse help text, in the order shown."""
    return [line[:-1] for line in text.splitlines() if re.fullmatch(r"[a-z][^ ].*:", line) and line != "options:"]


def parsed(command_name: str, argv: list[str]) -> dict:
    """What a command's own parser makes of `argv` (only the flags given), as the command line would."""
    import argparse

    from batchscale.flags import add_flags
    from batchscale.study.study import StudyConfig

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, {"study": StudyConfig, "sweep": SweepConfig}[command_name], only_given=True)
    return vars(parser.parse_args(argv))


def test_every_flag_of_the_original_still_parses():
    from batchscale.cli import train_config

    config = train_config([word for pair in ORIGINAL for word in pair])
    assert (config.train_dir, config.val_dir, config.epochs, config.batch_size, config.base_lr) == ("./d", "./d", 50,
                                                                                                    256, 0.1)
    assert config.fp16_allreduce and config.use_adasum and config.log_dir == "./logs"


@pytest.mark.parametrize("argv,field,value", [
    (["--lr-schedule", "linear"], "schedule", "linear"), (["--schedule", "linear"], "schedule", "linear"),
    (["--train-dir", "/d"], "data", "/d"), (["--data", "/d"], "data", "/d"),
    (["--target-accuracy", "0.5"], "target", 0.5), (["--target", "0.5"], "target", 0.5),
])
def test_study_takes_the_training_spellings_and_keeps_its_old_ones(argv, field, value):
    assert parsed("study", argv) == {field: value}


def test_the_study_help_names_the_training_spellings_first():
    text = help_of("study")
    assert "--lr-schedule {constant,linear}, --schedule {constant,linear}" in text
    assert "--train-dir DIR, --data DIR" in text


def test_sweep_takes_width_and_data_without_the_double_dash(tmp_path):
    given = parsed("sweep", ["--width", "8", "--data", str(tmp_path)])
    assert given == {"width": 8, "train_dir": str(tmp_path)}
    config = SweepConfig(out=str(tmp_path / "sw"), **given).validate()
    args = command(config, Run(32, 1, "linear", 0.1, 42), tmp_path / "r")
    after = {flag: args[len(args) - 1 - args[::-1].index(flag) + 1] for flag in ("--width", "--train-dir", "--val-dir")}
    assert after == {"--width": "8", "--train-dir": str(tmp_path.absolute()), "--val-dir": str(tmp_path.absolute())}


def test_sweep_still_takes_them_after_the_double_dash_and_refuses_both(tmp_path):
    config = SweepConfig(out=str(tmp_path), train_args=("--width", "8")).validate()
    args = command(config, Run(32, 1, "linear", 0.1, 42), tmp_path / "r")
    assert args.count("--width") == 1 and args[args.index("--width") + 1] == "8"
    with pytest.raises(ConfigError, match="use batchscale sweep --width"):
        SweepConfig(out=str(tmp_path), width=4, train_args=("--width", "8")).validate()


@pytest.mark.parametrize("command_name,first,later", [
    ("study", "the critical-batch protocol", "where the trainings run"),
    ("sweep", "the grid (flags after -- go to every run)", "where the trainings run"),
    ("train", "epochs and batch", "outputs and checkpoints"),
])
def test_each_help_lists_what_is_measured_before_where_it_runs(command_name, first, later):
    text = help_of(command_name)
    shown = headings(text)
    assert shown[0] == first and later in shown, shown
    # The usage line follows the same order: the first flag it lists belongs to the first group.
    usage = text.split("\n\n")[0]
    first_flag = re.search(r"\[(--[a-z0-9-]+)", usage).group(1)
    section = text[text.index(f"\n{first}:"):]
    assert f"  {first_flag}" in section.split("\n\n")[0], (first_flag, section[:300])
    if command_name == "train":
        assert shown.index("optimizer and learning rate") < shown.index("outputs and checkpoints") < \
            shown.index("reproducibility and devices")


def test_the_readme_uses_the_common_spellings():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    old = [part for part in text.split("\n\n") if re.search(r"(?<![a-z-])--schedule\b", part)]
    assert all("--lr-schedule" in part for part in old), old  # the old name only beside the new one
    quick = text[text.index("## Quick start"):]
    quick = quick[:quick.index("```", quick.index("```bash") + 7)]
    assert "-- --width" not in quick  # one spelling of --width in the quick start, sweep and train alike
