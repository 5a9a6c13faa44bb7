"""The original's entry point: `python train.py ...`, `torchrun ... train.py ...`, `horovodrun ... python train.py ...`."""

import sys

from batchscale.cli import run_train

if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:], "train.py"))
