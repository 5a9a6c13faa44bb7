"""batchscale: how per-worker batch size and worker count change CIFAR-10 ResNet-18 training."""

from .config import Config
from .errors import ConfigError


def train(config: Config) -> dict:
    """Runs one training as `config` says and returns its summary (see summary.json)."""
    from .training.loop import train as _train

    return _train(config)


__all__ = ["Config", "ConfigError", "train"]
