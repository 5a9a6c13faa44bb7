"""Bad input: every case exits 2 with one line that says what to change, and touches no output."""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from batchscale.cli import main, run_train
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.state import TrainState

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--val-batch-size", "-3"], "--val-batch-size must be an integer >= 1"),
    (["--batches-per-allreduce", "0"], "--batches-per-allreduce must be an integer >= 1"),
    (["--width", "0"], "--width must be an integer >= 1"),
    (["--checkpoint-format", "ckpt.pth.tar"], "has no {epoch} field"),
    (["--checkpoint-format", "ckpt-{epoch.pth"], "is not a valid format"),
    (["--checkpoint-format", "ckpt-{step}-{epoch}.pt"], "unknown field"),
    (["--checkpoint-format", "ckpt-{epoch!z}.pt"], "checkpoint-format"),
    (["--base-lr", "-1"], "--base-lr must be a positive number"),
    (["--base-lr", "nan"], "--base-lr must be a positive number"),
    (["--gradient-predivide-factor", "0"], "--gradient-predivide-factor must be a positive number"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--momentum", "0"], "Nesterov momentum needs --momentum > 0"),
    (["--wd", "-0.1"], "--wd must be a number >= 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be a number >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--lr-decay-epochs", "60,30"], "--lr-decay-epochs must be increasing"),
    (["--lr-decay-epochs", "x"], "expected comma-separated epochs"),
    (["--fp16-allreduce", "--bf16-allreduce"], "choose one of --fp16-allreduce and --bf16-allreduce"),
    (["--model", "resnet50"], "invalid choice"),
    (["--model", "resnet18-imagenet", "--width", "8"], "--width applies to --model resnet18 only"),
    (["--batch-size", "abc"], "invalid int value"),
    (["--lr-schedule", "linear"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--backend", "torch"], "needs a launcher that sets"),
    (["--batch-size", "400"], "larger than the 320 training images"),
    (["--log-dir", "{file}/logs"], "is a file, not a folder"),
    (["--checkpoint-format", "{file}/ckpt/{epoch}.pt"], "is a file, not a folder"),
    (["--train-dir", "{missing}"], "training batches not found"),
    (["--val-dir", "{missing}"], "test batches not found"),
    (["--train-dir", "{corrupt}"], "truncated or corrupt"),
    (["--checkpoint-every-steps", "-1"], "--checkpoint-every-steps must be an integer >= 0"),
    (["--keep-checkpoints", "-2"], "--keep-checkpoints must be an integer >= 0"),
    (["--max-steps", "-5"], "--max-steps must be an integer >= 0"),
    (["--eval-growth", "3"], "--eval-growth must be in (1, 2]"),
    (["--holdout", "3"], "--holdout must be 0 (none) or at least 8"),
    (["--holdout", "160"], "--holdout 160 is half or more of the 320 training images"),
    (["--collective-timeout", "0"], "--collective-timeout must be a positive number"),
    (["--finite-check-every", "0"], "--finite-check-every must be an integer >= 1"),
    (["--resume", "{missing}/ckpt.pth.tar"], "does not exist"),
    (["--resume", "{file}"], "cannot load checkpoint"),
    (["--resume", "{file}", "--no-resume"], "contradict each other"),
    (["--use-adasum", "--gradient-predivide-factor", "2"], "applies to averaging only"),
    (["--bf16-allreduce", "--backend", "horovod"], "Horovod"),
    (["--compile", "--backend", "horovod"], "--compile is not supported under Horovod"),
    (["--compile-mode", "reduce-overhead"], "applies to compiled runs; add --compile"),
    (["--simulate-workers", "0"], "--simulate-workers must be an integer >= 1"),
    (["--simulate-workers", "2", "--use-adasum"], "cannot simulate Adasum"),
    (["--precision", "fp16", "--use-adasum"], "needs a gradient scaler"),
    (["--precision", "fp8"], "invalid choice"),
    (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1]"),
    (["--noise-every", "0"], "--noise-every must be an integer >= 1"),
    (["--warmup-start-lr", "-1"], "--warmup-start-lr must be a number >= 0"),
    (["--seed", str(2**64)], "--seed must be an integer from 0 to 2**64 - 1"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1"),
    (["--collective-timeout", "1e20"], "--collective-timeout must be at most"),
    (["--train-dir", "{unreadable}"], "cannot read"),
    (["--train-dir", "{labels2d}"], "labels must be a flat list"),
    (["--resume", "{ckpt:history}"], "its 'history' entry is malformed"),
    (["--resume", "{ckpt:model}"], "its 'model' entry is malformed"),
    (["--resume", "{ckpt:rng}"], "its 'rng' entry is malformed"),
    (["--resume", "{ckpt:noise}"], "its 'noise' entry is malformed"),
    (["--resume", "{ckpt:past-the-end}"], "stops at step 99 of an epoch (3168 images in) that has 10 steps of 32 images"),
    (["--resume", "{ckpt:other-shapes}"], "does not fit this model"),
    (["--resume", "{ckpt:format-9}"], "checkpoint format 9"),
]


@pytest.fixture
def places(tmp_path, tiny_cifar, bad_checkpoints):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    corrupt = tmp_path / "corrupt"
    (corrupt / "cifar-10-batches-py").mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (corrupt / "cifar-10-batches-py" / name).write_bytes(b"\x80\x02}q\x00")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(tiny_cifar, unreadable)
    (unreadable / "cifar-10-batches-py" / "data_batch_2").unlink()
    (unreadable / "cifar-10-batches-py" / "data_batch_2").mkdir()  # reading it fails with an OSError, even as root
    labels2d = tmp_path / "labels2d"
    shutil.copytree(tiny_cifar, labels2d)
    batch = labels2d / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    raw[b"labels"] = [[label] for label in raw[b"labels"]]
    with open(batch, "wb") as f:
        pickle.dump(raw, f, protocol=2)
    return {"file": str(a_file), "missing": str(tmp_path / "nowhere"), "corrupt": str(corrupt), "data": str(tiny_cifar),
            "unreadable": str(unreadable), "labels2d": str(labels2d), **bad_checkpoints}


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Checkpoints of a run with the flags every case uses (width 4, batch 32, 2 epochs), each damaged one way."""
    folder = tmp_path_factory.mktemp("bad-checkpoints")
    config = Config(epochs=2, width=4, batch_size=32, no_cuda=True, log_dir=str(folder))

    def good(width: int = 4) -> dict:
        model = CifarResNet18(width=width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        return TrainState(model, optimizer, None, config.to_dict(), 1).state_dict()

    damaged = {
        "history": lambda s: s.update(history=[{"epoch": "one"}], epoch=1),
        "model": lambda s: s.update(model={"stem.0.weight": "not a tensor"}),
        "rng": lambda s: s.update(rng={"torch": "seed"}),
        "noise": lambda s: s.update(noise=[1, 2]),
        "past-the-end": lambda s: s.update(epoch_step=99, step=99, epoch_images=99 * 32, images=99 * 32),
        "other-shapes": lambda s: s.update(model=good(width=8)["model"]),
        "format-9": lambda s: s.update(format_version=9),
    }
    places = {}
    for name, damage in damaged.items():
        state = good()
        damage(state)
        torch.save(state, folder / f"{name}.pth.tar")
        places[f"ckpt:{name}"] = str(folder / f"{name}.pth.tar")
    return places


@pytest.mark.parametrize("flags,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_exits_2_with_one_line(flags, message, places, tmp_path, capsys, monkeypatch):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "keep.txt").write_text("earlier output")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for name, value in places.items():
        flags = [f.replace("{" + name + "}", value) for f in flags]
    base = ["--train-dir", places["data"], "--val-dir", places["data"], "--log-dir", str(log_dir), "--no-download"]
    base += ["--no-cuda", "--epochs", "2", "--width", "4", "--batch-size", "32", "--no-progress"]
    with pytest.raises(SystemExit) if _is_argparse_case(message) else _nothing() as exited:
        rc = run_train(base + flags, "train.py")
    if exited is not None:
        rc = exited.value.code
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in log_dir.iterdir()) == ["keep.txt"]
    assert (log_dir / "keep.txt").read_text() == "earlier output"


def _is_argparse_case(message: str) -> bool:
    return message in ("invalid choice", "invalid int value", "unrecognized arguments", "expected comma-separated epochs")


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_real_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--batch-size", "0", "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "train.py: error: --batch-size must be an integer >= 1 (got 0)"
    assert not (tmp_path / "logs").exists()


def test_missing_data_offline_names_the_layout_and_the_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "batchscale.cli", "train", "--no-download", "--train-dir", str(tmp_path / "d"),
         "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "cifar-10-batches-py" in result.stderr and "--train-dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_console_script_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["nonsense"]) == 2


def test_readme_flag_table_lists_exactly_the_parsers_flags():
    """The README's table and the parser (generated from Config) must agree: a flag added, renamed or dropped in
    one place and not the other fails here."""
    import re

    from batchscale.cli import train_parser

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Flags"):].split("\n\n")[1]
    documented = set()
    for row in table.splitlines()[2:]:
        documented |= set(re.findall(r"`(--[a-z0-9-]+)", row.split("|")[1]))
    parsed = {o for action in train_parser("train.py")._actions for o in action.option_strings} - {"-h", "--help"}
    assert documented == parsed, f"only in README: {documented - parsed}; only in the parser: {parsed - documented}"
