"""The training loop, top to bottom: set up, restore, epochs of steps, end of epoch.

`Trainer.state` (a `TrainState`) is everything a checkpoint holds; where training stands lives
there and nowhere else, so a resumed epoch's offset is used once and an epoch's end clears it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint, data, faults
from .config import Config
from .errors import BatchscaleError, ConfigError, Diverged, Stopped
from .atomic import write_json_atomic
from .metrics import RunLog, summarize
from .models import build_model, check_fits, tta_logits
from .noise import MIN_PAIRS, GradNorms, squared_norm
from .parallel import Backend, init_backend, unwrap
from .parallel.base import TEARDOWN_SECONDS, bounded
from .parallel.launch import launcher_world_size
from .precision import FP32, Precision, resolve
from .rundir import RunLock, check_space, check_writable
from .schedule import LRSchedule
from .state import EpochSums, TrainState
from .stopping import StopRequest
from .target import QUICK_PART, TargetWatch


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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def prepare_data(config: Config, backend: Backend) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Downloads on one process per machine (if allowed and needed), then every rank reads the batches."""
    def fetch() -> None:
        if backend.local_rank != 0:
            return
        for root, train in ((config.train_dir, True), (config.val_dir, False)):
            if data.has_split(root, train):
                continue
            if not config.download:
                raise data.DataError(data.missing_message(root, train, "--no-download was given"))
            if backend.is_main:
                print(f"downloading CIFAR-10 into {root} ...", flush=True)
            try:
                data.download(root)
            except Exception as err:  # network and archive errors come in many types
                raise data.DataError(data.missing_message(root, train, f"the download failed ({err})")) from None

    backend.agree(fetch)
    return backend.agree(lambda: (*data.load_split(config.train_dir, True), *data.load_split(config.val_dir, False)))


def seed_everything(config: Config) -> None:
    torch.manual_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def build_model_and_optimizer(config: Config, backend: Backend) -> tuple[nn.Module, torch.optim.SGD]:
    """The model on its backend's device and layout, and its SGD: what the trainer and the bench both time."""
    device = backend.device
    model = build_model(config.model, config.width).to(device, memory_format=backend.memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.wd, fused=device.type == "cuda" or None,  # one kernel for the whole update on GPUs
    )
    return model, optimizer


def train(config: Config) -> dict[str, Any]:
    """Trains as `config` says and returns the run's summary (also written to summary.json)."""
    config = config.validate().for_run(launcher_world_size())
    check_writable(config.log_dir, "--log-dir")
    check_writable(Path(config.checkpoint_path(1)).parent, "--checkpoint-format")
    backend = init_backend(config)
    check_fits(config.model, config.width, backend.device)
    stop = StopRequest(loud=backend.is_main).install()
    trainer = None
    quiet = not backend.is_main
    try:
        trainer = Trainer(config, backend, stop)
        summary = trainer.run()
        bounded(backend.finish, TEARDOWN_SECONDS, 0, quiet)
        return summary
    finally:
        gc.unfreeze()  # a process that trains again (a study's long-lived trial) must collect this run's objects
        if trainer is not None:
            trainer.close()
        failure = sys.exc_info()[1]
        code = (failure.exit_code if isinstance(failure, BatchscaleError) else
                130 if isinstance(failure, KeyboardInterrupt) else 1 if failure is not None else 0)
        bounded(backend.shutdown, TEARDOWN_SECONDS, code, quiet)
        stop.restore()  # last: a launcher's SIGTERM during teardown must not turn a saved stop into a kill


class Trainer:
    """Set up in `__init__`; `run()` restores, trains the remaining epochs and writes the summary."""

    def __init__(self, config: Config, backend: Backend, stop: StopRequest) -> None:
        self.config, self.backend, self.stop = config, backend, stop
        self.started = time.perf_counter()
        self.lock: RunLock | None = None
        seed_everything(config)
        device = self.device = backend.device
        train_x, train_y, val_x, val_y = prepare_data(config, backend)
        if config.holdout >= train_x.shape[0] // 2:
            raise ConfigError(f"--holdout {config.holdout} is half or more of the {train_x.shape[0]} training images; "
                              "hold out fewer")
        train_x, train_y, held_x, held_y = data.split_holdout(train_x, train_y, config.holdout)
        if config.train_subset:  # after the holdout, so a subset never changes which images are held out
            train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
        self.precision = resolve(config, device)
        memory_format = backend.memory_format
        self.simulated = config.simulate_workers
        if self.simulated > 1 and backend.world_size > 1:
            raise ConfigError("--simulate-workers runs in one process; launch it with python, not torchrun or horovodrun")
        self.workers = backend.world_size * self.simulated
        self.batches = data.TrainBatches(
            train_x, train_y, config.batch_size, config.batches_per_allreduce, data.Shard(backend.rank, self.workers),
            config.seed, device, memory_format=memory_format, simulate=self.simulated > 1,
            translate=config.translate, translate_pad=config.translate_pad, cutout=config.cutout,
        )
        self.steps_per_epoch = self.batches.steps_per_epoch
        shard = data.Shard(backend.rank, backend.world_size)
        self.evals = data.EvalBatches(val_x, val_y, config.val_batch_size, shard, device, memory_format)
        self.holdout = (data.EvalBatches(held_x, held_y, config.val_batch_size, shard, device, memory_format)
                        if config.holdout else None)
        # The target split (held-out images, else the test set), and the quarter of it that quick looks see.
        target_x, target_y = (held_x, held_y) if config.holdout else (val_x, val_y)
        part = target_x.shape[0] // QUICK_PART
        self.quick = data.EvalBatches(target_x[:part], target_y[:part], config.val_batch_size, shard, device,
                                      memory_format)
        model, optimizer = build_model_and_optimizer(config, backend)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.schedule = LRSchedule.from_config(config, backend.averaged_batches() * self.simulated, self.steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.state = TrainState(model, optimizer, self.precision.scaler, config.to_dict(), self.workers)
        self.state.noise.window = config.noise_window
        self.state.trial = TargetWatch(config.target_accuracy, config.eval_growth, config.stop_at_target, config.max_steps)
        self.model: nn.Module = model  # wrapped by the backend in run()
        # What the loop calls: forward, loss and metrics of the backend's model, one graph with --compile (run()).
        self.forward: nn.Module = StepForward(model, self.criterion, self.precision, config.tta)
        self.cuda_graphs = config.compile and config.compile_mode == "reduce-overhead"
        self.skipped: int | None = None  # graphs CUDA graphs declined, with reduce-overhead (summary.json)
        self.resumed_from: Path | None = None
        self.log: RunLog | None = None

    # -- start -------------------------------------------------------------------------------------------------

    def open_run(self) -> tuple[Path, dict[str, Any], list[dict[str, Any]]] | None:
        """Rank 0: lock the run's folders, clear what a fresh start replaces, find the checkpoint to resume."""
        config = self.config
        ckpt_dir = Path(config.checkpoint_path(1)).parent
        self.lock = RunLock([Path(config.log_dir), ckpt_dir]).acquire()
        # Two checkpoints' room: the new one is written beside the last before replacing it.
        per_param = 4 * (1 + (self.config.momentum > 0))  # fp32 weights and momentum
        check_space(ckpt_dir, 2 * per_param * self.parameters + 2**20, "a checkpoint of this model")
        found = checkpoint.find_and_load(config, lambda text: print(text, flush=True))
        opened = None
        if found is not None:
            path, state = found
            opened = path, state, checkpoint.settings_changes(state, config, self.workers, path,
                                                                       self.schedule.depends_on_epochs)
        # Nothing is removed before every check has passed.
        (Path(config.log_dir) / "summary.json").unlink(missing_ok=True)  # a run in progress has no summary
        (Path(config.log_dir) / "diverged.json").unlink(missing_ok=True)
        if not config.resume:
            removed = checkpoint.clear(config)
            for old in Path(config.log_dir).glob("events.out.tfevents.*"):
                old.unlink()
            if removed:
                print(f"--no-resume: removed {removed} checkpoint(s) of an earlier run under {ckpt_dir}", flush=True)
        return opened

    def restore(self) -> None:
        opened = self.backend.agree(lambda: self.open_run() if self.backend.is_main else None)
        opened = self.backend.broadcast_object(opened)
        if opened is None:
            return
        path, saved, changes = opened
        self.state.load_state_dict(saved, self.steps_per_epoch, str(path))
        self.state.noise.to(self.device)
        for group in self.state.optimizer.param_groups:  # the current flags are what trains from here on
            group.update(momentum=self.config.momentum, nesterov=self.config.nesterov, weight_decay=self.config.wd)
        self.state.config = self.config.to_dict()
        if self.finished():  # nothing trains, so no flag changes what it ran
            ran = {k: v for k, v in saved["config"].items() if k not in checkpoint.NOT_RECORDED and k in self.state.config}
            self.state.config.update(ran)
        else:
            self.state.changes += changes
        self.resumed_from = path
        if not self.backend.is_main:
            self.state.partial = None  # rank 0 carries the job's sums of a part-done epoch

    def run(self) -> dict[str, Any]:
        self.restore()
        state, config = self.state, self.config
        self.model, state.optimizer = self.backend.prepare(state.model, state.optimizer)
        self.forward = StepForward(self.model, self.criterion, self.precision, config.tta)
        compile_seconds = self.compile() if config.compile else 0.0
        # Everything alive now lives to the end: the collector need not walk it again during training.
        gc.collect()
        gc.freeze()
        self.log = RunLog(config, self.backend.is_main, state.history, self.batches.global_batch,
                          self.total_steps(), self.steps_per_epoch)
        self.announce()
        try:
            while not self.finished():
                self.train_epoch()
        except Diverged as err:  # a study counts a diverged trial as a result (it missed its target), not a crash
            if self.backend.is_main:
                write_json_atomic(Path(config.log_dir) / "diverged.json", {
                    "message": str(err), "step": state.step(self.steps_per_epoch),
                    "global_batch": self.batches.global_batch, "world_size": self.workers,
                    "trial": {**state.trial.summary(), "ended": "diverged"}, "config": config.to_dict()})
            raise
        summary = summarize(config, self.backend.name, self.workers, state.history, self.parameters,
                            self.steps_per_epoch)
        summary.update(noise_scale_note=self.noise_note())
        summary.update(precision=self.precision.name, device=device_name(self.device), compile_seconds=compile_seconds,
                       cuda_graphs_skipped=self.skipped,
                       changes=state.changes, config={**summary["config"], **state.config},
                       trial={**state.trial.summary(), "split": "holdout" if self.holdout else "test"})
        self.backend.agree(lambda: self.log.finish(summary))  # type: ignore[union-attr]
        return summary

    def noise_note(self) -> str | None:
        """Why this run can measure no noise scale, or None when it can."""
        config = self.config
        if config.use_adasum:
            return "Adasum combines updates, so there is no averaged gradient to measure"
        if self.batches.global_batch <= config.batch_size:
            return "one worker without accumulation: no batch smaller than the one that steps (add --batches-per-allreduce 2)"
        if config.batches_per_allreduce * self.simulated == 1 and not self.backend.can_probe:
            return f"the {self.backend.name} backend cannot see one worker's gradient; add --batches-per-allreduce 2"
        if self.state.noise.b_simple is None:
            return f"fewer than {MIN_PAIRS} measurements, or |G|^2 not yet estimated positive"
        return None

    def compile(self) -> float:
        """Compiles the step's forward, loss and metrics as one graph (and evaluation as one more, its batches
        all of one shape), warmed up before the clock starts; returns the seconds it took."""
        config = self.config
        self.forward = torch.compile(self.forward, mode=config.compile_mode)  # type: ignore[assignment]
        skipped = graphs_skipped()
        batch = self.batches.gather(*(t[0, 0] for t in self.batches.draws(1).values()))  # one batch, not an epoch
        shapes = [self.evals.static_shape()]  # holdout and quick looks share --val-batch-size, so the graph too
        seconds = warm_up(self.model, batch, shapes, self.precision, self.forward)
        self.skipped = graphs_skipped() - skipped if self.cuda_graphs else None
        if self.skipped and self.backend.is_main:
            warnings.warn(f"--compile-mode reduce-overhead: CUDA graphs skipped {self.skipped} of the compiled "
                          "graphs (TORCH_LOGS=perf_hints says why), so those steps replay no graphs", stacklevel=1)
        return seconds

    def total_steps(self) -> int:
        steps = self.config.epochs * self.steps_per_epoch
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def finished(self) -> bool:
        return self.state.epoch >= self.config.epochs or self.state.trial.ended is not None

    def announce(self) -> None:
        assert self.log is not None
        state, config, backend = self.state, self.config, self.backend
        simulating = f", simulating {self.simulated} workers" if self.simulated > 1 else ""
        resumed = f", {self.total_steps()} steps in all"
        if self.resumed_from is not None and self.finished():
            resumed = (f"; already complete ({state.epoch} epoch(s) in {self.resumed_from.parent}): nothing to train. "
                       "Another --log-dir or --no-resume starts a new run")
        elif self.resumed_from is not None:
            resumed = f"; resumed from {self.resumed_from} after epoch {state.epoch}"
            resumed += f", step {state.epoch_step}" if state.epoch_step else ""
        self.log.say(
            f"batchscale: {config.model} ({self.parameters / 1e6:.2f}M parameters) on {backend.world_size} x "
            f"{self.device.type} ({backend.name}{simulating}), global batch {self.batches.global_batch}, "
            f"{self.steps_per_epoch} steps/epoch, peak lr {self.schedule.peak_lr:.4g}{resumed}"
        )
        split = f"{config.holdout} held-out images" if config.holdout else "the test set"
        ends = ([f"at {100 * config.target_accuracy:g}% accuracy on {split}"] if config.stop_at_target else []) + \
               ([f"after {config.max_steps} steps"] if config.max_steps else [])
        if ends:
            self.log.say(f"trial: ends {' or '.join(ends)}")
        new = [c for c in state.changes if c["step"] == state.step(self.steps_per_epoch)]
        if new and self.resumed_from is not None:
            listed = ", ".join(f"{c['setting']} {c['from']!r} -> {c['to']!r}" for c in new)
            self.log.say(f"note: from step {new[0]['step']} on this run uses {listed} (recorded in summary.json)")
        if config.warmup_epochs >= config.epochs and self.schedule.peak_lr != self.schedule.base_lr:
            self.log.say(f"warning: --warmup-epochs {config.warmup_epochs:g} covers the whole run; "
                         "the LR never reaches its peak")

    # -- one epoch ---------------------------------------------------------------------------------------------

    def train_epoch(self) -> None:
        state, config, backend = self.state, self.config, self.backend
        epoch = state.epoch + 1
        sums = EpochSums.zeros(self.device)
        if state.partial:
            sums.loss_sum += state.partial["loss_sum"]
            sums.correct += int(state.partial["correct"])
            sums.images, sums.seconds = int(state.partial["images"]), float(state.partial["seconds"])
        state.partial = None
        bad_step = torch.zeros((), dtype=torch.long, device=self.device)  # first step whose loss was not finite
        norms = GradNorms()
        local_images = config.batch_size * config.batches_per_allreduce * self.simulated
        self.model.train()
        bar = self.log.bar(self.steps_per_epoch, f"epoch {epoch}/{config.epochs}", initial=state.epoch_step)  # type: ignore[union-attr]
        clock = time.perf_counter()
        for micro in self.batches.epoch(epoch, state.epoch_step):
            step = state.step(self.steps_per_epoch)  # 0-based index of this update
            lr = self.schedule(step)
            loss, correct = self.update(micro, step, lr, norms)
            state.epoch_step += 1
            bad_step.masked_fill_((bad_step == 0) & ~torch.isfinite(loss), step + 1)  # no host sync
            sums.loss_sum += loss
            sums.correct += correct
            sums.images += local_images
            self.log.step(bar, step + 1, lr, sums.images, sums.loss_sum, sums.correct)  # type: ignore[union-attr]
            faults.point("step", step + 1, backend.rank, self.model)
            state.trial.after_step(step + 1)
            if state.trial.due(step + 1) and state.epoch_step < self.steps_per_epoch:  # an epoch's end evaluates anyway
                sums.seconds += time.perf_counter() - clock
                self.check_target(step + 1, sums.seconds)
                clock = time.perf_counter()
            if state.epoch_step == self.steps_per_epoch or state.trial.ended:
                break
            every = config.checkpoint_every_steps
            due = bool(every) and state.epoch_step % every == 0
            if due or (step + 1) % config.finite_check_every == 0 or (self.stop.requested and backend.world_size == 1):
                stopping = self.sync_point(bad_step)
                if due or stopping:
                    sums.seconds += time.perf_counter() - clock
                    clock = time.perf_counter()
                    path = self.save_partial(sums)
                    faults.point("after-step-checkpoint", step + 1, backend.rank)
                    if stopping:
                        self.stopped(path)
        self.log.end_bar()  # type: ignore[union-attr]
        sums.seconds += time.perf_counter() - clock
        self.end_epoch(sums, bad_step)

    def update(self, micro: list[tuple[Tensor, Tensor]], step: int, lr: float, norms: GradNorms) -> tuple[Tensor, Tensor]:
        """One optimizer step at `lr`; every --noise-every steps it also measures the noise scale: a small batch
        (one worker's, or one micro-batch) against the combined gradient, which needs a larger combined batch
        (not one worker without accumulation, nor Adasum, which has no averaged gradient)."""
        state, config, backend = self.state, self.config, self.backend
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        measure = (not config.use_adasum and self.batches.global_batch > config.batch_size
                   and (step + 1) % config.noise_every == 0)
        measure = measure and (len(micro) > 1 or backend.can_probe)
        if measure:
            norms.reset(self.device)
            if len(micro) == 1:
                backend.probe(norms)
        loss, correct = train_step(self.model, state.optimizer, micro, backend, self.criterion, self.precision,
                                   norms if measure else None, self.forward, self.cuda_graphs)
        if measure:
            if len(micro) == 1:
                backend.probe(None)
            state.noise.update(norms.small_sq, norms.big_sq, config.batch_size, self.batches.global_batch,
                               examples=config.noise_every * self.batches.global_batch)
        return loss, correct

    def end_epoch(self, sums: EpochSums, bad_step: Tensor) -> None:
        state, backend = self.state, self.backend
        stopping = self.sync_point(bad_step)
        totals = torch.stack([sums.loss_sum.double(), sums.correct.double(),
                              torch.tensor(float(sums.images), dtype=torch.float64, device=self.device)])
        train_loss, train_correct, images = backend.all_reduce_sum(totals).tolist()  # .tolist() waits for the device
        backend.average_buffers(self.model)
        val_loss, val_acc = self.evaluate(self.evals)
        held = self.evaluate(self.holdout) if self.holdout else None
        step = state.step(self.steps_per_epoch)
        epoch = state.epoch + 1
        if not (self.weights_finite() and torch.isfinite(torch.tensor([val_loss, train_loss])).all()):
            raise Diverged(
                f"the weights or the validation loss became NaN or infinite in epoch {epoch} (last lr "
                f"{self.schedule(step - 1):.4g}); {self.intact()}. {self.advice()}", quiet=not backend.is_main
            )
        before = state.history[-1] if state.history else {"train_seconds": 0.0, "wall_seconds": 0.0}
        record = {
            "epoch": epoch,
            "step": step,
            "lr": self.schedule(step - 1),
            "train_loss": train_loss / images,
            "train_acc": train_correct / images,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images": int(images),
            "epoch_seconds": sums.seconds,
            "images_per_sec": images / sums.seconds,
            "train_seconds": before["train_seconds"] + sums.seconds,
            "wall_seconds": before["wall_seconds"] + time.perf_counter() - self.started,
            "noise_scale": state.noise.b_simple,
            "noise_scale_se": state.noise.standard_error,
            "noise_pairs": state.noise.updates,
        }
        if held is not None:
            record.update(holdout_loss=held[0], holdout_acc=held[1])
        state.trial.record(step, held[1] if held else val_acc, loss=held[0] if held else val_loss,
                           examples=step * self.batches.global_batch, b_simple=record["noise_scale"],
                           train_seconds=record["train_seconds"])
        self.started = time.perf_counter()  # wall time is counted per epoch from here on
        state.history.append(record)
        state.epoch, state.epoch_step = epoch, 0
        path = Path(self.config.checkpoint_path(epoch))
        self.save(path, lambda: checkpoint.prune(self.config, epoch))
        faults.point("after-checkpoint", epoch, backend.rank)
        backend.agree(lambda: self.log.epoch(record))  # type: ignore[union-attr]
        if stopping:
            self.stopped(path)

    def check_target(self, step: int, epoch_seconds: float) -> None:
        """Evaluates the target split (or its quick part) inside an epoch; the trial may end here (the caller
        then ends the epoch)."""
        state = self.state
        self.backend.average_buffers(self.model)
        before = state.history[-1]["train_seconds"] if state.history else 0.0
        while state.trial.due(step):  # a quick look that comes near the target is followed by a whole one
            full = state.trial.fine
            loss, acc = self.evaluate((self.holdout or self.evals) if full else self.quick)
            state.trial.record(step, acc, full, loss=loss, examples=step * self.batches.global_batch,
                               b_simple=state.noise.b_simple, train_seconds=before + epoch_seconds)
        self.model.train()

    def evaluate(self, batches: data.EvalBatches) -> tuple[float, float]:
        return evaluate(self.model, batches, self.backend, self.precision, self.forward, self.config.tta,
                        self.cuda_graphs)

    # -- checks and saves --------------------------------------------------------------------------------------

    def sync_point(self, bad_step: Tensor) -> bool:
        """One small collective: every rank learns whether any loss went non-finite (all stop with exit 3,
        nothing saved) and whether any rank was asked to stop. Returns the latter."""
        flags = torch.stack([
            torch.tensor(float(self.stop.requested), dtype=torch.float64, device=self.device),
            torch.where(bad_step > 0, -bad_step.double(), torch.tensor(-1e18, dtype=torch.float64, device=self.device)),
        ])
        stop, first_bad = self.backend.all_reduce_max(flags).tolist()
        if first_bad > -1e18:
            step = int(-first_bad)
            raise Diverged(
                f"the loss became NaN or infinite at step {step} (epoch {(step - 1) // self.steps_per_epoch + 1}, "
                f"lr {self.schedule(step - 1):.4g}); {self.intact()}. {self.advice()}", quiet=not self.backend.is_main
            )
        return stop > 0

    def intact(self) -> str:
        done = self.state.epoch
        return f"checkpoints up to epoch {done} are intact" if done else "no checkpoint was written"

    def advice(self) -> str:
        return ("Lower --base-lr, lengthen --warmup-epochs or use --precision fp32, then rerun: the run resumes "
                "from the last good checkpoint with the new values, recorded in summary.json")

    def weights_finite(self) -> bool:
        """Every rank's weights and buffers finite (one collective): a non-finite state is never saved."""
        tensors = [t for t in unwrap(self.model).state_dict().values() if t.is_floating_point()]
        bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).any().double().reshape(1)
        return self.backend.all_reduce_sum(bad).item() == 0

    def save_partial(self, sums: EpochSums) -> Path:
        """A checkpoint inside the epoch: the job's sums so far travel with it, so the epoch's figures come out whole."""
        state, backend = self.state, self.backend
        backend.average_buffers(self.model)
        totals = torch.stack([sums.loss_sum.double(), sums.correct.double(),
                              torch.tensor(float(sums.images), dtype=torch.float64, device=self.device)])
        loss_sum, correct, images = backend.all_reduce_sum(totals).tolist()
        if not self.weights_finite():
            step = state.step(self.steps_per_epoch)
            raise Diverged(f"the weights became NaN or infinite by step {step} (lr {self.schedule(step - 1):.4g}); "
                           f"{self.intact()}. {self.advice()}", quiet=not backend.is_main)
        state.partial = {"loss_sum": loss_sum, "correct": int(correct), "images": int(images), "seconds": sums.seconds}
        path = checkpoint.partial_path(self.config, state.epoch + 1)
        self.save(path)
        state.partial = None
        return path

    def save(self, path: Path, then: Any = None) -> None:
        """Rank 0 writes; every rank learns if it failed (exit 4 everywhere, not a hang)."""
        def write() -> None:
            if self.backend.is_main:
                checkpoint.save(path, self.state.state_dict(self.steps_per_epoch))
                if then is not None:
                    then()

        self.backend.agree(write)

    def stopped(self, path: Path) -> None:
        step = self.state.step(self.steps_per_epoch)
        # torchrun answers a signal it was sent with a SignalException traceback of its own once its workers end.
        launcher = "; torchrun's own SignalException report, if one follows, is of the same signal" \
            if self.backend.name == "torch" and self.stop.launcher_gone is None else ""
        raise Stopped(
            f"stopped by {self.stop.reason} after step {step} "
            f"(epoch {self.state.epoch + (1 if self.state.epoch_step else 0)}); saved {path}. "
            f"Rerun the same command to resume from there{launcher}", quiet=not self.backend.is_main,
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.lock is not None:
            self.lock.release()
