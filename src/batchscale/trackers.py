"""Where a run's scalars go: TensorBoard by default, MLflow and Weights & Biases as optional extras.

A tracker takes scalars against the optimizer step (the one x-axis of every plot), the run's settings once, and
its final metrics. Rank 0 alone opens one. MLflow reads MLFLOW_TRACKING_URI (default: a local ./mlruns file
store); W&B reads WANDB_PROJECT, WANDB_MODE (offline: nothing leaves the machine) and its usual variables.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

from .atomic import write_text_atomic
from .errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
EXTRA = {"mlflow": "mlflow-skinny", "wandb": "wandb"}
RUN_ID_FILES = ("mlflow_run_id", "wandb_run_id")  # in the run folder: a resumed run continues its tracker run


class Tracker(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.writer.add_hparams(hparams, metrics, run_name=".")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        # A rerun of the same folder (a resume) continues its MLflow run rather than starting a second one.
        id_file = folder / RUN_ID_FILES[0]
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=folder.name)
        write_text_atomic(id_file, self.run.info.run_id + "\n")
        if run_id is None:
            mlflow.log_params({k: str(v) for k, v in settings.items()})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({tag.replace("/", "."): value for tag, value in values.items()}, step=step)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.mlflow.end_run()


class WandB:
    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        import wandb

        # The folder names the run; a rerun of it (a resume) continues the same W&B run.
        id_file = folder / RUN_ID_FILES[1]
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        write_text_atomic(id_file, run_id + "\n")
        self.run = wandb.init(dir=str(folder), id=run_id, resume="allow", name=folder.name, config=settings)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def parse_trackers(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names:
        import argparse

        raise argparse.ArgumentTypeError(f"expected some of {', '.join(TRACKERS)}, comma-separated (got {text!r})")
    return names


# Long enough for a server across the world, short enough that a wrong address is not a silent hang: MLflow's own
# client retries an unreachable server for about 120 s, past the point where a run handles signals.
REACH_SECONDS = 5.0


def check_reachable(names: tuple[str, ...], seconds: float | None = None) -> None:
    """Fails in one line, before training and before any signal handler is installed (a signal ends the process at
    once), when --tracker mlflow points MLFLOW_TRACKING_URI at an HTTP server that does not answer within
    `seconds`. Any HTTP answer, an error status included, means a server is there."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if "mlflow" not in names or not uri.startswith(("http://", "https://")):
        return  # a local file or database store, or a scheme MLflow resolves itself (databricks)
    seconds = REACH_SECONDS if seconds is None else seconds
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=seconds):
            pass
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:  # URLError, a timeout, a refused or reset connection, a malformed address
        reason = getattr(err, "reason", err)
        why = "no answer" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
        raise ConfigError(f"--tracker mlflow: no MLflow server answers at {uri} (MLFLOW_TRACKING_URI) within "
                          f"{seconds:g} s ({why}); start it, point MLFLOW_TRACKING_URI at one that runs, or drop "
                          "mlflow from --tracker") from None


def open_trackers(names: tuple[str, ...], folder: Path, settings: dict[str, Any]) -> list[Tracker]:
    """The trackers `names` asks for; a missing optional one is one line saying what to install."""
    opened: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            opened.append(TensorBoard(folder))
            continue
        try:
            opened.append(MLflow(folder, settings) if name == "mlflow" else WandB(folder, settings))
        except Exception as err:  # noqa: BLE001 -- each library fails in its own types; the run must not start half-logged
            for tracker in opened:
                tracker.close()
            if isinstance(err, ImportError):
                raise ConfigError(f"--tracker {name} needs the {EXTRA[name]} package: pip install "
                                  f"'batchscale[{name}]', or drop {name} from --tracker") from None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--tracker {name} could not start ({first}); fix its settings or drop {name} "
                              "from --tracker") from None
    return opened
