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
standard error comes from the pairs' scatter (the delta method on the two averages). Beside this current value
the run's average (every pair since the start alike, `run_b_simple`) is kept: B_simple grows as the loss falls,
so the two differ, and each is named where it is reported.

B_simple is McCandlish et al.'s simple noise scale tr(Sigma) / |G|^2, not their B_noise = tr(H Sigma) / G^T H G
(the two agree only where the Hessian H is a multiple of the identity), nor the critical batch B_crit a study
fits to steps to target (which McCandlish et al. predict to be about B_noise).

`pool` combines the sums of any number of measurements (pairs, probes, seeds) before dividing, with Fieller's
interval for the ratio: where |G|^2 is not resolved from zero, the interval is unbounded, and says so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
from torch import Tensor

NOISE_SHARE = 0.25  # the current value's window, as a share of the run's planned images, unless --noise-window says
MIN_PAIRS = 10  # fewer pairs than this give no estimate: one pair's can be anything from a fifth to three times it
# The weighted sums kept on the device: sum w, sum w^2, and sum w x for x in T, G, T^2, G^2, T G.
SUMS = ("weight", "weight_sq", "trace", "grad_sq", "trace_sq", "grad_sq_sq", "trace_grad")


@dataclass
class NoiseScale:
    window: float = 200_000.0  # training examples over which the past fades by a factor e (4 CIFAR epochs)
    sums: Tensor | None = None  # float64, on the device; see SUMS
    count: Tensor | None = None  # how many pairs were finite and taken
    run_sums: Tensor | None = None  # the same sums never decayed: the run's average, every pair alike

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
        if self.run_sums is None:
            self.run_sums = torch.zeros_like(self.sums)
        decay = math.exp(-examples / self.window)
        one = torch.ones_like(trace)
        values = torch.stack([one, one, trace, grad_sq, trace * trace, grad_sq * grad_sq, trace * grad_sq])
        # decay for every sum but the squared weights' (decay**2), computed on the device: no copy from the host
        powers = torch.ones_like(self.sums)
        powers[1] = 2.0
        taken = torch.where(ok, values, torch.zeros_like(values))
        self.sums = torch.pow(decay, powers) * self.sums + taken
        self.run_sums = self.run_sums + taken
        self.count = self.count + ok.to(self.count.dtype)

    @property
    def updates(self) -> int:
        return 0 if self.count is None else int(self.count)

    def moments(self) -> dict[str, float] | None:
        """The averages of T = tr(Sigma) and G = |G|^2 estimates, their variances and covariance over the pairs,
        and the effective number of pairs; None before the first pair."""
        if self.sums is None or not self.updates:
            return None
        return moments(self.sums.tolist())

    @property
    def b_simple(self) -> float | None:
        """The current value: the pairs of about the last `window` examples."""
        m = self.moments()
        if m is None or self.updates < MIN_PAIRS or m["grad_sq"] <= 0:
            return None
        return m["trace"] / m["grad_sq"]

    @property
    def run_b_simple(self) -> float | None:
        """The run's average: every pair since the start alike."""
        if self.run_sums is None or self.updates < MIN_PAIRS:
            return None
        m = moments(self.run_sums.tolist())
        return m["trace"] / m["grad_sq"] if m["grad_sq"] > 0 else None

    def raw_sums(self) -> list[float] | None:
        """The run's undecayed sums (see SUMS), for `pool` to combine with other runs' before dividing."""
        return None if self.run_sums is None or not self.updates else self.run_sums.tolist()

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
                "updates": taken, "run_sums": self.raw_sums()}

    def load_state_dict(self, state: dict[str, list[float] | float | int | None]) -> None:
        updates = int(state.get("updates") or 0)  # type: ignore[arg-type]
        sums = state.get("sums")
        if not updates or not isinstance(sums, list):  # none taken yet, or a checkpoint of the earlier estimator
            self.sums = self.count = None
            return
        self.sums = torch.tensor([float(x) for x in sums], dtype=torch.float64)
        self.count = torch.tensor(float(updates), dtype=torch.float64)
        run = state.get("run_sums")
        # A checkpoint from before the run's average was kept: its (long-window) average stands in for it.
        self.run_sums = torch.tensor([float(x) for x in (run if isinstance(run, list) else sums)], dtype=torch.float64)

    def to(self, device: torch.device) -> "NoiseScale":
        for name in ("sums", "count", "run_sums"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self


def moments(sums: Sequence[float]) -> dict[str, float]:
    """Averages, variances and covariance of the pairs' T and G estimates from their (weighted) sums (SUMS), and
    the effective number of pairs."""
    w, w2, t, g, tt, gg, tg = sums
    mt, mg = t / w, g / w
    return {"trace": mt, "grad_sq": mg, "pairs": w * w / w2, "var_trace": tt / w - mt * mt,
            "var_grad_sq": gg / w - mg * mg, "cov": tg / w - mt * mg}


@dataclass(frozen=True)
class Pooled:
    """B_simple from pooled sums, with Fieller's `level` interval for the ratio of the two means.

    `b_simple` is None where the pooled |G|^2 is not positive. `high` is math.inf where the interval is unbounded
    (|G|^2 not resolved from zero at this level); `low` is then the lower end of the ray that holds the estimate,
    or 0 where the interval is the whole line (nothing is resolved)."""

    b_simple: float | None
    low: float
    high: float
    pairs: float  # effective number of pairs pooled
    trace: float  # mean tr(Sigma) estimate
    grad_sq: float  # mean |G|^2 estimate
    trace_se: float
    grad_sq_se: float
    cov: float  # covariance of the two means
    level: float = 0.9

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.high)

    def draws(self, count: int, rng: random.Random) -> list[float]:
        """`count` redraws of the ratio G / T (1 / B_simple, finite even where G crosses zero) from the means'
        normal sampling distribution, with their covariance: what a ratio of B_crit over B_simple multiplies."""
        rho = 0.0
        if self.trace_se > 0 and self.grad_sq_se > 0:
            rho = max(-1.0, min(1.0, self.cov / (self.trace_se * self.grad_sq_se)))
        out = []
        for _ in range(count):
            z1, z2 = rng.gauss(0, 1), rng.gauss(0, 1)
            t = self.trace + self.trace_se * z1
            g = self.grad_sq + self.grad_sq_se * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
            if t > 0:
                out.append(g / t)
        return out


def quantile_t(level: float, dof: float) -> float:
    """Two-sided Student-t quantile (Cornish-Fisher from the normal's: within 1% for dof >= 5)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if not math.isfinite(dof) or dof > 1e6:
        return z
    dof = max(dof, 1.0)
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def pool(sums: Iterable[Sequence[float] | None], level: float = 0.9) -> Pooled | None:
    """B_simple = sum T / sum G over every pair of every measurement given (each a SUMS vector; None skipped),
    so that no measurement's own ratio, nor whether its |G|^2 came out positive, decides what counts.

    Its interval is Fieller's: the r with (mean T - r mean G)^2 <= q^2 Var(mean T - r mean G), from the pairs'
    scatter treated as independent (true of a fixed-weights probe; across seeds and batch sizes the pairs'
    spread also holds how their true values differ). None: no pairs, or too few for a scatter (2)."""
    total = [0.0] * len(SUMS)
    for one in sums:
        if one is not None:
            total = [a + float(b) for a, b in zip(total, one)]
    if total[0] <= 0:
        return None
    m = moments(total)
    n = m["pairs"]
    if n < 2:
        return None
    correction = n / (n - 1)  # the scatter about the sample mean
    vt, vg, c = (correction * m[k] / n for k in ("var_trace", "var_grad_sq", "cov"))
    vt, vg = max(vt, 0.0), max(vg, 0.0)
    mt, mg = m["trace"], m["grad_sq"]
    q2 = quantile_t(level, n - 1) ** 2
    a, b, cc = mg * mg - q2 * vg, mt * mg - q2 * c, mt * mt - q2 * vt
    disc = b * b - a * cc
    value = mt / mg if mg > 0 else None
    if a > 0:  # |G|^2 resolved from zero: a bounded interval about the estimate
        root = math.sqrt(max(disc, 0.0))
        low, high = (b - root) / a, (b + root) / a
    elif disc >= 0 and a < 0:  # two rays: the one the estimate (or, with G <= 0, the positive values) lies on
        root = math.sqrt(disc)
        ends = sorted(((b - root) / a, (b + root) / a))
        low = max(ends[1], 0.0) if value is None or value >= ends[1] else 0.0
        high = math.inf
    else:  # the whole line
        low, high = 0.0, math.inf
    return Pooled(value, low, high, n, mt, mg, math.sqrt(vt), math.sqrt(vg), c, level)


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
