"""The top-level command line: subcommands, --version, an unknown command, one vocabulary across commands, and
help and errors in the user's words."""

from __future__ import annotations

import argparse

import pytest
from launch import one_line

from batchscale.cli import bench_parser, main, train_parser
from batchscale.flags import add_flags
from batchscale.study.study import StudyConfig
from batchscale.study.sweep import SweepConfig


def parser_for(cls: type) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_flags(p, cls)
    return p


def test_version_is_the_installed_one(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"batchscale {version('batchscale')}"


def test_an_unknown_command_is_named_with_the_known_ones(capsys):
    assert main(["trian", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("batchscale: error: unknown command 'trian'") and "train, bench, sweep" in err
    assert len(err.splitlines()) == 1


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "bench", "sweep", "study", "report", "plan")) and "--version" in out


def test_a_bad_list_value_says_what_was_expected(capsys):
    with pytest.raises(SystemExit):
        parser_for(SweepConfig).parse_args(["--batch-sizes", "x"])
    err = capsys.readouterr().err
    assert "expected a comma-separated list of ints, got 'x'" in err and "_ints" not in err


@pytest.mark.parametrize("cls,args,field,value", [
    (StudyConfig, ["--target-accuracy", "0.5"], "target", 0.5),  # train's name for the target
    (StudyConfig, ["--train-dir", "/d"], "data", "/d"),  # train's name for the data folder
])
def test_shared_names_are_accepted_beside_the_old_ones(cls, args, field, value):
    assert getattr(parser_for(cls).parse_args(args), field) == value


@pytest.mark.parametrize("given", [["--warmup-share", "0.1"], ["--warmup=0.05"], ["--warmup-sh", "0.1"]])
def test_the_retired_warmup_share_says_to_give_images(tmp_path, capsys, given):
    with pytest.raises(SystemExit) as exit_code:
        main(["study", "--out", str(tmp_path / "s"), *given])
    assert exit_code.value.code == 2 and "--warmup-images N" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_train_and_bench_take_the_shared_names():
    assert train_parser("t").parse_args(["--out", "o"]).log_dir == "o"
    assert train_parser("t").parse_args(["--log-dir", "o"]).log_dir == "o"
    assert bench_parser().parse_args(["--untimed-steps", "3"]).warmup == 3
    assert bench_parser().parse_args(["--out", "b.json"]).output == "b.json"


def test_no_help_text_states_its_default_twice():
    for parser in (train_parser("t"), bench_parser(), parser_for(SweepConfig), parser_for(StudyConfig)):
        for action in parser._actions:
            assert (action.help or "").count("default") <= 1 or "(default: default)" in action.help, action.help


def test_study_no_wait_help_does_not_send_the_user_to_the_sweep():
    wait = next(a for a in parser_for(StudyConfig)._actions if "--no-wait" in a.option_strings)
    assert "sweep" not in wait.help and "rerun the same command" in wait.help
