"""McCandlish et al.'s simple gradient noise scale, B_simple = tr(Sigma) / |G|^2, estimated online.

Each measurement pairs the squared norm of a small-batch gradient (one worker's, or one
micro-batch's) with that of the large-batch gradient (after the allreduce). Their unbiased
estimators (the paper's appendix A) are smoothed separately by an exponential moving average,
and the ratio of the averages is the estimate: the ratio of noisy single estimates is biased.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class NoiseScale:
    decay: float = 0.95
    trace_sigma: float | None = None  # EMA of the tr(Sigma) estimates
    grad_sq: float | None = None  # EMA of the |G|^2 estimates
    updates: int = 0

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        """One pair: |g_small|^2 over batches of b_small examples and |g_big|^2 over b_big examples."""
        if b_big <= b_small:
            raise ValueError(f"the large batch ({b_big}) must be larger than the small one ({b_small})")
        grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
        if self.trace_sigma is None or self.grad_sq is None:
            self.trace_sigma, self.grad_sq = trace, grad_sq
        else:
            self.trace_sigma = self.decay * self.trace_sigma + (1 - self.decay) * trace
            self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * grad_sq
        self.updates += 1

    @property
    def b_simple(self) -> float | None:
        if self.trace_sigma is None or self.grad_sq is None or self.grad_sq <= 0:
            return None
        return self.trace_sigma / self.grad_sq

    def state_dict(self) -> dict[str, float | int | None]:
        return {"trace_sigma": self.trace_sigma, "grad_sq": self.grad_sq, "updates": self.updates}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.trace_sigma, self.grad_sq = state["trace_sigma"], state["grad_sq"]  # type: ignore[assignment]
        self.updates = int(state["updates"] or 0)


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
