"""The bench's train-mode step under torch.profiler: 10 steps at each batch size, after a warm-up.

    python benchmarks/profile_step.py OUT.json --batch-sizes 256,512 [--compile] [--width W] [--no-cuda] [--steps 10]

Per batch size: kernels launched per step, the device's busy time per step against the wall time (busy / wall:
how far the step keeps the device fed), the top kernels by device time, and the layout copies (kernels that
only move data between memory formats or dtypes: their names say copy, transpose, nchw/nhwc or convert).
Kernels are the profile's device events that are not user annotations (training/profiling.py: an operator
and the annotations around it carry its kernels' time again). On the CPU the "kernels" are the operators the
host ran and there is no device time. Each size is compiled afresh and static, as training compiles its one shape
(training/bench.start_afresh), and its entry says how many graphs that took. OUT.json is rewritten after each
batch size.
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
from batchscale.training import profiling
from batchscale.training.bench import BenchConfig, compiled_graphs, endless, load_images, start_afresh
from batchscale.training.step import StepForward, build_model_and_optimizer, graphs_skipped, train_step, warm_up

STEPS = 10
LAYOUT_WORDS = ("copy", "transpose", "nchw", "nhwc", "convert", "contiguous")


def kernels(events: list[Any], cuda: bool) -> list[Any]:
    """The device kernels, each once (CUDA), or the top-level operators (CPU), among a profile's events."""
    if cuda:
        return profiling.kernels(events)
    return [e for e in events if e.cpu_parent is None and not e.name.startswith("ProfilerStep")
            and not getattr(e, "is_user_annotation", False)]


def duration_us(event: Any, cuda: bool) -> float:
    return profiling.kernel_us(event) if cuda else float(event.cpu_time)


def summarize(events: list[Any], cuda: bool, steps: int, wall_ms: float) -> dict[str, Any]:
    """Kernels per step, the device's busy time against the wall, the top kernels and the layout copies."""
    found = kernels(events, cuda)
    by_name: dict[str, list[float]] = {}
    for e in found:
        by_name.setdefault(e.name, []).append(duration_us(e, cuda))
    busy_ms = sum(sum(v) for v in by_name.values()) / 1e3 if cuda else None
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    layout = {k: v for k, v in by_name.items() if any(w in k.lower() for w in LAYOUT_WORDS)}
    return {
        "steps": steps,
        "kernels_per_step": len(found) / steps,
        "wall_ms_per_step": wall_ms / steps,
        "device_busy_ms_per_step": busy_ms / steps if busy_ms is not None else None,
        "device_busy_fraction": busy_ms / wall_ms if busy_ms is not None else None,
        "top": [{"name": k[:120], "calls_per_step": len(v) / steps, "ms_per_step": sum(v) / 1e3 / steps} for k, v in top],
        "layout_copies": {"kernels_per_step": sum(len(v) for v in layout.values()) / steps,
                          "ms_per_step": sum(sum(v) for v in layout.values()) / 1e3 / steps,
                          "names": sorted(k[:120] for k in layout)[:20]},
        "note": None if cuda else "CPU run: kernels are top-level host operators, no device time",
    }


def profile_batch(config: Config, backend: Any, images: torch.Tensor, labels: torch.Tensor,
                  steps: int = STEPS) -> dict[str, Any]:
    device, cuda = backend.device, backend.device.type == "cuda"
    precision = resolve(config, device)
    batches = data.TrainBatches(images, labels, config.batch_size, 1, data.Shard(0, 1), 0, device,
                                memory_format=backend.memory_format)
    torch.manual_seed(0)
    model, optimizer = build_model_and_optimizer(config, backend)
    model, optimizer = backend.prepare(model, optimizer)
    forward: nn.Module = StepForward(model, nn.CrossEntropyLoss(), precision)  # the trainer's step
    graphs_before, skips_before = compiled_graphs(), graphs_skipped()
    if config.compile:
        forward = torch.compile(forward, mode=config.compile_mode, dynamic=False)  # type: ignore[assignment]
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
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    entry = summarize(list(prof.events()), cuda, steps, wall_ms)
    entry["graphs_compiled"] = compiled_graphs() - graphs_before
    entry["cudagraph_skips"] = graphs_skipped() - skips_before if graphs else None
    return entry


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="profile_step.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-sizes", default="256,512")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps profiled at each size")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"compile": args.compile, "compile_mode": args.compile_mode, "batches": {}}
    backend, images, labels = None, None, None
    for size in (int(b) for b in args.batch_sizes.split(",")):
        config = Config(batch_size=size, width=args.width, compile=args.compile, compile_mode=args.compile_mode,
                        no_cuda=args.no_cuda).validate()
        backend = backend or init_backend(config)
        if backend.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if images is None:
            images, labels = load_images(BenchConfig(no_cuda=args.no_cuda), backend.device)
        start_afresh(backend.device)
        result["device"] = torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else "cpu"
        result["batches"][str(size)] = entry = profile_batch(config, backend, images, labels, args.steps)
        write_json_atomic(args.out, result)
        busy = entry["device_busy_fraction"]
        print(f"batch {size}: {entry['kernels_per_step']:.0f} kernels a step, {entry['wall_ms_per_step']:.2f} ms a "
              f"step" + (f", device busy {busy:.0%}" if busy is not None else "")
              + f", {entry['graphs_compiled']} graph(s) compiled", flush=True)
    if backend is not None:
        backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
