"""The fast path trains like fp32; the bench reports every figure, consistently; its baseline is the original's."""

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import transforms

from batchscale import data
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.parallel.base import Backend
from batchscale.precision import FP32, resolve
from batchscale.training import bench
from batchscale.training.step import train_step

ROOT = Path(__file__).resolve().parents[2]


def losses(precision_name: str, steps: int = 4) -> list[float]:
    config = Config(precision=precision_name, no_cuda=True)
    backend = Backend(config)
    precision = resolve(config, backend.device) if precision_name != "fp32" else FP32
    torch.manual_seed(0)
    model = CifarResNet18(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (64, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.randint(0, 10, (64,), generator=gen)
    batches = data.TrainBatches(images, labels, 16, 1, data.Shard(0, 1), 0, backend.device)
    out = []
    for _, micro in zip(range(steps), batches.epoch(1)):
        loss_sum, _ = train_step(model, optimizer, micro, backend, nn.CrossEntropyLoss(), precision)
        out.append(float(loss_sum) / 16)
    return out


@pytest.mark.parametrize("name,tol", [("bf16", 0.03), ("fp16", 0.01)])
def test_fast_path_agrees_with_fp32(name, tol):
    reference, fast = losses("fp32"), losses(name)
    assert fast == pytest.approx(reference, rel=tol)
    assert fast != reference  # the low-precision path really ran


def test_fp16_uses_a_gradient_scaler_and_auto_is_fp32_on_cpu():
    assert resolve(Config(precision="fp16", no_cuda=True), torch.device("cpu")).scaler is not None
    auto = resolve(Config(no_cuda=True), torch.device("cpu"))
    assert auto.name == "fp32" and auto.scaler is None


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    config = bench.BenchConfig(width=4, batch_size=16, steps=3, warmup=1, rounds=1, baseline_steps=2, output=str(out), no_cuda=True)
    result = bench.run(config)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_bench_reports_every_figure_with_a_plausible_value(bench_result):
    ours = bench_result["ours"]
    for key in ("images_per_sec", "step_ms", "parts_ms", "synced_step_ms", "bare_loop_step_ms", "overhead_vs_bare_loop",
                "compile_seconds", "flops_per_step", "achieved_tflops", "peak_tflops", "fraction_of_peak", "peak_memory_mb"):
        assert key in ours
    assert set(ours["parts_ms"]) == {"data", "forward_backward", "allreduce_exposed", "optimizer"}
    assert ours["parts_ms"]["allreduce_exposed"] == 0.0  # one worker: nothing to communicate
    assert all(v > 0 for k, v in ours["parts_ms"].items() if k != "allreduce_exposed")
    for key in ("original", "original_pipeline_our_model"):
        assert bench_result[key]["images_per_sec"] > 0 and bench_result[key]["precision"] == "fp32"
    # Counted FLOPs: a width-4 ResNet-18 forward+backward on 16 images is a few hundred MFLOP, not zero or TFLOP.
    assert 1e7 < ours["flops_per_step"] < 1e10


def test_bench_headline_compares_the_same_model(bench_result):
    """The speed-up that leads is ours against the original's pipeline on our model, never against a model with
    a sixteenth of the FLOPs."""
    assert bench_result["headline"]["model"] == bench_result["original_pipeline_our_model"]["model_name"] == "resnet18"
    assert bench_result["original"]["model_name"] == "resnet18-imagenet-1000"
    text = bench.describe(bench_result)
    first = next(line for line in text.splitlines() if "speed-up" in line)
    assert "same model" in first and "original pipeline" in first


def test_baseline_is_the_original_pipeline():
    images, labels = torch.zeros(64, 3, 32, 32, dtype=torch.uint8), torch.arange(64) % 10
    loader = bench.original_loader(images, labels, 16, Backend(Config(no_cuda=True)))
    import torchvision

    assert type(loader.dataset) is torchvision.datasets.CIFAR10
    assert loader.num_workers == 4
    steps = loader.dataset.transform.transforms
    assert [type(t) for t in steps] == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor,
                                        transforms.Normalize]
    assert steps[0].padding == 4
    x, y = loader.dataset[3]
    assert x.shape == (3, 32, 32) and y == 3
    model = bench.original_model("original")
    assert isinstance(model, torchvision.models.ResNet)
    assert model.conv1.kernel_size == (7, 7) and model.fc.out_features == 1000
    assert isinstance(bench.original_model("resnet18", 64), CifarResNet18)


def test_a_short_bench_says_its_sample_is_too_short(bench_result):
    """The 3-step, 1-round bench that once printed "-27% overhead" unflagged now carries a warning, printed too."""
    ours = bench_result["ours"]
    assert any("sample too short" in w for w in ours["warnings"])
    assert "warning: sample too short" in bench.describe(bench_result)
    assert len(ours["timing"]["rounds"]) == 1 and ours["batch_norm"] == "train mode"
    assert ours["timing"]["device_ms"] is None and "n/a" in ours["device_timing"]  # the CPU has no device clock


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_warm_up_leaves_the_mode_it_found(mode):
    from batchscale.training.step import warm_up

    model = CifarResNet18(width=2)
    model.train(mode == "train")
    x = torch.randn(4, 3, 32, 32)
    warm_up(model, (x, torch.zeros(4, dtype=torch.long)), [x[:2]], FP32)
    assert model.training == (mode == "train")
    assert all(m.training == (mode == "train") for m in model.modules())


def test_compiled_bench_traces_batch_norm_in_train_mode_only_and_counts_its_graphs(tmp_path, monkeypatch):
    """A counting backend sees every graph Dynamo hands over and the training flag of each batch norm in it;
    the bench's own count of compiled graphs must match what the backend saw."""
    real_compile = torch.compile
    graphs: list[list[bool]] = []

    def counting(gm, example_inputs):
        graphs.append([n.args[5] if len(n.args) > 5 else n.kwargs["training"] for n in gm.graph.nodes
                       if n.op == "call_function" and getattr(n.target, "__name__", "") == "batch_norm"])
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counting))
    torch._dynamo.reset()
    config = bench.BenchConfig(width=2, batch_size=8, steps=2, warmup=1, rounds=2, baseline=False, compile=True,
                               output=str(tmp_path / "b.json"), no_cuda=True)
    ours = bench.run(config)["ours"]
    modes = [m for g in graphs for m in g]
    assert len(modes) == 20 and all(modes)  # ResNet-18's 20 batch norms, traced once, in train mode
    assert ours["graphs_compiled"] == {"warm_up": len(graphs), "while_timing": 0}
    assert ours["batch_norm"] == "train mode"


def test_round_timing_separates_host_issue_from_wall_on_a_known_clock(monkeypatch):
    """A fake clock: each step costs the host 2 ms to issue, and the device needs 10 ms more to finish the
    round after the last issue (what the final sync waits for)."""
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

    def step() -> None:
        now[0] += 0.002

    def wait() -> None:
        now[0] += 0.010

    rounds = [bench.time_round(step, 5, torch.device("cpu"), wait) for _ in range(3)]
    assert rounds[0]["host_issue_ms"] == pytest.approx(2.0) and rounds[0]["wall_ms"] == pytest.approx(4.0)
    assert rounds[0]["device_ms"] is None
    slow = bench.time_round(lambda: now.__setitem__(0, now[0] + 0.004), 5, torch.device("cpu"), wait)
    summary = bench.summarize_rounds([*rounds, slow])
    assert summary["wall_ms"]["min"] == pytest.approx(4.0) and summary["wall_ms"]["median"] == pytest.approx(4.0)
    assert summary["host_issue_ms"]["median"] == pytest.approx(2.0) and len(summary["rounds"]) == 4
    config = bench.BenchConfig(steps=20, rounds=5)
    found = bench.timing_warnings(config, summary, bench.summarize_rounds(rounds))
    assert len(found) == 1 and "ours: rounds disagree, the slowest 50% above the fastest" in found[0]  # 6 ms vs 4


def benchmark_script(name: str):
    """A script of benchmarks/ as a module (they are run as scripts, not installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_compiles_each_size_static_alone_and_counts_the_cuda_graphs_declined(tmp_path, monkeypatch):
    """A spy backend sees every graph Dynamo hands over: one per batch size, none with a symbolic batch (training
    compiles its one shape static), none of an earlier size still alive when the next starts (its memory would
    count in that size's peak), and the graphs it declines as CUDA graphs would (inductor's counter) are the ones
    the sweep's JSON reports declined, per size."""
    from torch._dynamo.utils import counters

    traced: list[tuple[int, bool]] = []
    pools: list = []
    alive_at_start: list[int] = []

    def spy(gm, example_inputs):
        shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        symbolic = any(isinstance(d, torch.SymInt) for s in shapes for d in s) or any(
            isinstance(t, torch.SymInt) for t in example_inputs)
        batch = next(s[0] for s in shapes if tuple(s[1:]) == (3, 32, 32))
        traced.append((int(batch) if not symbolic else -1, symbolic))
        if batch == 16:
            counters["inductor"]["cudagraph_skips"] += 1  # as inductor counts a graph it will not record
        pool = torch.empty(1)  # stands in for what a compiled graph holds (its CUDA-graph memory pool)
        pools.append(weakref.ref(pool))
        return lambda *args: (pool, gm.forward(*args))[1]

    real_compile, real_build = torch.compile, bench.build_model_and_optimizer
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(
        model, backend=spy, **{k: v for k, v in kw.items() if k != "mode"}))

    def build(*args):
        gc.collect()
        alive_at_start.append(sum(ref() is not None for ref in pools))
        return real_build(*args)

    monkeypatch.setattr(bench, "build_model_and_optimizer", build)
    out = tmp_path / "graphs.json"
    step_sweep = benchmark_script("step_sweep")
    step_sweep.main([str(out), "--batch-sizes", "8,16,32", "--compile", "--compile-mode", "reduce-overhead",
                     "--width", "2", "--no-cuda", "--steps", "1", "--rounds", "1", "--warmup", "0"])
    result = json.loads(out.read_text())["batches"]
    assert traced == [(8, False), (16, False), (32, False)]
    assert alive_at_start == [0, 0, 0]
    assert {b: r["graphs_compiled"] for b, r in result.items()} == {
        b: {"warm_up": 1, "while_timing": 0} for b in ("8", "16", "32")}
    assert {b: r["cudagraph_skips"] for b, r in result.items()} == {"8": 0, "16": 1, "32": 0}


def test_synthetic_epochs_on_a_gpu_are_as_long_as_the_real_sets():
    """10,000 synthetic images gave 9 steps an epoch at batch 1024, each epoch's start inside the timed rounds
    five times as often as in training; on a GPU the bench draws as many as the real set has (drawn on the host)."""
    images, labels = bench.load_images(bench.BenchConfig(batch_size=1024), torch.device("cuda"))
    assert images.shape[0] // 1024 == 50_000 // 1024 == 48 and labels.shape[0] == images.shape[0]


def test_device_busy_counts_each_kernel_once_and_no_annotation():
    """Synthetic profiler events as torch builds them: a kernel's 100 us shows on the kernel, again on the operator
    that launched it (a CPU event's device time), and inside the span Inductor's annotation leaves on the device;
    a copy's 10 us only on itself. The device was busy 110 us, in 2 kernels."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(i, name, start, end, device=DeviceType.CPU, annotation=False):
        return FunctionEvent(id=i, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                             device_type=device, is_user_annotation=annotation)

    launch = event(1, "aten::convolution", 0, 40)
    launch.append_kernel("sm90_xmma_fprop", 0, 100)
    events = [event(0, "batchscale.update", 0, 500, annotation=True), launch,
              event(2, "## Call CompiledFxGraph fx ##", 0, 300, DeviceType.CUDA, annotation=True),
              event(3, "sm90_xmma_fprop", 50, 150, DeviceType.CUDA), event(4, "Memcpy DtoD", 150, 160, DeviceType.CUDA)]
    assert launch.self_device_time_total == 100  # the operator really carries its kernel's time (what was summed)
    from batchscale.training import profiling

    assert profiling.busy_us(events) == 110
    entry = benchmark_script("profile_step").summarize(events, True, 1, 1.0)
    assert entry["kernels_per_step"] == 2 and entry["device_busy_ms_per_step"] == pytest.approx(0.110)
    assert {t["name"] for t in entry["top"]} == {"sm90_xmma_fprop", "Memcpy DtoD"}


def test_grouped_trials_are_decided_on_the_devices_time_not_the_launch_bound_wall():
    """At batch 256 an eager step is mostly launch overhead, which 4 models in sequence pay 4 times and a study's
    compiled step does not pay: here the wall says the packed model is twice as fast, its kernels say it is slower.
    The decision follows the kernels; with no device time (the CPU) it falls back to the wall, and says so."""
    grouped_conv = benchmark_script("grouped_conv")

    def timing(wall_ms, kernel_ms):
        return {"wall_ms": {"median": wall_ms, "min": wall_ms}, "kernel_ms": kernel_ms}

    on_gpu = grouped_conv.decide({"sequential": timing(40.0, 10.0), "grouped": timing(20.0, 12.0)})
    assert on_gpu["decision"] == "sequential" and on_gpu["decided_on"].startswith("device time")
    assert on_gpu["grouped_over_sequential"] == pytest.approx(1.2)
    on_cpu = grouped_conv.decide({"sequential": timing(40.0, None), "grouped": timing(20.0, None)})
    assert on_cpu["decision"] == "grouped" and on_cpu["decided_on"].startswith("wall time")


def test_grouped_conv_steps_with_the_fused_sgd_training_uses_on_a_gpu(monkeypatch):
    """A spy on the optimizer each timed model gets: fused on a GPU, as training's (build_model_and_optimizer)."""
    grouped_conv = benchmark_script("grouped_conv")
    made: list = []

    class Spy(torch.optim.SGD):
        def __init__(self, params, **kw):
            made.append(kw.get("fused"))
            super().__init__(params, **{k: v for k, v in kw.items() if k != "fused"})

    monkeypatch.setattr(torch.optim, "SGD", Spy)

    class OnGpu(torch.Tensor):  # a CPU tensor that says it lives on a GPU, for the step's choice alone
        @property
        def device(self):
            return torch.device("cuda")

    x = torch.zeros(2, 3, 32, 32).as_subclass(OnGpu)
    grouped_conv.step_of([CifarResNet18(width=2) for _ in range(2)], x, torch.zeros(2, dtype=torch.long))
    assert made == [True, True]
