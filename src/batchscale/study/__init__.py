"""The study tools, apart from the training core, one module per command: sweep (runs a grid) with
sweep_report (its tables and plots), study (the critical batch; protocol is its arithmetic) with study_report,
and plan (a scaling model). The bench, which times the trainer's step, lives beside it (training/bench.py)."""
