"""The guard: whether the run may go on. At its cadence (--finite-check-every steps, and at once when a lone
process is asked to stop) one small collective tells every rank whether any loss went non-finite and whether any
rank was asked to stop; weights are checked before anything is saved. The one place a run is declared diverged
(exit 3, nothing saved) or stopped (saved, exit code of the signal)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor, nn

from ..errors import Diverged, Stopped
from ..parallel import Backend
from ..state import TrainState
from ..stopping import StopRequest

ADVICE = ("Lower --base-lr, lengthen --warmup-epochs or use --precision fp32, then rerun: the run resumes from the "
          "last good checkpoint with the new values, recorded in summary.json")


class Guard:
    def __init__(self, backend: Backend, stop: StopRequest, state: TrainState, every: int) -> None:
        """`every`: steps between the finite checks (--finite-check-every)."""
        self.backend, self.stop, self.state, self.every = backend, stop, state, every
        self.lr = 0.0  # of the last step recorded
        self.start_epoch()

    def start_epoch(self) -> None:
        self.bad_step = torch.zeros((), dtype=torch.long, device=self.backend.device)
        self.bad_lr = torch.zeros((), dtype=torch.float64, device=self.backend.device)

    def record(self, step: int, loss: Tensor, lr: float) -> None:
        """Notes step `step` (1-based), taken at `lr`, if it is the epoch's first whose loss was not finite, without
        a host sync. The LR is kept, not recomputed: after a batch change no step count says where it was."""
        first = (self.bad_step == 0) & ~torch.isfinite(loss)
        self.bad_step.masked_fill_(first, step)
        self.bad_lr.masked_fill_(first, lr)
        self.lr = lr

    def due(self, step: int) -> bool:
        """Whether step `step` (1-based) ends with a check: at the cadence, or at once when one process is asked to
        stop (with several, a rank that stops alone would leave its peers waiting in a collective)."""
        return step % self.every == 0 or (self.stop.requested and self.backend.world_size == 1)

    def check(self) -> bool:
        """The collective: raises Diverged if any rank's loss went non-finite; returns whether any rank was asked
        to stop."""
        device = self.backend.device
        flags = torch.stack([
            torch.tensor(float(self.stop.requested), dtype=torch.float64, device=device),
            torch.where(self.bad_step > 0, -self.bad_step.double(), torch.tensor(-1e18, dtype=torch.float64, device=device)),
        ])
        stop, first_bad = self.backend.all_reduce_max(flags).tolist()
        if first_bad > -1e18:
            step = int(-first_bad)
            raise self.diverged("the loss", f"at step {step}", self.bad_lr.item())
        return stop > 0

    def check_weights(self, model: nn.Module, what: str = "the weights", *values: float) -> None:
        """Every rank's weights and buffers (and `values`) finite, one collective: a non-finite state is never saved."""
        tensors = [t for t in self.backend.model_state_dict(model).values() if t.is_floating_point()]
        bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).any().double().reshape(1)
        finite = self.backend.all_reduce_sum(bad).item() == 0 and all(map(math.isfinite, values))
        if not finite:
            raise self.diverged(what, f"by step {self.state.clock.step}", self.lr)

    def diverged(self, what: str, where: str, lr: float) -> Diverged:
        """The one divergence message: what went non-finite, when (always in the open epoch: the checks come before
        it closes), at which LR, and what is left to resume from."""
        done = self.state.epoch
        intact = f"checkpoints up to epoch {done} are intact" if done else "no checkpoint was written"
        return Diverged(f"{what} became NaN or infinite {where} (epoch {done + 1}, lr {lr:.4g}); "
                        f"{intact}. {ADVICE}", quiet=not self.backend.is_main)

    def stopped(self, path: Path) -> NoReturn:
        state = self.state
        # torchrun answers a signal it was sent with a SignalException traceback of its own once its workers end.
        launcher = "; torchrun's own SignalException report, if one follows, is of the same signal" \
            if self.backend.name == "torch" and self.stop.launcher_gone is None else ""
        what = f"stopped by {self.stop.reason} after {state.position()}; saved {path}"
        stopped = Stopped(f"{what}. Rerun the same command to resume from there{launcher}", quiet=not self.backend.is_main)
        stopped.what = what
        raise stopped
