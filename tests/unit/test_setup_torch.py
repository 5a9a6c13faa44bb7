"""`make setup` picks the torch build from what the machine has: the CUDA one where nvidia-smi lists a GPU, the CPU-only
one (about 1 GB instead of 5-6) where none is visible and its index answers, pip's default otherwise, each said in
one plain line. Nothing is installed here: nvidia-smi, the index and pip are stand-ins on PATH and on localhost."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_LIST = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f1e2d3c)"


@pytest.fixture(scope="module")
def cpu_index(tmp_path_factory) -> Iterator[str]:
    """A local stand-in for download.pytorch.org/whl/cpu: it answers for /torch/."""
    root = tmp_path_factory.mktemp("index")
    (root / "cpu" / "torch").mkdir(parents=True)
    (root / "cpu" / "torch" / "index.html").write_text("<a href='torch-2.14.1+cpu.whl'>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cpu"
    server.shutdown()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/whl/cpu"  # nothing listens there once it is closed


def fake_nvidia_smi(folder: Path, gpus: str | None) -> dict[str, str]:
    """PATH with an nvidia-smi that lists `gpus` (None: it finds none, as on a machine with the driver but no GPU)."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    if gpus is None:
        script.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    else:
        script.write_text(f"#!/bin/sh\necho '{gpus}'\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "PYTHON": sys.executable}


def choose(env: dict[str, str], **extra: str) -> tuple[str, str]:
    env = {k: v for k, v in env.items() if k not in ("TORCH_INDEX", "TORCH_CPU_INDEX")}
    done = subprocess.run([str(ROOT / "scripts" / "torch_index.sh")], capture_output=True, text=True,
                          env={**env, **extra}, timeout=120, check=True)
    return done.stdout.strip(), done.stderr.strip()


def test_a_visible_gpu_keeps_the_cuda_build(tmp_path, cpu_index):
    index, said = choose(fake_nvidia_smi(tmp_path, GPU_LIST), TORCH_CPU_INDEX=cpu_index)
    assert index == ""  # pip's default index: the CUDA build
    assert said.startswith("setup: a GPU is visible") and "TORCH_INDEX=" in said and len(said.splitlines()) == 1


def test_no_gpu_takes_the_cpu_wheels_where_their_index_answers(tmp_path, cpu_index):
    index, said = choose(fake_nvidia_smi(tmp_path, None), TORCH_CPU_INDEX=cpu_index)
    assert index == cpu_index
    assert said.startswith("setup: no GPU visible") and "TORCH_INDEX=default make setup" in said


def test_no_gpu_and_no_cpu_index_falls_back_to_the_default_and_says_so(tmp_path):
    index, said = choose(fake_nvidia_smi(tmp_path, None), TORCH_CPU_INDEX=closed_port())
    assert index == ""
    assert "does not answer" in said and "pip's default index" in said


@pytest.mark.parametrize("override, want", [("https://example.invalid/whl/cu126", "https://example.invalid/whl/cu126"),
                                            ("default", "")])
def test_torch_index_overrides_the_choice(tmp_path, cpu_index, override, want):
    index, said = choose(fake_nvidia_smi(tmp_path, None), TORCH_CPU_INDEX=cpu_index, TORCH_INDEX=override)
    assert index == want and "TORCH_INDEX" in said


FAKE_VENV_PYTHON = """#!/bin/bash
# Stands in for .venv/bin/python: pip is recorded, not run; `import torch` works once pip "installed" it.
echo "$*" >> {log}
if [ "$1" = -m ] && [ "$2" = pip ]; then case " $* " in *" torch "*) touch {torch};; esac; exit 0; fi
if [ "$1" = -c ] && [ "$2" = "import torch" ]; then [ -e {torch} ]; exit; fi
exec {real} "$@"
"""


@pytest.mark.parametrize("gpus", [None, GPU_LIST], ids=["no-gpu", "gpu"])
def test_make_setup_installs_the_chosen_torch_and_prints_plain_lines(tmp_path, cpu_index, gpus):
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_VENV_PYTHON.format(log=log, torch=tmp_path / "torch-installed", real=sys.executable))
    python.chmod(0o755)
    env = {**fake_nvidia_smi(tmp_path / "bin", gpus), "TORCH_CPU_INDEX": cpu_index}
    env.pop("TORCH_INDEX", None)
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "setup", f"VENV={venv}"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.strip().splitlines()
    assert all(line.startswith("setup: ") for line in lines), lines  # no recipe echoed, no shell fragment
    assert lines[-1].startswith("setup: done:")
    torch_installs = [call for call in log.read_text().splitlines() if "pip install" in call and " torch " in f"{call} "]
    if gpus is None:
        assert torch_installs and all(f"--index-url {cpu_index} torch torchvision" in c for c in torch_installs)
    else:
        assert not torch_installs  # the CUDA build comes with the project's own dependencies, from pip's default index
    assert (venv / ".installed").exists()
