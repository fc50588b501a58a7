"""Entry point: ``python -m pipeline.report`` logs a study's plots and importances to MLflow on demand.

The study is chosen through the same config as ``pipeline.search`` (``study.name``,
``study.storage``, ``tracking.*``). The report goes to the study's MLflow parent run:
plots under ``plots/`` and one metric ``importance.<param>`` per parameter. The
importances are also printed, most important first.

Exit codes: 0 on success, 2 for a user error such as a missing study or parent run.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipeline.config import SearchConfig, redact_url, register_configs, to_object, validate  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

logger = logging.getLogger("pipeline.report")

EXIT_USER_ERROR = 2


def _check_file_exists(url: str, key: str) -> None:
    """Reject a SQLite URL whose file is missing, so that a report never creates an empty database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not os.path.exists(url[len(prefix):]):
        raise UserError(
            f"{key} {redact_url(url)} does not exist; run pipeline.search first or set {key}= "
            f"to the study's database."
        )


def run_report(config: SearchConfig) -> tuple[str, dict[str, float]]:
    """Log the report of the configured study and return its parent run id and importances."""
    from pipeline import study as study_module
    from pipeline import tracking
    from pipeline.reports import log_study_report

    validate(config)
    storage_url = study_module.resolve_storage_url(config.study.storage)
    study_module.check_storage_url(storage_url)
    _check_file_exists(storage_url, "study.storage")
    tracking_uri = tracking.resolve_uri(config.tracking.uri)
    tracking.check_uri(tracking_uri)
    _check_file_exists(tracking_uri, "tracking.uri")

    study = study_module.load_existing_study(config.study, study_module.create_storage(storage_url))
    tracker = tracking.Tracker(config.tracking, config.study.name)
    parent_id = tracker.find_parent()
    if parent_id is None:
        raise UserError(
            f"Study {config.study.name!r} has no MLflow parent run in experiment "
            f"{tracker.experiment_name!r} at {redact_url(tracker.uri)}; run pipeline.search for this "
            f"study, or set tracking.uri= and tracking.experiment= to where its runs are."
        )

    importances = log_study_report(tracker, parent_id, study)
    return parent_id, importances


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from pipeline.reports import format_importances

    try:
        config = to_object(cfg)
        parent_id, importances = run_report(config)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    print(f"study {config.study.name!r}: report logged to MLflow run {parent_id}")
    for line in format_importances(importances) or ["no parameter importances yet (see the log for the reason)"]:
        print(line)


if __name__ == "__main__":
    main()
