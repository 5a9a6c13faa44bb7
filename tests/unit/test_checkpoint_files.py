"""Checkpoint files and state, without training: one scan of the folder, layouts restored to match the weights."""

from __future__ import annotations

import glob

import torch

from batchscale import checkpoint
from batchscale.config import Config


def test_start_up_scans_the_checkpoint_folder_once_whatever_the_epoch_count(tmp_path, monkeypatch):
    for name in ("checkpoint-1.pth.tar", "checkpoint-7.pth.tar", "checkpoint-7.pth.tar.partial", "checkpoint-8.pth.tar.partial",
                 "checkpoint-x.pth.tar", ".checkpoint-8.pth.tar.partial.abc123.tmp", ".unrelated.tmp"):
        (tmp_path / name).touch()
    calls = []
    real_glob = glob.glob
    monkeypatch.setattr(glob, "glob", lambda pattern, **kw: calls.append(pattern) or real_glob(pattern, **kw))
    config = Config(log_dir=str(tmp_path), epochs=10**12)
    assert [p.name for p in checkpoint.candidates(config)] == [
        "checkpoint-8.pth.tar.partial", "checkpoint-7.pth.tar", "checkpoint-7.pth.tar.partial", "checkpoint-1.pth.tar"]
    assert len(calls) == 2  # the epoch files and the .partial ones
    checkpoint.remove_stale_temporaries(config)
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".unrelated.tmp"]
    assert [p.name for p in checkpoint.candidates(Config(log_dir=str(tmp_path), epochs=7))][0] == "checkpoint-7.pth.tar"


def test_restored_momentum_takes_the_layout_of_its_weights():
    """A checkpoint from contiguous weights (a CPU run) restored into channels_last ones (a GPU run)."""
    from batchscale.models import CifarResNet18
    from batchscale.state import TrainState

    def state(memory_format: torch.memory_format) -> TrainState:
        torch.manual_seed(0)
        model = CifarResNet18(width=4).to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
        return TrainState(model, optimizer, None, Config().to_dict(), 1)

    saved = state(torch.contiguous_format).state_dict()
    target = state(torch.channels_last)
    target.load_state_dict(saved, source="test")
    conv = target.model.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    momentum = target.optimizer.state[conv]["momentum_buffer"]
    assert momentum.stride() == conv.stride()
    assert torch.equal(momentum, saved["optimizer"]["state"][0]["momentum_buffer"])


def test_format_1_and_2_checkpoints_load_with_the_clock_they_imply_and_others_are_refused_by_version(tmp_path):
    """Format 1 (before settings changes were recorded) has every entry format 2 has but `changes`; neither stored
    the run clock, which at their fixed global batch is their step and epoch step times that batch."""
    import pytest

    from batchscale.errors import ConfigError
    from batchscale.models import CifarResNet18
    from batchscale.state import RunClock, TrainState

    model = CifarResNet18(width=4)
    config = Config(batch_size=16, batches_per_allreduce=2).to_dict()
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), None, config, 3)
    old = state.state_dict()
    for key in ("images", "epoch_images", "whole_epochs"):
        del old[key]
    record = {key: 1.0 for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds",
                                   "train_seconds", "wall_seconds")}
    old.update(epoch=1, epoch_step=3, step=13, history=[{**record, "epoch": 1, "step": 10, "images": 960}])
    for version in (1, 2):
        written = {**old, "format_version": version}
        if version == 1:
            del written["changes"]
        torch.save(written, tmp_path / f"v{version}.pth.tar")
        restored = TrainState(CifarResNet18(width=4), torch.optim.SGD(model.parameters(), lr=0.1), None, {}, 1)
        restored.load_state_dict(checkpoint.load(tmp_path / f"v{version}.pth.tar"), source=f"v{version}")
        # 3 workers x 16 x 2 = 96 images a step: 13 steps, 3 of them into epoch 2
        assert restored.clock == RunClock(step=13, images=13 * 96, epoch=1, epoch_step=3, epoch_images=3 * 96,
                                          whole_epochs=1)
        assert restored.changes == []
    torch.save({**old, "format_version": 4}, tmp_path / "v4.pth.tar")
    with pytest.raises(ConfigError, match="checkpoint format 4, this batchscale reads formats 1, 2, 3"):
        checkpoint.load(tmp_path / "v4.pth.tar")
    torch.save({**state.state_dict(), "epoch_step": 2}, tmp_path / "torn.pth.tar")  # a step into the epoch, no image
    with pytest.raises(ConfigError, match="its clock is inconsistent"):
        checkpoint.load(tmp_path / "torn.pth.tar")
