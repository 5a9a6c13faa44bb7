"""McCandlish et al.'s simple gradient noise scale, B_simple = tr(Sigma) / |G|^2, estimated online.

Each measurement pairs the squared norm of a small-batch gradient (one worker's, or one
micro-batch's) with that of the large-batch gradient (after the allreduce). Their unbiased
estimators (the paper's appendix A) are smoothed separately by an exponential moving average,
and the ratio of the averages is the estimate: the ratio of noisy single estimates is biased.

The average forgets by training examples, not by measurements: a pair taken after E more examples
weighs the past by exp(-E / window). Runs at different batch sizes then average over the same
stretch of training, so their estimates can be compared (a per-measurement decay would let a large
batch's estimate still carry its first measurements long after a small batch's had forgotten them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class NoiseScale:
    window: float = 200_000.0  # training examples over which the average forgets by a factor e (4 CIFAR epochs)
    trace_sigma: Tensor | None = None  # EMA of the tr(Sigma) estimates (float64, on the device)
    grad_sq: Tensor | None = None  # EMA of the |G|^2 estimates
    count: Tensor | None = None  # how many pairs were finite and taken

    def update(self, small_sq: Tensor | float, big_sq: Tensor | float, b_small: float, b_big: float,
               examples: float) -> None:
        """One pair: |g_small|^2 over batches of b_small examples and |g_big|^2 over b_big examples, taken
        `examples` training examples after the previous pair.

        A pair with a non-finite norm (an fp16 overflow step the scaler skips) is left out, without a
        host sync, so one bad step cannot poison the averages.
        """
        if b_big <= b_small:
            raise ValueError(f"the large batch ({b_big}) must be larger than the small one ({b_small})")
        small = torch.as_tensor(small_sq, dtype=torch.float64)
        big = torch.as_tensor(big_sq, dtype=torch.float64, device=small.device)
        grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
        trace = (small - big) / (1 / b_small - 1 / b_big)
        ok = torch.isfinite(grad_sq) & torch.isfinite(trace)
        if self.trace_sigma is None or self.grad_sq is None or self.count is None:
            nan = torch.full_like(trace, math.nan)
            self.trace_sigma, self.grad_sq, self.count = nan, nan.clone(), torch.zeros_like(trace)
        fresh = self.count == 0
        decay = math.exp(-examples / self.window)
        for name, value in (("trace_sigma", trace), ("grad_sq", grad_sq)):
            current = getattr(self, name)
            averaged = torch.where(fresh, value, decay * current + (1 - decay) * value)
            setattr(self, name, torch.where(ok, averaged, current))
        self.count = self.count + ok.to(self.count.dtype)

    @property
    def updates(self) -> int:
        return 0 if self.count is None else int(self.count)

    @property
    def b_simple(self) -> float | None:
        if self.trace_sigma is None or self.grad_sq is None or not self.updates:
            return None
        trace, grad_sq = float(self.trace_sigma), float(self.grad_sq)
        return trace / grad_sq if grad_sq > 0 else None

    def state_dict(self) -> dict[str, float | int | None]:
        taken = self.updates
        return {"trace_sigma": float(self.trace_sigma) if taken else None,  # type: ignore[arg-type]
                "grad_sq": float(self.grad_sq) if taken else None, "updates": taken}  # type: ignore[arg-type]

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        updates = int(state["updates"] or 0)
        if not updates or state["trace_sigma"] is None or state["grad_sq"] is None:
            self.trace_sigma = self.grad_sq = self.count = None
            return
        self.trace_sigma = torch.tensor(float(state["trace_sigma"]), dtype=torch.float64)
        self.grad_sq = torch.tensor(float(state["grad_sq"]), dtype=torch.float64)
        self.count = torch.tensor(float(updates), dtype=torch.float64)

    def to(self, device: torch.device) -> "NoiseScale":
        for name in ("trace_sigma", "grad_sq", "count"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self


@dataclass
class GradNorms:
    """Squared gradient norms gathered on the device during a step, read once per measurement."""

    small_sq: Tensor = field(default_factory=lambda: torch.zeros(()))
    big_sq: Tensor = field(default_factory=lambda: torch.zeros(()))

    def reset(self, device: torch.device) -> None:
        self.small_sq = torch.zeros((), device=device)
        self.big_sq = torch.zeros((), device=device)


def squared_norm(tensors: list[Tensor]) -> Tensor:
    return torch.stack([t.detach().float().square().sum() for t in tensors]).sum()
