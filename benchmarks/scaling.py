"""Worker scaling: trials per hour with 1 and 2 ``python -m pipeline.search`` workers on one study.

Each run starts its workers together on a new SQLite study with the same total
``study.n_trials``, so the workers share the trials. Each worker gets its own thread
budget: ``cores // workers`` threads through TF_NUM_INTRAOP_THREADS,
TF_NUM_INTEROP_THREADS and OMP_NUM_THREADS. Pruning is off, so every trial trains the
same epochs. The runs go 1, 2, 2, 1 workers, so a drift of the machine's speed
affects both counts alike.

Trials per hour use the wall time from the start of the first worker to the exit of
the last one, imports and study set-up included, as a user sees it. The span from the
first trial's start to the last trial's end, which leaves out start-up, is reported too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks import common

NAME = "scaling"


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_trials": 2, "epochs": 1, "train_subset": None, "val_subset": None, "batch_size": 32, "sequence": (2,)}
    return {"n_trials": 6, "epochs": 2, "train_subset": 2000, "val_subset": 500, "batch_size": 128, "sequence": (1, 2, 2, 1)}


def thread_environment(threads: int) -> dict[str, str]:
    value = str(threads)
    return {"TF_NUM_INTRAOP_THREADS": value, "TF_NUM_INTEROP_THREADS": value, "OMP_NUM_THREADS": value}


def run_workers(
    data_path: str,
    cache_dir: Path,
    folder: Path,
    workers: int,
    settings: dict[str, Any],
    env: dict[str, str] | None = None,
    mlflow_folder: Path | None = None,
) -> dict[str, Any]:
    """Start ``workers`` processes of ``python -m pipeline.search`` on one new study and wait for all.

    Returns the wall time, the children's CPU time and every trial's record. Create
    the MLflow store in ``mlflow_folder`` (default ``folder``) before, with
    ``common.ensure_mlflow_store``, because two workers must not create it together.
    """
    overrides = [
        *common.study_overrides(data_path, cache_dir, folder, "scaling", mlflow_folder),
        "model=seed_cnn",
        "study.pruner=none",
        f"study.n_trials={settings['n_trials']}",
        f"train.epochs={settings['epochs']}",
        f"train.batch_size={settings['batch_size']}",
    ]
    for key in ("train_subset", "val_subset"):
        if settings[key] is not None:
            overrides.append(f"data.{key}={settings[key]}")

    cpu_before = common.children_cpu_seconds()
    started = time.perf_counter()
    started_wall = time.time()
    logs = [folder / f"worker-{index}.log" for index in range(workers)]
    processes = [common.start_python(["-m", "pipeline.search", *overrides], folder, log, env) for log in logs]
    common.wait_all(processes, logs)
    wall_s = time.perf_counter() - started
    trials = common.trial_records(f"sqlite:///{folder}/optuna.db", "scaling")
    return {
        "workers": workers,
        "wall_s": wall_s,
        "cpu_s": common.children_cpu_seconds() - cpu_before,
        "started": started_wall,
        "trials": trials,
    }


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Return trials per hour (wall and trial span), cores used and duplicate draws of one run."""
    trials = run["trials"]
    finished = [trial for trial in trials if trial["complete"] is not None]
    span_s = max(trial["complete"] for trial in finished) - min(trial["start"] for trial in finished)
    seen, duplicates = set(), 0
    for trial in trials:
        key = tuple(sorted(trial["params"].items()))
        duplicates += key in seen
        seen.add(key)
    return {
        "trials": len(finished),
        "per_hour": 3600 * len(finished) / run["wall_s"],
        "per_hour_span": 3600 * len(finished) / span_s,
        "cores_used": run["cpu_s"] / run["wall_s"],
        "duplicates": duplicates,
        "states": {state: sum(trial["state"] == state for trial in trials) for state in ("COMPLETE", "PRUNED", "FAIL")},
    }


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    settings = sizes(context.quick)
    cores = os.cpu_count() or 1
    load_start = common.load_average()
    summaries: dict[int, list[dict]] = {}
    for workers in settings["sequence"]:
        folder = context.folder(f"scaling-{workers}")
        threads = max(1, cores // workers)
        context.log(f"scaling: {workers} worker(s), {threads} thread(s) each")
        result = run_workers(
            context.data_path, context.cache_dir, folder, workers, settings, thread_environment(threads), context.mlflow_folder
        )
        summaries.setdefault(workers, []).append(summarize(result))
    load = f"load average {load_start} at start, {common.load_average()} at end"

    size_text = (
        f"{settings['n_trials']} trials per run, seed_cnn, {settings['epochs']} epochs, "
        f"{settings['train_subset'] or 'all'} training images, pruning off"
    )
    figures = []
    for workers, runs in sorted(summaries.items()):
        per_hour = [summary["per_hour"] for summary in runs]
        figures.append(
            common.Figure(
                NAME,
                f"{workers} worker(s), {max(1, cores // workers)} thread(s) each: trials per hour",
                f"{common.mean(per_hour):.0f}",
                f"launch to last exit; {common.format_spread(per_hour)}; first trial start to last trial end: "
                f"{common.mean([s['per_hour_span'] for s in runs]):.0f} trials/hour; cores used "
                f"{common.mean([s['cores_used'] for s in runs]):.2f} of {cores}; duplicate parameter sets "
                f"{sum(s['duplicates'] for s in runs)}; states {runs[0]['states']}; {size_text}; {load}",
                context.status,
            )
        )
    if 1 in summaries and len(summaries) > 1:
        single = common.mean([summary["per_hour"] for summary in summaries[1]])
        single_span = common.mean([summary["per_hour_span"] for summary in summaries[1]])
        for workers, runs in sorted(summaries.items()):
            if workers == 1:
                continue
            figures.append(
                common.Figure(
                    NAME,
                    f"trials per hour: {workers} workers / 1 worker",
                    f"{common.mean([s['per_hour'] for s in runs]) / single:.2f}",
                    f"{common.mean([s['per_hour_span'] for s in runs]) / single_span:.2f} on the trial span, "
                    "which leaves out imports and study set-up",
                    context.status,
                )
            )
    return figures
