"""Start-up and data: launch to the first training step, and the data loading part alone.

Every measurement is a fresh process. ``python -m benchmarks.startup -- OVERRIDES`` runs
``pipeline.search.main`` (the entry point of ``python -m pipeline.search``) with a timer
on the first training step, writes the timestamps of its milestones, and exits right
after that step. The reference is ``benchmarks.plain --exit-after-first-step``, the
hand-written script on the same data, launched the same way. The data loading part runs
in ``benchmarks.dataload`` children, cold (empty cache folder, so the archive is
decoded) and warm (from the cache file).
"""

from __future__ import annotations

import functools
import os
import time

_STARTED = time.time()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import common, dataload  # noqa: E402

NAME = "startup"
WARM_LOAD_TARGET_S = 2.0

# Milestones of a pipeline launch as (key, what ends at it). The text lists them in the
# order of their timestamps, so it stays right if the pipeline reorders its set-up.
PIPELINE_MILESTONES = (
    ("imported", "interpreter start and imports (pipeline.search, Keras, TensorFlow, Optuna, Hydra)"),
    ("data_loaded", "Hydra compose, config checks and data loading"),
    ("prepared", "search space, kernel-shape model and input checks"),
    ("mlflow_opened", "open the MLflow store"),
    ("storage_opened", "open the Optuna storage"),
    ("parent_started", "create the study and the MLflow parent run"),
    ("trial_started", "worker recovery and first trial created"),
    ("fit_started", "model build, signal check, MLflow trial run"),
    ("first_step_end", "tf.data set-up, tracing and the first training step"),
)
PLAIN_MILESTONES = (
    ("imported", "interpreter start and imports (Keras, TensorFlow, pipeline.data)"),
    ("loaded", "data loading"),
    ("first_step_end", "model build, compile, tf.data set-up, tracing and the first training step"),
)


# ---------------------------------------------------------------------------
# Child: a pipeline launch that stops after its first training step


def _mark_first_call(result: dict, owner: Any, attribute: str, begin_key: str | None, end_key: str | None) -> None:
    """Record the wall-clock time at which the first call of ``owner.attribute`` begins and ends."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if begin_key:
            result.setdefault(begin_key, time.time())
        value = original(*args, **kwargs)
        if end_key:
            result.setdefault(end_key, time.time())
        return value

    setattr(owner, attribute, wrapper)


def launch_child() -> None:
    """Run ``python -m pipeline.search`` with the Hydra overrides after ``--``; exit after the first step.

    The module runs as ``__main__`` through ``runpy``, as ``python -m`` runs it, because
    Hydra finds ``conf/`` relative to the main module's file.
    """
    separator = sys.argv.index("--")
    parser = common.child_parser("Launch the pipeline and record the time to its first training step.")
    options = parser.parse_args(sys.argv[1:separator])
    overrides = sys.argv[separator + 1 :]
    result: dict[str, Any] = {"launch": common.launch_time(), "started": _STARTED}

    import runpy

    import pipeline.search  # noqa: F401  (imports what the entry point imports, for the "imported" milestone)
    from pipeline import data, model, objective, study, tracking, training

    from benchmarks.instrument import make_first_step_callback, prepend_fit_callback

    result["imported"] = time.time()
    _mark_first_call(result, data, "load_dataset", "data_started", "data_loaded")
    _mark_first_call(result, model, "kernel_shapes", None, "prepared")
    _mark_first_call(result, tracking.Tracker, "__init__", None, "mlflow_opened")
    _mark_first_call(result, study, "create_storage", None, "storage_opened")
    _mark_first_call(result, tracking.Tracker, "start_parent", None, "parent_started")
    _mark_first_call(result, objective.Objective, "__call__", "trial_started", None)
    _mark_first_call(result, training, "fit", "fit_started", None)

    def record_first_step(begin: float, end: float) -> None:
        result.update(first_step_begin=begin, first_step_end=end)
        common.write_result(options.result, result)
        os._exit(0)  # Skip the rest of the trial and interpreter teardown: the figure is taken.

    prepend_fit_callback(training, lambda: make_first_step_callback(record_first_step))
    sys.argv = [sys.argv[0], *overrides]
    runpy.run_module("pipeline.search", run_name="__main__", alter_sys=True)
    raise RuntimeError("python -m pipeline.search ended before the first training step")


# ---------------------------------------------------------------------------
# Parent


def _pipeline_launch(context: common.Context, cache_dir: Path, label: str, mlflow_folder: Path | None) -> dict:
    folder = context.folder(f"startup-{label}")
    overrides = [
        *common.study_overrides(context.data_path, cache_dir, folder, "startup", mlflow_folder),
        "model=seed_cnn",
        "study.n_trials=1",
        "train.epochs=1",
    ]
    return common.run_python(["-m", "benchmarks.startup", "--", *overrides], folder, "launch").result


def _plain_launch(context: common.Context) -> dict:
    folder = context.folder("startup-plain")
    args = ["-m", "benchmarks.plain", "--data", context.data_path, "--cache-dir", str(context.cache_dir), "--exit-after-first-step"]
    return common.run_python(args, folder, "plain").result


def _data_load(context: common.Context, cache_dir: Path, label: str) -> dict:
    folder = context.folder(f"startup-data-{label}")
    args = ["-m", "benchmarks.dataload", "--data", context.data_path, "--cache-dir", str(cache_dir), "--reference"]
    return common.run_python(args, folder, "dataload").result


def _milestone_text(result: dict, milestones: tuple) -> str:
    """Describe the time between consecutive milestones, in the order they happened."""
    reached = sorted((result[key], description) for key, description in milestones if key in result)
    parts = []
    previous = result["launch"]
    for timestamp, description in reached:
        parts.append(f"{description} {timestamp - previous:.1f} s")
        previous = timestamp
    return "; ".join(parts)


def _parts_text(result: dict) -> str:
    parts = result["parts"]
    return "; ".join(
        f"{description} {parts[function][0]:.2f} s" for function, description in dataload.DATA_STEPS if function in parts
    )


def _launch_figures(pipeline_warm: list[dict], plain_warm: list[dict], pipeline_cold: list[dict], load: str, status: str) -> list[common.Figure]:
    def first_step(result: dict) -> float:
        return result["first_step_end"] - result["launch"]

    pipeline_s = [first_step(result) for result in pipeline_warm]
    plain_s = [first_step(result) for result in plain_warm]
    figures = [
        common.Figure(
            NAME,
            "launch to end of first training step, warm cache: pipeline / plain script",
            f"{common.mean(pipeline_s) / common.mean(plain_s):.2f}",
            f"pipeline {common.mean(pipeline_s):.1f} s ({common.format_spread(pipeline_s)}), plain "
            f"{common.mean(plain_s):.1f} s ({common.format_spread(plain_s)}), interleaved; full training set; "
            f"load average {load}",
            status,
        ),
        common.Figure(
            NAME,
            "where the pipeline's warm launch goes (first warm run)",
            f"{pipeline_s[0]:.1f} s",
            _milestone_text(pipeline_warm[0], PIPELINE_MILESTONES),
            status,
        ),
        common.Figure(
            NAME,
            "where the plain script's launch goes (first run)",
            f"{plain_s[0]:.1f} s",
            _milestone_text(plain_warm[0], PLAIN_MILESTONES),
            status,
        ),
    ]
    for result in pipeline_cold:
        figures.append(
            common.Figure(
                NAME,
                "launch to end of first training step, cold cache (archive decoded): pipeline",
                f"{first_step(result):.1f} s",
                f"{first_step(result) / common.mean(pipeline_s):.2f} times the warm launch; "
                + _milestone_text(result, PIPELINE_MILESTONES),
                status,
            )
        )
    return figures


def _data_figures(cold: list[dict], warm: list[dict], status: str) -> list[common.Figure]:
    warm_s = [result["load_s"] for result in warm]
    reference_s = [result["reference_s"] for result in warm]
    figures = []
    for result in cold:
        figures.append(
            common.Figure(
                NAME,
                "data loading alone, cold (decode the archive, write the cache)",
                f"{result['load_s']:.1f} s",
                f"{result['images']} images; {_parts_text(result)}; fresh process, imports excluded",
                status,
            )
        )
    verdict = "meets" if common.mean(warm_s) < WARM_LOAD_TARGET_S else "misses"
    figures.append(
        common.Figure(
            NAME,
            f"data loading alone, warm (from the cache), target < {WARM_LOAD_TARGET_S:.0f} s",
            f"{common.mean(warm_s):.2f} s ({verdict} the target)",
            f"{common.format_spread(warm_s)}, fresh processes; {_parts_text(warm[0])} (first run)",
            status,
        )
    )
    figures.append(
        common.Figure(
            NAME,
            "warm data loading / lower bound (np.load of the cache plus one float32 conversion)",
            f"{common.mean(warm_s) / common.mean(reference_s):.2f}",
            f"lower bound {common.mean(reference_s):.2f} s, measured in the same processes right after each load",
            status,
        )
    )
    return figures


def run(context: common.Context) -> list[common.Figure]:
    load_start = common.load_average()
    cold_cache = context.folder("startup-cold-cache")
    cold = [_data_load(context, cold_cache, "cold")]
    warm = [_data_load(context, cold_cache, "warm") for _ in range(1 if context.quick else 2)]

    common.prepare_shared_state(context)
    # Cold: empty data cache and a new MLflow store. Warm: the shared cache and store.
    pipeline_cold = [] if context.quick else [_pipeline_launch(context, context.folder("startup-empty-cache"), "cold", None)]
    pipeline_warm, plain_warm = [], []
    for _ in range(1 if context.quick else 2):
        pipeline_warm.append(_pipeline_launch(context, context.cache_dir, "warm", context.mlflow_folder))
        plain_warm.append(_plain_launch(context))
    load = f"{load_start} at start, {common.load_average()} at end"

    return _data_figures(cold, warm, context.status) + _launch_figures(pipeline_warm, plain_warm, pipeline_cold, load, context.status)


if __name__ == "__main__":
    launch_child()
