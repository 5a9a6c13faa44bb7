"""The bench's train-mode step under torch.profiler: 10 steps at each batch size, after a warm-up.

    python benchmarks/profile_step.py OUT.json --batch-sizes 256,512 [--compile] [--width W] [--no-cuda]

Per batch size: kernels launched per step, the device's busy time per step against the wall time (busy / wall:
how far the step keeps the device fed), the top kernels by device time, and the layout copies (kernels that
only move data between memory formats or dtypes: their names say copy, transpose, nchw/nhwc or convert).
On the CPU the "kernels" are the operators the host ran and there is no device time. OUT.json is rewritten
after each batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from batchscale import data
from batchscale.config import Config
from batchscale.atomic import write_json_atomic
from batchscale.parallel import init_backend
from batchscale.precision import resolve
from batchscale.training.bench import BenchConfig, endless, load_images
from batchscale.training.step import StepForward, build_model_and_optimizer, train_step, warm_up

STEPS = 10
LAYOUT_WORDS = ("copy", "transpose", "nchw", "nhwc", "convert", "contiguous")


def kernels(prof: Any, cuda: bool) -> list[Any]:
    """The device kernels (CUDA), or the top-level operators (CPU), the profile recorded."""
    events = prof.events()
    if cuda:
        return [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    return [e for e in events if e.cpu_parent is None and not e.name.startswith("ProfilerStep")]


def duration_us(event: Any, cuda: bool) -> float:
    if not cuda:
        return float(event.cpu_time)
    return float(getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0))  # renamed across versions


def profile_batch(config: Config, backend: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    device, cuda = backend.device, backend.device.type == "cuda"
    precision = resolve(config, device)
    batches = data.TrainBatches(images, labels, config.batch_size, 1, data.Shard(0, 1), 0, device,
                                memory_format=backend.memory_format)
    torch.manual_seed(0)
    model, optimizer = build_model_and_optimizer(config, backend)
    model, optimizer = backend.prepare(model, optimizer)
    forward: nn.Module = StepForward(model, nn.CrossEntropyLoss(), precision)  # the trainer's step
    if config.compile:
        forward = torch.compile(forward, mode=config.compile_mode)  # type: ignore[assignment]
    stream = endless(batches)
    graphs = config.compile and config.compile_mode == "reduce-overhead"
    model.train()
    warm_up(model, next(stream)[0], [], precision, forward if config.compile else None)

    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        train_step(model, optimizer, next(stream), backend, criterion, precision, None, forward, graphs)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        for _ in range(STEPS):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    found = kernels(prof, cuda)
    by_name: dict[str, list[float]] = {}
    for e in found:
        by_name.setdefault(e.name, []).append(duration_us(e, cuda))
    busy_ms = sum(sum(v) for v in by_name.values()) / 1e3 if cuda else None
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    layout = {k: v for k, v in by_name.items() if any(w in k.lower() for w in LAYOUT_WORDS)}
    return {
        "steps": STEPS,
        "kernels_per_step": len(found) / STEPS,
        "wall_ms_per_step": wall_ms / STEPS,
        "device_busy_ms_per_step": busy_ms / STEPS if busy_ms is not None else None,
        "device_busy_fraction": busy_ms / wall_ms if busy_ms is not None else None,
        "top": [{"name": k[:120], "calls_per_step": len(v) / STEPS, "ms_per_step": sum(v) / 1e3 / STEPS} for k, v in top],
        "layout_copies": {"kernels_per_step": sum(len(v) for v in layout.values()) / STEPS,
                          "ms_per_step": sum(sum(v) for v in layout.values()) / 1e3 / STEPS,
                          "names": sorted(k[:120] for k in layout)[:20]},
        "note": None if cuda else "CPU run: kernels are top-level host operators, no device time",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="profile_step.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-sizes", default="256,512")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"compile": args.compile, "compile_mode": args.compile_mode, "batches": {}}
    backend = None
    for size in (int(b) for b in args.batch_sizes.split(",")):
        config = Config(batch_size=size, width=args.width, compile=args.compile, compile_mode=args.compile_mode,
                        no_cuda=args.no_cuda).validate()
        backend = backend or init_backend(config)
        if backend.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        images, labels = load_images(BenchConfig(no_cuda=args.no_cuda))
        result["device"] = torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else "cpu"
        result["batches"][str(size)] = entry = profile_batch(config, backend, images, labels)
        write_json_atomic(args.out, result)
        busy = entry["device_busy_fraction"]
        print(f"batch {size}: {entry['kernels_per_step']:.0f} kernels a step, {entry['wall_ms_per_step']:.2f} ms a "
              f"step" + (f", device busy {busy:.0%}" if busy is not None else ""), flush=True)
    if backend is not None:
        backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
