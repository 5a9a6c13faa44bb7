"""A stand-in for a study's trainings (its `execute`): each pending run's record written as the trainer writes it,
with the config `batchscale train` parses from the very flags the run was sent, and the names it was sent."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from batchscale.cli import train_config


def steps_to_target(batch: int, lr: float) -> int:
    return round(20 * (1 + 64 / batch) * (1 + abs(math.log2(lr / 0.02))))


class RecordingTraining:
    """Reaches the target at `steps(batch, lr)` if that is within the trial's budget, else misses it at the budget;
    a paper run (no step budget) ends at its epochs."""

    def __init__(self, steps: Callable[[int, float], int] = steps_to_target) -> None:
        self.sent: list[str] = []
        self.steps = steps

    def __call__(self, config, out, pending, progress, say) -> None:
        for job in pending:
            self.sent.append(job.name)
            args = job.command[job.command.index("train") + 1:]
            trained = train_config(args)
            batch = trained.batch_size * trained.batches_per_allreduce
            steps = self.steps(batch, trained.base_lr)
            paper = trained.max_steps == 0
            reached = not paper and steps <= trained.max_steps
            job.run_dir.mkdir(parents=True, exist_ok=True)
            trial = {"ended": "epochs" if paper else "target" if reached else "budget",
                     "reached": {"step": steps, "previous_eval": steps - 1} if reached else None,
                     "max_steps": trained.max_steps, "best_acc": 0.3, "evals": []}
            (job.run_dir / "summary.json").write_text(json.dumps({
                "config": trained.to_dict(), "trial": trial, "final_val_acc": 0.3, "global_batch": batch}))
            (job.run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.3, "images": 1}) + "\n")
