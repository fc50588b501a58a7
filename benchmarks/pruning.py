"""Pruning pays: the same study with the default pruner and without pruning.

Both studies use the random sampler with the same seed (``study.seed``), trial seeds
(``train.seed``), data subset and epochs, each in its own fresh process
(``benchmarks.studyrun``), the unpruned one first. The random sampler draws the same
initializers in both studies whatever the results, so the two studies train the same
trials and differ only by pruning. (TPE learns from pruned trials, so with TPE the
draws part ways after the first prune.) Epochs trained are the number of intermediate
values Optuna stored per trial, which is one per epoch that ran.

The pruned study takes its pruner settings from ``conf/study/default.yaml``, so the
figures describe the shipped defaults. The replay then applies Optuna's median and
percentile pruners with other settings, and successive halving, to the unpruned study's
learning curves, in trial order. It reports the epochs each setting would have trained
and whether it would have kept the best trial. The replay keeps the sampled trials
fixed, so it isolates the pruner from the sampler.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks import common

NAME = "pruning"
TARGET_EPOCH_SHARE = 0.40
TARGET_ACCURACY_POINTS = 0.5
REPLAY_STARTUP_TRIALS = (1, 2, 5, 10)
REPLAY_WARMUP_STEPS = (0, 1, 2)
REPLAY_REDUCTION_FACTORS = (2, 3)
REPLAY_PERCENTILES = (20.0, 25.0, 33.0, 40.0)
SAMPLER = "random"


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"train_subset": None, "val_subset": None, "epochs": 2, "n_trials": 3, "batch_size": 32}
    return {"train_subset": 5000, "val_subset": 2000, "epochs": 10, "n_trials": 30, "batch_size": 128}


def default_pruner() -> str:
    """Describe the pruner settings that the composed default config uses."""
    study = common.compose_search_config(["study.name=describe"])[0].study
    keys = {
        "median": ("n_startup_trials", "n_warmup_steps"),
        "percentile": ("percentile", "n_startup_trials", "n_warmup_steps"),
        "successive_halving": ("min_resource", "reduction_factor"),
        "hyperband": ("min_resource", "reduction_factor"),
    }.get(study.pruner, ())
    return ", ".join([study.pruner, *(f"{key}={getattr(study, key)}" for key in keys)])


def _run_study(context: common.Context, pruner: str | None, settings: dict) -> common.ChildRun:
    name = "pruning-default" if pruner is None else f"pruning-{pruner}"
    folder = context.folder(name)
    overrides = [
        *common.study_overrides(context.data_path, context.cache_dir, folder, name, context.mlflow_folder),
        "model=seed_cnn",
        *([] if pruner is None else [f"study.pruner={pruner}"]),
        f"study.n_trials={settings['n_trials']}",
        f"study.sampler={SAMPLER}",
        "study.seed=0",
        "train.seed=0",
        f"train.epochs={settings['epochs']}",
        f"train.batch_size={settings['batch_size']}",
    ]
    for key in ("train_subset", "val_subset"):
        if settings[key] is not None:
            overrides.append(f"data.{key}={settings[key]}")
    context.log(f"pruning: study with pruner {pruner or default_pruner()}")
    return common.run_python(["-m", "benchmarks.studyrun", "--overrides", json.dumps(overrides)], folder, "study")


def replay_pruner(curves: list[list[float]], pruner: Any) -> dict[str, Any]:
    """Replay learning curves through ``pruner``; return epochs trained and the best kept value.

    Like the pipeline's pruning callback, the replay reports after every epoch and checks
    for a prune after each report except the last.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    epochs = 0
    kept = []
    for curve in curves:
        trial = study.ask()
        pruned = False
        for step, value in enumerate(curve):
            trial.report(value, step)
            epochs += 1
            if step < len(curve) - 1 and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            study.tell(trial, curve[-1])
            kept.append(curve[-1])
    return {"epochs": epochs, "best": max(kept) if kept else float("nan")}


def replay_median_pruner(curves: list[list[float]], n_startup_trials: int, n_warmup_steps: int) -> dict[str, Any]:
    import optuna

    return replay_pruner(curves, optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps))


def replay_figures(curves: list[list[float]], unpruned_epochs: int, unpruned_best: float, epochs: int, status: str) -> list[common.Figure]:
    """Replay the median and percentile pruners over a grid of settings, and successive halving, on fixed curves."""
    import optuna

    settings = [
        (f"median, n_startup_trials={startup}, n_warmup_steps={warmup}", optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup))
        for startup in REPLAY_STARTUP_TRIALS
        for warmup in REPLAY_WARMUP_STEPS
        if warmup < epochs
    ]
    settings += [
        (f"percentile {percentile:g}, n_startup_trials={startup}, n_warmup_steps=0",
         optuna.pruners.PercentilePruner(percentile, n_startup_trials=startup, n_warmup_steps=0))
        for percentile in REPLAY_PERCENTILES
        for startup in (2, 5)
    ]
    settings += [
        (f"successive_halving, min_resource=1, reduction_factor={factor}", optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=factor))
        for factor in REPLAY_REDUCTION_FACTORS
    ]
    figures = []
    for label, pruner in settings:
        replay = replay_pruner(curves, pruner)
        figures.append(
            common.Figure(
                NAME,
                f"replay on the unpruned curves: {label}",
                f"epochs {replay['epochs'] / unpruned_epochs:.2f}, best lost {100 * (unpruned_best - replay['best']):.2f} points",
                f"{replay['epochs']} of {unpruned_epochs} epochs; best kept {100 * replay['best']:.2f}%",
                status,
            )
        )
    return figures


def _summary(child: common.ChildRun) -> dict[str, Any]:
    trials = child.result["trials"]
    complete = [trial["value"] for trial in trials if trial["state"] == "COMPLETE"]
    return {
        "epochs": sum(trial["epochs"] for trial in trials),
        "wall_s": child.result["wall_s"],
        "best": max(complete) if complete else float("nan"),
        "states": {state: sum(trial["state"] == state for trial in trials) for state in ("COMPLETE", "PRUNED", "FAIL")},
    }


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    settings = sizes(context.quick)
    load_start = common.load_average()
    unpruned_child = _run_study(context, "none", settings)
    pruned_child = _run_study(context, None, settings)
    pruner_text = default_pruner()
    load = f"load average {load_start} at start, {common.load_average()} at end"
    unpruned, pruned = _summary(unpruned_child), _summary(pruned_child)

    epoch_share = pruned["epochs"] / unpruned["epochs"]
    accuracy_gap = 100 * (unpruned["best"] - pruned["best"])
    status = context.status
    size_text = (
        f"{settings['n_trials']} trials of seed_cnn, {settings['epochs']} epochs, "
        f"{settings['train_subset'] or 'all'} training and "
        f"{settings['val_subset'] or 'all'} validation images, study.seed=0, train.seed=0, {SAMPLER} sampler"
    )
    figures = [
        common.Figure(
            NAME,
            f"epochs trained: default pruner / no pruning (target <= {TARGET_EPOCH_SHARE:.2f})",
            f"{epoch_share:.2f}",
            f"{pruned['epochs']} vs {unpruned['epochs']} epochs; default pruner {pruner_text}; {size_text}",
            status,
        ),
        common.Figure(
            NAME,
            f"best val_accuracy: no pruning minus default pruner, points (target <= {TARGET_ACCURACY_POINTS})",
            f"{accuracy_gap:+.2f}",
            f"best {100 * unpruned['best']:.2f}% without pruning, {100 * pruned['best']:.2f}% with; "
            f"trial states without {unpruned['states']}, with {pruned['states']}",
            status,
        ),
        common.Figure(
            NAME,
            "wall time: default pruner / no pruning",
            f"{pruned['wall_s'] / unpruned['wall_s']:.2f}",
            f"{pruned['wall_s']:.0f} s vs {unpruned['wall_s']:.0f} s, run one after the other; seconds per epoch "
            f"{pruned['wall_s'] / pruned['epochs']:.2f} with pruning vs {unpruned['wall_s'] / unpruned['epochs']:.2f} "
            f"without, which includes each trial's fixed cost; {load}",
            status,
        ),
    ]

    curves = [trial["intermediate_values"] for trial in unpruned_child.result["trials"] if trial["state"] == "COMPLETE"]
    figures += replay_figures(curves, unpruned["epochs"], unpruned["best"], settings["epochs"], status)
    return figures
