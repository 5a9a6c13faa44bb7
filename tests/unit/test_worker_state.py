"""What a trial worker puts back between trainings, and the data it keeps: checked in this process."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

import torch

from batchscale import data, metrics
from batchscale.study.worker import Baseline, keep_loaded


def test_what_a_training_changes_in_the_process_is_put_back(monkeypatch):
    monkeypatch.setenv("BATCHSCALE_BASELINE_PROBE", "before")
    baseline = Baseline()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    handler, thread_hook, except_hook = signal.getsignal(signal.SIGTERM), threading.excepthook, sys.excepthook
    filters = list(warnings.filters)
    try:
        # What a training may leave behind: its stop handler, an environment variable, determinism, hooks.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        os.environ["BATCHSCALE_BASELINE_PROBE"] = "changed"
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.set_num_threads(max(1, threads + 1))
        torch.use_deterministic_algorithms(not deterministic)
        metrics.quiet_tensorboard_threads()
        sys.excepthook = lambda *args: None
        warnings.simplefilter("ignore")
    finally:
        baseline.restore()
    assert signal.getsignal(signal.SIGTERM) is handler and os.environ["BATCHSCALE_BASELINE_PROBE"] == "before"
    assert ("CUBLAS_WORKSPACE_CONFIG" in os.environ) == ("CUBLAS_WORKSPACE_CONFIG" in baseline.environ)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    assert threading.excepthook is thread_hook and sys.excepthook is except_hook and warnings.filters == filters
    assert metrics._threads_quieted is False  # the next training's log installs its hook again


def test_the_data_is_read_once_and_each_reader_gets_its_own_copy(tiny_cifar):
    calls = []

    def load(root, train):
        calls.append((root, train))
        return data.load_split(root, train)

    cached = keep_loaded(load)
    first, _ = cached(tiny_cifar, True)
    first.zero_()  # a training that wrote into its images
    second, _ = cached(tiny_cifar, True)
    cached(tiny_cifar, False)
    cached(tiny_cifar, False)
    assert calls == [(tiny_cifar, True), (tiny_cifar, False)]
    assert torch.equal(second, data.load_split(tiny_cifar, True)[0]) and second.any()
