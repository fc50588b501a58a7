"""Training throughput of ``pipeline.training.fit`` per model, batch size, XLA and steps per execution.

One child process per model trains a fresh model for each setting on a fixed subset
(the first ``train_subset`` images of the pipeline's stratified subset) for two epochs.
The second epoch's training part (from epoch start to the start of validation) gives
images per second. The first epoch's extra time over the second is mostly tracing and,
with XLA, compilation. The reference setting (batch 128, XLA off, one step per
execution, the defaults before this benchmark moved steps_per_execution to 8) runs
first and again after every ``REFERENCE_EVERY`` settings. Each setting's ratio is
against the mean of the reference runs just before and after it.

Child: ``python -m benchmarks.throughput --data PATH --cache-dir DIR --model NAME --settings JSON --result out.json``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.instrument import make_epoch_timer  # noqa: E402

NAME = "throughput"
REFERENCE = {"batch_size": 128, "jit_compile": False, "steps_per_execution": 1}
REFERENCE_EVERY = 4
EPOCHS = 2

# seed_cnn is cheap, so it gets every combination. plain_deep takes about 2.5 times as
# long per image, so it gets one change at a time from the reference plus two combinations.
FULL_GRID = [
    {"batch_size": batch, "jit_compile": jit, "steps_per_execution": steps}
    for batch in (64, 128, 256)
    for jit in (False, True)
    for steps in (1, 8)
]
AXES_GRID = [
    {"batch_size": 64, "jit_compile": False, "steps_per_execution": 1},
    {"batch_size": 256, "jit_compile": False, "steps_per_execution": 1},
    {"batch_size": 128, "jit_compile": True, "steps_per_execution": 1},
    {"batch_size": 128, "jit_compile": False, "steps_per_execution": 8},
    {"batch_size": 128, "jit_compile": True, "steps_per_execution": 8},
    {"batch_size": 256, "jit_compile": True, "steps_per_execution": 8},
]
QUICK_GRID = [{"batch_size": 32, "jit_compile": True, "steps_per_execution": 8}]
QUICK_REFERENCE = {"batch_size": 32, "jit_compile": False, "steps_per_execution": 1}


def plan(quick: bool) -> dict[str, dict[str, Any]]:
    """Return, per model, the training subset and the settings in run order with references."""
    if quick:
        return {"seed_cnn": {"train_subset": None, "val_subset": None, "reference": QUICK_REFERENCE, "grid": QUICK_GRID}}

    # 5120 images are 20 steps of 256, so even batch 256 with 8 steps per execution runs
    # more than two executions per epoch. plain_deep gets half of that to save time.
    return {
        "seed_cnn": {"train_subset": 5120, "val_subset": 512, "reference": REFERENCE, "grid": [s for s in FULL_GRID if s != REFERENCE]},
        "plain_deep": {"train_subset": 2560, "val_subset": 256, "reference": REFERENCE, "grid": AXES_GRID},
    }


def ordered_settings(reference: dict, grid: list[dict]) -> list[dict]:
    """Put the reference first, after every ``REFERENCE_EVERY`` settings, and last."""
    order = [dict(reference, reference=True)]
    for index, setting in enumerate(grid):
        order.append(dict(setting, reference=False))
        if (index + 1) % REFERENCE_EVERY == 0 or index == len(grid) - 1:
            order.append(dict(reference, reference=True))
    return order


def label(setting: dict) -> str:
    return (
        f"batch {setting['batch_size']}, XLA {'on' if setting['jit_compile'] else 'off'}, "
        f"{setting['steps_per_execution']} step{'s' if setting['steps_per_execution'] > 1 else ''} per execution"
    )


# ---------------------------------------------------------------------------
# Child


def run_child(argv: list[str] | None = None) -> None:
    parser = common.child_parser("Train one model with each setting and time the epochs.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--val-subset", type=int, default=None)
    parser.add_argument("--settings", required=True, help="JSON list of settings, in run order")
    options = parser.parse_args(argv)

    import keras

    from pipeline import training
    from pipeline.config import DataConfig, TrainConfig
    from pipeline.data import load_dataset
    from pipeline.model import build_model

    model_config = common.compose_search_config([f"model={options.model}"])[0].model
    data = load_dataset(
        DataConfig(path=options.data, cache_dir=options.cache_dir, train_subset=options.train_subset, val_subset=options.val_subset)
    )
    runs = []
    for setting in json.loads(options.settings):
        keras.backend.clear_session()
        training.seed_everything(0)
        model = build_model(model_config, num_classes=len(data.class_names))
        train = TrainConfig(
            epochs=EPOCHS,
            batch_size=setting["batch_size"],
            jit_compile=setting["jit_compile"],
            steps_per_execution=setting["steps_per_execution"],
            progress=False,
        )
        timer = make_epoch_timer()
        started = time.perf_counter()
        try:
            training.fit(model, data, train, 0, [timer])
            error = None
        except Exception as failure:  # A setting that fails (an XLA error, say) is reported, not fatal.
            error = f"{type(failure).__name__}: {failure}"
        runs.append({**setting, "epochs": timer.epochs, "wall_s": time.perf_counter() - started, "error": error})
    common.write_result(options.result, {"train_images": len(data.y_train), "runs": runs, "backend": keras.backend.backend()})


# ---------------------------------------------------------------------------
# Parent


def images_per_second(run: dict, images: int) -> float:
    return images / run["epochs"][-1]["train_s"]


def _model_figures(model: str, result: dict, status: str) -> list[common.Figure]:
    images = result["train_images"]
    runs = result["runs"]
    failed = [run for run in runs if run["error"]]
    if any(run["reference"] for run in failed):
        raise RuntimeError(f"the reference setting failed for {model}: {failed[0]['error']}")

    reference_positions = [index for index, run in enumerate(runs) if run["reference"]]
    reference_speeds = [images_per_second(runs[index], images) for index in reference_positions]
    reference_mean = common.mean(reference_speeds)
    figures = [
        common.Figure(
            NAME,
            f"{model}: reference ({label(runs[0])})",
            f"{reference_mean:.0f} images/s",
            f"{len(reference_speeds)} runs between the other settings, {common.format_spread(reference_speeds)}; "
            f"first epoch +{common.mean([runs[i]['epochs'][0]['train_s'] - runs[i]['epochs'][1]['train_s'] for i in reference_positions]):.1f} s; "
            f"{images} training images",
            status,
        )
    ]
    best: tuple[float, str] = (1.0, label(runs[0]))
    for index, run in enumerate(runs):
        if run["reference"]:
            continue
        if run["error"]:
            figures.append(common.Figure(NAME, f"{model}: {label(run)}", "failed", run["error"], status))
            continue

        before = max(position for position in reference_positions if position < index)
        after = [position for position in reference_positions if position > index][:1]
        bracket = [images_per_second(runs[position], images) for position in (before, *after)]
        speed = images_per_second(run, images)
        ratio = speed / common.mean(bracket)
        tracing = run["epochs"][0]["train_s"] - run["epochs"][1]["train_s"]
        figures.append(
            common.Figure(
                NAME,
                f"{model}: {label(run)}",
                f"{ratio:.2f} x reference ({speed:.0f} images/s)",
                f"against the reference runs around it ({', '.join(f'{value:.0f}' for value in bracket)} images/s); "
                f"first epoch +{tracing:.1f} s",
                status,
            )
        )
        best = max(best, (ratio, label(run)))
    figures.append(common.Figure(NAME, f"{model}: fastest setting", best[1], f"{best[0]:.2f} x reference", status))
    return figures


def run(context: common.Context) -> list[common.Figure]:
    common.prepare_shared_state(context)
    figures = []
    for model, settings in plan(context.quick).items():
        order = ordered_settings(settings["reference"], settings["grid"])
        args = ["-m", "benchmarks.throughput", "--data", context.data_path, "--cache-dir", str(context.cache_dir), "--model", model, "--settings", json.dumps(order)]
        for key in ("train_subset", "val_subset"):
            if settings[key] is not None:
                args += [f"--{key.replace('_', '-')}", str(settings[key])]
        load_start = common.load_average()
        context.log(f"throughput: {model}, {len(order)} runs")
        child = common.run_python(args, context.folder(f"throughput-{model}"), "throughput")
        model_figures = _model_figures(model, child.result, context.status)
        model_figures[0].detail += f"; load average {load_start} at start, {common.load_average()} at end"
        figures += model_figures
    return figures


if __name__ == "__main__":
    run_child()
