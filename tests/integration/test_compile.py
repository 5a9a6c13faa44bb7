"""torch.compile on the CPU: the warm-up changes nothing, the compiled step computes what eager does, and every
evaluation shape is compiled before the clock starts, and --compile-mode is what torch.compile gets."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from launch import cli
from torch import nn

from batchscale import data
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.parallel.base import Backend, unwrap
from batchscale.precision import FP32
from batchscale.training.step import train_step, warm_up


@pytest.fixture(scope="module")
def compiled_pair():
    """The same width-4 model twice, one of them compiled and warmed up as `--compile` does."""
    torch.manual_seed(0)
    model = CifarResNet18(width=4)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    eager, compiled = copy.deepcopy(model), torch.compile(copy.deepcopy(model))
    before = {k: v.clone() for k, v in unwrap(compiled).state_dict().items()}
    rng = torch.get_rng_state()
    seconds = warm_up(compiled, (x, y), [x[:8], x[:3]], FP32)
    return eager, compiled, (x, y), before, rng, seconds


def test_compile_warm_up_leaves_weights_buffers_and_rng_exactly_as_they_were(compiled_pair):
    _, compiled, _, before, rng, seconds = compiled_pair
    after = unwrap(compiled).state_dict()
    assert seconds > 0 and after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # batch-norm running stats and counters included
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in compiled.parameters())


def test_compiled_step_computes_what_the_eager_step_computes(compiled_pair):
    """Measured here: the compiled step's gradients differ from eager ones by 2e-6 (relative norm) and its
    losses over three steps by 1e-7: fp32 round-off from reordered sums. 1e-4 leaves room for other CPUs'
    kernels; a wrong graph (eval-mode batch norm, stale weights) is off by order one."""
    eager, compiled, (x, y), *_ = compiled_pair
    backend = Backend(Config(no_cuda=True))
    results = []
    for model in (eager, compiled):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for step in range(3):
            loss, _ = train_step(model, optimizer, [(x, y)], backend, nn.CrossEntropyLoss())
            losses.append(float(loss) / len(y))
            if step == 0:
                grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((losses, grads))
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert float((compiled_grads - eager_grads).norm() / eager_grads.norm()) < 1e-4


def test_warm_up_compiles_every_evaluation_shape_so_evaluation_compiles_nothing():
    """Which graphs exist, and when a new shape makes another, is decided by dynamo (its guards and its choice of
    dynamic shapes), whatever backend turns them into code: the eager backend counts the same graphs as inductor,
    without inductor's C++ compile of each (minutes on a busy CPU)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 3, 32, 32), generator=gen, dtype=torch.uint8)
    evals = data.EvalBatches(images, torch.zeros(70, dtype=torch.long), 32, data.Shard(0, 1), torch.device("cpu"))
    assert [x.shape[0] for x in evals.shapes()] == [32, 6]  # full batches, then the last, smaller one
    model = torch.compile(CifarResNet18(width=2), backend="eager")
    warm_up(model, (torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)), evals.shapes(), FP32)
    compiled = counters["stats"]["unique_graphs"]
    model.eval()
    with torch.no_grad():
        for x, _ in evals:
            model(x)
    assert counters["stats"]["unique_graphs"] == compiled > 0


@pytest.mark.parametrize("tool", ["train", "bench"])
def test_compile_mode_reaches_torch_compile_and_the_record(tool, tiny_cifar, tmp_path, monkeypatch, capsys):
    modes: list = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: modes.append(kw.get("mode")) or model)  # no real compile
    common = ["--train-dir", str(tiny_cifar), "--width", "4", "--batch-size", "32", "--no-cuda", "--compile",
              "--compile-mode", "reduce-overhead"]
    if tool == "train":
        code, err = cli("train", *common, "--val-dir", str(tiny_cifar), "--epochs", "1", "--log-dir", str(tmp_path),
                        "--no-download", "--no-progress", capsys=capsys)
        recorded = json.loads((tmp_path / "summary.json").read_text())["config"]["compile_mode"]
    else:
        out = tmp_path / "bench.json"
        code, err = cli("bench", *common, "--data", "real", "--steps", "2", "--rounds", "1", "--warmup", "1",
                        "--no-baseline", "--output", str(out), capsys=capsys)
        bench = json.loads(out.read_text())
        recorded = bench["config"]["compile_mode"]
        assert "compiled (reduce-overhead)" in bench["ours"]["pipeline"]
    assert code == 0, err[-3000:]
    assert modes == ["reduce-overhead"] and recorded == "reduce-overhead"
