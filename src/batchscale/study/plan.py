"""`batchscale plan`: predict step time, throughput and time to target for N workers.

The model (stated in every report that includes it):
- compute: the measured single-worker step time at each per-worker batch, unchanged by N
  (every worker has its own device and input pipeline);
- communication: a ring allreduce of the gradients, alpha-beta model:
  T_comm(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency;
- no overlap: T_step = T_compute + T_comm; overlap: the allreduce runs behind the backward pass,
  two thirds of the compute: T_step = T_compute + max(0, T_comm - 2/3 T_compute);
- steps to target: McCandlish et al.'s S(B) = S_min (1 + B_noise / B), fitted to the runs that
  reached the target (or taken from the one run, with B_noise = its B_simple, if only one did).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flags import flag
from .sweep import _ints

BACKWARD_SHARE = 2 / 3
PLAN = "the prediction"


@dataclass
class PlanConfig:
    """`batchscale plan`'s flags (the sweep folder is its one positional argument)."""

    workers: tuple[int, ...] = flag((1, 2, 4, 8), "worker counts to predict", group=PLAN, parse=_ints)
    bandwidth: float = flag(25.0, "GB/s per link (25: 200 Gb/s)", group=PLAN)
    latency: float = flag(5.0, "microseconds per message", group=PLAN)
    measure_loopback: bool = flag(False, "fit bandwidth and latency to gloo on this machine instead", group=PLAN)
    fp16_allreduce: bool = flag(False, "2-byte gradients on the wire", group=PLAN)


@dataclass
class Network:
    bandwidth_gbs: float  # GB/s per link, each direction
    latency_us: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_gbs) or self.bandwidth_gbs == math.inf) or self.bandwidth_gbs <= 0:
            raise ConfigError(f"--bandwidth must be a positive number of GB/s (got {self.bandwidth_gbs!r})")
        if not math.isfinite(self.latency_us) or self.latency_us < 0:
            raise ConfigError(f"--latency must be a number of microseconds >= 0 (got {self.latency_us!r})")

    def allreduce_seconds(self, nbytes: float, workers: int) -> float:
        if workers == 1:
            return 0.0
        return 2 * (workers - 1) / workers * nbytes / (self.bandwidth_gbs * 1e9) + 2 * (workers - 1) * self.latency_us * 1e-6


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = intercept + slope x; returns (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def step_seconds(compute: float, comm: float, overlap: bool) -> float:
    return compute + (max(0.0, comm - BACKWARD_SHARE * compute) if overlap else comm)


def fit_steps_to_target(points: list[tuple[int, int]], fallback_noise: float | None) -> tuple[float, float] | None:
    """(S_min, B_noise) of S(B) = S_min (1 + B_noise / B), least squares on S against 1/B."""
    if len(points) >= 2:
        xs = [1 / b for b, _ in points]
        ys = [float(s) for _, s in points]
        s_min, slope = fit_line(xs, ys)
        if s_min > 0 and slope > 0:
            return s_min, slope / s_min
    if points and fallback_noise:
        b, s = points[0]
        return s / (1 + fallback_noise / b), fallback_noise
    return None


def measured_compute(sweep_dir: Path) -> tuple[dict[int, float], dict[tuple[int, int], float], int, list]:
    """From a sweep's runs: single-worker seconds per step by per-worker batch, measured step seconds
    by (workers, batch), parameter count, and (global batch, steps to target) pairs."""
    from .runs import load_runs

    runs = load_runs(sweep_dir)
    single: dict[int, float] = {}
    measured: dict[tuple[int, int], float] = {}
    reached = []
    for r in runs:
        s = r.summary
        rate = s.get("steady_images_per_sec") or s["images_per_sec"]
        if s.get("simulated_workers") or not rate:
            continue
        per_worker = s["config"]["batch_size"] * s["config"]["batches_per_allreduce"]
        seconds = r.global_batch / rate
        measured[(r.workers, per_worker)] = seconds
        if r.workers == 1:
            single[per_worker] = seconds
    for r in runs:
        if r.target:
            reached.append((r.global_batch, int(r.target["step"])))
    return single, measured, int(runs[0].summary["parameters"]), sorted(reached)


def measured_noise_scale(sweep_dir: Path, batch: int) -> float | None:
    """The B_simple a run at global batch `batch` measured (the median over its seeds), for a one-point curve."""
    from .runs import load_runs

    values = [r.summary["noise_scale"] for r in load_runs(sweep_dir)
              if r.global_batch == batch and r.target and (r.summary.get("noise_scale") or 0) > 0]
    return statistics.median(values) if values else None


def plan(
    sweep_dir: str | Path,
    network: Network,
    workers: Sequence[int],
    bytes_per_value: int = 4,
    noise_scale: float | None = None,
) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    if not workers or min(workers) < 1:
        raise ConfigError(f"--workers must be integers >= 1, like 1,2,4,8 (got {','.join(map(str, workers)) or 'none'})")
    single, measured, parameters, reached = measured_compute(sweep_dir)
    if not single:
        raise ConfigError(f"{sweep_dir} has no real single-worker run to take compute times from; add --workers 1")
    nbytes = parameters * bytes_per_value
    if noise_scale is None and len(reached) == 1:
        noise_scale = measured_noise_scale(sweep_dir, reached[0][0])
    curve = fit_steps_to_target(reached, noise_scale)
    rows = []
    for n in workers:
        comm = network.allreduce_seconds(nbytes, n)
        for batch, compute in sorted(single.items()):
            row: dict[str, Any] = {"workers": n, "batch_per_worker": batch, "global_batch": n * batch,
                                   "compute_s": compute, "allreduce_s": comm}
            for overlap in (False, True):
                key = "overlap" if overlap else "no_overlap"
                step = step_seconds(compute, comm, overlap)
                row[f"step_s_{key}"] = step
                row[f"images_per_sec_{key}"] = n * batch / step
                if curve:
                    s_min, b_noise = curve
                    steps = s_min * (1 + b_noise / (n * batch))
                    row["steps_to_target"] = steps
                    row[f"seconds_to_target_{key}"] = steps * step
            if (n, batch) in measured:
                row["measured_step_s"] = measured[(n, batch)]
            rows.append(row)
    best = None
    if curve:
        best = min(rows, key=lambda r: r["seconds_to_target_overlap"])
    result = {"network": asdict(network), "gradient_bytes": nbytes, "steps_curve": curve, "rows": rows, "best": best}
    from ..atomic import write_json_atomic

    write_json_atomic(sweep_dir / "plan.json", result)
    return result


def describe_plan(result: dict[str, Any]) -> str:
    from .runs import positive

    net = result["network"]
    lines = [
        "## Scaling model",
        "",
        f"Ring allreduce of {result['gradient_bytes'] / 1e6:.1f} MB of gradients over "
        f"{net['bandwidth_gbs']:g} GB/s links with {net['latency_us']:g} us latency (alpha-beta model); "
        "compute per step is the measured single-worker time; with overlap the allreduce hides behind the "
        "backward pass (2/3 of compute). Steps to target follow S(B) = S_min (1 + B_noise / B).",
        "",
        "| workers | batch/worker | global batch | step s (no overlap) | step s (overlap) | measured step s | error | images/s (overlap) | s to target (overlap) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        measured = r.get("measured_step_s")
        error = f"{100 * (r['step_s_no_overlap'] / measured - 1):+.0f}%" if measured else "-"
        lines.append(
            f"| {r['workers']} | {r['batch_per_worker']} | {r['global_batch']} | {r['step_s_no_overlap']:.4f} "
            f"| {r['step_s_overlap']:.4f} | {f'{measured:.4f}' if measured else '-'} | {error} "
            f"| {r['images_per_sec_overlap']:.0f} | {positive(r.get('seconds_to_target_overlap'), 1)} |"
        )
    if not result["steps_curve"]:
        lines += ["", "No time to target: fewer than two runs reached the target, so there is no S(B) curve to "
                  "predict it from (a lower --target-accuracy, or longer runs, give one)."]
    checked = [r for r in result["rows"] if r.get("measured_step_s") and r["workers"] > 1]
    if not checked:
        lines += ["", "No real multi-worker run in this sweep to check the prediction against "
                  "(run the sweep with --launcher torchrun to get one)."]
    else:
        worst = max(abs(r["step_s_no_overlap"] / r["measured_step_s"] - 1) for r in checked)
        lines += ["", f"Against the {len(checked)} real multi-worker run(s), the no-overlap prediction is off by at most "
                  f"{100 * worst:.0f}% ({'within' if worst <= 0.2 else 'outside'} the 20% this model aims for)."]
    if result["best"]:
        b = result["best"]
        lines += ["", f"Fastest to target on this cluster: {b['workers']} workers x batch {b['batch_per_worker']} "
                  f"(global {b['global_batch']}), about {b['seconds_to_target_overlap']:.0f} s."]
    return "\n".join(lines)


def _allreduce_worker(sizes: list[int], repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    times = {}
    for size in sizes:
        t = torch.zeros(size // 4)
        dist.all_reduce(t)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(t)
        times[size] = (time.perf_counter() - start) / repeats
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(times))
    dist.barrier()  # leave together: gloo aborts a rank whose peer tears down first
    dist.destroy_process_group()


def measure_loopback(workers: int = 2) -> Network:
    """Fits alpha and beta to gloo allreduces between processes on this machine (loopback)."""
    import socket
    import subprocess
    import sys
    import tempfile

    sizes = [2**k for k in range(12, 27, 2)]  # 4 KB .. 64 MB
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = Path(tmp) / "times.json"
        code = f"from batchscale.study.plan import _allreduce_worker; _allreduce_worker({sizes}, 5, {str(out)!r})"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(workers),
                        "--master-port", str(port), "--no-python", sys.executable, "-c", code],
                       check=True, capture_output=True, env=env)
        times = {int(k): v for k, v in json.loads(out.read_text()).items()}
    factor = 2 * (workers - 1) / workers
    xs, ys = [factor * b for b in times], list(times.values())
    intercept, slope = fit_line(xs, ys)
    intercept = max(intercept, 0.0)
    return Network(bandwidth_gbs=1 / slope / 1e9 if slope > 0 else math.inf, latency_us=intercept / (2 * (workers - 1)) * 1e6)
