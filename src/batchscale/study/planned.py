"""A run a study plans, in either stage: its folder, its training flags, its budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Planned:
    """A trial or paper run: its folder name, training flags, and the most images it may train."""

    name: str
    args: tuple[str, ...]
    budget_images: int
    steps: int = 0  # a trial's step budget (0: a paper run, bounded by its epochs)
