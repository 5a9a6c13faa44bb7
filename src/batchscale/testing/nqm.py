"""A noisy quadratic whose critical batch is known in closed form, to test the study's protocol against.

Loss L(d) = 1/2 sum_i h_i d_i^2 with h_i = 1/i (an ill-conditioned spectrum, like a network's), gradient
G = H d, and minibatch gradient noise of covariance Sigma / B with Sigma = kappa (G^T H G / tr(H^2)) H. Then
McCandlish et al.'s B_noise = tr(H Sigma) / (G^T H G) = kappa at every point of training, so the critical
batch is kappa; B_simple = tr(Sigma) / |G|^2 is known at every point too (and differs from kappa, as it does
for real networks). Plain SGD; each trial is scored by -L (higher is better) at the steps the protocol's
`TargetWatch` asks for, and stops at the target or its budget, as a training run does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..noise import NoiseScale
from ..study.protocol import DIVERGED, MISSED, REACHED, Trial
from ..target import TargetWatch


@dataclass(frozen=True)
class NoisyQuadratic:
    dims: int = 50
    kappa: float = 200.0  # B_noise = B_crit
    target_fraction: float = 0.01  # the target: this share of the starting loss
    noise_window: float = 2_000.0  # B_simple's average forgets over this many examples
    draws: int = 64  # small/large gradient pairs measured per step: one pair's estimate is far too noisy here

    @property
    def h(self) -> np.ndarray:
        return 1.0 / np.arange(1, self.dims + 1)

    def loss(self, d: np.ndarray) -> float:
        return 0.5 * float((self.h * d * d).sum())

    def sigma_diag(self, d: np.ndarray) -> np.ndarray:
        h = self.h
        ghg = float((h**3 * d * d).sum())
        return self.kappa * ghg / float((h * h).sum()) * h

    def b_simple(self, d: np.ndarray) -> tuple[float, float]:
        """(tr Sigma, |G|^2) at `d`: the truth B_simple's estimator targets."""
        return float(self.sigma_diag(d).sum()), float(((self.h * d) ** 2).sum())

    def trial(self, batch: int, lr: float, seed: int, budget: int, growth: float = 1.05) -> tuple[Trial, float]:
        """One trial; returns it and the true B_simple (tr Sigma and |G|^2 averaged with the estimator's weights)
        at its end."""
        rng = np.random.default_rng(seed)
        d = np.ones(self.dims)
        start = self.loss(d)
        watch = TargetWatch(-self.target_fraction * start, growth, stop=True, max_steps=budget, near=math.inf)
        noise, truth = NoiseScale(window=self.noise_window), NoiseScale(window=self.noise_window)
        small = max(1, batch // 4)
        step = 0
        while watch.ended is None:
            grad = self.h * d
            scale = np.sqrt(self.sigma_diag(d))
            if batch > small:  # B_simple from small batches' gradients against whole batches' (the first one steps)
                g_small = grad + scale * rng.standard_normal((self.draws, self.dims)) / math.sqrt(small)
                g_rest = grad + scale * rng.standard_normal((self.draws, self.dims)) / math.sqrt(batch - small)
                whole = (small * g_small + (batch - small) * g_rest) / batch
                noise.update(float((g_small**2).sum(1).mean()), float((whole**2).sum(1).mean()), small, batch,
                             examples=batch)
                trace, grad_sq = self.b_simple(d)
                truth.update(grad_sq + trace / small, grad_sq + trace / batch, small, batch, examples=batch)
                g = whole[0]
            else:
                g = grad + scale * rng.standard_normal(self.dims) / math.sqrt(batch)
            d = d - lr * g
            step += 1
            loss = self.loss(d)
            if not math.isfinite(loss) or loss > 1e6 * start:
                return Trial(batch, lr, seed, DIVERGED, None, budget=budget), math.nan
            watch.after_step(step)
            if watch.due(step):
                watch.record(step, -loss, b_simple=noise.b_simple)
        hit = watch.reached()
        trial = Trial(batch, lr, seed, REACHED if hit else MISSED, hit["step"] if hit else None,
                      hit["previous_eval"] if hit else None, budget, max(e["acc"] for e in watch.evals),
                      noise.b_simple)
        return trial, truth.b_simple or math.nan
