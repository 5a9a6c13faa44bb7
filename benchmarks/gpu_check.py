"""The GPU check: one device call, its parts in order of value, each in its own time box, each leaving its
JSON in $OUT the moment it has it (a cut call still brings back every finished part).

The speed probe (issue 21), the default on a GPU, about 8 minutes; every figure a train-mode step:

  part            box   what it leaves in OUT
  env              40 s environment.json: GPU, versions, whether torch.compile works here, whether the data is whole
  sweep-eager      50 s sweep-eager.json: the eager step at batch 128, 256, 512, 1024 (benchmarks/step_sweep.py):
                        device (CUDA events) and host-issue ms per step, 5 rounds each, median and min
  sweep-compiled  110 s sweep-compiled.json: the same compiled (forward, loss and metrics one graph)
  graphs           80 s graphs.json: the same as CUDA graphs (--compile-mode reduce-overhead) at 128, 256, 512
  profile-step     40 s profile-step.json: 10 compiled steps at 256 and 512 under torch.profiler
                        (benchmarks/profile_step.py): kernels per step, device busy, top kernels, layout copies
  profile          50 s profile.txt: train.py's own loop (the fast94 recipe, compiled), its last epoch profiled
                        (benchmarks/profile_loop.py): the loop against the bench's step
  grouped          30 s grouped.json: one ResNet-18's step, 4 in sequence, and one with groups=4 in every
                        convolution (benchmarks/grouped_conv.py): whether a study should pack its LR trials
  fast94          110 s fast94/: --recipe fast94 (cifar10-zoo's 94% ResNet-18, 26 epochs), compiled; summary.json's
                        test accuracy and time_to_accuracy (training seconds to 94%)

Earlier parts, run when PARTS names them (passed on an H100, 2026-11-27): bench-b256 (110 s: the headline against
the original's pipeline), fast (130 s: the old fast recipe), torchrun (90 s), fp16 (60 s), horovod (90 s, from
wheels carried in .horovod-wheels/, scripts/build_horovod_carry.sh), benches (110 s: bench at 512, 128, torchrun).
Seen on an H100: compiling a step costs about 30-50 s (the first time; the parts share one inductor cache in the
scratch folder, so a graph compiled once loads after), the env part 28 s. status.json holds each part's exit code,
seconds and whether it ran out of time. Checkpoints go to a scratch folder, never to OUT.

    python3 benchmarks/gpu_check.py            # on the GPU machine, after staging data/ (see gpu_check.sh)
    python3 benchmarks/gpu_check.py --dry-run  # every part, old ones too, on the CPU, tiny and eager (make test)
    GPU_CHECK_BUNDLE=$OUT/gpu-check.tar.gz OUT=/tmp/gpu-check python3 benchmarks/gpu_check.py  # on the device
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"env": 40, "sweep-eager": 50, "sweep-compiled": 110, "graphs": 80, "profile-step": 40, "profile": 50,
         "grouped": 30, "fast94": 110}
EARLIER = {"bench-b256": 110, "fast": 130, "torchrun": 90, "fp16": 60, "horovod": 90, "benches": 110}
BOXES = {**PROBE, **EARLIER}
WHEELS = ROOT / ".horovod-wheels"


class Check:
    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.dry = out, dry_run
        self.py = os.environ.get("PYTHON", sys.executable)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.data = Path(os.environ.get("GPU_CHECK_DATA") or (self.scratch / "data" if dry_run else ROOT / "data"))
        self.status: dict[str, dict] = {}
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "TORCHINDUCTOR_CACHE_DIR": str(self.scratch / "compile-cache")}  # one cache for every part
        small = ["--width", "4", "--no-cuda"] if dry_run else ["--width", "64"]
        self.train_flags = small
        self.bench_flags = (["--steps", "2", "--rounds", "1", "--warmup", "1", "--baseline-steps", "2", *small] if dry_run
                            else ["--steps", "20", "--rounds", "5", "--warmup", "5", "--baseline-steps", "15"])
        self.epochs = 2 if dry_run else 30  # 15 reached 91.8% on an H100
        self.sweep_flags = (["--steps", "2", "--rounds", "1", "--warmup", "1", *small] if dry_run
                            else ["--steps", "20", "--rounds", "5", "--warmup", "5"])
        self.sizes = ("16,32", "16,32") if dry_run else ("128,256,512,1024", "128,256,512")
        self.compile: list[str] = []
        self.real = dry_run

    def run(self, name: str, steps: list[list[str] | tuple[list[str], Path, Path]]) -> int:
        """Runs a part's commands one after another inside its time box. A step given as (command, source,
        target) copies source into OUT as target when the command succeeds."""
        start = time.monotonic()
        deadline = start + BOXES[name]
        code, timed_out = 0, False
        print(f"== {name} (at most {BOXES[name]} s)", flush=True)
        with open(self.out / f"{name}.log", "w") as log:
            for step in steps:
                command, copy = (step[0], step[1:]) if isinstance(step, tuple) else (step, ())
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
                                           start_new_session=True)
                try:
                    code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # the whole group: torchrun's workers too
                    process.wait()
                    code, timed_out = 124, True
                if code:
                    break
                if copy:
                    shutil.copy(copy[0], copy[1])
        self.status[name] = {"exit_code": code, "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out}
        (self.out / "status.json").write_text(json.dumps(self.status, indent=2) + "\n")
        self.pack()
        tail = (self.out / f"{name}.log").read_text().strip().splitlines()[-4:]
        print("\n".join(tail), flush=True)
        return code

    def pack(self) -> None:
        """The device call brings back at most 8 files: with GPU_CHECK_BUNDLE set, everything finished so far
        is also packed into that one archive (replaced atomically, so a cut call still has the last one)."""
        bundle = os.environ.get("GPU_CHECK_BUNDLE")
        if bundle:
            partial = Path(bundle + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(self.out, arcname=self.out.name)
            partial.replace(bundle)

    def horovod(self) -> None:
        """The original's launcher on this device: Horovod from carried wheels (or the one installed, dry run)."""
        horovodrun = Path(self.py).parent / "horovodrun"
        steps: list = []
        if WHEELS.is_dir():
            steps.append([self.py, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(WHEELS), "horovod"])
        elif not horovodrun.exists():
            print("== horovod: skipped (no .horovod-wheels/ carried and no Horovod installed)", flush=True)
            return
        run = self.scratch / "horovod"
        steps += [[str(horovodrun), "--check-build"],
                  ([str(horovodrun), "--gloo", "-np", "1", "-H", "localhost:1", self.py,
                    *self.train(run, "--epochs", "1", "--batch-size", "512", "--fp16-allreduce")[1:]],
                   run / "summary.json", self.out / "horovod.json")]
        self.run("horovod", steps)

    def script(self, name: str, *args: str) -> list[str]:
        return [self.py, str(ROOT / "benchmarks" / name), *args]

    def probe(self, parts: list[str]) -> None:
        """The speed probe's parts, in order (module docstring); a dry run compiles nothing."""
        data = ["--data", "real" if self.real else "synthetic", "--train-dir", str(self.data)]
        sweep = [*self.sweep_flags, *data]
        if "sweep-eager" in parts:
            self.run("sweep-eager", [self.script("step_sweep.py", str(self.out / "sweep-eager.json"), "--batch-sizes",
                                                 self.sizes[0], *sweep)])
        if "sweep-compiled" in parts:
            self.run("sweep-compiled", [self.script("step_sweep.py", str(self.out / "sweep-compiled.json"),
                                                    "--batch-sizes", self.sizes[0], *sweep, *self.compile)])
        if "graphs" in parts:
            if not self.compile:
                print("== graphs: skipped (CUDA graphs come through torch.compile: a dry run, or no compiler)", flush=True)
            else:
                self.run("graphs", [self.script("step_sweep.py", str(self.out / "graphs.json"), "--batch-sizes",
                                                self.sizes[1], *sweep, *self.compile, "--compile-mode", "reduce-overhead")])
        small = ["--width", "4", "--no-cuda"] if self.dry else []
        if "profile-step" in parts:
            self.run("profile-step", [self.script("profile_step.py", str(self.out / "profile-step.json"),
                                                  "--batch-sizes", "16,32" if self.dry else "256,512", *small,
                                                  *self.compile)])
        fast94 = ["--recipe", "fast94", *self.compile]
        if "profile" in parts and self.real:
            run = self.train(self.scratch / "profile", "--epochs", "2", *fast94)
            self.run("profile", [[self.py, str(ROOT / "benchmarks" / "profile_loop.py"), str(self.out), *run[2:]]])
        if "grouped" in parts:
            self.run("grouped", [self.script("grouped_conv.py", str(self.out / "grouped.json"), "--batch-size",
                                             "8" if self.dry else "256", *(["--width", "2", "--no-cuda"] if self.dry
                                                                           else []))])
        if "fast94" in parts and self.real:
            self.run("fast94", [self.train(self.out / "fast94", *fast94, *(["--epochs", "2"] if self.dry else []))])

    def bench(self, name: str, batch: int, *extra: str) -> list[str]:
        return [self.py, "-m", "batchscale.cli", "bench", "--batch-size", str(batch), "--data", "real" if self.real else
                "synthetic", "--train-dir", str(self.data), *self.bench_flags, *self.compile,
                "--output", str(self.out / f"{name}.json"), *extra]

    def train(self, log_dir: Path, *extra: str) -> list[str]:
        return [self.py, str(ROOT / "train.py"), "--train-dir", str(self.data), "--val-dir", str(self.data),
                "--log-dir", str(log_dir), "--checkpoint-format", str(self.scratch / log_dir.name / "checkpoint-{epoch}.pth.tar"),
                "--keep-checkpoints", "1", "--no-progress", "--no-download", *self.train_flags, *extra]

    def main(self, parts: list[str]) -> int:
        if self.dry and not self.data.exists():
            subprocess.run([self.py, str(ROOT / "benchmarks" / "gpu_env.py"), "--synthetic", str(self.data)], check=True,
                           env=self.env)
        if "env" in parts:
            code = self.run("env", [[self.py, str(ROOT / "benchmarks" / "gpu_env.py"), str(self.out), str(self.data),
                                     *(["--dry-run"] if self.dry else [])]])
            if code == 2:
                return 2  # incomplete data: its one line is in env.log and was printed
        facts = json.loads((self.out / "environment.json").read_text()) if (self.out / "environment.json").exists() else {}
        self.real = self.real or str(facts.get("data", "")).startswith("real")
        if facts.get("compile", {}).get("ok") and not self.dry:
            self.compile = ["--compile"]
        else:
            print("note: eager steps (torch.compile unavailable here, or a dry run); see environment.json", flush=True)
        self.probe(parts)
        if "bench-b256" in parts:
            self.run("bench-b256", [self.bench("bench-b256", 256)])
        # Compiled bf16 channels_last, batch 512, one-cycle LR 0.04 -> 0.4 over 2 epochs then down, label smoothing
        # 0.1: time_to_accuracy says which thresholds it reached, and when.
        fast = ("--batch-size", "512", "--base-lr", "0.4", "--warmup-epochs", "2", "--warmup-start-lr", "0.04",
                "--lr-schedule", "onecycle", "--label-smoothing", "0.1", *self.compile)
        if "fast" in parts and self.real:
            self.run("fast", [self.train(self.out / "fast", "--epochs", str(self.epochs), *fast)])
        torchrun = [self.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        if "torchrun" in parts:
            wire = self.scratch / "wire"
            common = ("--batch-size", "512", "--lr-schedule", "step")
            self.run("torchrun", [
                ([*torchrun, *self.train(wire, "--epochs", "1", *common, "--bf16-allreduce")[1:]],
                 wire / "summary.json", self.out / "torchrun-bf16.json"),
                # A resume on this device: one more epoch from the checkpoint, now with the fp16 wire format.
                ([*torchrun, *self.train(wire, "--epochs", "2", *common, "--fp16-allreduce")[1:]],
                 wire / "summary.json", self.out / "torchrun-resumed-fp16.json"),
            ])
        if "fp16" in parts:
            fp16 = self.scratch / "fp16"
            self.run("fp16", [(self.train(fp16, "--epochs", "1", "--batch-size", "512", "--precision", "fp16"),
                               fp16 / "summary.json", self.out / "fp16.json")])
        if "horovod" in parts:
            self.horovod()
        if "benches" in parts:
            self.run("benches", [self.bench("bench-b512", 512, "--no-baseline"), self.bench("bench-b128", 128, "--no-baseline"),
                                 [*torchrun, *self.bench("torchrun-bench", 256, "--no-baseline")[1:]]])
        shutil.rmtree(self.scratch, ignore_errors=True)
        print(json.dumps(self.status, indent=2))
        return 0 if all(s["exit_code"] == 0 for s in self.status.values()) else 1


if __name__ == "__main__":
    dry = "--dry-run" in sys.argv
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / f"gpu-{time.strftime('%Y%m%d')}")
    out.mkdir(parents=True, exist_ok=True)
    parts = os.environ.get("PARTS", " ".join(BOXES if dry else PROBE)).split()
    sys.exit(Check(out.resolve(), dry).main(parts))
