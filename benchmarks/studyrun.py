"""Child: run one study in process with ``pipeline.search.run_search`` and write its trials.

``python -m benchmarks.studyrun --overrides JSON --result out.json``

The overrides are Hydra overrides of ``conf/config.yaml``. The data set is loaded
before the study, timed on its own, and then reused by ``run_search`` from the
in-process memo of ``pipeline.data``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = common.child_parser(__doc__.splitlines()[0])
    parser.add_argument("--overrides", required=True, help="JSON list of Hydra overrides")
    options = parser.parse_args(argv)
    common.configure_child_logging()

    import psutil

    from pipeline.data import load_dataset
    from pipeline.search import run_search
    from pipeline.study import resolve_storage_url

    config, resolved = common.compose_search_config(json.loads(options.overrides))
    started = time.perf_counter()
    load_dataset(config.data)
    load_s = time.perf_counter() - started
    rss_before_mb = psutil.Process().memory_info().rss / 2**20

    started = time.perf_counter()
    exit_code = run_search(config, resolved)
    wall_s = time.perf_counter() - started
    common.write_result(
        options.result,
        {
            "exit_code": exit_code,
            "load_s": load_s,
            "wall_s": wall_s,
            "rss_before_mb": rss_before_mb,
            "trials": common.trial_records(resolve_storage_url(config.study.storage), config.study.name),
        },
    )


if __name__ == "__main__":
    main()
