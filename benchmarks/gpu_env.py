"""Part 0 of the GPU check: what the machine has, whether torch.compile can work there, and whether the data is whole.

Writes environment.json as it learns each fact, so a cut run still says how far it got. Exit 2, with one line,
when the data folder is there but incomplete or unreadable (a partial staging), so no later part dies on it.
"""

from __future__ import annotations

import importlib
from importlib import metadata
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

DATA_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def main(out: Path, data_root: Path, dry_run: bool) -> int:
    facts: dict = {"python": sys.version.split()[0], "dry_run": dry_run}

    def save() -> None:
        tmp = out / ".environment.json.tmp"
        tmp.write_text(json.dumps(facts, indent=2) + "\n")
        tmp.replace(out / "environment.json")

    import torch

    facts["torch"] = torch.__version__
    facts["cuda"] = torch.version.cuda
    facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        facts["nvidia_smi"] = smi.stdout.strip()
    for name in ("torchvision", "tensorboard", "triton", "numpy", "tqdm", "matplotlib"):
        try:
            # A dry run reads the installed version alone: importing them all costs it seconds of CPU.
            facts[f"{name}_version"] = (metadata.version(name) if dry_run
                                        else getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as err:  # a broken install fails in many ways
            facts[f"{name}_version"] = f"missing ({type(err).__name__}: {err})"
    # Triton and Inductor compile C at run time: they need a compiler and Python's headers.
    facts["c_compiler"] = shutil.which("cc") or shutil.which("gcc")
    facts["python_headers"] = (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()
    save()
    facts["data"] = check_data(data_root)
    save()
    if facts["data"].startswith("incomplete"):
        print(f"gpu_check: {data_root / 'cifar-10-batches-py'} is {facts['data']}; stage the data again "
              "(../shared/cifar10/README.md) or remove the folder to run on synthetic images", file=sys.stderr)
        return 2
    facts["compile"] = check_compile(torch, dry_run)
    save()
    print(json.dumps(facts, indent=2))
    return 0


def check_data(root: Path) -> str:
    folder = root / "cifar-10-batches-py"
    if not folder.exists():
        return "synthetic (no data folder)"
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        return f"incomplete: missing {', '.join(missing)}"
    from batchscale import data

    try:
        train_x, _ = data.load_split(root, True)
        test_x, _ = data.load_split(root, False)
    except data.DataError as err:
        return f"incomplete: {err}"
    return f"real ({train_x.shape[0]} train, {test_x.shape[0]} test)"


def check_compile(torch, dry_run: bool) -> dict:
    """Compiles a small convolution and its backward where the check will train; eager is the fall-back."""
    if dry_run:  # nothing in a dry run is compiled; compiling on a loaded CPU alone outlasts the part's box
        return {"ok": False, "why": "not tried: a dry run compiles nothing"}
    if not (sys.platform.startswith("linux") and shutil.which("cc")):
        return {"ok": False, "why": "no C compiler: Inductor and Triton need one"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    try:
        conv = torch.nn.Conv2d(3, 8, 3).to(device)
        fn = torch.compile(lambda x: torch.relu(conv(x)).sum())
        fn(torch.randn(2, 3, 8, 8, device=device, requires_grad=True)).backward()
    except Exception as err:  # Inductor and Triton fail in many ways
        return {"ok": False, "why": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    return {"ok": True, "seconds": round(time.perf_counter() - start, 1), "device": device}


def make_synthetic(root: Path, per_batch: int = 256, test_images: int = 200) -> None:
    """A tiny stand-in in the official layout, for the CPU dry run (random pixels, real format)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_images)]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, n)], b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


if __name__ == "__main__":
    if sys.argv[1] == "--synthetic":
        make_synthetic(Path(sys.argv[2]), *(int(n) for n in sys.argv[3:5]))
        sys.exit(0)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), "--dry-run" in sys.argv))
