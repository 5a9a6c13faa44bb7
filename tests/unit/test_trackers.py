"""The optional trackers, offline: MLflow's local file store and W&B's offline mode get the same scalars on the same
step axis as TensorBoard. Skipped where the extras are not installed (`pip install -e '.[mlflow,wandb]'`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launch import HANG_S

from batchscale.config import Config
from batchscale.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def run(data: Path, log_dir: Path, tracker: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "train.py"), "--train-dir", str(data), "--val-dir", str(data), "--log-dir",
            str(log_dir), "--no-download", "--no-cuda", "--width", "4", "--batch-size", "32", "--epochs", "2",
            "--no-progress", "--tracker", tracker, *extra]
    # No proxy, no key: were either library to reach for the network, it would fail here, not pass quietly.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "BATCHSCALE_"))}
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=HANG_S,
                          env={**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path), **env})


def test_mlflow_gets_every_scalar_against_the_step(tiny_cifar, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default kind of store: a local file, no server
    result = run(tiny_cifar, tmp_path / "run", "tensorboard,mlflow", {"MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert [m.step for m in client.get_metric_history(run_id, "val.acc")] == [10, 20]
    assert len(client.get_metric_history(run_id, "train.lr")) == 20
    logged = client.get_run(run_id)
    assert logged.data.params["width"] == "4"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert logged.data.metrics["hparam.final_val_acc"] == pytest.approx(summary["final_val_acc"])
    # --no-resume starts afresh: a new MLflow run, not more points on the old one.
    again = run(tiny_cifar, tmp_path / "run", "tensorboard,mlflow", {"MLFLOW_TRACKING_URI": store}, "--no-resume")
    assert again.returncode == 0, again.stderr[-3000:]
    fresh = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert fresh != run_id and [m.step for m in client.get_metric_history(fresh, "val.acc")] == [10, 20]


def test_wandb_offline_gets_the_run(tiny_cifar, tmp_path):
    pytest.importorskip("wandb")
    result = run(tiny_cifar, tmp_path / "run", "wandb", {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                                          "WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    logs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, list((tmp_path / "run").rglob("*"))
    # W&B keeps an offline run as a log of protobuf records (read back only by `wandb sync`); their keys are plain.
    records = logs[0].read_bytes()
    assert b"val/acc" in records and b"train/step_loss" in records and b"hparam/final_val_acc" in records
    steps = re.findall(rb"_step\x82\x01[\x01-\x09](\d+)", records)
    assert steps and int(steps[-1]) == 20  # the last step of epoch 2: the step axis, not the epoch number


def test_a_tracker_that_is_not_installed_is_one_line_before_anything_runs(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--tracker wandb needs the wandb package: pip install 'batchscale\[wandb\]'"):
        Config(tracker=("tensorboard", "wandb")).validate()


def silent_server() -> socket.socket:
    """A server on 127.0.0.1 that takes connections (the kernel completes them from the backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


@pytest.mark.parametrize("server", ["silent", "closed"])
def test_an_mlflow_server_that_is_not_there_is_one_line_before_training(tiny_cifar, tmp_path, monkeypatch, capsys,
                                                                        server):
    pytest.importorskip("mlflow")
    from launch import cli, one_line

    listening = silent_server() if server == "silent" else None
    port = listening.getsockname()[1] if listening else closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    try:
        code, err = cli("train", "--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--log-dir",
                        str(tmp_path / "run"), "--no-download", "--no-cuda", "--width", "2", "--tracker",
                        "tensorboard,mlflow", capsys=capsys)
    finally:
        if listening:
            listening.close()
    line = one_line(err)
    assert code == 2 and f"no MLflow server answers at http://127.0.0.1:{port}" in line and "drop mlflow" in line
    assert ("no answer" in line) == (server == "silent")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def test_any_http_answer_is_a_server_and_a_local_store_is_not_probed(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from batchscale.trackers import check_reachable

    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(401)  # a server behind a login still is one

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{httpd.server_port}")
        check_reachable(("mlflow",))
    finally:
        httpd.shutdown()
        httpd.server_close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    check_reachable(("tensorboard",))  # not asked for: not probed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///nowhere/mlflow.db")
    check_reachable(("mlflow",))  # a local store: MLflow opens it itself
