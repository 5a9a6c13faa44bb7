from __future__ import annotations

from pathlib import Path

import pytest
from cifar_fixture import make_cifar, real_test_batch


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
