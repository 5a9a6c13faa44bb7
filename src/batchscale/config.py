"""The run's configuration: one typed object that the command line fills and `train()` takes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import string
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError
from .flags import flag
from .parallel.launch import CHOICES
from .target import COARSE_GROWTH, NEAR
from .trackers import EXTRA, TRACKERS, parse_trackers

MODELS = ("resnet18", "resnet18-imagenet")
# torch.compile's modes: reduce-overhead replays CUDA graphs, the cure for launch-bound small-batch steps.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
LR_SCALINGS = ("linear", "sqrt", "none")
LR_SCHEDULES = ("cosine", "step", "onecycle", "constant")
BACKENDS = CHOICES  # the parallel package's names: a new backend is added there
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRANSLATE_PADS = ("zeros", "reflect")
TTA_MODES = ("none", "flip", "flip-translate")
# Named recipes: settings a run takes unless its own flags say otherwise.
RECIPES: dict[str, dict[str, Any]] = {
    # KellerJordan/cifar10-zoo, airbench/baselines/train_resnet18_94.py (commit d5a9ca5): the same CIFAR
    # ResNet-18, 94.0% in 26 epochs (51 s on an A100 in fp16): batch 500, SGD lr 0.2 (on the mean loss), Nesterov
    # 0.9, wd 5e-4, a triangular LR 0.2x -> 1x over the first 20% of steps -> 0, flip, translate 4 (mirrored
    # edges), cutout 12, and flip + 1-pixel translate test-time augmentation; no label smoothing.
    "fast94": {"epochs": 26, "batch_size": 500, "val_batch_size": 500, "base_lr": 0.2, "momentum": 0.9,
               "nesterov": True, "wd": 5e-4, "lr_schedule": "onecycle", "warmup_epochs": 5.2,
               "warmup_start_lr": 0.04, "label_smoothing": 0.0, "translate": 4, "translate_pad": "reflect",
               "cutout": 12, "tta": "flip-translate"},
}
RUN = "{run}"  # in --log-dir: replaced by run_name()
# torch.distributed keeps timeouts as int64 milliseconds; 1e7 s (115 days) is far beyond any real wait.
MAX_TIMEOUT = 1e7


def global_batch(batch_size: int, batches_per_allreduce: int, workers: int) -> int:
    """Images per optimizer step: every worker's micro-batches together."""
    return batch_size * batches_per_allreduce * workers


def decay_epochs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 30,60,80, got {text!r}") from None


DATA, OUTPUTS = "data", "outputs and checkpoints"
SCHEDULE, OPTIMIZER = "epochs and batch", "optimizer and learning rate"
MODEL, DISTRIBUTED, MEASURE, REPRO = "model", "distributed", "measurement", "reproducibility and devices"
AUGMENT = "augmentation and recipes"


@dataclass
class Config:
    """Every training setting; each field is its own flag (flags.py), with its help beside it."""

    # --help: what the run trains first, then where it writes and runs (flags.add_flags).
    help_order: ClassVar[tuple[str, ...]] = (SCHEDULE, OPTIMIZER, MODEL, AUGMENT, DATA, MEASURE, OUTPUTS, DISTRIBUTED,
                                             REPRO)

    train_dir: str = flag("./data", "folder holding cifar-10-batches-py/ for training", group=DATA)
    val_dir: str = flag("./data", "folder holding cifar-10-batches-py/ for validation", group=DATA)
    download: bool = flag(True, "never download CIFAR-10; stop if it is missing", group=DATA, name="--no-download")
    train_subset: int = flag(0, "train on only the first N training images (after --holdout is set aside), the same "
                             "ones for every seed: the knob for a quick smoke run (default: 0, all)", group=DATA,
                             metavar="N")
    log_dir: str = flag(f"./logs/{RUN}", f"TensorBoard events, metrics.jsonl, summary.json and checkpoints; {RUN} "
                        "is a name made of the settings a resume must keep (model, width, batch layout, schedule, "
                        "seed, ...), so runs that differ in them never share a folder and the same command resumes",
                        group=OUTPUTS, aliases=("--out",))
    checkpoint_format: str = flag("{log_dir}/checkpoint-{epoch}.pth.tar",
                                  "checkpoint path with {epoch} (and optionally {log_dir})", group=OUTPUTS)
    resume: bool = flag(True, "start afresh: remove this run's earlier checkpoints, events and summary",
                        group=OUTPUTS, name="--no-resume")
    resume_from: str | None = flag(None, "resume from this checkpoint (default: the newest of this run)", group=OUTPUTS,
                                   name="--resume", metavar="PATH")
    checkpoint_every_steps: int = flag(0, "also checkpoint every K steps inside an epoch, so a crash loses at most K "
                                       "steps (default: 0, off)", group=OUTPUTS, metavar="K")
    keep_checkpoints: int = flag(0, "keep only the newest N epoch checkpoints (default: 0, keep all, as the original)",
                                 group=OUTPUTS, metavar="N")
    progress: bool = flag(True, "no progress bars (epoch lines only)", group=OUTPUTS, name="--no-progress")
    tracker: tuple[str, ...] = flag(("tensorboard",), "where scalars go, comma-separated: tensorboard, mlflow "
                                    "(where MLFLOW_TRACKING_URI says), wandb (WANDB_MODE=offline keeps it "
                                    "local); the last two are optional extras", group=OUTPUTS, parse=parse_trackers,
                                    metavar="NAMES")
    epochs: int = flag(50, "epochs to train", group=SCHEDULE)
    batch_size: int = flag(256, "training batch per worker", group=SCHEDULE)
    val_batch_size: int = flag(256, "validation batch per worker", group=SCHEDULE)
    batches_per_allreduce: int = flag(1, "micro-batches accumulated locally per allreduce", group=SCHEDULE)
    base_lr: float = flag(0.1, "LR of one worker's batch", group=OPTIMIZER)
    lr_scaling: str = flag("linear", "peak LR = base LR x this rule of workers x batches-per-allreduce",
                           group=OPTIMIZER, choices=LR_SCALINGS)
    lr_schedule: str = flag("cosine", "decay after warmup", group=OPTIMIZER, choices=LR_SCHEDULES)
    warmup_epochs: float = flag(5.0, "epochs of per-step ramp from base LR to peak LR", group=OPTIMIZER)
    warmup_steps: int = flag(0, "warm up over K optimizer steps instead of --warmup-epochs (default: 0, use epochs)",
                             group=OPTIMIZER, metavar="K")
    warmup_start_lr: float | None = flag(None, "LR at the first warmup step (default: --base-lr, Goyal et al.'s ramp; "
                                         "set it lower to warm up one worker)", group=OPTIMIZER, parse=float)
    lr_decay_epochs: tuple[int, ...] = flag((30, 60, 80), "epochs where --lr-schedule step multiplies the LR by "
                                            "--lr-decay-factor (default: 30,60,80)", group=OPTIMIZER, parse=decay_epochs)
    lr_decay_factor: float = flag(0.1, "what --lr-schedule step multiplies the LR by", group=OPTIMIZER)
    momentum: float = flag(0.9, "SGD momentum", group=OPTIMIZER)
    nesterov: bool = flag(True, "Nesterov momentum (default: on)", group=OPTIMIZER, toggle=True)
    wd: float = flag(5e-4, "weight decay", group=OPTIMIZER)
    label_smoothing: float = flag(0.0, "label smoothing of the training loss", group=OPTIMIZER)
    translate: int = flag(4, "random translation of training images by up to N pixels (a crop of the padded "
                          "image; 0: none)", group=AUGMENT, metavar="N")
    translate_pad: str = flag("zeros", "what the translation uncovers: zeros, or the mirrored edge (reflect, as "
                              "cifar10-zoo)", group=AUGMENT, choices=TRANSLATE_PADS)
    cutout: int = flag(0, "zero an S x S square of each training image, placed at random wholly inside it "
                       "(default: 0, off)", group=AUGMENT, metavar="S")
    tta: str = flag("none", "test-time augmentation at evaluation: flip averages each image's and its mirror's "
                    "logits; flip-translate adds the pair moved by one pixel both ways", group=AUGMENT,
                    choices=TTA_MODES)
    recipe: str | None = flag(None, "a named recipe whose settings apply unless given as flags: fast94 "
                              "(cifar10-zoo's ResNet-18 at 94%: 26 epochs, batch 500, cutout, translate, "
                              "flip-translate TTA; README: Speed)", group=AUGMENT, choices=tuple(RECIPES))
    model: str = flag("resnet18", "resnet18: CIFAR ResNet-18; resnet18-imagenet: torchvision's, as the original",
                      group=MODEL, choices=MODELS)
    width: int = flag(64, "channels of the first stage of --model resnet18", group=MODEL)
    precision: str = flag("auto", "autocast dtype; fp16 adds a gradient scaler; auto = bf16 on GPUs, fp32 on CPUs",
                          group=MODEL, choices=PRECISIONS)
    compile: bool = flag(False, "torch.compile the model (compile time is reported apart)", group=MODEL)
    compile_mode: str = flag("default", "torch.compile's mode with --compile: reduce-overhead replays CUDA graphs "
                             "(fewer launches: for steps bound by the host, as small batches on an H100 are)",
                             group=MODEL, choices=COMPILE_MODES)
    backend: str = flag("auto", "auto: from the launcher's environment", group=DISTRIBUTED, choices=BACKENDS)
    fp16_allreduce: bool = flag(False, "send gradients as fp16", group=DISTRIBUTED)
    bf16_allreduce: bool = flag(False, "send gradients as bf16", group=DISTRIBUTED)
    use_adasum: bool = flag(False, "combine gradients with Adasum instead of averaging", group=DISTRIBUTED)
    gradient_predivide_factor: float = flag(1.0, "divide gradients by this before the sum and by world size / this "
                                            "after, as Horovod", group=DISTRIBUTED)
    collective_timeout: float = flag(600.0, "a rank waiting this long in a collective ends the job instead of hanging",
                                     group=DISTRIBUTED, metavar="SECONDS")
    simulate_workers: int = flag(1, "run N workers' arithmetic in this process: each worker's batch its own forward "
                                 "pass (its own batch-norm statistics), gradients averaged, same data order and LR as "
                                 "N real workers (default: 1)", group=DISTRIBUTED, metavar="N")
    noise_every: int = flag(10, "estimate the gradient noise scale every N steps", group=MEASURE, metavar="N")
    noise_window: float = flag(0.0, "the noise scale's current value weighs every pair alike until this many "
                               "training examples, then forgets the past by a factor e per as many (default: 0, a "
                               "quarter of the run's planned images); the run's average is reported beside it",
                               group=MEASURE, metavar="EXAMPLES")
    noise_probe: int = flag(0, "at the run's end, B_simple from N micro-batch gradients at the final weights, no "
                            "step between them, in 16 groups (summary.json's noise_probe, with the sums a study "
                            "pools)", group=MEASURE, metavar="N")
    target_accuracy: float = flag(0.94, "summary.json records the steps and time to reach this accuracy (on the "
                                  "--holdout split if there is one, else the test set)", group=MEASURE)
    holdout: int = flag(0, "hold out N training images, never trained on, for the --target-accuracy check; the same "
                        "images for every seed; the test set stays for final accuracy (default: 0, none)",
                        group=MEASURE, metavar="N")
    eval_growth: float = flag(0.0, "also evaluate the target split inside epochs, at steps growing by this factor "
                              f"once within {100 * NEAR:g} points of the target (the crossing interpolated between "
                              f"the last look below and the first at it), by {COARSE_GROWTH:g} on a quarter of it "
                              "before (default: 0, at epoch ends only)", group=MEASURE, metavar="R")
    stop_at_target: bool = flag(False, "end the run at the first evaluation that reaches --target-accuracy",
                                group=MEASURE)
    max_steps: int = flag(0, "end the run after K optimizer steps, even inside an epoch, as a trial's budget "
                          "(default: 0, --epochs alone)", group=MEASURE, metavar="K")
    seed: int = flag(42, "model init, data order and augmentation", group=REPRO)
    deterministic: bool = flag(False, "deterministic kernels: bit-identical reruns on one machine", group=REPRO)
    no_cuda: bool = flag(False, "train on the CPU even if a GPU is present", group=REPRO)
    finite_check_every: int = flag(50, "check for a NaN/inf loss (and a stop signal, across ranks) every N steps "
                                   "and at epoch end", group=REPRO, metavar="N")

    def validate(self) -> "Config":
        """Checks every value that can be judged without touching the disk or the network."""
        for check in (_check_counts, _check_ranges, _check_choices, _check_combinations):
            check(self)
        return self

    def with_recipe(self, given: set[str]) -> "Config":
        """This config with its --recipe's settings in place of every field not in `given` (the flags the user
        gave), so a flag always wins over the recipe."""
        if self.recipe is None:
            return self
        _choice("recipe", self.recipe, tuple(RECIPES))
        recipe = dict(RECIPES[self.recipe])
        if "epochs" in given and not {"warmup_epochs", "warmup_steps"} & given:
            # The recipe's warmup is a share of its run (fast94: 20%); kept in epochs, a shorter run would be all
            # ramp and never reach its peak. Its decay already spans whatever --epochs says.
            recipe["warmup_epochs"] = round(recipe["warmup_epochs"] * self.epochs / recipe["epochs"], 6)
        return dataclasses.replace(self, **{k: v for k, v in recipe.items() if k not in given})

    def run_name(self, workers: int) -> str:
        """The settings checkpoint.MUST_MATCH (and the batch layout) pins, as a folder name: `resnet18-w64-b256-n1-
        linear-cosine-e50-s42`. The epochs are part of it where the schedule's LR depends on them."""
        parts = [self.model, *([f"w{self.width}"] if self.model == "resnet18" else []),
                 f"b{self.batch_size}" + (f"x{self.batches_per_allreduce}" if self.batches_per_allreduce > 1 else ""),
                 f"n{workers * self.simulate_workers}" + ("sim" if self.simulate_workers > 1 else ""),
                 "adasum" if self.use_adasum else self.lr_scaling, self.lr_schedule]
        if self.lr_schedule in ("cosine", "onecycle"):
            parts.append(f"e{self.epochs}")
        parts += [f"holdout{self.holdout}"] * bool(self.holdout) + [f"subset{self.train_subset}"] * bool(self.train_subset)
        return "-".join([*parts, f"s{self.seed}"])

    def for_run(self, workers: int) -> "Config":
        """This config with {run} in --log-dir filled in (every rank computes the same name)."""
        if RUN not in self.log_dir:
            return self
        return dataclasses.replace(self, log_dir=self.log_dir.replace(RUN, self.run_name(workers)))

    def checkpoint_path(self, epoch: int) -> str:
        return self.checkpoint_format.format(epoch=epoch, log_dir=self.log_dir)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_decay_epochs"] = list(self.lr_decay_epochs)
        data["tracker"] = list(self.tracker)
        return data


def _check_counts(config: Config) -> None:
    """The integer and positive settings."""
    positive_ints = (
        "epochs", "batch_size", "val_batch_size", "batches_per_allreduce", "width", "finite_check_every",
        "simulate_workers", "noise_every",
    )
    for name in positive_ints:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{_flag(name)} must be an integer >= 1 (got {value!r})")
    for name in ("checkpoint_every_steps", "keep_checkpoints", "warmup_steps", "holdout", "max_steps", "train_subset",
                 "noise_probe"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"--{_flag(name)} must be an integer >= 0, 0 meaning off (got {value!r})")
    if 0 < config.noise_probe < 32:
        raise ConfigError(f"--noise-probe {config.noise_probe} gives its 16 groups fewer than 2 gradients each; "
                          "give 32 or more, or 0 for no probe")
    if not math.isfinite(config.noise_window) or config.noise_window < 0:
        raise ConfigError(f"--noise-window must be a positive number of examples, or 0 for a quarter of the run "
                          f"(got {config.noise_window!r})")
    for name in ("base_lr", "lr_decay_factor", "gradient_predivide_factor", "collective_timeout"):
        value = getattr(config, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--{_flag(name)} must be a positive number (got {value!r})")
    for name in ("wd", "warmup_epochs"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--{_flag(name)} must be a number >= 0 (got {value!r})")


def _check_ranges(config: Config) -> None:
    """The settings with bounds of their own."""
    if config.collective_timeout > MAX_TIMEOUT:
        raise ConfigError(f"--collective-timeout must be at most {MAX_TIMEOUT:g} seconds (got {config.collective_timeout!r})")
    if not isinstance(config.seed, int) or not 0 <= config.seed < 2**64:
        raise ConfigError(f"--seed must be an integer from 0 to 2**64 - 1 (got {config.seed!r})")
    if config.warmup_start_lr is not None and not (math.isfinite(config.warmup_start_lr) and config.warmup_start_lr >= 0):
        raise ConfigError(f"--warmup-start-lr must be a number >= 0 (got {config.warmup_start_lr!r})")
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1) (got {config.momentum!r})")
    if config.nesterov and config.momentum == 0:
        raise ConfigError("Nesterov momentum needs --momentum > 0; pass --no-nesterov or set --momentum")
    if not 0 < config.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy must be in (0, 1], e.g. 0.94 (got {config.target_accuracy!r})")
    if 0 < config.holdout < 8:
        raise ConfigError(f"--holdout must be 0 (none) or at least 8 images; 5000 is a good size (got {config.holdout})")
    if config.eval_growth != 0 and not (math.isfinite(config.eval_growth) and 1 < config.eval_growth <= 2):
        raise ConfigError(f"--eval-growth must be in (1, 2], e.g. 1.05, or 0 for off (got {config.eval_growth!r})")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1) (got {config.label_smoothing!r})")


def _check_choices(config: Config) -> None:
    """The settings that name one of a list."""
    _choice("model", config.model, MODELS)
    _choice("lr_scaling", config.lr_scaling, LR_SCALINGS)
    _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    _choice("backend", config.backend, BACKENDS)
    _choice("precision", config.precision, PRECISIONS)
    _choice("compile_mode", config.compile_mode, COMPILE_MODES)
    _choice("translate_pad", config.translate_pad, TRANSLATE_PADS)
    _choice("tta", config.tta, TTA_MODES)
    if config.recipe is not None:
        _choice("recipe", config.recipe, tuple(RECIPES))
    if not isinstance(config.translate, int) or not 0 <= config.translate <= 16:
        raise ConfigError(f"--translate must be an integer from 0 to 16 pixels (got {config.translate!r})")
    if not isinstance(config.cutout, int) or not 0 <= config.cutout < 32:
        raise ConfigError(f"--cutout must be an integer from 0 (off) to 31 pixels (got {config.cutout!r})")


def _check_combinations(config: Config) -> None:
    """Settings that contradict each other, and those a value names (the checkpoint format, the trackers)."""
    if config.compile_mode != "default" and not config.compile:
        raise ConfigError(f"--compile-mode {config.compile_mode} applies to compiled runs; add --compile")
    decay = list(config.lr_decay_epochs)
    if any(not isinstance(e, int) or e < 1 for e in decay) or decay != sorted(set(decay)):
        raise ConfigError(
            f"--lr-decay-epochs must be increasing positive integers like 30,60,80 (got {config.lr_decay_epochs!r})"
        )
    if config.use_adasum and config.gradient_predivide_factor != 1.0:
        raise ConfigError("--gradient-predivide-factor applies to averaging only; drop it or --use-adasum")
    if config.simulate_workers > 1 and config.use_adasum:
        raise ConfigError("--simulate-workers averages the simulated workers; it cannot simulate Adasum")
    if config.fp16_allreduce and config.bf16_allreduce:
        raise ConfigError("choose one of --fp16-allreduce and --bf16-allreduce, not both")
    _check_checkpoint_format(config.checkpoint_format)
    for name in config.tracker:
        _choice("tracker", name, TRACKERS)
        if name in EXTRA and importlib.util.find_spec(name) is None:
            raise ConfigError(f"--tracker {name} needs the {EXTRA[name]} package: pip install "
                              f"'batchscale[{name}]', or drop {name} from --tracker")
    if config.resume_from is not None and not config.resume:
        raise ConfigError("--resume PATH and --no-resume contradict each other; keep one")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(allowed)} (got {value!r})")


def _check_checkpoint_format(fmt: str) -> None:
    hint = "write it like ./checkpoints/checkpoint-{epoch}.pth.tar"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise ConfigError(f"--checkpoint-format {fmt!r} is not a valid format ({err}); {hint}") from None
    if "epoch" not in fields:
        raise ConfigError(f"--checkpoint-format {fmt!r} has no {{epoch}} field; {hint}")
    unknown = fields - {"epoch", "log_dir"}
    if unknown:
        raise ConfigError(
            f"--checkpoint-format {fmt!r} uses unknown field(s) {sorted(unknown)}; only {{epoch}} and {{log_dir}} exist"
        )
    try:
        first, second = fmt.format(epoch=1, log_dir="x"), fmt.format(epoch=2, log_dir="x")
    except (ValueError, IndexError, KeyError) as err:
        raise ConfigError(f"--checkpoint-format {fmt!r} cannot be filled in ({err}); {hint}") from None
    if first == second:
        raise ConfigError(f"--checkpoint-format {fmt!r} gives the same file for every epoch; {hint}")
