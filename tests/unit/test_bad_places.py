"""Output places no file system can hold, models no memory can hold, and a SLURM that is not there: each is one
line before anything runs, never a traceback or a run recorded as queued."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from launch import cli, one_line

from batchscale.errors import ConfigError
from batchscale.models import check_fits, parameter_count
from batchscale.study.sweep import SweepConfig, status, sweep

import torch


def places(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "sub")
    (tmp_path / "into-proc").symlink_to("/proc/sys")  # exists, and not even root may create files there
    return {"dangling": str(tmp_path / "dangling"), "into-proc": str(tmp_path / "into-proc" / "logs"),
            "long-name": str(tmp_path / ("n" * 300)), "long-path": str(tmp_path / "/".join(["deep" * 20] * 60))}


BAD_PLACES = [("dangling", "is a symlink to"), ("into-proc", "is not writable"),
              ("long-name", "names stop at 255"), ("long-path", "paths stop at 4095")]


@pytest.mark.parametrize("place,message", BAD_PLACES, ids=[p for p, _ in BAD_PLACES])
@pytest.mark.parametrize("command,flag", [("train", "--log-dir"), ("train", "--checkpoint-format"),
                                          ("sweep", "--out"), ("study", "--out")])
def test_an_output_place_that_cannot_exist_is_one_line(tmp_path, tiny_cifar, capsys, place, message, command, flag):
    where = places(tmp_path)[place]
    value = f"{where}/ck-{{epoch}}.pt" if flag == "--checkpoint-format" else where
    rest = {"train": ["--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--no-download", "--width", "2"],
            "sweep": ["--epochs", "1"], "study": ["--data", str(tiny_cifar), "--width", "2"]}[command]
    if flag == "--checkpoint-format":
        rest += ["--log-dir", str(tmp_path / "logs")]
    code, err = cli(command, flag, value, *rest, capsys=capsys)
    assert code == 2 and message in one_line(err) and flag in one_line(err)


def test_parameters_are_counted_without_allocating(monkeypatch):
    # The meta-device count against a real model's: the same number, and a width no memory holds is still counted.
    assert parameter_count("resnet18", 16) == sum(p.numel() for p in
                                                  __import__("batchscale.models").models.CifarResNet18(width=16).parameters())
    assert parameter_count("resnet18", 10**6) > 10**12


def test_a_model_wider_than_memory_is_refused_before_any_data_is_read(tmp_path, capsys):
    code, err = cli("train", "--width", "100000", "--no-cuda", "--train-dir", str(tmp_path / "no-data"),
                    "--no-download", "--log-dir", str(tmp_path / "logs"), capsys=capsys)
    assert code == 2 and "--width 100000" in one_line(err) and "GiB" in one_line(err)
    with pytest.raises(ConfigError, match="more than any memory holds"):
        check_fits("resnet18", 10**8, torch.device("cpu"))


def fake_slurm(folder: Path, sinfo_exit: int) -> None:
    """sbatch that must never be called, and sinfo that answers as a cluster without a controller does."""
    folder.mkdir()
    (folder / "sbatch").write_text(f"#!/bin/sh\ntouch {folder}/sbatch-called\nexit 1\n")
    (folder / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller "
                                  f"(connect failure)' >&2\nexit {sinfo_exit}\n")
    for tool in ("sbatch", "sinfo"):
        os.chmod(folder / tool, 0o755)


@pytest.mark.parametrize("cluster", ["absent", "controller down"])
def test_a_slurm_sweep_without_a_usable_cluster_submits_nothing_and_says_so(tmp_path, tiny_cifar, monkeypatch, cluster):
    tools = tmp_path / "bin"
    if cluster == "absent":
        tools.mkdir()
    else:
        fake_slurm(tools, sinfo_exit=1)
    monkeypatch.setenv("PATH", str(tools))
    config = SweepConfig(out=str(tmp_path / "sweep"), batch_sizes=(16, 32), epochs=1, executor="slurm")
    with pytest.raises(ConfigError) as refused:
        sweep(config, say=lambda *a, **k: None)
    said = str(refused.value)
    assert ("not on PATH" in said) if cluster == "absent" else ("Unable to contact slurm controller" in said)
    assert not (tools / "sbatch-called").exists() and not (tmp_path / "sweep" / "jobs.json").exists()
    lines: list[str] = []
    status(config, say=lambda text, **kw: lines.append(text))
    assert all("not submitted" in line for line in lines[1:]) and len(lines) == 3
    assert "2 not submitted" in lines[0]


def _read_only(errno_code: int):
    def refuse(path, *args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code), str(path))
    return refuse


@pytest.mark.parametrize("under", ["", "new/logs"], ids=["existing", "new-folder-under-it"])
def test_a_read_only_log_dir_is_one_line_and_exit_2(tmp_path, tiny_cifar, capsys, monkeypatch, under):
    # What a read-only file system answers: EROFS to the probe's open and to its cleanup's unlink (not ENOENT).
    import batchscale.rundir as rundir

    monkeypatch.setattr(rundir, "open", _read_only(errno.EROFS), raising=False)
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (
        _read_only(errno.EROFS)(self) if ".batchscale-write-test" in self.name else real_unlink(self, missing_ok)))
    code, err = cli("train", "--log-dir", str(tmp_path / under), "--train-dir", str(tiny_cifar), "--val-dir",
                    str(tiny_cifar), "--no-download", "--width", "2", capsys=capsys)
    assert code == 2 and "read-only file system" in one_line(err) and "--log-dir" in one_line(err)


def test_a_read_only_bind_mount_as_log_dir_is_one_line_and_exit_2(tmp_path, tiny_cifar, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-o", "bind,ro", str(ro), str(ro)], capture_output=True).returncode:
        pytest.skip("needs root and a mount namespace that allows a read-only bind mount")
    try:
        for place in (ro, ro / "new" / "logs"):
            code, err = cli("train", "--log-dir", str(place), "--train-dir", str(tiny_cifar), "--val-dir",
                            str(tiny_cifar), "--no-download", "--width", "2", capsys=capsys)
            assert code == 2 and "read-only file system" in one_line(err), err
    finally:
        subprocess.run(["umount", str(ro)], check=True)
