"""The production seams: atomic writes (the old file or the new one, never half), the loop's hooks (a profiler's
way in, no patching), and imports that change nothing global."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from batchscale.atomic import write_atomic, write_json_atomic
from batchscale.config import Config
from batchscale.errors import OutputError
from batchscale.training.loop import Hook, train


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"done": 1})

    def fails(f) -> None:
        f.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="could not write"):
        write_atomic(path, fails)
    assert json.loads(path.read_text()) == {"done": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_hooks_wrap_every_epoch_update_and_epoch_end(tiny_cifar, tmp_path):
    seen: list[tuple[str, int]] = []

    class Recorder(Hook):
        def epoch(self, trainer):
            seen.append(("epoch", trainer.state.epoch + 1))
            return contextlib.nullcontext()

        def update(self, trainer, step):
            seen.append(("update", step))
            return contextlib.nullcontext()

        def end_epoch(self, trainer):
            seen.append(("end", trainer.state.epoch + 1))
            return contextlib.nullcontext()

    config = Config(train_dir=str(tiny_cifar), val_dir=str(tiny_cifar), log_dir=str(tmp_path), download=False,
                    no_cuda=True, width=4, batch_size=64, epochs=2, progress=False, train_subset=128)
    train(config, hooks=[Recorder()])
    assert seen == [("epoch", 1), ("update", 0), ("update", 1), ("end", 1),
                    ("epoch", 2), ("update", 2), ("update", 3), ("end", 2)]


def test_importing_batchscale_changes_nothing_global():
    """metrics.py quiets TensorBoard's writer thread only once a run's log opens, not on import."""
    code = ("import threading; before = threading.excepthook; import batchscale.metrics, batchscale.training.loop; "
            "print(threading.excepthook is before)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_a_checkpoint_holds_what_the_backend_says_the_state_is():
    """The model's and optimizer's state go through the backend (a sharded one gathers them); the schema around
    them (state.TrainState) stays the same."""
    import torch

    from batchscale.parallel.base import Backend
    from batchscale.state import TrainState

    class Halved(Backend):
        def model_state_dict(self, model):
            return {k: v / 2 for k, v in super().model_state_dict(model).items()}

        def load_model_state_dict(self, model, state):
            super().load_model_state_dict(model, {k: v * 2 for k, v in state.items()})

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    backend = Halved(Config(no_cuda=True))
    saved = TrainState(model, optimizer, None, {}, 1, owner=backend).state_dict()
    assert torch.equal(saved["model"]["weight"], model.weight.detach() / 2)
    other = torch.nn.Linear(2, 1)
    TrainState(other, torch.optim.SGD(other.parameters(), lr=0.1), None, {}, 1, owner=backend).load_state_dict(
        saved, "test")
    assert torch.equal(other.weight, model.weight)
