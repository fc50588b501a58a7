"""Pipeline overhead: trials through ``pipeline.search.run_search`` against the plain Keras script.

The pipeline child runs a two-trial study in one process, with Optuna (SQLite), MLflow
(SQLite, the store created in advance), the median pruner's callback and the signal
check on, and times each part with ``instrument.Stopwatch``. The two trials are
enqueued with fixed initializers (he_normal, then glorot_uniform) so that neither can
fail or be pruned. The reference is ``benchmarks.plain`` with two fits in one process
on the same arrays, passed to ``fit`` as NumPy arrays, as a hand-written script does.
The children run as plain, pipeline, plain, pipeline, plain, so plain runs bracket
each pipeline run and their spread shows the drift of the machine's speed.

Child: ``python -m benchmarks.overhead --data PATH --cache-dir DIR --folder DIR --mlflow-folder DIR
--epochs N --batch-size N --result out.json``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.instrument import Stopwatch, make_epoch_timer, prepend_fit_callback  # noqa: E402

NAME = "overhead"
STUDY_NAME = "overhead"
TRIALS = 2
FIXED_INITIALIZERS = ("he_normal", "glorot_uniform")

# Parts of one trial that do not overlap, in the order they run, with their row labels.
TRIAL_PARTS = (
    ("mlflow.start_trial", "MLflow: create the trial run and log params"),
    ("sampler.suggest", "Optuna: sample the initializers"),
    ("model.get", "model: build (trial 0) or reinitialize (later trials)"),
    ("diagnostics.measure_signal", "signal check at initialization (init.seconds)"),
    ("mlflow.log_signal", "MLflow: log the signal check"),
    ("fit.compile_or_reset", "compile (trial 0) or reset the optimizer"),
    ("callback.epoch_recorder", "MLflow: per-epoch metrics (EpochRecorder)"),
    ("callback.pruning", "Optuna: pruning callback (report, should_prune)"),
    ("callback.non_finite", "non-finite loss check"),
    ("release_memory", "gc.collect after the trial"),
    ("mlflow.log_metric", "MLflow: log rss_mb"),
    ("mlflow.end_trial", "MLflow: close the trial run"),
)


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"train_subset": None, "val_subset": None, "epochs": 2, "batch_size": 32}
    return {"train_subset": None, "val_subset": None, "epochs": 2, "batch_size": 128}


# ---------------------------------------------------------------------------
# Child: the pipeline run


def _instrument(stopwatch: Stopwatch, epoch_timers: list) -> None:
    import optuna

    from pipeline import diagnostics, objective, reports, search, study, tracking, training, workers

    stopwatch.wrap(search, "_prepare", "prepare")
    stopwatch.wrap(study, "create_storage", "optuna.create_storage")
    stopwatch.wrap(study, "open_study", "optuna.open_study")
    stopwatch.wrap(tracking.Tracker, "__init__", "mlflow.open_store")
    stopwatch.wrap(workers, "recover_dead_workers", "optuna.recover_dead_workers")
    stopwatch.wrap(reports, "log_study_report", "study_report")
    for method in ("start_parent", "end_parent", "start_trial", "end_trial", "log_signal", "log_metric", "log_dict", "log_epoch"):
        stopwatch.wrap(tracking.Tracker, method, f"mlflow.{method}")
    stopwatch.wrap(objective.Objective, "__call__", "objective")
    stopwatch.wrap(objective, "suggest", "sampler.suggest")
    stopwatch.wrap(diagnostics, "measure_signal", "diagnostics.measure_signal")
    stopwatch.wrap(training.ModelCache, "get", "model.get")
    stopwatch.wrap(training, "_compile_or_reset", "fit.compile_or_reset")
    stopwatch.wrap(training, "release_memory", "release_memory")
    stopwatch.wrap(objective.EpochRecorder, "on_epoch_end", "callback.epoch_recorder")
    stopwatch.wrap(objective.PruneBeforeLastEpoch, "on_epoch_end", "callback.pruning")
    stopwatch.wrap(training.StopOnNonFiniteLoss, "on_epoch_end", "callback.non_finite")
    prepend_fit_callback(training, make_epoch_timer, epoch_timers.append)
    stopwatch.wrap(training, "fit", "fit")

    storage = optuna.storages.RDBStorage
    for method in dir(storage):
        if method.startswith(("set_", "create_new_", "delete_")):
            stopwatch.wrap(storage, method, "optuna.storage_write")
        elif method.startswith("get_") or method == "check_trial_is_updatable":
            stopwatch.wrap(storage, method, "optuna.storage_read")

    original_optimize = optuna.study.Study.optimize
    trial_index = iter(range(1_000_000))

    def optimize(self: Any, *args: Any, **kwargs: Any) -> Any:
        stopwatch.segment = f"trial-{next(trial_index)}"
        started = time.perf_counter()
        try:
            return original_optimize(self, *args, **kwargs)
        finally:
            stopwatch.add("optimize", time.perf_counter() - started)
            stopwatch.segment = "teardown"

    optuna.study.Study.optimize = optimize


def _enqueue_fixed_trials(storage_url: str, kernel_layers: list[str]) -> None:
    import optuna

    study = optuna.create_study(study_name=STUDY_NAME, storage=storage_url, direction="maximize", load_if_exists=True)
    for initializer in FIXED_INITIALIZERS[:TRIALS]:
        study.enqueue_trial({f"{layer}.kernel_initializer": initializer for layer in kernel_layers})


def _init_seconds(tracking_uri: str, run_ids: list[str]) -> list[float | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return [client.get_run(run_id).data.metrics.get("init.seconds") for run_id in run_ids]


def run_child(argv: list[str] | None = None) -> None:
    parser = common.child_parser("Run a two-trial study in process and time its parts.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--folder", required=True, help="folder for the study's Optuna storage")
    parser.add_argument("--mlflow-folder", required=True, help="folder of the MLflow store, created in advance")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    options = parser.parse_args(argv)
    common.configure_child_logging()

    from pipeline.data import load_dataset
    from pipeline.model import kernel_layers
    from pipeline.search import run_search

    folder = Path(options.folder)
    overrides = [
        *common.study_overrides(options.data, Path(options.cache_dir), folder, STUDY_NAME, Path(options.mlflow_folder)),
        "model=seed_cnn",
        f"train.epochs={options.epochs}",
        f"train.batch_size={options.batch_size}",
        f"study.n_trials={TRIALS}",
    ]
    config, resolved = common.compose_search_config(overrides)

    started = time.perf_counter()
    load_dataset(config.data)  # Memoized, so run_search below reuses the arrays.
    load_s = time.perf_counter() - started

    storage_url = f"sqlite:///{folder}/optuna.db"
    _enqueue_fixed_trials(storage_url, kernel_layers(config.model))
    stopwatch = Stopwatch()
    epoch_timers: list = []
    _instrument(stopwatch, epoch_timers)

    started = time.perf_counter()
    exit_code = run_search(config, resolved)
    run_search_s = time.perf_counter() - started

    trials = common.trial_records(storage_url, STUDY_NAME)
    run_ids = [trial["user_attrs"].get("mlflow_run_id") for trial in trials]
    common.write_result(
        options.result,
        {
            "exit_code": exit_code,
            "load_s": load_s,
            "run_search_s": run_search_s,
            "segments": stopwatch.table(),
            "fits": [timer.epochs for timer in epoch_timers],
            "trials": trials,
            "init_seconds": _init_seconds(config.tracking.uri, [run_id for run_id in run_ids if run_id]),
        },
    )


# ---------------------------------------------------------------------------
# Parent: run the children and turn their results into figures


def _segment_seconds(result: dict, segment: str, label: str) -> float:
    return result["segments"].get(segment, {}).get(label, [0.0, 0])[0]


def _segment_calls(result: dict, segment: str, label: str) -> int:
    return int(result["segments"].get(segment, {}).get(label, [0.0, 0])[1])


def _epochs_seconds(epochs: list[dict]) -> float:
    return sum(epoch["total_s"] for epoch in epochs)


def _fit_outside_epochs(result: dict, index: int) -> float:
    """Return trial ``index``'s ``fit`` time outside its epochs, compile and callbacks excluded."""
    segment = f"trial-{index}"
    return (
        _segment_seconds(result, segment, "fit")
        - _epochs_seconds(result["fits"][index])
        - _segment_seconds(result, segment, "fit.compile_or_reset")
        - sum(_segment_seconds(result, segment, label) for label in CALLBACK_LABELS)
    )


def _later_epochs(epochs: list[dict]) -> list[float]:
    return [epoch["total_s"] for epoch in epochs[1:]]


def _plain_fit(plain_runs: list[common.ChildRun], index: int) -> list[float]:
    return [run.result["fits"][index]["total_s"] for run in plain_runs]


def _trial_figures(pipelines: list[dict], plain_runs: list[common.ChildRun], status: str, load: str) -> list[common.Figure]:
    """Compare each trial, averaged over the pipeline runs, with the same fit of the plain runs."""
    figures = []
    for index in range(TRIALS):
        segment = f"trial-{index}"
        trials = [_segment_seconds(run, segment, "optimize") for run in pipelines]
        trial_s = common.mean(trials)
        plain = _plain_fit(plain_runs, index)
        reference = common.mean(plain)
        first_epoch = common.mean([run["fits"][index][0]["total_s"] for run in pipelines])
        later = [seconds for run in pipelines for seconds in _later_epochs(run["fits"][index])]
        plain_first = common.mean([run.result["fits"][index]["epochs"][0]["total_s"] for run in plain_runs])
        plain_later = common.mean([common.mean(_later_epochs(run.result["fits"][index]["epochs"])) for run in plain_runs])
        figures.append(
            common.Figure(
                NAME,
                f"trial {index} / plain fit {index} (wall time ratio, target <= 1.03)",
                f"{trial_s / reference:.3f}",
                f"pipeline trial {trial_s:.1f} s (Study.optimize call, {common.format_spread(trials)}) vs plain "
                f"build+compile+fit {reference:.1f} s ({common.format_spread(plain)}); load average {load}",
                status,
            )
        )
        figures.append(
            common.Figure(
                NAME,
                f"trial {index}: first epoch and later epochs vs plain fit {index}",
                f"first {first_epoch / plain_first:.3f}, later {common.mean(later) / plain_later:.3f}",
                f"pipeline first epoch {first_epoch:.1f} s, later {common.mean(later):.1f} s; plain first "
                f"{plain_first:.1f} s, later {plain_later:.1f} s; epochs are train plus validation, "
                f"callbacks excluded",
                status,
            )
        )
    return figures


def _outside_epochs_figure(pipelines: list[dict], plain_runs: list[common.ChildRun], status: str) -> common.Figure:
    """Compare the time ``fit`` spends outside its epochs: set-up and the wait after the last epoch."""
    plain = [
        fit["fit_s"] - _epochs_seconds(fit["epochs"]) for run in plain_runs for fit in run.result["fits"]
    ]
    pipeline = [_fit_outside_epochs(run, index) for run in pipelines for index in range(TRIALS)]
    return common.Figure(
        NAME,
        "time in fit outside its epochs, per fit: plain script with NumPy input / pipeline",
        f"plain {common.mean(plain):.1f} s, pipeline {common.mean(pipeline):.1f} s",
        "each fit, in run order: plain " + ", ".join(f"{value:.1f}" for value in plain)
        + "; pipeline " + ", ".join(f"{value:.1f}" for value in pipeline)
        + " s. NumPy input goes through Keras' own tf.data pipeline with autotuning on; "
        "the pipeline's turns it off",
        status,
    )


def _breakdown_figures(pipeline: dict, status: str) -> list[common.Figure]:
    """Return one row per part of a trial: its seconds and share of the trial, for trial 0 and trial 1."""
    rows = []
    trial_seconds = [_segment_seconds(pipeline, f"trial-{index}", "optimize") for index in range(TRIALS)]

    def row(label: str, description: str, seconds: list[float], calls: list[int] | None = None) -> common.Figure:
        parts = []
        for index, value in enumerate(seconds):
            count = f", {calls[index]} calls" if calls else ""
            parts.append(f"trial {index}: {value:.2f} s ({100 * value / trial_seconds[index]:.1f}%{count})")
        return common.Figure(NAME, f"part of a trial: {description}", "; ".join(parts), f"Stopwatch label {label}", status)

    for label, description in TRIAL_PARTS:
        rows.append(row(label, description, [_segment_seconds(pipeline, f"trial-{i}", label) for i in range(TRIALS)]))

    for label, description in (("optuna.storage_write", "Optuna storage writes"), ("optuna.storage_read", "Optuna storage reads")):
        rows.append(
            row(
                label,
                f"{description} (inside other parts)",
                [_segment_seconds(pipeline, f"trial-{i}", label) for i in range(TRIALS)],
                [_segment_calls(pipeline, f"trial-{i}", label) for i in range(TRIALS)],
            )
        )

    epochs = [_epochs_seconds(pipeline["fits"][i]) for i in range(TRIALS)]
    rows.append(row("EpochTimer", "training epochs (train plus validation)", epochs))
    fit_rest = [_fit_outside_epochs(pipeline, i) for i in range(TRIALS)]
    rows.append(row("fit - parts", "Keras fit set-up and tf.data outside epochs", fit_rest))
    bookkeeping = [
        _segment_seconds(pipeline, f"trial-{i}", "optimize") - _segment_seconds(pipeline, f"trial-{i}", "objective")
        for i in range(TRIALS)
    ]
    rows.append(row("optimize - objective", "Optuna: create and finish the trial, budget and recovery checks", bookkeeping))

    init_seconds = [value for value in pipeline["init_seconds"] if value is not None]
    if init_seconds:
        rows.append(
            common.Figure(
                NAME,
                "init.seconds logged to MLflow per trial",
                ", ".join(f"{value:.2f} s" for value in init_seconds),
                "measure_signal's own timer, validation of the batch excluded",
                status,
            )
        )
    return rows


def _largest_parts(segment: dict[str, list[float]], count: int = 6) -> str:
    """Return the ``count`` largest labels of a segment; labels may nest, so they need not add up."""
    largest = sorted(segment.items(), key=lambda item: -item[1][0])[:count]
    return ", ".join(f"{label} {seconds:.2f} s" for label, (seconds, _) in largest)


CALLBACK_LABELS = ("callback.epoch_recorder", "callback.pruning", "callback.non_finite")


def _own_work_figure(pipeline: dict, status: str) -> common.Figure:
    """Estimate each trial's ratio from its own parts: trial time over the Keras training in it.

    The pipeline's own work is the trial minus ``training.fit``, plus the callbacks that
    run inside ``fit``. Both sides come from the same process and minutes, so a change of
    the machine's speed between the pipeline and plain processes does not enter.
    """
    ratios, own = [], []
    for index in range(TRIALS):
        segment = f"trial-{index}"
        trial_s = _segment_seconds(pipeline, segment, "optimize")
        own_s = trial_s - _segment_seconds(pipeline, segment, "fit")
        own_s += sum(_segment_seconds(pipeline, segment, label) for label in CALLBACK_LABELS)
        ratios.append(trial_s / (trial_s - own_s))
        own.append(own_s)
    return common.Figure(
        NAME,
        "trial / Keras training inside it (ratio estimated from the parts, target <= 1.03)",
        ", ".join(f"trial {index}: {ratio:.3f}" for index, ratio in enumerate(ratios)),
        "pipeline's own work per trial (the trial minus training.fit, plus the callbacks inside fit): "
        + ", ".join(f"{seconds:.2f} s" for seconds in own),
        status,
    )


def _run_figures(pipeline: dict, plain_runs: list[common.ChildRun], status: str) -> list[common.Figure]:
    trials_s = sum(_segment_seconds(pipeline, f"trial-{index}", "optimize") for index in range(TRIALS))
    fixed_s = pipeline["run_search_s"] - trials_s
    plain_total = common.mean([sum(fit["total_s"] for fit in run.result["fits"]) for run in plain_runs])
    setup_parts = _largest_parts(pipeline["segments"].get("setup", {}))
    teardown_parts = _largest_parts(pipeline["segments"].get("teardown", {}))
    return [
        common.Figure(
            NAME,
            "whole run_search (2 trials) / plain script (2 fits)",
            f"{pipeline['run_search_s'] / plain_total:.3f}",
            f"run_search {pipeline['run_search_s']:.1f} s vs plain {plain_total:.1f} s; data loading excluded from both",
            status,
        ),
        common.Figure(
            NAME,
            "run_search time outside trials (once per run)",
            f"{fixed_s:.1f} s",
            f"largest parts (they may nest): set-up: {setup_parts}; end: {teardown_parts}",
            status,
        ),
    ]


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    settings = sizes(context.quick)
    sequence = ("plain", "pipeline") if context.quick else ("plain", "pipeline", "plain", "pipeline", "plain")
    plain_runs: list[common.ChildRun] = []
    pipeline_runs: list[common.ChildRun] = []
    load_start = common.load_average()
    for kind in sequence:
        folder = context.folder(f"overhead-{kind}")
        context.log(f"overhead: {kind} child in {folder}")
        if kind == "plain":
            args = [
                "-m", "benchmarks.plain", "--data", context.data_path, "--cache-dir", str(context.cache_dir),
                "--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]), "--fits", str(TRIALS),
                "--input", "numpy",
            ]
            plain_runs.append(common.run_python(args, folder, "plain"))
        else:
            args = [
                "-m", "benchmarks.overhead", "--data", context.data_path, "--cache-dir", str(context.cache_dir),
                "--folder", str(folder), "--mlflow-folder", str(context.mlflow_folder), "--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]),
            ]
            pipeline_runs.append(common.run_python(args, folder, "pipeline"))
    load = f"{load_start} at start, {common.load_average()} at end"

    for child in pipeline_runs:
        states = [trial["state"] for trial in child.result["trials"]]
        if child.result["exit_code"] != 0 or states != ["COMPLETE"] * TRIALS:
            raise RuntimeError(
                f"the pipeline child failed: exit code {child.result['exit_code']} and trial states {states}, "
                f"expected 0 and {TRIALS} COMPLETE trials; see the log {child.log_path}"
            )
    pipeline = pipeline_runs[0].result

    images = plain_runs[0].result["train_images"]
    figures = _trial_figures([child.result for child in pipeline_runs], plain_runs, context.status, load)
    figures.append(_own_work_figure(pipeline, context.status))
    figures.append(_outside_epochs_figure([child.result for child in pipeline_runs], plain_runs, context.status))
    figures += _run_figures(pipeline, plain_runs, context.status)
    figures += _breakdown_figures(pipeline, context.status)
    figures[0].detail += (
        f" [{images} training images, {settings['epochs']} epochs, batch {settings['batch_size']}, seed_cnn, "
        f"plain input {plain_runs[0].result['fits'][0]['input']}]"
    )
    return figures


if __name__ == "__main__":
    run_child()
