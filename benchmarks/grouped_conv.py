"""Grouped against dense: should a study train G learning rates as one grouped model?

    python benchmarks/grouped_conv.py OUT.json [--batch-size 256] [--groups 4] [--width 64] [--compile] [--no-cuda]
        [--rounds 5] [--steps 10]

Times a training step (forward, backward, SGD) of one ResNet-18, of G of them one after another (what G trials
on one device cost in sequence), and of one network with groups=G in every convolution, which is G independent
ResNet-18s packed together (models.CifarResNet18(groups=G): same parameters as the G, batch norm per channel).
`decision` says "grouped" where the packed step beats the G in sequence by 10% or more, on device time: on a GPU
the kernels' time per step (10 steps under torch.profiler, each kernel once: training/profiling.py), since an
eager step at batch 256 is mostly launch overhead that a study's compiled step does not pay; the optimizer is
fused SGD, as training's. On the CPU, where there is no device time, on the wall. Median and min of 5 rounds of
10 steps, host issue and CUDA-event span apart (training/bench.py's timing), are kept beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from batchscale.atomic import write_json_atomic
from batchscale.models import CifarResNet18
from batchscale.training import profiling
from batchscale.training.bench import summarize_rounds, time_round

ROUNDS, STEPS = 5, 10
MARGIN = 0.9  # grouped where it takes at most this share of the sequence's time


def step_of(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, groups: int = 1) -> Callable[[], None]:
    fused = x.device.type == "cuda" or None  # one kernel for the whole update, as training's optimizer
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=fused) for m in models]
    labels = y.repeat(groups)  # member-major, as the logits are laid out below

    def step() -> None:
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                out = model(x)
                if groups > 1:  # member g's logits are columns 10g..10g+9: each member's own loss, summed
                    out = out.view(x.shape[0], groups, 10).transpose(0, 1).reshape(-1, 10)
                loss = F.cross_entropy(out.float(), labels)
            loss.backward()
            optimizer.step()

    return step


def timed(step: Callable[[], None], device: torch.device, rounds: int = ROUNDS, steps: int = STEPS) -> dict[str, Any]:
    for _ in range(3):
        step()
    result = summarize_rounds([time_round(step, steps, device) for _ in range(rounds)])
    result["kernel_ms"] = kernel_ms(step, device, steps)
    return result


def kernel_ms(step: Callable[[], None], device: torch.device, steps: int = STEPS) -> float | None:
    """The device's time in kernels per step (None on the CPU): what the step costs once launches are free."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
    return profiling.busy_us(prof.events()) / 1e3 / steps


def decide(result: dict[str, Any]) -> dict[str, Any]:
    """Grouped or sequential, on the kernels' time where there is one, else on the wall."""
    sequential, grouped = result["sequential"], result["grouped"]
    on_device = sequential["kernel_ms"] is not None and grouped["kernel_ms"] is not None
    seq, grp = ((sequential["kernel_ms"], grouped["kernel_ms"]) if on_device
                else (sequential["wall_ms"]["median"], grouped["wall_ms"]["median"]))
    return {"decided_on": "device time (kernels per step, profiled)" if on_device else "wall time (no device: CPU)",
            "sequential_ms": seq, "grouped_ms": grp, "grouped_over_sequential": grp / seq,
            "decision": "grouped" if grp <= MARGIN * seq else "sequential"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grouped_conv.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=STEPS, help="steps a round, and profiled")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    g, b = args.groups, args.batch_size

    def build(groups: int = 1) -> nn.Module:
        model = CifarResNet18(width=args.width, groups=groups).to(device, memory_format=layout)
        return torch.compile(model) if args.compile else model  # type: ignore[return-value]

    x = torch.randn(b, 3, 32, 32, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (b,), device=device)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "batch_size": b, "groups": g, "width": args.width, "compile": args.compile,
                              "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    result["one"] = timed(step_of([build()], x, y), device, args.rounds, args.steps)
    write_json_atomic(args.out, result)
    result["sequential"] = timed(step_of([build() for _ in range(g)], x, y), device, args.rounds, args.steps)
    write_json_atomic(args.out, result)
    packed = x.repeat(1, g, 1, 1).contiguous(memory_format=layout)  # every member sees the batch (its own, in a study)
    result["grouped"] = timed(step_of([build(g)], packed, y, g), device, args.rounds, args.steps)
    result["optimizer"] = "SGD, fused" if device.type == "cuda" else "SGD (for-each: the CPU)"
    result.update(decide(result))
    write_json_atomic(args.out, result)
    print(f"batch {b}, {result['decided_on']}: {g} in sequence {result['sequential_ms']:.2f} ms, grouped x{g} "
          f"{result['grouped_ms']:.2f} ms ({result['grouped_over_sequential']:.2f} of sequence): {result['decision']}"
          f" (wall: one {result['one']['wall_ms']['median']:.2f} ms, sequence "
          f"{result['sequential']['wall_ms']['median']:.2f}, grouped {result['grouped']['wall_ms']['median']:.2f})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
