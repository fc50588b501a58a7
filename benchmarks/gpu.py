"""GPU benchmark: images/s and epoch time per model, precision and XLA, and trials/hour per worker count.

Meant for a GPU machine that has JAX (and PyTorch) with CUDA but none of this project's
other dependencies. ``bash benchmarks/gpu.sh --data PATH`` installs the carried wheels
and runs this module with ``KERAS_BACKEND=jax``. docs/benchmarks.md describes how to
build the wheel folder. On JAX, ``pipeline.training`` feeds NumPy arrays to ``fit``, not
tf.data, and the signal check logs NaN gradient norms, because it computes gradients
with TensorFlow only.

``--dry-run`` checks the script on a CPU with the TensorFlow backend: generated images,
tiny sizes and one worker. Its figures mean nothing.

Measurements, all in this process except the workers:

- ``pipeline.training.fit`` for seed_cnn and plain_deep, float32 and mixed_float16,
  XLA on and off: images/s of the last epoch's training part and the mean time of the
  epochs after the first (the first one includes tracing and XLA compilation).
- The hand-written reference ``benchmarks.plain`` (float32, XLA on) for both models,
  and the ratio of the pipeline's epoch time to it.
- ``python -m pipeline.search`` with 1, 2 and 4 concurrent workers on one SQLite study,
  each with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX workers share the GPU
  memory instead of each reserving 75% of it.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import common, scaling  # noqa: E402
from benchmarks.instrument import make_epoch_timer  # noqa: E402

NAME = "gpu"
MODELS = ("seed_cnn", "plain_deep")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get(common.DATA_VARIABLE), help=f"CIFAR-10 copy (default: ${common.DATA_VARIABLE})")
    parser.add_argument("--dry-run", action="store_true", help="CPU, TensorFlow backend, generated images, tiny sizes")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--result", type=Path, help="JSON file for the figures (default: gpu-results.json in the work folder)")
    parser.add_argument("--train-subset", type=int, help="training images per throughput run (default 20000) and per trial (default 10000); dry run: all")
    parser.add_argument("--val-subset", type=int, help="validation images per throughput run (default 2000) and per trial (default 1000); dry run: all")
    parser.add_argument("--epochs", type=int, help="epochs per throughput run (default 3; dry run 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default 1 2 4; dry run 1)")
    parser.add_argument("--trials", type=int, help="trials per worker run (default 12; dry run 1)")
    return parser.parse_args(argv)


def _size(requested: int | None, dry_run: bool, full_size: int) -> int | None:
    """Return the requested image count, else all images in a dry run and ``full_size`` otherwise."""
    if requested is not None:
        return requested
    if dry_run:
        return None
    return full_size


def settings_for(options: argparse.Namespace) -> dict[str, Any]:
    dry = options.dry_run
    return {
        "train_subset": _size(options.train_subset, dry, 20000),
        "val_subset": _size(options.val_subset, dry, 2000),
        "epochs": options.epochs or (2 if dry else 3),
        "batch_size": options.batch_size,
        "workers": options.workers or ([1] if dry else [1, 2, 4]),
        # The dry run covers each code path once: one model, and each switch on once.
        "models": ("seed_cnn",) if dry else MODELS,
        "precision_and_xla": ((False, True), (True, False)) if dry else ((False, True), (False, False), (True, True), (True, False)),
        "trial_settings": {
            "n_trials": options.trials or (1 if dry else 12),
            "epochs": 1 if dry else 2,
            "train_subset": _size(options.train_subset, dry, 10000),
            "val_subset": _size(options.val_subset, dry, 1000),
            "batch_size": options.batch_size,
        },
    }


def device_description(keras: Any) -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return ", ".join(f"{device.platform}:{device.device_kind}" for device in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        return ", ".join(device.device_type for device in tf.config.list_physical_devices())
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "unknown"


def measure_fit(keras: Any, data: Any, model_name: str, mixed: bool, xla: bool, settings: dict) -> dict[str, Any]:
    """Train a fresh model with ``pipeline.training.fit``; return images/s and epoch times."""
    from pipeline import training
    from pipeline.config import TrainConfig
    from pipeline.model import build_model

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        model_config = common.compose_search_config([f"model={model_name}"])[0].model
        training.seed_everything(0)
        model = build_model(model_config, num_classes=len(data.class_names))
        train = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], jit_compile=xla, progress=False)
        timer = make_epoch_timer()
        history = training.fit(model, data, train, 0, [timer])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    later = timer.epochs[1:] or timer.epochs
    return {
        "images_per_s": len(data.y_train) / timer.epochs[-1]["train_s"],
        "first_epoch_s": timer.epochs[0]["total_s"],
        "epoch_s": common.mean([epoch["total_s"] for epoch in later]),
        "val_accuracy": history["val_accuracy"][-1],
    }


def measure_plain(keras: Any, data: Any, model_name: str, settings: dict) -> dict[str, Any]:
    from benchmarks import plain

    options = SimpleNamespace(
        model=model_name,
        learning_rate=1e-3,
        jit_compile=True,
        input="auto",
        batch_size=settings["batch_size"],
        shuffle_buffer=10000,
        epochs=settings["epochs"],
    )
    keras.backend.clear_session()
    fit = plain.fit_once(keras, data, options, 0, [])
    later = fit["epochs"][1:] or fit["epochs"]
    return {
        "images_per_s": len(data.y_train) / fit["epochs"][-1]["train_s"],
        "first_epoch_s": fit["epochs"][0]["total_s"],
        "epoch_s": common.mean([epoch["total_s"] for epoch in later]),
        "input": fit["input"],
    }


def figure(name: str, value: str, detail: str = "") -> dict[str, str]:
    return {"name": name, "value": value, "detail": detail}


def training_figures(keras: Any, data: Any, settings: dict) -> list[dict[str, str]]:
    rows = []
    size = f"{len(data.y_train)} training images, batch {settings['batch_size']}, {settings['epochs']} epochs"
    for model_name in settings["models"]:
        reference = measure_plain(keras, data, model_name, settings)
        rows.append(
            figure(
                f"{model_name}: plain Keras script, float32, XLA on",
                f"{reference['images_per_s']:.0f} images/s",
                f"epoch {reference['epoch_s']:.2f} s, first epoch {reference['first_epoch_s']:.2f} s; input {reference['input']}; {size}",
            )
        )
        for mixed, xla in settings["precision_and_xla"]:
            result = measure_fit(keras, data, model_name, mixed, xla, settings)
            ratio = ""
            if not mixed and xla:
                ratio = f"; epoch time {result['epoch_s'] / reference['epoch_s']:.2f} x the plain script's"
            rows.append(
                figure(
                    f"{model_name}: pipeline fit, {'mixed_float16' if mixed else 'float32'}, XLA {'on' if xla else 'off'}",
                    f"{result['images_per_s']:.0f} images/s",
                    f"epoch {result['epoch_s']:.2f} s, first epoch {result['first_epoch_s']:.2f} s, "
                    f"val_accuracy {result['val_accuracy']:.3f}{ratio}",
                )
            )
    return rows


def worker_figures(data_path: str, cache_dir: Path, work_dir: Path, settings: dict, backend: str) -> list[dict[str, str]]:
    rows = []
    env = {"KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    mlflow_folder = work_dir / "mlflow"
    common.create_mlflow_store(mlflow_folder)
    single = None
    for workers in settings["workers"]:
        folder = work_dir / f"workers-{workers}"
        folder.mkdir(parents=True, exist_ok=True)
        run = scaling.run_workers(data_path, cache_dir, folder, workers, settings["trial_settings"], env, mlflow_folder)
        summary = scaling.summarize(run)
        single = single or (summary["per_hour"] if workers == 1 else None)
        ratio = f"; {summary['per_hour'] / single:.2f} x one worker" if single and workers != 1 else ""
        trial = settings["trial_settings"]
        rows.append(
            figure(
                f"{workers} concurrent worker(s) on one study: trials per hour",
                f"{summary['per_hour']:.0f}",
                f"launch to last exit; {summary['per_hour_span']:.0f} on the trial span{ratio}; states {summary['states']}; "
                f"{trial['n_trials']} trials of seed_cnn, {trial['epochs']} epochs, {trial['train_subset'] or 'all'} training images",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="pipeline-gpu-benchmark-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    if options.dry_run:
        data_path = str(common.write_colour_tree(work_dir / "data", 30, 2))
    elif options.data:
        data_path = os.path.abspath(options.data)
    else:
        print(f"error: no data: pass --data PATH or set {common.DATA_VARIABLE}, or use --dry-run.", file=sys.stderr)
        return 2

    import keras

    from pipeline.config import DataConfig
    from pipeline.data import load_dataset

    settings = settings_for(options)
    cache_dir = work_dir / "cache"
    started = time.perf_counter()
    data = load_dataset(
        DataConfig(path=data_path, cache_dir=str(cache_dir), train_subset=settings["train_subset"], val_subset=settings["val_subset"])
    )
    machine = common.machine_facts()
    rows = [
        figure("backend and devices", f"{keras.backend.backend()}: {device_description(keras)}", json.dumps(machine["versions"])),
        figure("data loading, cold", f"{time.perf_counter() - started:.1f} s", "decode and cache"),
    ]
    rows += training_figures(keras, data, settings)
    rows += worker_figures(data_path, cache_dir, work_dir, settings, keras.backend.backend())

    result_path = options.result or work_dir / "gpu-results.json"
    result_path.write_text(json.dumps({"dry_run": options.dry_run, "machine": machine, "rows": rows}, indent=1))
    for row in rows:
        print(f"{row['name']}: {row['value']} ({row['detail']})")
    print(f"figures written to {result_path}")
    return 0


# ---------------------------------------------------------------------------
# Runner entry: the dry run through gpu.sh, because the runner's machine may have no GPU


def run(context: common.Context) -> list[common.Figure]:
    """Run ``bash benchmarks/gpu.sh --dry-run`` and report that the script works; it measures nothing here."""
    import subprocess

    folder = context.folder("gpu-dry-run")
    result_path = folder / "gpu-results.json"
    log_path = folder / "gpu.log"
    command = ["bash", str(common.REPOSITORY / "benchmarks" / "gpu.sh"), "--dry-run", "--work-dir", str(folder), "--result", str(result_path)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(
            command, cwd=folder, env=common.child_environment({"PYTHON": sys.executable}), stdout=log, stderr=subprocess.STDOUT,
            timeout=common.CHILD_TIMEOUT_S, check=False,
        )
    if completed.returncode != 0:
        raise common.ChildFailed(f"gpu.sh --dry-run exited with code {completed.returncode}:\n{common.log_tail(log_path)}")

    rows = json.loads(result_path.read_text())["rows"]
    return [
        common.Figure(
            NAME,
            "GPU figures (images/s, epoch time, mixed precision, XLA, plain reference, 1/2/4 workers)",
            "not run",
            "the runner ran on a machine without a GPU; run `bash benchmarks/gpu.sh --data DATA` on a GPU machine",
            "not run",
        ),
        common.Figure(
            NAME,
            "gpu.sh --dry-run (CPU, TensorFlow backend, generated images)",
            f"passed in {time.perf_counter() - started:.0f} s",
            f"{len(rows)} figures produced, none meaningful on a CPU",
            "smoke",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
