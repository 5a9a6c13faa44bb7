"""The training step and evaluation, apart from the loop: what the trainer, the bench and the tests call.

`train_step` is one optimizer update from k micro-batches; `evaluate` one pass over a split; `StepForward` the
forward, loss and metrics as one module, so that compiled they are one graph; `Stepper` the three as the
trainer takes its steps.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import data
from ..config import Config
from ..models import build_model, tta_logits
from ..noise import MIN_PAIRS, GradNorms, NoiseScale, squared_norm
from ..parallel import Backend, unwrap
from ..precision import FP32, Precision


def forward_metrics(model: nn.Module, criterion: nn.Module, precision: Precision, x: Tensor,
                    y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The training forward: (the loss to differentiate, its sum over the batch, correct predictions)."""
    with precision.autocast():
        out = model(x)
        loss = criterion(out, y)
    return loss, loss.detach().float() * y.shape[0], (out.detach().argmax(1) == y).sum()


def eval_metrics(model: nn.Module, x: Tensor, y: Tensor, tta: str = "none") -> tuple[Tensor, Tensor, Tensor]:
    """(loss sum, correct, images) of an evaluation batch; rows labelled data.PAD_LABEL count for nothing."""
    logits = tta_logits(model, x, tta)
    return (F.cross_entropy(logits, y, reduction="sum", ignore_index=data.PAD_LABEL),
            (logits.argmax(1) == y).sum(), (y != data.PAD_LABEL).sum())


class StepForward(nn.Module):
    """Forward, loss and metrics as one callable, so that compiled they are one graph with no host work: in
    train mode (the model's) `forward_metrics`, in eval mode `eval_metrics` under autocast. Its outputs are
    consumed before the next call, as CUDA graphs (`--compile-mode reduce-overhead`) require."""

    def __init__(self, model: nn.Module, criterion: nn.Module, precision: Precision, tta: str = "none") -> None:
        super().__init__()
        self.model, self.criterion, self.precision, self.tta = model, criterion, precision, tta

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.model.training:  # the model's flag, which the trainer sets, not this wrapper's
            return forward_metrics(self.model, self.criterion, self.precision, x, y)
        with self.precision.autocast():
            return eval_metrics(self.model, x, y, self.tta)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, Tensor]],
    backend: Backend,
    criterion: nn.Module,
    precision: Precision = FP32,
    norms: GradNorms | None = None,
    forward: nn.Module | None = None,
    cuda_graphs: bool = False,
) -> tuple[Tensor, Tensor]:
    """One optimizer update from k micro-batches, communicating once. Returns (loss sum, correct) on device.

    Nothing here waits for the device: the sums stay tensors until the epoch ends. `forward` is the
    (compiled) StepForward of `model`, else it is called eagerly. With `cuda_graphs` each optimizer step
    begins a new CUDA-graph step once the last step's gradients are released: within it the micro-batches'
    gradients accumulate in memory no replay overwrites, and every output is added into the sums at once.
    With `norms` it also records, for the noise scale, the mean squared norm of small-batch gradients (each
    micro-batch's own when k > 1, else this worker's, taken by the backend before the allreduce) and
    of the combined gradient the optimizer applies, both in unscaled units.
    """
    optimizer.zero_grad()
    if cuda_graphs:  # after zero_grad: no gradient of the last step is alive when its graphs' memory is reused
        torch.compiler.cudagraph_mark_step_begin()
    k = len(micro_batches)
    # fp16 gradients are multiplied by the scaler's factor until its step; measuring steps undo it (a host sync).
    scale = precision.scaler.get_scale() if norms is not None and precision.scaler is not None else 1.0
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    # Micro-batch i's own gradient is the growth of the accumulated one; the last is communicated as it is
    # computed when there are several workers, so then only the first k - 1 are this worker's alone.
    measured = (k if backend.world_size == 1 else k - 1) if norms is not None and k > 1 else 0
    before: list[Tensor] | None = None
    for i, (x, y) in enumerate(micro_batches):
        with backend.accumulating(model) if i < k - 1 else contextlib.nullcontext():
            if forward is None:
                loss, batch_loss, batch_correct = forward_metrics(model, criterion, precision, x, y)
            else:
                loss, batch_loss, batch_correct = forward(x, y)
            # Each micro-batch's mean loss / k: the update equals one batch of k x batch size.
            precision.backward(loss / k)
        if i < measured:
            now = [g.detach().float() for g in gradients(model)]
            own = now if before is None else [a - b for a, b in zip(now, before)]
            norms.small_sq = norms.small_sq + squared_norm(own) * (k / scale) ** 2 / measured  # type: ignore[union-attr]
            before = [g.clone() for g in now] if i + 1 < measured else None
        loss_sum += batch_loss
        correct += batch_correct
    if norms is not None and k == 1:
        norms.small_sq = norms.small_sq / scale**2  # the backend's probe saw the scaled gradient
    backend.optimizer_step(optimizer, precision.scaler)
    if norms is not None:
        norms.big_sq = squared_norm(gradients(model))
    return loss_sum, correct


def gradients(model: nn.Module) -> list[Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


@torch.no_grad()
def evaluate(model: nn.Module, batches: data.EvalBatches, backend: Backend, precision: Precision = FP32,
             forward: nn.Module | None = None, tta: str = "none", cuda_graphs: bool = False) -> tuple[float, float]:
    """Test loss and accuracy over every test image exactly once across ranks, reduced once. Batches have one
    static shape (the last padded, its padding counted out); `forward` is the (compiled) StepForward of `model`."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=backend.device)
    for x, y in batches.static():
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if forward is None:
            with precision.autocast():
                loss, correct, count = eval_metrics(model, x, y, tta)
        else:
            loss, correct, count = forward(x, y)
        sums += torch.stack([loss.double(), correct.double(), count.double()])
    loss, correct, count = backend.all_reduce_sum(sums).tolist()
    if int(count) != batches.total:
        raise RuntimeError(f"validation saw {int(count)} images, expected {batches.total}")
    return loss / count, correct / count


def warm_up(model: nn.Module, train_batch: tuple[Tensor, Tensor], eval_inputs: list[Tensor], precision: Precision,
            forward: nn.Module | None = None) -> float:
    """Compiles the graphs the run will use (the training step, and evaluation at each batch shape it meets)
    before the clock starts; returns the seconds it took. With `forward` (the compiled StepForward of `model`)
    those are its graphs, called as training calls them, twice each (CUDA graphs record on the second call).

    Weights, batch-norm statistics, the RNG and the mode (train or eval) are restored afterwards, so the run is
    unchanged: a caller that goes on training runs train-mode batch norm, the graph compiled first.
    """
    was_training = model.training
    saved = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    rng = torch.get_rng_state()
    start = time.perf_counter()
    model.train()
    x, y = train_batch
    for _ in range(1 if forward is None else 2):
        if forward is None:
            with precision.autocast():
                loss = F.cross_entropy(model(x), y)
        else:
            for p in model.parameters():  # as each training step does: no gradient alive into the next replay
                p.grad = None
            torch.compiler.cudagraph_mark_step_begin()
            loss = forward(x, y)[0]
        precision.backward(loss)
    model.eval()
    for inputs in eval_inputs:
        with torch.no_grad():
            for _ in range(1 if forward is None else 2):
                if forward is None:
                    with precision.autocast():
                        model(inputs).float().sum().item()
                else:
                    torch.compiler.cudagraph_mark_step_begin()
                    forward(inputs, torch.full((inputs.shape[0],), data.PAD_LABEL, device=inputs.device))[2].item()
    seconds = time.perf_counter() - start
    unwrap(model).load_state_dict(saved)
    torch.set_rng_state(rng)
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    return seconds


def graphs_skipped() -> int:
    """Compiled graphs that CUDA graphs (reduce-overhead) declined to record, in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def compile_forward(forward: nn.Module, model: nn.Module, batches: data.TrainBatches, evals: data.EvalBatches,
                    precision: Precision, mode: str, warn: bool = True) -> tuple[nn.Module, float, int | None]:
    """Compiles the step's forward, loss and metrics as one graph (and evaluation as one more, its batches all of
    one shape), warmed up before the clock starts. Returns the compiled forward, the seconds it took and, with
    CUDA graphs (reduce-overhead), how many graphs they declined to record."""
    compiled: nn.Module = torch.compile(forward, mode=mode)  # type: ignore[assignment]
    skipped = graphs_skipped()
    batch = batches.gather(*(t[0, 0] for t in batches.draws(1).values()))  # one batch, not an epoch
    shapes = [evals.static_shape()]  # holdout and quick looks share --val-batch-size, so the graph too
    seconds = warm_up(model, batch, shapes, precision, compiled)
    declined = graphs_skipped() - skipped if mode == "reduce-overhead" else None
    if declined and warn:
        warnings.warn(f"--compile-mode reduce-overhead: CUDA graphs skipped {declined} of the compiled "
                      "graphs (TORCH_LOGS=perf_hints says why), so those steps replay no graphs", stacklevel=1)
    return compiled, seconds, declined


def build_model_and_optimizer(config: Config, backend: Backend) -> tuple[nn.Module, torch.optim.SGD]:
    """The model on its backend's device and layout, and its SGD: what the trainer and the bench both time."""
    device = backend.device
    model = build_model(config.model, config.width).to(device, memory_format=backend.memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.wd, fused=device.type == "cuda" or None,  # one kernel for the whole update on GPUs
    )
    return model, optimizer


@dataclass(frozen=True)
class Stepping:
    """The part of the configuration the step reads: the loss, the compiled graph, when to measure the noise."""

    batch_size: int
    batches_per_allreduce: int
    noise_every: int
    use_adasum: bool
    label_smoothing: float
    tta: str
    compile: bool
    compile_mode: str

    @classmethod
    def of(cls, config: Config) -> "Stepping":
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


class Stepper:
    """The step as the trainer takes it: one optimizer update of the backend's model at an LR, measuring the noise
    scale on the steps it can (it decides which), and evaluation through the same (compiled) forward."""

    def __init__(self, config: Stepping, backend: Backend, model: nn.Module, optimizer: torch.optim.Optimizer,
                 precision: Precision, batches: data.TrainBatches, test: data.EvalBatches, simulated: int) -> None:
        self.config, self.backend, self.model, self.optimizer = config, backend, model, optimizer
        self.precision, self.global_batch, self.simulated = precision, batches.global_batch, simulated
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        # What the loop calls: forward, loss and metrics of the backend's model, one graph with --compile.
        self.forward: nn.Module = StepForward(model, self.criterion, precision, config.tta)
        self.cuda_graphs = config.compile and config.compile_mode == "reduce-overhead"
        self.compile_seconds, self.skipped = 0.0, None  # skipped: graphs CUDA graphs declined (summary.json)
        if config.compile:
            self.forward, self.compile_seconds, self.skipped = compile_forward(
                self.forward, model, batches, test, precision, config.compile_mode, warn=backend.is_main)

    def __call__(self, micro: list[tuple[Tensor, Tensor]], step: int, lr: float, norms: GradNorms,
                 noise: NoiseScale) -> tuple[Tensor, Tensor]:
        """One optimizer step at `lr`; every --noise-every steps it also measures the noise scale: a small batch
        (one worker's, or one micro-batch) against the combined gradient, which needs a larger combined batch
        (not one worker without accumulation, nor Adasum, which has no averaged gradient)."""
        config, backend = self.config, self.backend
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        measure = (not config.use_adasum and self.global_batch > config.batch_size
                   and (step + 1) % config.noise_every == 0 and (len(micro) > 1 or backend.can_probe))
        probing = measure and len(micro) == 1
        if measure:
            norms.reset(backend.device)
        if probing:
            backend.probe(norms)
        loss, correct = train_step(self.model, self.optimizer, micro, backend, self.criterion, self.precision,
                                   norms if measure else None, self.forward, self.cuda_graphs)
        if probing:
            backend.probe(None)
        if measure:
            noise.update(norms.small_sq, norms.big_sq, config.batch_size, self.global_batch,
                         examples=config.noise_every * self.global_batch)
        return loss, correct

    def evaluate(self, batches: data.EvalBatches) -> tuple[float, float]:
        return evaluate(self.model, batches, self.backend, self.precision, self.forward, self.config.tta,
                        self.cuda_graphs)

    def noise_note(self, noise: NoiseScale) -> str | None:
        """Why this run can measure no noise scale, or None when it can."""
        config, backend = self.config, self.backend
        if config.use_adasum:
            return "Adasum combines updates, so there is no averaged gradient to measure"
        if self.global_batch <= config.batch_size:
            return "one worker without accumulation: no batch smaller than the one that steps (add --batches-per-allreduce 2)"
        if config.batches_per_allreduce * self.simulated == 1 and not backend.can_probe:
            return f"the {backend.name} backend cannot see one worker's gradient; add --batches-per-allreduce 2"
        if noise.b_simple is None:
            return f"fewer than {MIN_PAIRS} measurements, or |G|^2 not yet estimated positive"
        return None
