"""Memory over a long study: the resident set size after each trial in one process.

``pipeline.objective`` stores each trial's RSS in MiB, after ``gc.collect``, in the user
attribute ``rss_mb``. The growth per trial is the least-squares slope over the trials
after the first ``WARMUP_TRIALS``, which allocate TensorFlow's and MLflow's one-time
state. The study runs in a fresh process (``benchmarks.studyrun``) on a tiny subset for
one epoch per trial, without pruning, so every trial does the same work.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks import common

NAME = "memory"


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_trials": 8, "warmup_trials": 2, "train_subset": None, "val_subset": None, "batch_size": 32}
    return {"n_trials": 50, "warmup_trials": 5, "train_subset": 500, "val_subset": 200, "batch_size": 128}


def slope(values: list[float]) -> float:
    """Return the least-squares slope of ``values`` against their index."""
    count = len(values)
    x_mean = (count - 1) / 2
    y_mean = sum(values) / count
    numerator = sum((index - x_mean) * (value - y_mean) for index, value in enumerate(values))
    denominator = sum((index - x_mean) ** 2 for index in range(count))
    return numerator / denominator


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    settings = sizes(context.quick)
    folder = context.folder("memory")
    overrides = [
        *common.study_overrides(context.data_path, context.cache_dir, folder, "memory", context.mlflow_folder),
        "model=seed_cnn",
        "study.pruner=none",
        f"study.n_trials={settings['n_trials']}",
        "train.epochs=1",
        f"train.batch_size={settings['batch_size']}",
    ]
    for key in ("train_subset", "val_subset"):
        if settings[key] is not None:
            overrides.append(f"data.{key}={settings[key]}")
    context.log(f"memory: {settings['n_trials']} trials in one process")
    child = common.run_python(["-m", "benchmarks.studyrun", "--overrides", json.dumps(overrides)], folder, "study")

    trials = child.result["trials"]
    rss = [trial["user_attrs"]["rss_mb"] for trial in trials if "rss_mb" in trial["user_attrs"]]
    if len(rss) < settings["warmup_trials"] + 2:
        raise RuntimeError(f"only {len(rss)} of {len(trials)} trials stored rss_mb")

    warmup = settings["warmup_trials"]
    steady = rss[warmup:]
    states = {state: sum(trial["state"] == state for trial in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    size_text = (
        f"{len(trials)} trials of seed_cnn, 1 epoch each, {settings['train_subset'] or 'all'} training and "
        f"{settings['val_subset'] or 'all'} validation images; states {states}"
    )
    return [
        common.Figure(
            NAME,
            f"RSS growth per trial after the first {warmup} trials",
            f"{slope(steady):+.2f} MiB/trial",
            f"least-squares slope over trials {warmup} to {len(rss) - 1}; RSS {steady[0]:.0f} to {steady[-1]:.0f} MiB; {size_text}",
            context.status,
        ),
        common.Figure(
            NAME,
            "RSS growth over the whole study",
            f"{rss[-1] - rss[0]:+.0f} MiB",
            f"after trial 0 {rss[0]:.0f} MiB, after the last trial {rss[-1]:.0f} MiB, maximum {max(rss):.0f} MiB; "
            f"{child.result['rss_before_mb']:.0f} MiB after loading the data, before run_search imported Keras",
            context.status,
        ),
        common.Figure(
            NAME,
            "RSS after each trial",
            " ".join(f"{value:.0f}" for value in rss),
            "MiB, trial 0 first, from the user attribute rss_mb",
            context.status,
        ),
    ]
