"""Entry point: ``python -m pipeline.export`` writes a study's best initializers to a file.

The study is chosen through the same config as ``pipeline.search`` (``study.name``,
``study.storage``, ``space``). The file is a search space that fixes every layer to the
best trial's choice, so ``pipeline.search space=<file>`` accepts it back. It carries the
study, trial number, value and dates under ``provenance``.

Exit codes: 0 on success, 2 for a user error such as a study without a completed trial.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import yaml  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipeline.config import SearchConfig, absolute_path, redact_url, register_configs, to_object, validate  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

logger = logging.getLogger("pipeline.export")

EXIT_USER_ERROR = 2


def output_path(config: SearchConfig) -> str:
    if config.export.path:
        return absolute_path(config.export.path)

    return absolute_path(os.path.join("exports", f"{config.study.name}-best.{config.export.format}"))


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` through a temporary file and a rename, so no reader sees half a file."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        raise UserError(f"export.path {path} could not be written: {error}; choose a writable location.") from error


def run_export(config: SearchConfig) -> str:
    """Write the best trial's configuration and return the file's path."""
    from pipeline import model as model_module
    from pipeline import study as study_module
    from pipeline.best import best_document
    from pipeline.space import load_space

    validate(config)
    storage_url = study_module.resolve_storage_url(config.study.storage)
    study_module.check_storage_url(storage_url)
    if storage_url.startswith("sqlite:///") and not os.path.exists(storage_url[len("sqlite:///"):]):
        raise UserError(
            f"study.storage {storage_url} does not exist; run pipeline.search first or set study.storage= to the study's database."
        )

    space = load_space(config.space, model_module.kernel_layers(config.model))
    study = study_module.load_existing_study(config.study, study_module.create_storage(storage_url))
    document = best_document(study, space, redact_url(storage_url))

    path = output_path(config)
    if config.export.format == "json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = yaml.safe_dump(document, sort_keys=False)
    write_atomically(path, text)
    logger.info(
        "exported trial %d of study %r (val_accuracy %.4f) to %s",
        document["provenance"]["trial"], study.study_name, document["provenance"]["value"], path,
    )
    return path


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        path = run_export(to_object(cfg))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    print(path)


if __name__ == "__main__":
    main()
