"""A 4-run sweep on this machine one at a time, then 2 at a time: wall time of each and whether every run
ended with the same weights (one thread per run in both, so the float sums are the same).

    python benchmarks/executor_local.py DATA_DIR [OUT_JSON]

It trains on the first 2,000 images of each real batch (10,000 training, 2,000 test): a tiny sweep.

    python benchmarks/executor_local.py --overhead DATA_DIR [OUT_JSON]

Per-trial overhead with one slot: 6 tiny trials (width 4, 512 of the full training set's images, 1 epoch) run
once with a fresh process per training (--fresh-process) and once in the slot's long-lived worker; the
overhead is the sweep's wall time less the trainings' own (their epochs' wall_seconds: training and evaluation),
per trial. Both must learn the same (one thread each, --deterministic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sweep(out: Path, data: str, slots: int) -> float:
    command = [sys.executable, "-m", "batchscale.cli", "sweep", "--out", str(out), "--batch-sizes", "32,64",
               "--seeds", "1,2", "--epochs", "2", "--slots", str(slots), "--", "--train-dir", data, "--val-dir", data,
               "--width", "8", "--deterministic", "--no-download"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def same(a: Path, b: Path) -> bool:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def subset(data: str, root: Path, per_batch: int = 2000) -> str:
    import pickle

    source, folder = Path(data) / "cifar-10-batches-py", root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(source / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        small = {b"data": batch[b"data"][:per_batch], b"labels": list(batch[b"labels"][:per_batch])}
        with open(folder / name, "wb") as f:
            pickle.dump(small, f, protocol=2)
    return str(root)


def overhead(data: str, output: str | None) -> None:
    trials = 6
    seconds, learned = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, flags in (("fresh_process", ["--fresh-process"]), ("worker", [])):
            out = Path(tmp) / mode
            command = [sys.executable, "-m", "batchscale.cli", "sweep", "--out", str(out), "--batch-sizes", "32,64,128",
                       "--seeds", "1,2", "--epochs", "1", "--train-subset", "512", "--slots", "1", *flags, "--",
                       "--train-dir", data, "--val-dir", data, "--width", "4", "--deterministic", "--no-download",
                       "--no-cuda"]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            wall = time.perf_counter() - start
            runs = sorted(out.glob("b*-w1-*"))
            assert len(runs) == trials, [p.name for p in out.iterdir()]
            inside = sum(json.loads(line)["wall_seconds"] for r in runs for line in (r / "metrics.jsonl").open())
            # The trainings' wall_seconds start at their set-up (reading the data included), so the overhead here
            # is what lies outside them: start-up of Python and torch, imports, the pool's hand-over.
            seconds[mode] = {"sweep_wall": wall, "wall_per_trial": wall / trials, "trainings_wall": inside,
                             "overhead_per_trial": (wall - inside) / trials}
            learned[mode] = {r.name: json.loads((r / "summary.json").read_text())["final_val_acc"] for r in runs}
    result = {"machine": f"{os.cpu_count()} CPU cores, {'a GPU' if torch.cuda.is_available() else 'no GPU'}",
              "trials": trials, "slots": 1,
              "seconds": seconds, "saved_per_trial": seconds["fresh_process"]["wall_per_trial"]
              - seconds["worker"]["wall_per_trial"], "same_final_accuracy": learned["fresh_process"] == learned["worker"],
              "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    if output:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")


def main(data: str, output: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(data, Path(tmp) / "data")
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        seconds = {"slots_1": sweep(one, data, 1), "slots_2": sweep(two, data, 2)}
        runs = sorted(p.name for p in one.iterdir() if p.is_dir())
        identical = all(same(one / r / "checkpoint-2.pth.tar", two / r / "checkpoint-2.pth.tar") for r in runs)
    result = {"runs": runs, "cores": os.cpu_count(), "wall_seconds": seconds,
              "speedup": seconds["slots_1"] / seconds["slots_2"], "identical_weights": identical,
              "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    if output:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    run = overhead if args[:1] == ["--overhead"] else main
    args = args[1:] if run is overhead else args
    run(args[0], args[1] if len(args) > 1 else None)
