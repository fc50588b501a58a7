"""Study reports: parameter importances and Optuna's plots, logged to the study's MLflow parent run.

Each plot is written twice: as HTML with plotly.js embedded, so it opens without
network access, and as a static PNG drawn with matplotlib (Optuna's matplotlib
backend), because plotly's own PNG export through kaleido needs a browser.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import optuna

logger = logging.getLogger(__name__)

PLOTS_ARTIFACT_PATH = "plots"
IMPORTANCE_METRIC_PREFIX = "importance."
FIRST_EPOCH_METRIC_PREFIX = "importance_epoch1."
# Seed of fANOVA's random forest, so a report of the same trials gives the same numbers.
IMPORTANCE_SEED = 0
_PNG_DPI = 120

_COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """Return the seeded fANOVA evaluator behind every importance in a report.

    fANOVA fits a random forest on the completed trials and splits the variance of the
    value among the parameters. It is Optuna's default and gives usable numbers from a
    handful of trials. PED-ANOVA compares the top quantile of trials with the rest, so
    it needs many trials. In a check with Optuna 5.1 on 5 random trials, where one
    categorical parameter alone decided the value, PED-ANOVA gave that parameter 0.50
    and a parameter without effect 0.50, while fANOVA gave 0.93 and 0.07.
    """
    return optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)


def _complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=_COMPLETE)
    return [trial for trial in trials if trial.value is not None and math.isfinite(trial.value)]


def _importance_problem(study: optuna.Study) -> str | None:
    """Return why importances cannot be computed for ``study``, or None when they can."""
    complete = _complete_trials(study)
    if len(complete) < 2:
        return f"it has {len(complete)} completed trial(s) with a finite value and importances need at least 2"

    if len({tuple(sorted(trial.params.items())) for trial in complete}) < 2:
        return "every completed trial has the same parameters, so no parameter varies"

    if len({trial.value for trial in complete}) < 2:
        return f"every completed trial has the same value ({complete[0].value}), so there is no variance to explain"

    return None


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Return each parameter's fANOVA importance over the completed trials, summing to 1.

    Returns an empty dict, and logs the reason, when fewer than 2 completed trials exist,
    when their parameters or values do not vary, or when fANOVA fails. Pruned and failed
    trials are not used, because they have no final value.
    """
    problem = _importance_problem(study)
    if problem is not None:
        logger.info("no parameter importances for study %r: %s", study.study_name, problem)
        return {}

    try:
        importances = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    except (RuntimeError, ValueError) as error:
        # fANOVA raises RuntimeError when its trees find zero variance, for example when
        # the parameters that vary never change the value.
        logger.warning("no parameter importances for study %r: fANOVA failed: %s", study.study_name, error)
        return {}

    return {name: float(value) for name, value in importances.items()}


def _has_intermediate_values(study: optuna.Study) -> bool:
    return any(trial.intermediate_values for trial in study.get_trials(deepcopy=False))


def _plot_problem(study: optuna.Study, plot: str) -> str | None:
    """Return why ``plot`` cannot be drawn for ``study``, or None when it can."""
    complete = _complete_trials(study)
    if plot == "intermediate_values":
        return None if _has_intermediate_values(study) else "no trial reported an intermediate value"

    if plot == "param_importances":
        return _importance_problem(study)

    if not complete:
        return "the study has no completed trial with a finite value"

    if plot == "parallel_coordinate" and not any(trial.params for trial in complete):
        return "the completed trials have no parameters"

    return None


def _use_file_backend() -> None:
    """Select matplotlib's file-only Agg backend, unless pyplot is already in use."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def _plot_functions() -> dict[str, tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]]:
    """Map each plot name to its plotly function, its matplotlib function and their keyword arguments."""
    from optuna.visualization import matplotlib as static

    return {
        "optimization_history": (optuna.visualization.plot_optimization_history, static.plot_optimization_history, {}),
        "intermediate_values": (optuna.visualization.plot_intermediate_values, static.plot_intermediate_values, {}),
        "parallel_coordinate": (optuna.visualization.plot_parallel_coordinate, static.plot_parallel_coordinate, {}),
        "param_importances": (
            optuna.visualization.plot_param_importances,
            static.plot_param_importances,
            {"evaluator": importance_evaluator()},
        ),
    }


def _write_html(figure: Any, path: str) -> None:
    figure.write_html(path, include_plotlyjs=True, full_html=True)


def _write_png(axes: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    try:
        figure.savefig(path, dpi=_PNG_DPI, bbox_inches="tight")
    finally:
        plt.close(figure)


def _write_plot(study: optuna.Study, folder: str, name: str, file_name: str | None = None) -> list[str]:
    interactive, static, kwargs = _plot_functions()[name]
    html_path = os.path.join(folder, f"{file_name or name}.html")
    png_path = os.path.join(folder, f"{file_name or name}.png")
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental; the warning repeats on every call.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _write_html(interactive(study, **kwargs), html_path)
        _write_png(static(study, **kwargs), png_path)
    return [html_path, png_path]


def write_study_plots(study: optuna.Study, folder: str) -> list[str]:
    """Write the optimization history, learning curves, parallel coordinates and importances.

    Each plot becomes ``<name>.html`` and ``<name>.png`` in ``folder``. The learning
    curves (``intermediate_values``) show the validation accuracy per epoch, so a pruned
    trial's curve ends at the epoch where the pruner stopped it. A plot that the study
    cannot fill yet is skipped with a logged reason. An ``Exception`` raised while drawing
    a plot is logged and that plot skipped, because a report must not end a study.
    Returns the paths of the files written.
    """
    _use_file_backend()
    os.makedirs(folder, exist_ok=True)
    written: list[str] = []
    for name in _plot_functions():
        problem = _plot_problem(study, name)
        if problem is not None:
            logger.info("skipped plot %s of study %r: %s", name, study.study_name, problem)
            continue

        try:
            written.extend(_write_plot(study, folder, name))
        except Exception as error:  # plotly, matplotlib and Optuna raise many types; a report is optional.
            logger.warning("skipped plot %s of study %r: %s: %s", name, study.study_name, type(error).__name__, error, exc_info=True)
    return written


def first_epoch_study(study: optuna.Study) -> optuna.Study:
    """Return an in-memory copy in which every trial's value is its validation accuracy after epoch 1.

    fANOVA reads completed trials only, so under pruning most trials would be left out.
    Every trial that finished its first epoch, pruned or not, has that value, so the
    copy gives an importance over all of them.
    """
    copy = optuna.create_study(direction="maximize", study_name=f"{study.study_name}-epoch1")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        first = trial.intermediate_values.get(0)
        if first is None or not math.isfinite(first):
            continue
        copy.add_trial(
            optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=first)
        )
    return copy


def _log_first_epoch_importances(tracker: Any, parent_run_id: str, study: optuna.Study, folder: str) -> dict[str, float]:
    early = first_epoch_study(study)
    importances = param_importances(early)
    if not importances:
        return {}

    try:
        _write_plot(early, folder, "param_importances", file_name="param_importances_epoch1")
    except Exception as error:  # plotly, matplotlib and Optuna raise many types; a report is optional.
        logger.warning("skipped plot param_importances_epoch1 of study %r: %s", study.study_name, error, exc_info=True)
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    step = len(early.trials)
    metrics = [Metric(FIRST_EPOCH_METRIC_PREFIX + name, value, timestamp, step) for name, value in importances.items()]
    tracker.client.log_batch(parent_run_id, metrics=metrics)
    return importances


def log_study_report(tracker: Any, parent_run_id: str, study: optuna.Study) -> dict[str, float]:
    """Log the study's plots and parameter importances to its MLflow parent run.

    The plots go to the artifact folder ``plots/``. Each importance becomes the metric
    ``importance.<param>``, with step = the number of completed trials it is based on,
    so a resumed study keeps a history. The importances for the accuracy after epoch 1,
    over pruned trials too, become ``importance_epoch1.<param>`` and the plot
    ``param_importances_epoch1``. ``tracker`` is a ``pipeline.tracking.Tracker``.
    Returns the importances, empty when they cannot be computed yet.
    """
    from mlflow.entities import Metric

    started = time.monotonic()
    importances = param_importances(study)
    with tempfile.TemporaryDirectory(prefix="study-report-") as folder:
        written = write_study_plots(study, folder)
        _use_file_backend()
        _log_first_epoch_importances(tracker, parent_run_id, study, folder)
        written = sorted(os.listdir(folder))
        if written:
            tracker.client.log_artifacts(parent_run_id, folder, artifact_path=PLOTS_ARTIFACT_PATH)

    if importances:
        timestamp = int(time.time() * 1000)
        step = len(_complete_trials(study))
        metrics = [Metric(IMPORTANCE_METRIC_PREFIX + name, value, timestamp, step) for name, value in importances.items()]
        tracker.client.log_batch(parent_run_id, metrics=metrics)

    logger.info(
        "study report of %r: %d plot files and %d importances logged to MLflow run %s in %.1f s",
        study.study_name, len(written), len(importances), parent_run_id, time.monotonic() - started,
    )
    return importances


def format_importances(importances: dict[str, float]) -> list[str]:
    """Return one ``<param> <importance>`` line per parameter, most important first."""
    ordered = sorted(importances.items(), key=lambda item: item[1], reverse=True)
    width = max((len(name) for name in importances), default=0)
    return [f"{name:<{width}}  {value:.3f}" for name, value in ordered]

