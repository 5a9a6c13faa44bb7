"""The study tools, apart from the training core: sweep (runs a grid), report (tables and plots from the
runs on disk), plan (a scaling model) and bench (where a step's time goes)."""
