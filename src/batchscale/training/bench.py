"""`batchscale bench`: how fast one training step is, where its time goes, and how it compares
with the original's pipeline (torchvision DataLoader, PIL transforms, 4 workers, fp32, a host
sync per step, torchvision's ImageNet ResNet-18), measured side by side in the same process.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import data
from ..atomic import write_json_atomic
from ..config import Config
from ..errors import ConfigError
from ..flags import flag, same_as
from ..models import build_model
from ..parallel import Backend, init_backend
from ..precision import Precision, resolve
from .step import StepForward, build_model_and_optimizer, graphs_skipped, train_step, warm_up

# Dense peak TFLOP/s by GPU from the vendors' data sheets: (bf16/fp16 tensor cores, TF32 tensor cores, plain fp32).
# More specific names first: "H100 NVL" and "H100 PCIe" before "H100".
PEAK_TFLOPS = {
    "H100 NVL": (835.0, 417.5, 60.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.0, 494.7, 67.0),
    "H200": (989.0, 494.7, 67.0),
    "GH200": (989.0, 494.7, 67.0),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "A10": (125.0, 62.5, 31.2),
}
# The original's transforms normalized with the widespread (but not CIFAR-10's true) std.
ORIGINAL_MEAN, ORIGINAL_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
ORIGINAL_WORKERS = 4
ORIGINAL_MODEL = "resnet18-imagenet-1000"  # torchvision's, built as the original did: 1000 outputs


BENCH = "what to time"
# Below these a median is one noisy sample: the 3-step, 1-round bench once printed "-27% overhead".
MIN_STEPS, MIN_ROUNDS = 10, 5
# Rounds whose slowest is more than this above their fastest disagree: the machine's speed drifted.
MAX_SPREAD = 0.10


@dataclass
class BenchConfig:
    """A bench run; each field is a `batchscale bench` flag, the training ones declared once in Config."""

    model: str = same_as(Config, "model", group=BENCH)
    width: int = same_as(Config, "width", group=BENCH)
    batch_size: int = same_as(Config, "batch_size", group=BENCH)
    precision: str = same_as(Config, "precision", group=BENCH)
    compile: bool = same_as(Config, "compile", group=BENCH)
    compile_mode: str = same_as(Config, "compile_mode", group=BENCH)
    steps: int = flag(20, f"timed steps per round (fewer than {MIN_STEPS} is flagged as too short)", group=BENCH)
    warmup: int = flag(5, "untimed steps first", group=BENCH, aliases=("--untimed-steps",))
    rounds: int = flag(5, f"interleaved rounds of ours and the bare loop, each kept in the JSON (fewer than "
                       f"{MIN_ROUNDS} is flagged as too few)", group=BENCH)
    data: str = flag("synthetic", "synthetic images, or the real set from --train-dir", group=BENCH,
                     choices=("synthetic", "real"))
    train_dir: str = same_as(Config, "train_dir", group=BENCH)
    baseline: bool = flag(True, "skip the original's pipeline", group=BENCH, name="--no-baseline")
    baseline_steps: int = flag(10, "timed steps of the original's pipeline", group=BENCH)
    output: str | None = flag("bench.json", "JSON results, rewritten as each part finishes", group=BENCH,
                              aliases=("--out",))
    no_cuda: bool = same_as(Config, "no_cuda", group=BENCH)

    def validate(self) -> "BenchConfig":
        for name in ("width", "batch_size", "steps", "rounds", "baseline_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.data not in ("synthetic", "real"):
            raise ConfigError(f"--data must be synthetic or real (got {self.data!r})")
        return self

    def train_config(self) -> Config:
        return Config(
            model=self.model, width=self.width, batch_size=self.batch_size, precision=self.precision,
            compile=self.compile, compile_mode=self.compile_mode, no_cuda=self.no_cuda, train_dir=self.train_dir,
            val_dir=self.train_dir,
        ).validate()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, precision: Precision) -> float | None:
    """The peak of the arithmetic the step really uses: fp32 convolutions run on TF32 tensor cores when cuDNN
    allows it (its default)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS.items():
        if key in name:
            if precision.dtype is not None:
                return half
            return tf32 if torch.backends.cudnn.allow_tf32 else fp32
    return None


# Synthetic images on a GPU: as many as the real training set, so an epoch (whose start draws the next epoch's
# plan) comes as often as in training: 10,000 gave 9 steps an epoch at batch 1024. The CPU's benches are small.
SYNTHETIC_IMAGES = {"cuda": 50_000, "cpu": 10_000}


def load_images(bench: BenchConfig, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    if bench.data == "real":
        return data.load_split(bench.train_dir, train=True)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() and not bench.no_cuda else "cpu")
    gen = torch.Generator().manual_seed(0)
    n = SYNTHETIC_IMAGES.get(device.type, SYNTHETIC_IMAGES["cpu"])
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=gen)


def flops_per_step(model: nn.Module, x: Tensor, y: Tensor, precision: Precision) -> int:
    """Forward + backward FLOPs of one micro-batch, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with precision.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def time_steps(step: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Mean seconds per call over `steps` calls, with one device sync at the end (as in training)."""
    if steps == 0:
        return 0.0
    return time_round(step, steps, device)["wall_ms"] / 1e3


def time_round(step: Callable[[], Any], steps: int, device: torch.device,
               wait: Callable[[], None] | None = None) -> dict[str, float | None]:
    """One round of `steps` calls, in ms per step: host issue (until the last call returns: what the host spends
    launching), wall (until the device has finished too: one sync at the end, as in training) and, on CUDA,
    device (CUDA events recorded on the stream before the first and after the last step: the device's span,
    idle gaps included). A device-bound step has host issue well under wall; a host-bound one, about equal."""
    wait = wait or (lambda: sync(device))
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else None
    wait()
    start = time.perf_counter()
    if events:
        events[0].record()
    for _ in range(steps):
        step()
    if events:
        events[1].record()
    issued = time.perf_counter()
    wait()
    done = time.perf_counter()
    return {"host_issue_ms": (issued - start) * 1e3 / steps, "wall_ms": (done - start) * 1e3 / steps,
            "device_ms": events[0].elapsed_time(events[1]) / steps if events else None}


def summarize_rounds(rounds: list[dict[str, float | None]]) -> dict[str, Any]:
    """Median and min of each per-step figure over the rounds, and the rounds themselves."""
    out: dict[str, Any] = {"rounds": rounds}
    for key in ("wall_ms", "host_issue_ms", "device_ms"):
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = {"median": statistics.median(values), "min": min(values)} if values else None
    return out


def timing_warnings(bench: BenchConfig, ours: dict[str, Any], bare: dict[str, Any]) -> list[str]:
    """What makes the figures doubtful, in words the JSON and the printout both carry."""
    found = []
    if bench.steps < MIN_STEPS or bench.rounds < MIN_ROUNDS:
        found.append(f"sample too short ({bench.rounds} round(s) x {bench.steps} steps; use at least {MIN_ROUNDS} x "
                     f"{MIN_STEPS}): the figures are single noisy samples")
    for name, timing in (("ours", ours), ("bare loop", bare)):
        walls = [r["wall_ms"] for r in timing["rounds"]]
        spread = max(walls) / min(walls) - 1
        if spread > MAX_SPREAD:
            found.append(f"{name}: rounds disagree, the slowest {100 * spread:.0f}% above the fastest "
                         f"(more than {100 * MAX_SPREAD:.0f}%): the machine's speed drifted")
    if ours["wall_ms"]["min"] < bare["wall_ms"]["min"]:
        found.append("our step came out faster than the bare loop, which does less: the difference is noise")
    return found


def endless(batches: data.TrainBatches) -> Iterator[list[tuple[Tensor, Tensor]]]:
    epoch = 1
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def measure_ours(bench: BenchConfig, backend: Backend, images: Tensor, labels: Tensor) -> dict[str, Any]:
    config = bench.train_config()
    device = backend.device
    precision = resolve(config, device)
    batches = data.TrainBatches(images, labels, bench.batch_size, 1, data.Shard(backend.rank, backend.world_size), 0,
                                device, memory_format=backend.memory_format)
    torch.manual_seed(0)
    model, optimizer = build_model_and_optimizer(config, backend)
    flops = flops_per_step(model, *batches.gather(*(t[0, 0] for t in batches.epoch_plan(1))), precision)
    model, optimizer = backend.prepare(model, optimizer)
    criterion = nn.CrossEntropyLoss()
    stream = endless(batches)
    compile_seconds = 0.0
    graphs_before, skips_before = compiled_graphs(), graphs_skipped()
    memory_at_start = memory_allocated_mb(device)  # what earlier measurements in this process left allocated
    model.train()  # what is timed is training: train-mode batch norm, the graph the trainer runs
    forward: nn.Module = StepForward(model, criterion, precision)  # the trainer's step: forward, loss, metrics
    graphs = bench.compile and bench.compile_mode == "reduce-overhead"
    if bench.compile:
        # Static, as training compiles its one batch shape: with automatic dynamic shapes a second batch size in
        # this process would recompile with a symbolic batch, another graph than the one training runs.
        forward = torch.compile(forward, mode=bench.compile_mode, dynamic=False)  # type: ignore[assignment]
        first = next(stream)[0]
        compile_seconds = warm_up(model, first, [], precision, forward)  # the bench times training steps only
    graphs_warm = compiled_graphs()
    fixed = next(stream)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bad = torch.full((), -1, dtype=torch.long, device=device)

    def our_step() -> None:
        # What the trainer does per step: fetch and augment, set the LR, train, accumulate metrics on device.
        nonlocal loss_sum, correct
        micro = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = 0.01
        step_loss, step_correct = train_step(model, optimizer, micro, backend, criterion, precision, None, forward,
                                             graphs)
        bad.masked_fill_((bad < 0) & ~torch.isfinite(step_loss), 1)
        loss_sum += step_loss
        correct += step_correct

    def bare_step() -> None:
        optimizer.zero_grad()
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = forward(*fixed[0])[0]
        precision.backward(loss)
        backend.optimizer_step(optimizer, precision.scaler)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    time_steps(our_step, bench.warmup, device)
    time_steps(bare_step, bench.warmup, device)
    ours_rounds, bare_rounds = [], []
    for _ in range(bench.rounds):  # interleaved, so drift in machine speed hits both alike
        ours_rounds.append(time_round(our_step, bench.steps, device))
        bare_rounds.append(time_round(bare_step, bench.steps, device))
    ours, bare = summarize_rounds(ours_rounds), summarize_rounds(bare_rounds)
    step_s, bare_s = ours["wall_ms"]["median"] / 1e3, bare["wall_ms"]["median"] / 1e3
    graphs_timed = compiled_graphs()
    parts = split_step(model, forward, optimizer, stream, backend, precision, bench.steps, graphs)
    peak = peak_tflops(device, precision)
    achieved = flops / step_s / 1e12
    warnings_found = timing_warnings(bench, ours, bare)
    if graphs_timed > graphs_warm:
        warnings_found.append(f"{graphs_timed - graphs_warm} graph(s) compiled while timing: the figures include "
                              "compiling")
    return {
        "pipeline": "batchscale: data on device, the epoch's crop/flip at once, forward+loss+metrics one callable, "
        f"{precision.name}, {'channels_last, ' if backend.memory_format == torch.channels_last else ''}"
        f"{f'compiled ({bench.compile_mode}), ' if bench.compile else ''}no per-step host sync",
        "model": f"{bench.model} (width {bench.width})",
        "precision": precision.name,
        "batch_norm": "train mode" if model.training else "eval mode",
        "images_per_sec": bench.batch_size * backend.world_size / step_s,
        "images_per_sec_best": bench.batch_size * backend.world_size / (ours["wall_ms"]["min"] / 1e3),
        "step_ms": step_s * 1e3,
        "timing": ours,
        "device_timing": "CUDA events around each round" if device.type == "cuda"
        else "n/a: on the CPU the host runs the kernels, so device time is wall time",
        "parts_ms": parts,
        "synced_step_ms": sum(parts.values()),
        "bare_loop_step_ms": bare_s * 1e3,
        "bare_loop_timing": bare,
        "overhead_vs_bare_loop": step_s / bare_s,
        "compile_seconds": compile_seconds,
        "graphs_compiled": {"warm_up": graphs_warm - graphs_before, "while_timing": graphs_timed - graphs_warm},
        # Inductor's count of compiled graphs CUDA graphs declined to record: 0 means every one was recorded.
        "cudagraph_skips": graphs_skipped() - skips_before if graphs else None,
        "warnings": warnings_found,
        "flops_per_step": flops,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
        "peak_memory_mb": peak_memory_mb(device),
        "memory_at_start_mb": memory_at_start,
    }


def start_afresh(device: torch.device) -> None:
    """Readies this process for the next measurement as a new process would find it: no compiled graph, CUDA-graph
    pool or tensor of an earlier one alive (Dynamo's cache sits on the code object, so it outlives the module that
    was compiled, and a later batch size would be recompiled dynamic), and the memory peak reset, so each
    measurement's peak is its own."""
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()  # what reset() does in newer torch, and what holds graph pools
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def split_step(
    model: nn.Module,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[list[tuple[Tensor, Tensor]]],
    backend: Backend,
    precision: Precision,
    steps: int,
    graphs: bool = False,
) -> dict[str, float]:
    """Milliseconds per step in data, forward+backward, exposed allreduce and optimizer, with a sync
    after each. The allreduce hidden behind the backward pass costs nothing; what is left over is
    the synced forward+backward with communication minus the same without it."""
    device = backend.device
    data_s, fb_s, fb_local_s, opt_s = [], [], [], []
    for i in range(2 * steps):
        local = i % 2 == 1 and backend.world_size > 1  # every other step without communication
        sync(device)
        t0 = time.perf_counter()
        (x, y), = next(stream)
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        with backend.accumulating(model) if local else contextlib.nullcontext():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            precision.backward(forward(x, y)[0])
        sync(device)
        t2 = time.perf_counter()
        if local:
            fb_local_s.append(t2 - t1)
            continue
        backend.optimizer_step(optimizer, precision.scaler)
        sync(device)
        t3 = time.perf_counter()
        data_s.append(t1 - t0)
        fb_s.append(t2 - t1)
        opt_s.append(t3 - t2)
    with_comm = statistics.mean(fb_s)
    without = statistics.mean(fb_local_s) if fb_local_s else with_comm
    return {
        "data": statistics.mean(data_s) * 1e3,
        "forward_backward": without * 1e3,
        "allreduce_exposed": (with_comm - without) * 1e3,
        "optimizer": statistics.mean(opt_s) * 1e3,
    }


def memory_allocated_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def original_loader(images: Tensor, labels: Tensor, batch_size: int, backend: Backend) -> torch.utils.data.DataLoader:
    """The original's input pipeline: torchvision's CIFAR10 dataset class, PIL transforms, 4 workers."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    # torchvision's own __getitem__ (PIL image, then the transforms), over the arrays we loaded safely.
    dataset.data = images.permute(0, 2, 3, 1).contiguous().numpy()
    dataset.targets = labels.tolist()
    dataset.target_transform = None
    dataset.transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD),
        ]
    )
    sampler = None
    if backend.world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, backend.world_size, backend.rank)
    with four_workers_allowed():
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=ORIGINAL_WORKERS,
            pin_memory=backend.device.type == "cuda", drop_last=True, persistent_workers=True,
        )


@contextlib.contextmanager
def four_workers_allowed() -> Iterator[None]:
    """torch warns when 4 workers exceed the cores; 4 is what the original used, so the baseline keeps them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        yield


def original_model(name: str, width: int = 64) -> nn.Module:
    import torchvision

    if name == "original":
        return torchvision.models.resnet18()  # as the original built it: ImageNet stem, 1000 outputs
    return build_model(name, width)


def measure_original(bench: BenchConfig, backend: Backend, images: Tensor, labels: Tensor, model_name: str) -> dict[str, Any]:
    device = backend.device
    loader = original_loader(images, labels, bench.batch_size, backend)
    torch.manual_seed(0)
    model = original_model(model_name if model_name == "original" else bench.model, bench.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0125, momentum=0.9, weight_decay=5e-5)
    model, optimizer = backend.prepare(model, optimizer)
    model.train()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from loader

    stream = batches()

    def step() -> None:
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        # The original's per-step metrics: a reduced accuracy and loss read on the host every step.
        metric = torch.stack([loss.detach(), out.argmax(1).eq(y).float().mean()])
        backend.all_reduce_sum(metric).tolist()

    with four_workers_allowed():
        time_steps(step, max(2, bench.warmup), device)  # also starts the 4 workers
    step_s = time_steps(step, bench.baseline_steps, device)
    stream.close()  # ends the DataLoader iterator, and with it the 4 worker processes
    return {
        "pipeline": f"torchvision DataLoader, PIL crop/flip/normalize, {ORIGINAL_WORKERS} workers, fp32, host sync per step",
        "model": "torchvision resnet18 (7x7 stem, max-pool, 1000 outputs)" if model_name == "original"
        else f"{bench.model} (width {bench.width})",
        "model_name": ORIGINAL_MODEL if model_name == "original" else bench.model,
        "precision": "fp32",
        "images_per_sec": bench.batch_size * backend.world_size / step_s,
        "step_ms": step_s * 1e3,
    }


def run(bench: BenchConfig) -> dict[str, Any]:
    """Measures ours, then the original's pipeline on the original's model and on ours; the JSON is rewritten
    after each part, so a bench cut short by a time limit still leaves what it measured."""
    bench.validate()
    backend = init_backend(bench.train_config())
    try:
        if backend.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        images, labels = load_images(bench, backend.device)
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else "cpu",
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "world_size": backend.world_size,
            "batch_size": bench.batch_size,
            "global_batch": bench.batch_size * backend.world_size,
            "data": bench.data,
            "config": asdict(bench),
            "complete": False,
        }

        def save() -> None:
            if backend.is_main and bench.output:
                write_json_atomic(Path(bench.output), result)

        result["ours"] = measure_ours(bench, backend, images, labels)
        save()
        if bench.baseline:
            result["original_pipeline_our_model"] = measure_original(bench, backend, images, labels, "ours")
            ours = result["ours"]["images_per_sec"]
            # Like with like: the same model fed by the original's pipeline. The original's own model is a
            # different network (a sixteenth of the FLOPs at 32x32), so its ratio is reported apart, labelled.
            result["headline"] = {"speedup": ours / result["original_pipeline_our_model"]["images_per_sec"],
                                  "model": bench.model, "against": "the original's pipeline on the same model"}
            save()
            result["original"] = measure_original(bench, backend, images, labels, "original")
            result["speedup_vs_original_model"] = ours / result["original"]["images_per_sec"]
        result["complete"] = True
        save()
        backend.finish()
        return result
    finally:
        backend.shutdown()


def describe(result: dict[str, Any]) -> str:
    ours = result["ours"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in ours["parts_ms"].items())
    lines = [
        f"{result['device']}, {result['world_size']} worker(s), batch {result['batch_size']}, {result['data']} data",
        f"ours:     {ours['images_per_sec']:9.0f} img/s  {ours['step_ms']:8.2f} ms/step  ({parts} ms)",
        f"          median of {len(ours['timing']['rounds'])} rounds, fastest {ours['timing']['wall_ms']['min']:.2f} ms; "
        f"host issue {ours['timing']['host_issue_ms']['median']:.2f} ms/step, device "
        + (f"{ours['timing']['device_ms']['median']:.2f} ms/step" if ours["timing"]["device_ms"] else "n/a (CPU)")
        + f"; batch norm in {ours['batch_norm']}",
        f"          overhead over a bare fwd/bwd/step loop: {100 * (ours['overhead_vs_bare_loop'] - 1):+.1f}%",
        f"          {ours['achieved_tflops']:.2f} TFLOP/s counted"
        + (f", {100 * ours['fraction_of_peak']:.0f}% of peak" if ours["fraction_of_peak"] else "")
        + f", peak memory {ours['peak_memory_mb']:.0f} MB",
    ]
    for key in ("original_pipeline_our_model", "original"):
        if key in result:
            r = result[key]
            lines.append(f"{key + ':':30s} {r['images_per_sec']:9.0f} img/s  {r['step_ms']:8.2f} ms/step  ({r['model']})")
    if "headline" in result:
        lines.append(f"speed-up over the original pipeline, same model ({result['headline']['model']}): "
                     f"{result['headline']['speedup']:.2f}x")
    if "speedup_vs_original_model" in result:
        lines.append(f"(against the original's own ImageNet ResNet-18, a different network with a sixteenth of the "
                     f"FLOPs at 32x32: {result['speedup_vs_original_model']:.2f}x)")
    lines += [f"warning: {text}" for text in ours["warnings"]]
    return "\n".join(lines)
