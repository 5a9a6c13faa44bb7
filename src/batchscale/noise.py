"""McCandlish et al.'s simple gradient noise scale, B_simple = tr(Sigma) / |G|^2, estimated online.

Each measurement pairs the mean squared norm of small-batch gradients (one worker's, or each
micro-batch's) with that of the large-batch gradient (after the allreduce). Their unbiased estimators
(the paper's appendix A) are averaged separately, and the ratio of the averages is the estimate: the ratio
of noisy single estimates is biased.

The averages are debiased exponential moving averages (weighted sums divided by the sum of the weights,
as Adam corrects its moments): every pair weighs the same until the run has seen about `window` examples,
and from then on the past fades by a factor e per `window` examples. A plain moving average seeded with its
first pair would let that pair, taken at initialization, carry most of the weight for the first `window`
examples. Forgetting by examples, not by pairs, lets runs at different batch sizes average over the same
stretch of training, so their estimates compare. No value is given from fewer than `MIN_PAIRS` pairs, and a
standard error comes from the pairs' scatter (the delta method on the two averages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

MIN_PAIRS = 10  # fewer pairs than this give no estimate: one pair's can be anything from a fifth to three times it
# The weighted sums kept on the device: sum w, sum w^2, and sum w x for x in T, G, T^2, G^2, T G.
SUMS = ("weight", "weight_sq", "trace", "grad_sq", "trace_sq", "grad_sq_sq", "trace_grad")


@dataclass
class NoiseScale:
    window: float = 200_000.0  # training examples over which the past fades by a factor e (4 CIFAR epochs)
    sums: Tensor | None = None  # float64, on the device; see SUMS
    count: Tensor | None = None  # how many pairs were finite and taken

    def update(self, small_sq: Tensor | float, big_sq: Tensor | float, b_small: float, b_big: float,
               examples: float) -> None:
        """One pair: the mean |g_small|^2 over batches of b_small examples and |g_big|^2 over b_big examples,
        taken `examples` training examples after the previous pair.

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
        if self.sums is None or self.count is None:
            self.sums, self.count = torch.zeros(len(SUMS), dtype=torch.float64, device=small.device), torch.zeros_like(trace)
        decay = math.exp(-examples / self.window)
        one = torch.ones_like(trace)
        values = torch.stack([one, one, trace, grad_sq, trace * trace, grad_sq * grad_sq, trace * grad_sq])
        # decay for every sum but the squared weights' (decay**2), computed on the device: no copy from the host
        powers = torch.ones_like(self.sums)
        powers[1] = 2.0
        self.sums = torch.pow(decay, powers) * self.sums + torch.where(ok, values, torch.zeros_like(values))
        self.count = self.count + ok.to(self.count.dtype)

    @property
    def updates(self) -> int:
        return 0 if self.count is None else int(self.count)

    def moments(self) -> dict[str, float] | None:
        """The averages of T = tr(Sigma) and G = |G|^2 estimates, their variances and covariance over the pairs,
        and the effective number of pairs; None before the first pair."""
        if self.sums is None or not self.updates:
            return None
        w, w2, t, g, tt, gg, tg = self.sums.tolist()
        mt, mg = t / w, g / w
        return {"trace": mt, "grad_sq": mg, "pairs": w * w / w2, "var_trace": tt / w - mt * mt,
                "var_grad_sq": gg / w - mg * mg, "cov": tg / w - mt * mg}

    @property
    def b_simple(self) -> float | None:
        m = self.moments()
        if m is None or self.updates < MIN_PAIRS or m["grad_sq"] <= 0:
            return None
        return m["trace"] / m["grad_sq"]

    @property
    def standard_error(self) -> float | None:
        """B_simple's standard error from the scatter of the pairs (treated as independent)."""
        value, m = self.b_simple, self.moments()
        if value is None or m is None or m["pairs"] <= 1 or m["trace"] <= 0:
            return None
        n, correction = m["pairs"], m["pairs"] / (m["pairs"] - 1)
        relative = correction / n * (m["var_trace"] / m["trace"] ** 2 + m["var_grad_sq"] / m["grad_sq"] ** 2
                                     - 2 * m["cov"] / (m["trace"] * m["grad_sq"]))
        return abs(value) * math.sqrt(max(relative, 0.0))

    def state_dict(self) -> dict[str, list[float] | float | int | None]:
        taken = self.updates
        return {"sums": self.sums.tolist() if taken else None, "window": self.window,  # type: ignore[union-attr]
                "updates": taken}

    def load_state_dict(self, state: dict[str, list[float] | float | int | None]) -> None:
        updates = int(state.get("updates") or 0)  # type: ignore[arg-type]
        sums = state.get("sums")
        if not updates or not isinstance(sums, list):  # none taken yet, or a checkpoint of the earlier estimator
            self.sums = self.count = None
            return
        self.sums = torch.tensor([float(x) for x in sums], dtype=torch.float64)
        self.count = torch.tensor(float(updates), dtype=torch.float64)

    def to(self, device: torch.device) -> "NoiseScale":
        for name in ("sums", "count"):
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
