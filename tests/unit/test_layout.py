"""The package's shape: no import cycles (type-only imports included), no function of the training core, the study,
the bench or the configuration too long to read at once, no class past 200 lines anywhere, nothing below the command
line importing it, and no production module that needs the test package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "batchscale"
CORE = ("training/loop.py", "training/step.py", "training/setup.py", "training/checkpointer.py", "training/resume.py",
        "training/guard.py", "training/evaluation.py", "training/report.py", "state.py", "checkpoint.py", "atomic.py",
        "faults.py", "data.py", "schedule.py", "metrics.py", "noise.py", "precision.py", "parallel/base.py",
        "parallel/torchdist.py", "parallel/horovod_backend.py")
# Where functions fit on a screen too: the study, the bench, the configuration.
SCREENED = (*CORE, *sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "study").glob("*.py")),
            "training/bench.py", "config.py")
# Longer ones there before the check covered them, at most as long as they are: split one when it is next changed.
LONG = {("study/study_report.py", "write_plots"): 76, ("study/study_report.py", "write_report"): 102,
        # These four grew in a merge (the smoke report, the rounds, the GPU probe): to be split, not grown.
        ("study/sweep_report.py", "write_plots"): 145, ("study/sweep_report.py", "report"): 72,
        ("training/bench.py", "measure_ours"): 98,
        ("study/sequential.py", "narrowing"): 79}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under `if TYPE_CHECKING:`: imports for annotations alone, which never run."""
    return {inner for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING" for child in node.body for inner in ast.walk(child)}


def imports(name: str, path: Path, known: dict[str, Path], typed: bool = False) -> set[str]:
    """Modules of the package that `name` imports, at the top or inside functions alike (and, with `typed`, those
    imported for type checking only)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    skipped = set() if typed else type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known.keys()
            found |= submodules or ({target} & known.keys())
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known.keys()
    return found - {name}


def test_no_import_cycles():
    """Not even through an import for type checking only: a module that names another's types sits above it."""
    known = modules()
    graph = {name: imports(name, path, known, typed=True) for name, path in known.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*trail, dep])
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_functions_fit_on_a_screen():
    assert "study/study.py" in SCREENED and "config.py" in SCREENED
    for name in SCREENED:
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= LONG.get((name, node.name), 60), f"{name}: {node.name} is {lines} lines"


def test_classes_fit_in_a_sitting():
    """A class past 200 lines holds more than one component: split it as the trainer was (loop, checkpointer,
    guard), or as Config's checks were (functions of their own)."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 200, f"{path.relative_to(PACKAGE)}: {node.name} is {lines} lines"


def test_nothing_below_the_command_line_imports_it():
    """cli.py is the top: the study runs its trainings through command.py, which both import."""
    known = modules()
    for name, path in known.items():
        assert "batchscale.cli" not in imports(name, path, known, typed=True) or name == "batchscale.cli", name


def test_no_production_module_imports_the_test_package():
    known = modules()
    for name, path in known.items():
        if name.startswith("batchscale.testing"):
            continue
        found = {dep for dep in imports(name, path, known) if dep.startswith("batchscale.testing")}
        assert not found, f"{name} imports {', '.join(sorted(found))}: production code must not need the test package"


# A training writes its records, and clears them for a fresh start; only study/runs.py reads them.
RUN_RECORDS = {"summary.json", "diverged.json", "metrics.jsonl"}
RECORD_WRITERS = {"metrics.py", "training/resume.py"}


def test_only_the_run_folder_reader_names_a_runs_records():
    """Paths to summary.json, diverged.json and metrics.jsonl are built in the modules that write them and in the
    one reader (study/runs.py): anywhere else a second reading of a run folder has begun. Messages that mention
    the files are free to."""
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name in RECORD_WRITERS | {"study/runs.py"}:
            continue
        named = {node.value for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and node.value in RUN_RECORDS}
        assert not named, f"{name} names {', '.join(sorted(named))}: read run folders through study/runs.py"


def test_backend_choices_come_from_the_parallel_registry():
    """A new backend is added to parallel.BACKENDS alone: --backend's choices, and what validate accepts, follow."""
    import dataclasses
    import subprocess
    import sys

    from batchscale import config, parallel

    assert parallel.CHOICES == ("auto", *parallel.BACKENDS)
    field = next(f for f in dataclasses.fields(config.Config) if f.name == "backend")
    assert field.metadata["choices"] is parallel.CHOICES and config.BACKENDS is parallel.CHOICES
    # Reading the flag table imports neither torch nor a backend.
    probe = "import sys, batchscale.config; print(sorted(m for m in sys.modules if m in ('torch', 'horovod') " \
            "or m.startswith('batchscale.parallel.')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['batchscale.parallel.launch']"
