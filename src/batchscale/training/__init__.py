"""The training core: `loop` (the loop, top to bottom, and `train`), `step` (one update, evaluation), `setup`
(seeds, data, splits), `checkpointer` (when to save, what to keep and resume from), `resume` (which changed
flags a resume refuses or records), `guard` (finite and stop checks), `bench` (the step's speed)."""
