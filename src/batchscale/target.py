"""When a run evaluates its target split, and when a trial is over: at its target, or at its step budget.

Steps to target are what a batch-size study compares, so they must be known to a stated precision.
Far from the target, quick evaluations on a quarter of the split come at steps growing by 1.25: they
decide nothing but when to look closely (evaluating
the whole split that often would cost a small model's trial more than its training). From the first
quick score within `near` of the target on, every evaluation is of the whole split, at steps growing by
`growth`, and only those can say the target is reached. The crossing is then interpolated between the
last evaluation below the target and the first at or above it (the score linear in log step): on the
noisy quadratic, with evaluations 1.2x apart, within 1% of an evaluation after every step on average,
where the first evaluation at the target itself runs 12% late (tests/unit/test_target.py). The bracket
(the last evaluation below, the first above) is kept, so each trial's precision is on record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

COARSE_GROWTH = 1.25
NEAR = 0.08  # a quick score this close to the target (8 accuracy points, 4 standard errors on 500 images)
QUICK_PART = 4  # quick evaluations see 1/4 of the split


@dataclass
class TargetWatch:
    target: float
    growth: float = 0.0  # 0: evaluations only where the caller makes them (epoch ends)
    stop: bool = False
    max_steps: int = 0
    near: float = NEAR
    evals: list[dict[str, Any]] = field(default_factory=list)
    next_eval: int = 1
    fine: bool = False  # once near the target, stays so: accuracy is noisy, and the band must not be jumped
    ended: str | None = None  # "target" or "budget"; None while running or when the epochs ran out

    def due(self, step: int) -> bool:
        """Whether to evaluate after optimizer step `step` (1-based); `fine` says on the whole split."""
        return self.growth > 0 and step >= self.next_eval

    def record(self, step: int, score: float, full: bool = True, **extra: Any) -> None:
        """One evaluation after `step` steps (higher score is better), of the whole split or a quick part.
        After a quick one that comes near the target, `due(step)` is true again: look at the whole split."""
        if self.evals and self.evals[-1]["step"] == step and self.evals[-1]["full"] == full:
            return  # the epoch's end evaluates a step the in-epoch schedule already did
        self.evals.append({"step": step, "acc": score, "full": full, **extra})
        if not full and score >= self.target - self.near and not self.fine:
            self.fine = True
            self.next_eval = step
            return
        self.fine = self.fine or score >= self.target - self.near
        growth = self.growth if self.fine else max(self.growth, COARSE_GROWTH)
        self.next_eval = max(step + 1, math.floor(step * growth))  # never more than `growth` apart, or one step
        if full and self.stop and score >= self.target and self.ended is None:
            self.ended = "target"

    def after_step(self, step: int) -> None:
        if self.max_steps and step >= self.max_steps and self.ended is None:
            self.ended = "budget"

    def reached(self) -> dict[str, Any] | None:
        """The first whole-split evaluation at or above the target, with the last step before it seen below
        the target: the true steps-to-target lies in (previous_eval, step]; `crossing` is where in it the
        score, linear in log step between the two evaluations, meets the target (a quick evaluation below
        serves where no whole one came before)."""
        for i, e in enumerate(self.evals):
            if e["full"] and e["acc"] >= self.target:
                before = [p for p in self.evals[:i] if p["step"] < e["step"]]
                previous = max((p["step"] for p in before), default=0)
                crossing = float(e["step"])
                if before:
                    last = max(before, key=lambda p: (p["step"], p["full"]))  # a whole look over a quick one
                    if last["acc"] < self.target < e["acc"] or last["acc"] < self.target == e["acc"]:
                        share = (self.target - last["acc"]) / (e["acc"] - last["acc"])
                        crossing = last["step"] * (e["step"] / last["step"]) ** share
                return {**e, "previous_eval": previous, "crossing": crossing}
        return None

    def summary(self) -> dict[str, Any]:
        hit = self.reached()
        return {
            "target": self.target,
            "ended": self.ended or "epochs",
            "reached": hit,
            # How well the step is pinned down: true steps-to-target is within this factor below `step`.
            "resolution": hit["step"] / hit["previous_eval"] if hit and hit["previous_eval"] else None,
            "best_acc": max((e["acc"] for e in self.evals if e["full"]), default=None),
            "max_steps": self.max_steps or None,
            "evals": self.evals,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals, "next_eval": self.next_eval, "ended": self.ended, "fine": self.fine}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.evals, self.next_eval, self.ended = list(state["evals"]), int(state["next_eval"]), state["ended"]
            self.fine = bool(state.get("fine"))
