"""Pruning pays: the same study with the default pruner and without pruning, for several seeds.

For each seed, both studies use the random sampler with the same seed (``study.seed``),
trial seeds (``train.seed``), data subset and epochs, each in its own fresh process
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
fixed, so it isolates the pruner from the sampler. The unpruned curves are saved
beside the results, and ``python -m benchmarks.pruning CURVES`` replays them again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks import common

NAME = "pruning"
TARGET_EPOCH_SHARE = 0.40
TARGET_ACCURACY_POINTS = 0.5
REPLAY_STARTUP_TRIALS = (2, 3, 4, 5, 10)
REPLAY_WARMUP_STEPS = (0, 1)
REPLAY_PERCENTILE_STARTUP_TRIALS = (3, 4, 5)
REPLAY_REDUCTION_FACTORS = (2, 3)
REPLAY_PERCENTILES = (25.0, 40.0)
SAMPLER = "random"
SEEDS = (0, 1, 2)
# Trial seeds of one study are train.seed + trial number, so studies of neighbouring
# seeds start this far apart and never share a trial seed.
TRAIN_SEED_STRIDE = 1000
CURVES_FILE = "pruning-curves.json"


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"train_subset": None, "val_subset": None, "epochs": 2, "n_trials": 3, "batch_size": 32, "seeds": (0,)}
    return {"train_subset": 5000, "val_subset": 2000, "epochs": 10, "n_trials": 30, "batch_size": 128, "seeds": SEEDS}


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


def _run_study(context: common.Context, pruner: str | None, settings: dict, seed: int) -> common.ChildRun:
    name = f"pruning-default-{seed}" if pruner is None else f"pruning-{pruner}-{seed}"
    folder = context.folder(name)
    overrides = [
        *common.study_overrides(context.data_path, context.cache_dir, folder, name, context.mlflow_folder),
        "model=seed_cnn",
        *([] if pruner is None else [f"study.pruner={pruner}"]),
        f"study.n_trials={settings['n_trials']}",
        f"study.sampler={SAMPLER}",
        f"study.seed={seed}",
        f"train.seed={TRAIN_SEED_STRIDE * seed}",
        f"train.epochs={settings['epochs']}",
        f"train.batch_size={settings['batch_size']}",
    ]
    for key in ("train_subset", "val_subset"):
        if settings[key] is not None:
            overrides.append(f"data.{key}={settings[key]}")
    context.log(f"pruning: study with pruner {pruner or default_pruner()}, seed {seed}")
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


def replay_settings(epochs: int) -> list[tuple[str, Any]]:
    """Return the pruners that the replay compares, each with its label."""
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
        for startup in REPLAY_PERCENTILE_STARTUP_TRIALS
    ]
    settings += [
        (f"successive_halving, min_resource=1, reduction_factor={factor}", optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=factor))
        for factor in REPLAY_REDUCTION_FACTORS
    ]
    return settings


def replay_figures(curve_sets: Sequence[list[list[float]]], epochs: int, status: str) -> list[common.Figure]:
    """Replay each pruner setting on every seed's unpruned curves; one row per setting.

    The value is the mean share of epochs over the seeds and the most best-accuracy
    points lost on any seed.
    """
    # A pruner keeps state between trials, so each curve set gets its own pruners.
    settings_per_set = [replay_settings(epochs) for _ in curve_sets]
    figures = []
    for index, (label, _) in enumerate(settings_per_set[0]):
        shares, losses = [], []
        for curves, settings in zip(curve_sets, settings_per_set):
            replay = replay_pruner(curves, settings[index][1])
            unpruned_epochs = sum(len(curve) for curve in curves)
            shares.append(replay["epochs"] / unpruned_epochs)
            losses.append(100 * (max(curve[-1] for curve in curves) - replay["best"]))
        figures.append(
            common.Figure(
                NAME,
                f"replay on the unpruned curves: {label}",
                f"epochs {statistics.mean(shares):.3f}, best lost at most {max(losses):.2f} points",
                f"per seed: epochs {', '.join(f'{share:.3f}' for share in shares)}; "
                f"best lost {', '.join(f'{loss:.2f}' for loss in losses)} points",
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


def _spread(values: Sequence[float], digits: int) -> str:
    return f"mean {statistics.mean(values):.{digits}f}, range {min(values):.{digits}f} to {max(values):.{digits}f}"


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    settings = sizes(context.quick)
    load_start = common.load_average()
    unpruned, pruned, curve_sets = [], [], []
    for seed in settings["seeds"]:
        unpruned_child = _run_study(context, "none", settings, seed)
        pruned_child = _run_study(context, None, settings, seed)
        unpruned.append(_summary(unpruned_child))
        pruned.append(_summary(pruned_child))
        curve_sets.append([trial["intermediate_values"] for trial in unpruned_child.result["trials"] if trial["state"] == "COMPLETE"])
    pruner_text = default_pruner()
    load = f"load average {load_start} at start, {common.load_average()} at end"
    context.save_artifact(CURVES_FILE, {"settings": {**settings, "seeds": list(settings["seeds"])}, "curves": curve_sets})

    shares = [p["epochs"] / u["epochs"] for p, u in zip(pruned, unpruned)]
    gaps = [100 * (u["best"] - p["best"]) for p, u in zip(pruned, unpruned)]
    walls = [p["wall_s"] / u["wall_s"] for p, u in zip(pruned, unpruned)]
    epochs_text = ", ".join(f"{p['epochs']} of {u['epochs']}" for p, u in zip(pruned, unpruned))
    walls_text = ", ".join(f"{p['wall_s']:.0f} s vs {u['wall_s']:.0f} s" for p, u in zip(pruned, unpruned))
    status = context.status
    seeds_text = ", ".join(str(seed) for seed in settings["seeds"])
    size_text = (
        f"{settings['n_trials']} trials of seed_cnn, {settings['epochs']} epochs, "
        f"{settings['train_subset'] or 'all'} training and {settings['val_subset'] or 'all'} validation images, "
        f"{SAMPLER} sampler, study.seed in {seeds_text}, train.seed {TRAIN_SEED_STRIDE} x study.seed"
    )
    figures = [
        common.Figure(
            NAME,
            f"epochs trained: default pruner / no pruning, mean over seeds (target <= {TARGET_EPOCH_SHARE:.2f})",
            f"{statistics.mean(shares):.3f}",
            f"per seed {epochs_text} epochs ({_spread(shares, 3)}); default pruner {pruner_text}; {size_text}",
            status,
        ),
        common.Figure(
            NAME,
            f"best val_accuracy: no pruning minus default pruner, points, worst seed (target <= {TARGET_ACCURACY_POINTS})",
            f"{max(gaps):+.2f}",
            "per seed: " + "; ".join(
                f"{100 * u['best']:.2f}% without, {100 * p['best']:.2f}% with, states with pruning {p['states']}"
                for p, u in zip(pruned, unpruned)
            ),
            status,
        ),
        common.Figure(
            NAME,
            "wall time: default pruner / no pruning, mean over seeds",
            f"{statistics.mean(walls):.2f}",
            f"per seed {walls_text}, each pair run one after the other ({_spread(walls, 2)}); {load}",
            status,
        ),
    ]
    figures += replay_figures(curve_sets, settings["epochs"], status)
    return figures


def load_curves(path: Path) -> tuple[list[list[list[float]]], int]:
    """Read a saved curves file; raise ValueError naming the first part that has the wrong shape."""
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise ValueError('expected a JSON object with "settings" and "curves"')

    epochs = saved["settings"].get("epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"settings.epochs must be a positive integer but got {epochs!r}")

    curve_sets = saved.get("curves")
    if not isinstance(curve_sets, list) or not curve_sets:
        raise ValueError("curves must be a non-empty list with one list of curves per seed")

    for seed_index, curves in enumerate(curve_sets):
        if not isinstance(curves, list) or not curves:
            raise ValueError(f"curves[{seed_index}] must be a non-empty list of learning curves")
        for curve in curves:
            if not isinstance(curve, list) or not curve or not all(isinstance(value, (int, float)) for value in curve):
                raise ValueError(f"curves[{seed_index}] contains {curve!r}, but each curve must be a non-empty list of numbers")
    return curve_sets, epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay the pruner settings on saved unpruned learning curves.")
    parser.add_argument("curves", type=Path, help=f"the {CURVES_FILE} that a pruning benchmark run saved")
    options = parser.parse_args(argv)
    try:
        curve_sets, epochs = load_curves(options.curves)
    except (OSError, ValueError) as error:
        print(
            f"error: {options.curves} is not a saved curves file: {error}. Write one with "
            f"python -m benchmarks.run --data DATA --only pruning, which saves benchmarks/{CURVES_FILE}.",
            file=sys.stderr,
        )
        return 2

    for figure in replay_figures(curve_sets, epochs, "replayed"):
        print(f"{figure.name.removeprefix('replay on the unpruned curves: ')}: {figure.value} ({figure.detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
