"""The study tools, apart from the training core: sweep (runs a grid), report (tables and plots from the
runs on disk) and plan (a scaling model). The bench, which times the trainer's step, lives beside it (training/bench.py)."""
