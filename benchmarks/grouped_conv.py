"""Grouped against dense: should a study train G learning rates as one grouped model?

    python benchmarks/grouped_conv.py OUT.json [--batch-size 256] [--groups 4] [--width 64] [--compile] [--no-cuda]

Times a training step (forward, backward, SGD) of one ResNet-18, of G of them one after another (what G trials
on one device cost in sequence), and of one network with groups=G in every convolution, which is G independent
ResNet-18s packed together (models.CifarResNet18(groups=G): same parameters as the G, batch norm per channel).
`decision` says "grouped" where the packed step beats the G in sequence by 10% or more. Median and min of 5
rounds of 10 steps, host issue and device time apart (training/bench.py's timing).
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
from batchscale.training.bench import summarize_rounds, time_round

ROUNDS, STEPS = 5, 10


def step_of(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, groups: int = 1) -> Callable[[], None]:
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
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


def timed(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    for _ in range(3):
        step()
    return summarize_rounds([time_round(step, STEPS, device) for _ in range(ROUNDS)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grouped_conv.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-cuda", action="store_true")
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
    result["one"] = timed(step_of([build()], x, y), device)
    write_json_atomic(args.out, result)
    result["sequential"] = timed(step_of([build() for _ in range(g)], x, y), device)
    write_json_atomic(args.out, result)
    packed = x.repeat(1, g, 1, 1).contiguous(memory_format=layout)  # every member sees the batch (its own, in a study)
    result["grouped"] = timed(step_of([build(g)], packed, y, g), device)
    sequential, grouped = result["sequential"]["wall_ms"]["median"], result["grouped"]["wall_ms"]["median"]
    result["grouped_over_sequential"] = grouped / sequential
    result["decision"] = "grouped" if grouped <= 0.9 * sequential else "sequential"
    write_json_atomic(args.out, result)
    print(f"batch {b}: one {result['one']['wall_ms']['median']:.2f} ms, {g} in sequence {sequential:.2f} ms, "
          f"grouped x{g} {grouped:.2f} ms ({grouped / sequential:.2f} of sequence): {result['decision']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
