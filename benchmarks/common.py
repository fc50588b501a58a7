"""Shared parts of the benchmarks: the run context, figures, child processes, configs and test data.

The runner process imports neither TensorFlow nor Keras. Measurements run in child
processes started with ``run_python``, so each one starts from a fresh interpreter
and its imports, traced functions and memory do not leak into the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

REPOSITORY = Path(__file__).resolve().parent.parent
DATA_VARIABLE = "PIPELINE_CIFAR10_PATH"
# Wall-clock time (time.time()) at which the parent started a child, for launch timings.
LAUNCH_TIME_VARIABLE = "BENCHMARK_LAUNCH_TIME"
VERSION_PACKAGES = (
    "tensorflow",
    "keras",
    "jax",
    "torch",
    "optuna",
    "optuna-integration",
    "mlflow-skinny",
    "hydra-core",
    "numpy",
)
CHILD_TIMEOUT_S = 1800
LOG_TAIL_LINES = 40


@dataclass
class Figure:
    """One figure of the results page: what was measured, the value, and how to read it."""

    benchmark: str
    name: str
    value: str
    detail: str = ""
    status: str = "measured"  # "measured", "not run", or "smoke" for --quick runs on tiny data


@dataclass
class Context:
    """Run settings that the runner hands every benchmark: mode, data and a scratch folder."""

    quick: bool
    data_path: str
    data_label: str
    work_dir: Path
    log: Callable[[str], None] = print
    artifact_dir: Path | None = None
    _folders: dict[str, int] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        """Data cache shared by every benchmark that wants warm start-up."""
        return self.work_dir / "cache"

    def folder(self, name: str) -> Path:
        """Create and return a new empty folder ``<name>-<n>`` in the work dir."""
        self._folders[name] = self._folders.get(name, 0) + 1
        path = self.work_dir / f"{name}-{self._folders[name]}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    @property
    def mlflow_folder(self) -> Path:
        """Folder of the MLflow store that every study of a run shares; see ``ensure_mlflow_store``."""
        return self.work_dir / "mlflow"

    def save_artifact(self, name: str, content: Any) -> Path:
        """Write ``content`` as JSON to ``artifact_dir`` (the work dir if unset) and return its path."""
        path = (self.artifact_dir or self.work_dir) / name
        path.write_text(json.dumps(content, indent=1) + "\n")
        self.log(f"saved {path}")
        return path

    @property
    def status(self) -> str:
        return "smoke" if self.quick else "measured"


class ChildFailed(RuntimeError):
    """A benchmark child process exited with an error or ran past its time limit."""


@dataclass
class ChildRun:
    """A finished child process: its JSON result, wall time and CPU time."""

    result: dict[str, Any]
    wall_s: float
    cpu_s: float
    log_path: Path


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a child: this one, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(REPOSITORY), env.get("PYTHONPATH")) if part)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


def start_python(args: Sequence[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python ARGS`` in ``cwd`` with stdout and stderr going to ``log_path``."""
    environment = child_environment(env)
    environment[LAUNCH_TIME_VARIABLE] = repr(time.time())
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_all(processes: Sequence[subprocess.Popen], logs: Sequence[Path], timeout: float = CHILD_TIMEOUT_S) -> None:
    """Wait for every process; kill the rest and raise ``ChildFailed`` when one fails or times out."""
    deadline = time.monotonic() + timeout
    try:
        for process, log_path in zip(processes, logs):
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired as error:
                raise ChildFailed(f"{' '.join(process.args)} ran past {timeout:.0f} s; log {log_path}") from error
            if process.returncode != 0:
                raise ChildFailed(
                    f"{' '.join(map(str, process.args))} exited with code {process.returncode}; "
                    f"last lines of {log_path}:\n{log_tail(log_path)}"
                )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_python(
    args: Sequence[str],
    cwd: Path,
    name: str,
    env: dict[str, str] | None = None,
    timeout: float = CHILD_TIMEOUT_S,
) -> ChildRun:
    """Run ``python -m MODULE --result <cwd>/<name>.json REST`` to the end and return its result.

    ``args`` starts with ``-m MODULE``; ``--result`` goes right after it, so that arguments
    after a ``--`` in ``REST`` stay untouched. ``cpu_s`` is the user plus system time of
    the child and of every child it waited for.
    """
    result_path = cwd / f"{name}.json"
    log_path = cwd / f"{name}.log"
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    process = start_python([*args[:2], "--result", str(result_path), *args[2:]], cwd, log_path, env)
    wait_all([process], [log_path], timeout)
    wall_s = time.perf_counter() - started
    result = json.loads(result_path.read_text())
    return ChildRun(result=result, wall_s=wall_s, cpu_s=children_cpu_seconds() - cpu_before, log_path=log_path)


def child_parser(description: str) -> argparse.ArgumentParser:
    """Return an argument parser for a child entry point, with ``--result``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--result", required=True, help="JSON file that receives the measurements")
    return parser


def write_result(path: str, content: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(content, indent=1, default=float))


def launch_time() -> float | None:
    """Return the wall-clock time at which the parent started this process, if it set one."""
    value = os.environ.get(LAUNCH_TIME_VARIABLE)
    return float(value) if value else None


def configure_child_logging() -> None:
    """Log INFO and above to stderr, as ``python -m pipeline.search`` does under Hydra."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


# ---------------------------------------------------------------------------
# Configs and studies


def compose_search_config(overrides: Sequence[str]) -> tuple[Any, dict]:
    """Compose ``conf/config.yaml`` with ``overrides`` and return the config and its resolved dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_configs, to_object

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPOSITORY / "conf")):
        cfg = compose(config_name="config", overrides=list(overrides))
    return to_object(cfg), OmegaConf.to_container(cfg, resolve=True)


def study_overrides(data_path: str, cache_dir: Path, folder: Path, study_name: str, mlflow_folder: Path | None = None) -> list[str]:
    """Return Hydra overrides for a study with its Optuna storage in ``folder``.

    The MLflow store goes to ``mlflow_folder``, by default ``folder`` as well. A new
    SQLite MLflow store runs MLflow's schema migrations, which take several seconds, so
    benchmarks that do not measure that share one store created in advance.
    """
    mlflow_folder = mlflow_folder or folder
    return [
        f"data.path={data_path}",
        f"data.cache_dir={cache_dir}",
        f"study.name={study_name}",
        f"study.storage=sqlite:///{folder}/optuna.db",
        f"tracking.uri=sqlite:///{mlflow_folder}/mlflow.db",
        f"tracking.artifact_location={mlflow_folder}/artifacts",
        "train.progress=false",
    ]


def trial_records(storage_url: str, study_name: str) -> list[dict[str, Any]]:
    """Return every trial of a study as plain values: state, epochs run, value, duration and attributes."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    records = []
    for trial in study.get_trials(deepcopy=False):
        duration = None
        if trial.datetime_start and trial.datetime_complete:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        records.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "epochs": len(trial.intermediate_values),
                "intermediate_values": [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)],
                "value": trial.value,
                "duration_s": duration,
                "start": trial.datetime_start.timestamp() if trial.datetime_start else None,
                "complete": trial.datetime_complete.timestamp() if trial.datetime_complete else None,
                "params": dict(trial.params),
                "user_attrs": {key: value for key, value in trial.user_attrs.items() if isinstance(value, (int, float, str))},
            }
        )
    return records


# ---------------------------------------------------------------------------
# Generated data


def write_colour_tree(root: Path, train_per_class: int, test_per_class: int, num_classes: int = 10) -> Path:
    """Write a class-folder tree of 32x32 PNG images, one colour per class plus noise.

    A small CNN separates the classes within a few steps, so smoke runs see accuracy rise
    and the median pruner has something to compare.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(num_classes, 3))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in range(num_classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                noise = rng.integers(-40, 41, size=(32, 32, 3))
                pixels = np.clip(palette[label] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


# ---------------------------------------------------------------------------
# Machine facts and formatting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def keras_backend_name() -> str:
    """Return the Keras backend that a child would use, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]

    config_path = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(config_path.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def machine_facts() -> dict[str, Any]:
    """Return the cores, CPU model, Python, Keras backend and package versions of this machine."""
    versions = {}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "backend": keras_backend_name(),
        "versions": versions,
    }


def load_average() -> str:
    """Return the 1-minute load average, which shows how busy the shared machine was."""
    return f"{os.getloadavg()[0]:.1f}"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def spread_percent(values: Sequence[float]) -> float:
    """Return (max - min) / mean in percent: the run-to-run noise of repeated measurements."""
    if len(values) < 2:
        return float("nan")
    return 100.0 * (max(values) - min(values)) / mean(values)


def format_spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return "one measurement, so no spread"
    return f"spread {spread_percent(values):.0f}% over {len(values)} runs"


def ensure_warm_cache(context: Context) -> None:
    """Fill the shared data cache once, so later children measure warm loads only."""
    if any(context.cache_dir.glob("cifar10-*.npz")):
        return

    context.log("filling the data cache (a cold decode)")
    args = ["-m", "benchmarks.dataload", "--data", context.data_path, "--cache-dir", str(context.cache_dir)]
    run_python(args, context.folder("cache-fill"), "dataload")


def create_mlflow_store(folder: Path) -> None:
    """Create the SQLite MLflow store ``folder/mlflow.db`` unless it exists.

    Run it before starting several workers on the store: two workers that find no store
    would both run MLflow's schema migrations on the same new file.
    """
    if (folder / "mlflow.db").exists():
        return

    folder.mkdir(parents=True, exist_ok=True)
    code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(tracking_uri=sys.argv[1]).search_experiments()"
    subprocess.run(
        [sys.executable, "-c", code, f"sqlite:///{folder}/mlflow.db"],
        env=child_environment(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def ensure_mlflow_store(context: Context) -> None:
    """Create the MLflow store that every study of the run shares."""
    create_mlflow_store(context.mlflow_folder)


def prepare_shared_state(context: Context) -> None:
    """Fill the data cache and create the shared MLflow store, for benchmarks that start warm."""
    ensure_warm_cache(context)
    ensure_mlflow_store(context)
