"""When a trial evaluates its target split, and when it ends."""

from __future__ import annotations

from batchscale.target import TargetWatch


def follow(watch: TargetWatch, score_at, steps: int) -> None:
    """Steps a watch the way the trainer does: quick looks far from the target, whole ones near it."""
    for step in range(1, steps + 1):
        watch.after_step(step)
        while watch.due(step):
            watch.record(step, score_at(step, watch.fine), full=watch.fine)
        if watch.ended:
            return


def rising(step: int, _: bool) -> float:
    return min(0.9, step / 1000)


def test_near_the_target_evaluations_are_at_most_5_percent_apart():
    watch = TargetWatch(0.5, growth=1.05, stop=True)
    follow(watch, rising, 10_000)
    assert watch.ended == "target"
    full = [e["step"] for e in watch.evals if e["full"]]
    assert all(b <= max(1.05 * a, a + 1) for a, b in zip(full, full[1:]))
    hit = watch.reached()
    assert hit["step"] == 500 or hit["previous_eval"] < 500 <= hit["step"] <= 1.05 * hit["previous_eval"]
    # Far from the target the looks are sparse: fewer than one in ten steps.
    assert len(watch.evals) < 100


def test_only_a_whole_split_evaluation_can_reach_the_target():
    # The quick part says 0.6 (above the target); the whole split says 0.4 until step 300.
    watch = TargetWatch(0.5, growth=1.05, stop=True)
    follow(watch, lambda step, full: (0.4 if step < 300 else 0.55) if full else 0.6, 1000)
    hit = watch.reached()
    assert hit["full"] and 300 <= hit["step"] <= 315 and watch.ended == "target"
    assert watch.evals[0]["full"] is False and watch.evals[1] == {**watch.evals[1], "step": 1, "full": True}


def test_a_budget_ends_a_trial_that_never_reaches_its_target():
    watch = TargetWatch(0.99, growth=1.05, stop=True, max_steps=120)
    follow(watch, rising, 10_000)
    assert watch.ended == "budget" and watch.reached() is None
    assert watch.summary()["ended"] == "budget"


def test_a_restored_watch_continues_the_same_schedule():
    whole, first = TargetWatch(0.5, growth=1.05, stop=True), TargetWatch(0.5, growth=1.05, stop=True)
    follow(whole, rising, 10_000)
    follow(first, rising, 200)
    resumed = TargetWatch(0.5, growth=1.05, stop=True)
    resumed.load_state_dict(first.state_dict())
    for step in range(201, 10_001):
        resumed.after_step(step)
        while resumed.due(step):
            resumed.record(step, rising(step, resumed.fine), full=resumed.fine)
        if resumed.ended:
            break
    assert resumed.evals == whole.evals and resumed.ended == whole.ended
