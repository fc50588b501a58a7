"""The hand-written Keras reference: seed_cnn or plain_deep trained by a plain ``model.fit`` script.

It trains on the same normalized arrays as the pipeline (``pipeline.data.load_dataset``
with the same data settings). The optimizer (Adam, learning rate 1e-3), loss, batch
size and epochs are the same. ``--input numpy`` passes NumPy arrays to ``fit``, as a
hand-written script does. ``--input auto`` uses the pipeline's own input pipeline
(``pipeline.training``: tf.data batches gathered by index on TensorFlow, NumPy arrays
elsewhere). Nothing else of the pipeline runs: no Optuna, MLflow, Hydra, signal check or
model cache. Each fit builds and compiles a new model, as a script looping over
settings would.

Run as a child: ``python -m benchmarks.plain --data PATH --result out.json [options]``.
"""

from __future__ import annotations

import os
import time

_STARTED = time.time()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Any  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.instrument import make_epoch_timer, make_first_step_callback  # noqa: E402


def build_seed_cnn(keras: Any, num_classes: int) -> Any:
    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_plain_deep(keras: Any, num_classes: int) -> Any:
    inputs = keras.Input(shape=(32, 32, 3))
    x = inputs
    for stage, filters in enumerate((16, 32, 64)):
        if stage:
            x = keras.layers.MaxPooling2D(2)(x)
        for _ in range(4):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


BUILDERS = {"seed_cnn": build_seed_cnn, "plain_deep": build_plain_deep}


def fit_inputs(data: Any, batch_size: int, shuffle_buffer: int, seed: int, use_tf_data: bool) -> dict[str, Any]:
    """Return the ``fit`` keyword arguments: the pipeline's input on TensorFlow, or NumPy arrays."""
    if not use_tf_data:
        return {
            "x": data.x_train,
            "y": data.y_train,
            "batch_size": batch_size,
            "shuffle": True,
            "validation_data": (data.x_val, data.y_val),
        }

    from pipeline.training import _fit_inputs

    return _fit_inputs(data.x_train, data.y_train, data.x_val, data.y_val, batch_size, shuffle_buffer, seed)


def fit_once(keras: Any, data: Any, options: Any, seed: int, extra_callbacks: list) -> dict[str, Any]:
    """Build, compile and fit one model; return the build, compile and epoch times."""
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = BUILDERS[options.model](keras, len(data.class_names))
    built = time.perf_counter()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=options.jit_compile,
    )
    compiled = time.perf_counter()
    timer = make_epoch_timer()
    use_tf_data = keras.backend.backend() == "tensorflow" and options.input == "auto"
    inputs = fit_inputs(data, options.batch_size, options.shuffle_buffer, seed, use_tf_data)
    history = model.fit(epochs=options.epochs, callbacks=[timer, *extra_callbacks], verbose=0, **inputs)
    finished = time.perf_counter()
    return {
        "build_s": built - started,
        "compile_s": compiled - built,
        "fit_s": finished - compiled,
        "total_s": finished - started,
        "epochs": timer.epochs,
        "val_accuracy": [float(value) for value in history.history["val_accuracy"]],
        "input": "tf.data" if use_tf_data else "numpy",
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.child_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data.path of the pipeline")
    parser.add_argument("--cache-dir", default=None, help="data.cache_dir of the pipeline")
    parser.add_argument("--train-subset", type=int, default=None, help="images; default all")
    parser.add_argument("--val-subset", type=int, default=None, help="images; default all")
    parser.add_argument("--model", choices=sorted(BUILDERS), default="seed_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--shuffle-buffer", type=int, default=50000, help="images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fits", type=int, default=1, help="models to build and train one after the other")
    parser.add_argument("--input", choices=("auto", "numpy"), default="auto", help="auto: the pipeline's tf.data input on TensorFlow, NumPy elsewhere; numpy: arrays as a plain script passes them")
    parser.add_argument("--jit-compile", action="store_true", help="XLA compilation of the train step")
    parser.add_argument("--exit-after-first-step", action="store_true", help="record the launch-to-first-step time and exit")
    options = parser.parse_args(argv)

    import keras

    from pipeline.config import DataConfig
    from pipeline.data import load_dataset

    imported = time.time()
    data_config = DataConfig(
        path=options.data, cache_dir=options.cache_dir, train_subset=options.train_subset, val_subset=options.val_subset
    )
    data = load_dataset(data_config)
    loaded = time.time()
    result: dict[str, Any] = {
        "launch": common.launch_time(),
        "started": _STARTED,
        "imported": imported,
        "loaded": loaded,
        "load_s": loaded - imported,
        "backend": keras.backend.backend(),
        "train_images": len(data.y_train),
        "fits": [],
    }

    if options.exit_after_first_step:

        def record_first_step(begin: float, end: float) -> None:
            result.update(first_step_begin=begin, first_step_end=end)
            common.write_result(options.result, result)
            os._exit(0)  # Skip the rest of training and interpreter teardown: the figure is taken.

        fit_once(keras, data, options, options.seed, [make_first_step_callback(record_first_step)])
        raise RuntimeError("the first training step did not end the process")

    for index in range(options.fits):
        result["fits"].append(fit_once(keras, data, options, options.seed + index, []))
    common.write_result(options.result, result)


if __name__ == "__main__":
    main()
