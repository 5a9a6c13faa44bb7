"""Hooks the test suite uses to make a run fail as a real one would; inert unless BATCHSCALE_FAULT is set."""
