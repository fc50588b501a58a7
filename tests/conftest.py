"""Shared fixtures: tiny data sets written by the tests, the real archive, and composed configs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hydra import compose, initialize
from PIL import Image

from pipeline.config import register_configs, to_object

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARCHIVE_VARIABLE = "PIPELINE_CIFAR10_PATH"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register_configs()


def compose_search_config(overrides: list[str]):
    """Compose ``conf/config.yaml`` with overrides, as the entry points do, and return both forms."""
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(config_name="config", overrides=overrides)
    return to_object(cfg), cfg


@pytest.fixture(scope="session")
def colour_tree(tmp_path_factory) -> str:
    """Write a 10-class image tree in which each class has its own colour, so a CNN learns it in a few steps."""
    root = tmp_path_factory.mktemp("colour_tree")
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(len(CLASS_NAMES), 3))
    for split, count in (("train", 16), ("test", 4)):
        for index, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                noise = rng.integers(-30, 31, size=(32, 32, 3))
                pixels = np.clip(palette[index] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return str(root)


@pytest.fixture
def real_archive() -> str:
    path = os.environ.get(ARCHIVE_VARIABLE)
    if not path or not os.path.isfile(path):
        pytest.skip(f"set {ARCHIVE_VARIABLE} to the CIFAR-10 class-folder archive to run this test")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder, so ``mlruns/`` and caches land in the test's own folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
