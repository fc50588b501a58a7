"""Child: load the data set as the pipeline does and time each step of ``pipeline.data``.

``python -m benchmarks.dataload --data PATH --cache-dir DIR --result out.json [--reference]``

With ``--reference``, the child also times a lower bound for a warm load in the same
process: reading every array of the cache file with ``np.load`` and converting all
images to float32 once, which any loader that returns float32 images has to do.
"""

from __future__ import annotations

import time

_STARTED = time.time()

from pathlib import Path  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.instrument import Stopwatch  # noqa: E402

# pipeline.data steps, in the order a load runs them.
DATA_STEPS = (
    ("_source_signature", "stat the source"),
    ("_load_cache", "read the cache file (np.load, key check)"),
    ("_decode_source", "decode the source images"),
    ("_write_cache", "write the cache file"),
    ("_channel_stats", "per-channel mean and std"),
    ("_normalize", "normalize to float32 (train, validation, test)"),
    ("_build_dataset", "split, subset, index and normalize (all of _build_dataset)"),
)


def reference_seconds(cache_dir: Path) -> float:
    """Time reading every cached array and one float32 conversion of all images."""
    import numpy as np

    (cache_file,) = sorted(cache_dir.glob("cifar10-*.npz"))
    started = time.perf_counter()
    with np.load(cache_file, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    for name in ("x_train", "x_test"):
        arrays[name].astype(np.float32)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = common.child_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--reference", action="store_true", help="also time the np.load plus float32 lower bound")
    options = parser.parse_args(argv)

    from pipeline import data
    from pipeline.config import DataConfig

    imported = time.time()
    stopwatch = Stopwatch()
    for function, _ in DATA_STEPS:
        stopwatch.wrap(data, function)

    started = time.perf_counter()
    dataset = data.load_dataset(DataConfig(path=options.data, cache_dir=options.cache_dir))
    load_s = time.perf_counter() - started
    result = {
        "launch": common.launch_time(),
        "started": _STARTED,
        "imported": imported,
        "load_s": load_s,
        "parts": stopwatch.table().get("setup", {}),
        "train_images": len(dataset.y_train),
        "images": len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test),
    }
    if options.reference:
        result["reference_s"] = reference_seconds(Path(options.cache_dir))
    common.write_result(options.result, result)


if __name__ == "__main__":
    main()
