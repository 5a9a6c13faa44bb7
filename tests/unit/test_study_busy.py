"""What a study says where it cannot do what it was asked: paper-grid cells that never ran (a batch larger than
the data) named with that reason, not as diverged or unfinished; a second study in a folder a study holds
refused in one line; a GPU preset on a machine without one said at the start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import cli, one_line
from study_fakes import RecordingTraining

from batchscale.rundir import RunLock
from batchscale.study import paper
from batchscale.study import study as study_module


def finished_paper_run(folder: Path, acc: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"final_val_acc": acc}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": acc, "holdout_acc": acc}) + "\n")


def test_paper_cells_larger_than_the_data_are_named_as_never_run(tmp_path):
    # 300 training images: 4 workers x 128 or 256 is more than the data; 8 to 64 ran, each with a figure.
    plan = paper.PaperPlan(1, (1,), 1, 300, 8, 300, ())
    for b in (8, 16, 32, 64):
        finished_paper_run(tmp_path / f"paper/b{b}-paper-lr-s1", 0.3 + b / 1000)
    rows = paper.paper_results(tmp_path, plan, {})
    never = {r["per_worker_batch"]: r.get("not_run") for r in rows}
    assert [b for b, why in never.items() if why] == [128, 256]
    assert all("more than the 300 training images" in never[b] for b in (128, 256))
    text = "\n".join(paper.paper_section(rows, plan))
    assert "diverged at every seed" not in text and "not finished" not in text
    for b in (128, 256):
        row = next(line for line in text.splitlines() if line.startswith(f"| {b} |"))
        assert "never run" in row and "300 training images" in row
    assert "the largest batch here is per-worker 64" in text


@pytest.fixture
def training(monkeypatch) -> RecordingTraining:
    fake = RecordingTraining()
    monkeypatch.setattr(study_module, "execute", fake)
    monkeypatch.setattr("batchscale.study.runs.pyplot", lambda: None)
    monkeypatch.setattr("batchscale.study.study_report.write_plots", lambda *a, **k: [])
    return fake


def small_study(out: Path, data: Path) -> list[str]:
    return ["study", "--out", str(out), "--data", str(data), "--batch-sizes", "16,32,64", "--lr-points", "1",
            "--extend-edges", "0", "--holdout", "32", "--width", "4", "--seeds", "1", "--no-paper"]


def test_a_second_study_in_a_folder_a_study_holds_is_refused_in_one_line(tiny_cifar, tmp_path, capsys, training):
    out = tmp_path / "st"
    out.mkdir()
    held = RunLock([out], "--out").acquire()  # as the first study holds it for its life (flock: per open file)
    try:
        code, err = cli(*small_study(out, tiny_cifar), capsys=capsys)
    finally:
        held.release()
    line = one_line(err)
    assert code == 2 and "another study" in line and "pid " in line and "--out" in line
    assert training.sent == [] and not (out / "study.json").exists()
    # Once the first has ended, the folder is free: the study runs, and leaves no lock behind.
    assert cli(*small_study(out, tiny_cifar), capsys=capsys)[0] == 0 and training.sent
    assert not (out / ".batchscale.lock").exists()


def test_a_gpu_preset_on_a_machine_without_one_says_so_before_it_trains(tiny_cifar, tmp_path, capsys, training,
                                                                        monkeypatch):
    monkeypatch.setattr(study_module, "estimate_device", lambda config: "cpu")  # as on a machine without a GPU
    said: list[str] = []
    real = study_module.execute

    def first_training(*args, **kwargs):
        said.append(capsys.readouterr().out)  # what was printed before anything trained
        real(*args, **kwargs)

    monkeypatch.setattr(study_module, "execute", first_training)
    code, _ = cli("study", "--preset", "gpu", "--out", str(tmp_path / "st"), "--data", str(tiny_cifar),
                  "--holdout", "32", "--batch-sizes", "64,128,256", "--slots", "1", capsys=capsys)
    assert code == 0 and said
    assert "--preset gpu is meant for a GPU, and this machine has none" in said[0] and "GPU-minutes" in said[0]
    assert "--dry-run" in said[0]
