from __future__ import annotations

from pathlib import Path

import pytest
from cifar_fixture import make_cifar, real_test_batch

TESTS = Path(__file__).resolve().parent
# `make test` runs each file whole on one worker (--dist loadfile). The files that take a minute or more on an idle
# machine start first, longest first, so that none of them is left to run alone at the end while the other
# workers idle; the rest keep their order. (xdist's own order, most tests first, started the long one-test files
# last; make test turns it off with --no-loadscope-reorder.) Rough figures for 2 idle cores, from CI's --durations
# and CPU seconds measured here; a wrong guess costs only balance.
LONGEST_FIRST = (
    "integration/test_noise_truth.py",  # brute-force truths
    "integration/test_gpu_check.py",  # every part's dry run
    "integration/test_failures.py",  # 13 trainings' failures, 2 of them on torchrun
    "integration/test_quickstart.py",  # the README's commands as written
    "integration/test_executors.py",  # a SLURM cluster, a preempted job array
    "integration/test_compile.py",  # inductor compiles ResNet-18's training step
    "integration/test_nothing_vanishes.py",
    "integration/test_recovery.py",
    "integration/test_study_truth.py",
    "integration/test_critical_study.py",
    "integration/test_trial_workers.py",
    "integration/test_resume.py",
    "integration/test_study.py",
    "integration/test_end_to_end.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def place(item: pytest.Item) -> int:
        path = Path(str(item.path))
        return rank.get(path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else "", len(rank))

    items.sort(key=place)  # stable: a file's tests stay together and in their order


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory, cifar_cache: Path) -> Path:
    """320 real training images (5 x 64) and 200 real test images, in the official layout."""
    return make_cifar(tmp_path_factory.mktemp("tiny-cifar"), cifar_cache, per_train_batch=64, test_images=200)


@pytest.fixture(scope="session")
def real_test_images(cifar_cache: Path):
    return real_test_batch(cifar_cache)
