"""The training loop, top to bottom: data, model, optimizer, resume, then epochs of steps and validation."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint, data, faults
from .config import Config, ConfigError, Diverged
from .distributed import Backend, init_backend, unwrap
from .metrics import RunLog, summarize
from .models import build_model
from .noise import GradNorms, NoiseScale, squared_norm
from .precision import FP32, Precision, resolve
from .schedule import LRSchedule


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, Tensor]],
    backend: Backend,
    criterion: nn.Module,
    precision: Precision = FP32,
    norms: GradNorms | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer update from k micro-batches, communicating once. Returns (loss sum, correct) on device.

    Nothing here waits for the device: the sums stay tensors until the epoch ends. With `norms`
    it also records, for the noise scale, the squared norm of the first micro-batch's gradient
    (when k > 1) and of the combined gradient the optimizer applies.
    """
    optimizer.zero_grad()
    k = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    for i, (x, y) in enumerate(micro_batches):
        with backend.accumulating(model) if i < k - 1 else contextlib.nullcontext():
            with precision.autocast():
                out = model(x)
                loss = criterion(out, y)
            # Each micro-batch's mean loss / k: the update equals one batch of k x batch size.
            precision.backward(loss / k)
        if norms is not None and i == 0 and k > 1:
            unscale = precision.scaler.get_scale() if precision.scaler is not None else 1.0
            norms.small_sq = squared_norm(gradients(model)) * (k / unscale) ** 2
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
    backend.optimizer_step(optimizer, precision.scaler)
    if norms is not None:
        norms.big_sq = squared_norm(gradients(model))
    return loss_sum, correct


def gradients(model: nn.Module) -> list[Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


@torch.no_grad()
def evaluate(model: nn.Module, batches: data.EvalBatches, backend: Backend, precision: Precision = FP32) -> tuple[float, float]:
    """Test loss and accuracy over every test image exactly once across ranks, reduced once."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=backend.device)
    for x, y in batches:
        with precision.autocast():
            out = model(x).float()
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += y.shape[0]
    loss, correct, count = backend.all_reduce_sum(sums).tolist()
    if int(count) != batches.total:
        raise RuntimeError(f"validation saw {int(count)} images, expected {batches.total}")
    return loss / count, correct / count


def warm_up(model: nn.Module, train_batch: tuple[Tensor, Tensor], eval_x: Tensor, precision: Precision) -> float:
    """Compiles the train and eval graphs before the clock starts; returns the seconds it took.

    The weights and batch-norm statistics are restored afterwards, so the run is unchanged.
    """
    saved = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    start = time.perf_counter()
    model.train()
    with precision.autocast():
        loss = F.cross_entropy(model(train_batch[0]), train_batch[1])
    precision.backward(loss)
    model.eval()
    with torch.no_grad(), precision.autocast():
        model(eval_x).float().sum().item()
    seconds = time.perf_counter() - start
    unwrap(model).load_state_dict(saved)
    for p in model.parameters():
        p.grad = None
    return seconds


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def check_writable(path: str | Path, flag: str) -> None:
    """Fails before training, not after the first epoch, when an output folder cannot be written."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {path} is not writable ({err.strerror}); choose a folder you can write to") from None


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
            backend_say(backend, f"downloading CIFAR-10 into {root} ...")
            try:
                data.download(root)
            except Exception as err:  # network and archive errors come in many types
                raise data.DataError(data.missing_message(root, train, f"the download failed ({err})")) from None

    backend.agree(fetch)
    return backend.agree(lambda: (*data.load_split(config.train_dir, True), *data.load_split(config.val_dir, False)))


def backend_say(backend: Backend, message: str) -> None:
    if backend.is_main:
        print(message, flush=True)


def seed_everything(config: Config) -> None:
    torch.manual_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def train(config: Config) -> dict[str, Any]:
    """Trains as `config` says and returns the run's summary (also written to summary.json)."""
    config.validate()
    check_writable(config.log_dir, "--log-dir")
    check_writable(Path(config.checkpoint_path(1)).parent, "--checkpoint-format")
    backend = init_backend(config)
    try:
        summary = _train(config, backend)
        backend.finish()
        return summary
    finally:
        backend.shutdown()


def _train(config: Config, backend: Backend) -> dict[str, Any]:
    started = time.perf_counter()
    seed_everything(config)
    device = backend.device
    train_x, train_y, val_x, val_y = prepare_data(config, backend)
    precision = resolve(config, device)
    # channels_last feeds tensor cores without layout transposes; on CPUs it rarely helps.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    simulated = config.simulate_workers
    if simulated > 1 and backend.world_size > 1:
        raise ConfigError("--simulate-workers runs in one process; launch it with python, not torchrun or horovodrun")
    workers = backend.world_size * simulated
    shard = data.Shard(backend.rank, backend.world_size)
    batches = data.TrainBatches(
        train_x, train_y, config.batch_size, config.batches_per_allreduce, data.Shard(backend.rank, workers),
        config.seed, device, memory_format=memory_format, simulate=simulated > 1,
    )
    evals = data.EvalBatches(val_x, val_y, config.val_batch_size, shard, device, memory_format)
    model = build_model(config.model, config.width).to(device, memory_format=memory_format)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.wd, fused=device.type == "cuda" or None,  # one kernel for the whole update on GPUs
    )
    schedule = LRSchedule.from_config(config, backend.lr_replicas() * simulated, batches.steps_per_epoch)

    found = backend.agree(lambda: checkpoint.find_and_load(config, workers, print) if backend.is_main else None)
    state = backend.broadcast_object(found[1] if found else None)
    history: list[dict[str, Any]] = []
    noise = NoiseScale()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        noise.load_state_dict(state["noise"])
        history = state["history"]
    model, optimizer = backend.prepare(model, optimizer)
    compile_seconds = 0.0
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
        compile_seconds = warm_up(model, next(iter(batches.epoch(1)))[0], next(iter(evals))[0], precision)
    log = RunLog(config, backend.is_main, history, batches.global_batch)
    resume_step = state["epoch_step"] if state is not None else 0
    partial = state.get("partial") if state is not None and backend.is_main else None
    log.say(
        f"batchscale: {config.model} ({parameters / 1e6:.2f}M parameters) on {backend.world_size} x {device.type} "
        f"({backend.name}{f', simulating {simulated} workers' if simulated > 1 else ''}), global batch {batches.global_batch}, {batches.steps_per_epoch} steps/epoch, "
        f"peak lr {schedule.peak_lr:.4g}"
        + (f"; resumed from {found[0]} after epoch {len(history)}" if found else "")
        + (f", step {resume_step}" if resume_step else "")
    )
    if config.warmup_epochs >= config.epochs and schedule.peak_lr != schedule.base_lr:
        log.say(f"warning: --warmup-epochs {config.warmup_epochs:g} covers the whole run; the LR never reaches its peak")

    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    steps_per_epoch = batches.steps_per_epoch
    wall_before = history[-1]["wall_seconds"] if history else 0.0
    train_before = history[-1]["train_seconds"] if history else 0.0
    local_images = config.batch_size * config.batches_per_allreduce * simulated

    def snapshot(epoch: int, epoch_step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format_version": checkpoint.FORMAT_VERSION,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "epoch": epoch,  # completed epochs
            "epoch_step": epoch_step,  # steps done inside epoch + 1
            "step": epoch * steps_per_epoch + epoch_step,
            "rng": checkpoint.rng_state(),
            "config": config.to_dict(),
            "world_size": workers,
            "history": history,
            "noise": {k: None if v is None else float(v) for k, v in noise.state_dict().items()},
            "partial": extra,
        }

    def check_finite(bad_step: Tensor) -> None:
        """A collective every --finite-check-every steps: all ranks stop together, never saving NaN weights."""

        def verify() -> None:
            step = int(bad_step)
            if step >= 0:
                done = history[-1]["epoch"] if history else 0
                raise Diverged(
                    f"the loss became NaN or infinite at step {step} (epoch {step // steps_per_epoch + 1}, "
                    f"lr {schedule(step - 1):.4g}); checkpoints up to epoch {done} are intact. Lower --base-lr, "
                    "lengthen --warmup-epochs or use fp32, then rerun to resume from the last good checkpoint"
                )

        backend.agree(verify)

    for epoch in range(len(history) + 1, config.epochs + 1):
        model.train()
        start_step = resume_step if epoch == len(history) + 1 else 0
        bar = log.bar(steps_per_epoch, f"epoch {epoch}/{config.epochs}", initial=start_step)
        loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device)
        correct = torch.tensor(partial["correct"] if partial else 0, dtype=torch.long, device=device)
        seen = partial["images"] if partial else 0
        seconds_before = partial["seconds"] if partial else 0.0
        partial = None
        bad_step = torch.full((), -1, dtype=torch.long, device=device)
        norms = GradNorms()
        epoch_start = time.perf_counter()
        step = (epoch - 1) * steps_per_epoch + start_step
        for epoch_step, micro in enumerate(batches.epoch(epoch, start_step), start=start_step + 1):
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Noise scale: a small batch (one worker's micro-batch) against the combined gradient.
            measure = not config.use_adasum and (step + 1) % config.noise_every == 0
            measure = measure and (len(micro) > 1 or backend.noise_probe(norms))
            if measure:
                norms.reset(device)
            step_loss, step_correct = train_step(
                model, optimizer, micro, backend, criterion, precision, norms if measure else None
            )
            if measure:
                backend.noise_probe(None)
                noise.update(norms.small_sq, norms.big_sq, config.batch_size, batches.global_batch)
            step += 1
            bad_step.masked_fill_((bad_step < 0) & ~torch.isfinite(step_loss), step)  # no host sync
            loss_sum += step_loss
            correct += step_correct
            seen += local_images
            log.step(bar, step, lr, seen, loss_sum, correct)
            faults.point("step", step, backend.rank, model)
            if step % config.finite_check_every == 0:
                check_finite(bad_step)
            every = config.checkpoint_every_steps
            if every and epoch_step % every == 0 and epoch_step < steps_per_epoch:
                check_finite(bad_step)
                backend.average_buffers(model)
                sums = backend.all_reduce_sum(torch.stack([loss_sum.double(), correct.double()])).tolist()
                images = backend.all_reduce_sum(torch.tensor([float(seen)], device=device)).item()
                extra = {"loss_sum": sums[0], "correct": int(sums[1]), "images": int(images),
                         "seconds": seconds_before + time.perf_counter() - epoch_start}
                if backend.is_main:
                    checkpoint.save(checkpoint.partial_path(config, epoch), snapshot(epoch - 1, epoch_step, extra))
                faults.point("after-step-checkpoint", step, backend.rank)
        check_finite(bad_step)
        totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device)])
        train_loss, train_correct, images = backend.all_reduce_sum(totals).tolist()  # .tolist() waits for the device
        epoch_seconds = seconds_before + time.perf_counter() - epoch_start
        if bar is not None:
            bar.close()
        backend.average_buffers(model)
        val_loss, val_acc = evaluate(model, evals, backend, precision)
        train_before += epoch_seconds
        history.append(
            {
                "epoch": epoch,
                "step": step,
                "lr": schedule(step - 1),
                "train_loss": train_loss / images,
                "train_acc": train_correct / images,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "images": int(images),
                "epoch_seconds": epoch_seconds,
                "images_per_sec": images / epoch_seconds,
                "train_seconds": train_before,
                "wall_seconds": wall_before + time.perf_counter() - started,
                "noise_scale": None if noise.b_simple is None else float(noise.b_simple),
            }
        )
        if backend.is_main:
            checkpoint.save(config.checkpoint_path(epoch), snapshot(epoch, 0))
            checkpoint.prune(config, epoch)
        faults.point("after-checkpoint", epoch, backend.rank)
        log.epoch(history[-1])

    summary = summarize(config, backend.name, workers, history, parameters)
    summary.update(precision=precision.name, device=device_name(device), compile_seconds=compile_seconds)
    log.finish(summary)
    return summary
