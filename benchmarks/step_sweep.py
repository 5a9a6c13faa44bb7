"""The bench's train-mode step at several batch sizes in one process: device and host ms per step for each.

    python benchmarks/step_sweep.py OUT.json --batch-sizes 128,256,512,1024 [bench flags: --compile,
        --compile-mode reduce-overhead, --width, --no-cuda, --steps, --rounds, --warmup, --data, --train-dir]

OUT.json is rewritten after each batch size (a time box that cuts the sweep keeps the sizes it finished); each
entry is `batchscale bench`'s "ours" (rounds, median and min of wall, host issue and CUDA-event device time,
graphs compiled, CUDA graphs declined, peak memory, warnings). One process, so the CUDA context and the data are
set up once; each size starts as a fresh process would (training/bench.start_afresh): compiled static, as
training compiles its one shape, its peak memory its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from batchscale.flags import add_flags, build
from batchscale.atomic import write_json_atomic
from batchscale.parallel import init_backend
from batchscale.training.bench import BenchConfig, load_images, measure_ours, start_afresh


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="step_sweep.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-sizes", default="128,256,512,1024")
    add_flags(parser, BenchConfig)
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    bench = build(BenchConfig, args)
    bench.baseline, bench.output = False, None
    backend = init_backend(bench.validate().train_config())
    if backend.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, labels = load_images(bench, backend.device)
    result = {"device": torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else "cpu",
              "torch": torch.__version__, "compile": bench.compile, "compile_mode": bench.compile_mode,
              "batch_norm": "train mode", "each_size": "compiled afresh and static (Dynamo reset before it)",
              "batches": {}, "complete": False}
    for size in sizes:
        start_afresh(backend.device)
        start = time.perf_counter()
        bench.batch_size = size
        ours = measure_ours(bench, backend, images, labels)
        ours["seconds"] = time.perf_counter() - start  # compiling included
        result["batches"][str(size)] = ours
        write_json_atomic(args.out, result)
        device = ours["timing"]["device_ms"]
        shown = f"{device['median']:.2f}" if device else "n/a"
        skips = ours["cudagraph_skips"]
        graphs = "" if skips is None else ", CUDA graphs recorded" if skips == 0 else f", CUDA graphs skipped {skips}"
        print(f"batch {size}: {ours['images_per_sec']:,.0f} img/s, wall {ours['timing']['wall_ms']['median']:.2f} "
              f"ms/step, host issue {ours['timing']['host_issue_ms']['median']:.2f}, device {shown}, "
              f"{sum(ours['graphs_compiled'].values())} graph(s) compiled{graphs}", flush=True)
    result["complete"] = True
    write_json_atomic(args.out, result)
    backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
