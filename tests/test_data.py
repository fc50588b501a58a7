"""Tests for pipeline.data against small CIFAR-10 copies written to tmp_path."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.config import DataConfig
from pipeline.errors import UserError

CLASS_NAMES = ("apple", "boat", "cloud")
TRAIN_PER_CLASS_PER_BATCH = 8  # five batches, so 40 training images per class
TEST_PER_CLASS = 4


@pytest.fixture(autouse=True)
def empty_memory_cache():
    data.clear_memory_cache()
    yield
    data.clear_memory_cache()


# ---------------------------------------------------------------------------
# Writers for small copies in both layouts


def _batch_rows(images: np.ndarray) -> np.ndarray:
    """Encode NHWC images as batch rows: 1024 red, then 1024 green, then 1024 blue values."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_pickle(path: Path, value: object, protocol: int) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=protocol)


def write_batches(
    folder: Path,
    class_names: tuple[str, ...] | None = CLASS_NAMES,
    protocol: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write a cifar-10-batches-py folder of random 32x32 images and return the expected arrays.

    ``class_names`` None writes no batches.meta, so ten classes are assumed.
    """
    rng = np.random.default_rng(seed)
    num_classes = len(class_names) if class_names else 10
    folder.mkdir(parents=True)

    def batch(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.tile(np.arange(num_classes, dtype=np.int32), per_class)
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        return images, labels

    train_images, train_labels = [], []
    for number in range(1, 6):
        images, labels = batch(TRAIN_PER_CLASS_PER_BATCH)
        _write_pickle(
            folder / f"data_batch_{number}",
            {b"batch_label": b"training", b"data": _batch_rows(images), b"labels": labels.tolist()},
            protocol,
        )
        train_images.append(images)
        train_labels.append(labels)

    test_images, test_labels = batch(TEST_PER_CLASS)
    _write_pickle(
        folder / "test_batch",
        {b"batch_label": b"testing", b"data": _batch_rows(test_images), b"labels": test_labels.tolist()},
        protocol,
    )
    if class_names:
        _write_pickle(folder / "batches.meta", {b"label_names": [name.encode() for name in class_names]}, protocol)

    return np.concatenate(train_images), np.concatenate(train_labels), test_images, test_labels


def smooth_image(label: int, index: int, size: int) -> np.ndarray:
    """Return a gradient image, which survives JPEG compression with small errors."""
    ramp = np.linspace(0, 1, size)
    red = np.outer(ramp, np.ones(size)) * 200 + 20 * label
    green = np.outer(np.ones(size), ramp) * 150 + 10 * index
    blue = np.full((size, size), 60.0 * label + 5 * index)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def write_tree(
    root: Path,
    class_names: tuple[str, ...] = CLASS_NAMES,
    train_per_class: int = 4,
    test_per_class: int = 2,
    size: int = 8,
    suffix: str = "png",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write train/<class>/ and test/<class>/ images and return the expected arrays in file-name order."""
    expected = []
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = [], []
        for label, name in enumerate(class_names):
            class_folder = root / split / name
            class_folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = smooth_image(label, index, size)
                Image.fromarray(pixels).save(class_folder / f"{index:03d}.{suffix}", quality=95)
                images.append(pixels)
                labels.append(label)
        expected += [np.stack(images), np.array(labels, dtype=np.int32)]
    return tuple(expected)


def pack(folder: Path, archive: Path, top_folder: str | None) -> Path:
    """Pack the contents of ``folder`` into a .tar.gz, under ``top_folder`` or at the root."""
    with tarfile.open(archive, "w:gz") as tar:
        if top_folder is not None:
            tar.add(folder, arcname=top_folder)
        else:
            for child in sorted(folder.iterdir()):
                tar.add(child, arcname=child.name)
    return archive


def config_for(path: Path | None, **overrides) -> DataConfig:
    values = {"path": None if path is None else str(path), "cache_dir": None}
    values.update(overrides)
    return DataConfig(**values)


@pytest.fixture
def batches(tmp_path: Path) -> tuple[Path, tuple[np.ndarray, ...]]:
    folder = tmp_path / "cifar-10-batches-py"
    return folder, write_batches(folder)


def denormalize(images: np.ndarray, dataset: data.Dataset) -> np.ndarray:
    return np.rint(images * dataset.std + dataset.mean).astype(np.uint8)


def image_keys(images: np.ndarray) -> list[bytes]:
    return [image.tobytes() for image in images]


# ---------------------------------------------------------------------------
# Reading each layout


def test_read_raw_batches_folder(batches):
    folder, (x_train, y_train, x_test, y_test) = batches

    raw = data.read_raw(config_for(folder))

    assert raw[0].shape == (120, 32, 32, 3)
    assert raw[0].dtype == np.uint8
    assert np.array_equal(raw[0], x_train)
    assert np.array_equal(raw[1], y_train)
    assert raw[1].dtype == np.int32
    assert np.array_equal(raw[2], x_test)
    assert np.array_equal(raw[3], y_test)
    assert raw[4] == CLASS_NAMES


def test_read_raw_batches_parent_folder(batches, tmp_path):
    _, (x_train, _, _, _) = batches

    raw = data.read_raw(config_for(tmp_path, format="batches"))

    assert np.array_equal(raw[0], x_train)


def test_read_raw_batches_without_meta(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder, class_names=None)

    raw = data.read_raw(config_for(folder))

    assert raw[4] == data.CIFAR10_CLASS_NAMES
    assert raw[1].max() == 9


@pytest.mark.parametrize("top_folder", ["cifar-10-batches-py", "download/cifar-10-batches-py"])
def test_read_raw_batches_archive(tmp_path, top_folder):
    folder = tmp_path / "source"
    x_train, y_train, x_test, y_test = write_batches(folder, protocol=pickle.HIGHEST_PROTOCOL)
    archive = pack(folder, tmp_path / "cifar-10-python.tar.gz", top_folder)

    raw = data.read_raw(config_for(archive))

    assert np.array_equal(raw[0], x_train)
    assert np.array_equal(raw[1], y_train)
    assert np.array_equal(raw[2], x_test)
    assert np.array_equal(raw[3], y_test)
    assert raw[4] == CLASS_NAMES


def test_read_raw_class_folders_png(tmp_path):
    x_train, y_train, x_test, y_test = write_tree(tmp_path / "tree")

    raw = data.read_raw(config_for(tmp_path / "tree"))

    assert raw[0].shape == (12, 8, 8, 3)
    assert np.array_equal(raw[0], x_train)
    assert np.array_equal(raw[1], y_train)
    assert np.array_equal(raw[2], x_test)
    assert np.array_equal(raw[3], y_test)
    assert raw[4] == CLASS_NAMES


def test_read_raw_skips_hidden_files(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "apple" / ".DS_Store").write_bytes(b"not an image")

    raw = data.read_raw(config_for(tmp_path / "tree"))

    assert len(raw[0]) == 12


def test_read_raw_converts_grayscale(tmp_path):
    write_tree(tmp_path / "tree")
    Image.new("L", (8, 8), color=77).save(tmp_path / "tree" / "train" / "apple" / "000.png")

    raw = data.read_raw(config_for(tmp_path / "tree"))

    assert raw[0].shape == (12, 8, 8, 3)
    assert np.all(raw[0][0] == 77)


@pytest.mark.parametrize("top_folder", [None, "cifar10"])
def test_read_raw_class_folder_archive(tmp_path, top_folder):
    x_train, y_train, x_test, y_test = write_tree(tmp_path / "tree", size=16, suffix="jpg")
    archive = pack(tmp_path / "tree", tmp_path / "cifar10-jpeg.tar.gz", top_folder)

    raw = data.read_raw(config_for(archive))

    assert raw[0].shape == (12, 16, 16, 3)
    assert np.abs(raw[0].astype(int) - x_train).mean() < 4
    assert np.abs(raw[2].astype(int) - x_test).mean() < 4
    assert np.array_equal(raw[1], y_train)
    assert np.array_equal(raw[3], y_test)
    assert raw[4] == CLASS_NAMES


def test_read_raw_keras_download(monkeypatch):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    y_train = np.arange(6, dtype=np.uint8).reshape(-1, 1)
    y_test = np.array([[9], [0]], dtype=np.uint8)
    cifar10 = types.SimpleNamespace(load_data=lambda: ((x_train, y_train), (x_test, y_test)))
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=cifar10)))

    raw = data.read_raw(config_for(None))

    assert np.array_equal(raw[0], x_train)
    assert raw[1].shape == (6,)
    assert raw[1].dtype == np.int32
    assert np.array_equal(raw[3], [9, 0])
    assert raw[4] == data.CIFAR10_CLASS_NAMES


def test_read_raw_keras_download_fails(monkeypatch):
    def fail():
        raise OSError("URL fetch failure: no route to host")

    cifar10 = types.SimpleNamespace(load_data=fail)
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=cifar10)))

    with pytest.raises(UserError) as caught:
        data.read_raw(config_for(None))

    assert "no route to host" in str(caught.value)
    assert "data.path" in str(caught.value)


# ---------------------------------------------------------------------------
# Split, subsets and normalization


def test_load_dataset_split_proportions(batches):
    folder, _ = batches

    dataset = data.load_dataset(config_for(folder, validation_fraction=0.25))

    assert np.bincount(dataset.y_val).tolist() == [10, 10, 10]
    assert np.bincount(dataset.y_train).tolist() == [30, 30, 30]
    assert dataset.y_train.dtype == np.int32
    assert dataset.x_train.dtype == np.float32
    assert dataset.class_names == CLASS_NAMES
    assert dataset.source == f"CIFAR-10 python batches in {folder}"


def test_load_dataset_training_order_mixes_classes(tmp_path):
    write_tree(tmp_path, train_per_class=12)

    dataset = data.load_dataset(config_for(tmp_path, validation_fraction=0.25))

    assert np.any(np.diff(dataset.y_train) < 0)
    assert np.bincount(dataset.y_train[:9]).max() < 9


def test_load_dataset_split_partitions_train(batches):
    folder, (x_train, _, _, _) = batches

    dataset = data.load_dataset(config_for(folder, validation_fraction=0.25))
    train_keys = set(image_keys(denormalize(dataset.x_train, dataset)))
    val_keys = set(image_keys(denormalize(dataset.x_val, dataset)))

    assert not train_keys & val_keys
    assert train_keys | val_keys == set(image_keys(x_train))


def test_load_dataset_split_same_seed(batches):
    folder, _ = batches

    first = data.load_dataset(config_for(folder, split_seed=3))
    data.clear_memory_cache()
    second = data.load_dataset(config_for(folder, split_seed=3))

    assert first is not second
    assert np.array_equal(first.x_val, second.x_val)
    assert np.array_equal(first.y_val, second.y_val)


def test_load_dataset_split_other_seed(batches):
    folder, _ = batches

    first = data.load_dataset(config_for(folder, split_seed=3))
    second = data.load_dataset(config_for(folder, split_seed=4))

    assert set(image_keys(denormalize(first.x_val, first))) != set(image_keys(denormalize(second.x_val, second)))


def test_load_dataset_test_split_untouched(batches):
    folder, (_, _, x_test, y_test) = batches

    dataset = data.load_dataset(config_for(folder, validation_fraction=0.5))

    assert np.array_equal(denormalize(dataset.x_test, dataset), x_test)
    assert np.array_equal(dataset.y_test, y_test)


def test_load_dataset_normalization(batches):
    folder, _ = batches

    dataset = data.load_dataset(config_for(folder))
    raw_train = denormalize(dataset.x_train, dataset).astype(np.float64)

    assert np.allclose(dataset.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert np.allclose(dataset.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    assert np.allclose(dataset.mean, raw_train.mean(axis=(0, 1, 2)), atol=1e-3)
    assert np.allclose(dataset.std, raw_train.std(axis=(0, 1, 2)), atol=1e-3)
    assert dataset.mean.dtype == np.float32
    assert dataset.std.shape == (3,)


def test_load_dataset_subsets(batches):
    folder, _ = batches

    dataset = data.load_dataset(config_for(folder, train_subset=7, val_subset=4, test_subset=5))

    assert np.bincount(dataset.y_train, minlength=3).tolist() == [3, 2, 2]
    assert np.bincount(dataset.y_val, minlength=3).tolist() == [2, 1, 1]
    assert np.bincount(dataset.y_test, minlength=3).tolist() == [2, 2, 1]


def test_load_dataset_subset_statistics(batches):
    folder, _ = batches

    dataset = data.load_dataset(config_for(folder, train_subset=9))

    assert np.allclose(dataset.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert np.allclose(dataset.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_load_dataset_subset_within_split(batches):
    folder, _ = batches

    full = data.load_dataset(config_for(folder))
    subset = data.load_dataset(config_for(folder, train_subset=30))
    full_val = set(image_keys(denormalize(full.x_val, full)))
    subset_train = set(image_keys(denormalize(subset.x_train, subset)))

    assert not subset_train & full_val
    assert np.array_equal(denormalize(subset.x_val, subset), denormalize(full.x_val, full))


def test_load_dataset_subset_uneven_classes(tmp_path):
    write_tree(tmp_path / "tree", train_per_class=10)
    (tmp_path / "tree" / "train" / "apple" / "000.png").unlink()
    (tmp_path / "tree" / "train" / "apple" / "001.png").unlink()

    dataset = data.load_dataset(config_for(tmp_path / "tree", validation_fraction=0.2, train_subset=21))

    assert np.bincount(dataset.y_train).tolist() == [6, 8, 7]


# ---------------------------------------------------------------------------
# Memory and disk caches


def test_load_dataset_memoized(batches):
    folder, _ = batches

    first = data.load_dataset(config_for(folder))
    second = data.load_dataset(config_for(folder))

    assert first is second


def test_load_dataset_memo_relative_path(batches, tmp_path, monkeypatch):
    folder, _ = batches
    monkeypatch.chdir(tmp_path)

    absolute = data.load_dataset(config_for(folder))
    relative = data.load_dataset(config_for(Path(folder.name)))

    assert absolute is relative


def test_load_dataset_memo_cleared(batches):
    folder, _ = batches

    first = data.load_dataset(config_for(folder))
    data.clear_memory_cache()
    second = data.load_dataset(config_for(folder))

    assert first is not second


def test_load_dataset_memo_other_values(batches):
    folder, _ = batches

    first = data.load_dataset(config_for(folder))
    second = data.load_dataset(config_for(folder, split_seed=1))

    assert first is not second


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    """Record each call of the decoder, which the disk cache should spare."""
    calls: list[str] = []
    decode = data._decode_source

    def counting_decode(path: str, requested_format: str):
        calls.append(path)
        return decode(path, requested_format)

    monkeypatch.setattr(data, "_decode_source", counting_decode)
    return calls


def test_read_raw_disk_cache_hit(tmp_path, decode_calls):
    write_tree(tmp_path / "tree")
    archive = pack(tmp_path / "tree", tmp_path / "tree.tar.gz", None)
    config = config_for(archive, cache_dir=str(tmp_path / "cache"))

    first = data.read_raw(config)
    second = data.read_raw(config)

    assert len(decode_calls) == 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    for before, after in zip(first, second):
        assert np.array_equal(before, after)


def test_load_dataset_disk_cache_hit(batches, tmp_path, decode_calls):
    folder, _ = batches
    config = config_for(folder, cache_dir=str(tmp_path / "cache"))

    first = data.load_dataset(config)
    data.clear_memory_cache()
    second = data.load_dataset(config)

    assert len(decode_calls) == 1
    assert np.array_equal(first.x_train, second.x_train)
    assert second.source == first.source


def test_read_raw_disk_cache_archive_changed(tmp_path, decode_calls):
    write_tree(tmp_path / "tree")
    archive = pack(tmp_path / "tree", tmp_path / "tree.tar.gz", None)
    config = config_for(archive, cache_dir=str(tmp_path / "cache"))

    data.read_raw(config)
    os.utime(archive, ns=(1_000_000_000, 1_000_000_000))
    data.read_raw(config)

    assert len(decode_calls) == 2


def test_read_raw_disk_cache_folder_changed(tmp_path, decode_calls):
    write_tree(tmp_path / "tree")
    config = config_for(tmp_path / "tree", cache_dir=str(tmp_path / "cache"))

    data.read_raw(config)
    Image.new("RGB", (8, 8), color=(1, 2, 3)).save(tmp_path / "tree" / "train" / "boat" / "000.png")
    raw = data.read_raw(config)

    assert len(decode_calls) == 2
    assert np.all(raw[0][4] == (1, 2, 3))


def test_read_raw_disk_cache_corrupt(tmp_path, decode_calls, caplog):
    write_tree(tmp_path / "tree")
    config = config_for(tmp_path / "tree", cache_dir=str(tmp_path / "cache"))
    expected = data.read_raw(config)
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])

    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        raw = data.read_raw(config)

    assert len(decode_calls) == 2
    assert str(cache_file) in caplog.text
    assert np.array_equal(raw[0], expected[0])
    assert np.load(cache_file)["x_train"].shape == (12, 8, 8, 3)


def test_read_raw_disk_cache_interrupted_write(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    cache_dir = tmp_path / "cache"
    config = config_for(tmp_path / "tree", cache_dir=str(cache_dir))

    def interrupted_savez(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(data.np, "savez", interrupted_savez)
        with pytest.raises(KeyboardInterrupt):
            data.read_raw(config)

    assert os.listdir(cache_dir) == []
    assert data.read_raw(config)[0].shape == (12, 8, 8, 3)
    assert len(list(cache_dir.glob("*.npz"))) == 1


def test_read_raw_disk_cache_unwritable(tmp_path):
    write_tree(tmp_path / "tree")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    config = config_for(tmp_path / "tree", cache_dir=str(blocker / "cache"))

    with pytest.raises(UserError) as caught:
        data.read_raw(config)

    assert str(blocker / "cache") in str(caught.value)
    assert "data.cache_dir" in str(caught.value)


# ---------------------------------------------------------------------------
# Bad inputs


def raise_user_error(config: DataConfig) -> str:
    with pytest.raises(UserError) as caught:
        data.load_dataset(config)
    return str(caught.value)


def test_load_dataset_missing_path(tmp_path):
    message = raise_user_error(config_for(tmp_path / "nowhere"))

    assert str(tmp_path / "nowhere") in message
    assert "data.path" in message


def test_load_dataset_empty_folder(tmp_path):
    message = raise_user_error(config_for(tmp_path))

    assert str(tmp_path) in message
    assert "empty" in message


def test_load_dataset_unrecognized_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")

    message = raise_user_error(config_for(tmp_path))

    assert str(tmp_path) in message
    assert "cifar-10-batches-py" in message


def test_load_dataset_not_an_archive(tmp_path):
    path = tmp_path / "cifar10.tar.gz"
    path.write_bytes(b"plain text, neither gzip nor tar " * 40)

    message = raise_user_error(config_for(path))

    assert str(path) in message
    assert "not a tar archive" in message


def test_load_dataset_truncated_archive(tmp_path):
    write_tree(tmp_path / "tree", train_per_class=20)
    archive = pack(tmp_path / "tree", tmp_path / "tree.tar.gz", None)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    message = raise_user_error(config_for(archive))

    assert str(archive) in message
    assert "truncated" in message


def test_load_dataset_archive_without_layout(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("unrelated")
    archive = pack(tmp_path / "other", tmp_path / "other.tar.gz", None)

    message = raise_user_error(config_for(archive))

    assert str(archive) in message
    assert "class-folder tree" in message


def test_load_dataset_format_mismatch(tmp_path):
    write_tree(tmp_path / "tree")

    message = raise_user_error(config_for(tmp_path / "tree", format="batches"))

    assert str(tmp_path / "tree") in message
    assert "data.format" in message


def test_load_dataset_corrupt_image(tmp_path):
    write_tree(tmp_path / "tree")
    broken = tmp_path / "tree" / "test" / "cloud" / "001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)

    message = raise_user_error(config_for(tmp_path / "tree"))

    assert str(broken) in message


def test_load_dataset_truncated_image_in_archive(tmp_path):
    write_tree(tmp_path / "tree", size=16, suffix="jpg")
    image = tmp_path / "tree" / "train" / "boat" / "002.jpg"
    image.write_bytes(image.read_bytes()[:200])
    archive = pack(tmp_path / "tree", tmp_path / "tree.tar.gz", "cifar10")

    message = raise_user_error(config_for(archive))

    assert "cifar10/train/boat/002.jpg" in message


def test_load_dataset_mismatched_image_size(tmp_path):
    write_tree(tmp_path / "tree")
    odd = tmp_path / "tree" / "train" / "boat" / "003.png"
    Image.new("RGB", (9, 8)).save(odd)

    message = raise_user_error(config_for(tmp_path / "tree"))

    assert str(odd) in message
    assert "9x8" in message
    assert "8x8" in message


def test_load_dataset_test_classes_differ(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "test" / "cloud").rename(tmp_path / "tree" / "test" / "clouds")

    message = raise_user_error(config_for(tmp_path / "tree"))

    assert "'cloud'" in message
    assert "'clouds'" in message


def test_load_dataset_empty_class_folder(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "dust").mkdir()
    (tmp_path / "tree" / "test" / "dust").mkdir()

    message = raise_user_error(config_for(tmp_path / "tree"))

    assert "train/dust" in message


def test_load_dataset_single_class(tmp_path):
    write_tree(tmp_path / "tree", class_names=("apple",))

    message = raise_user_error(config_for(tmp_path / "tree"))

    assert "at least two" in message


def test_load_dataset_label_out_of_range(batches):
    folder, _ = batches
    batch_file = folder / "data_batch_2"
    batch = pickle.loads(batch_file.read_bytes(), encoding="bytes")
    batch[b"labels"][5] = 3
    _write_pickle(batch_file, batch, 2)

    message = raise_user_error(config_for(folder))

    assert str(batch_file) in message
    assert "label 3" in message


def test_load_dataset_wrong_data_shape(batches):
    folder, _ = batches
    batch_file = folder / "test_batch"
    _write_pickle(batch_file, {b"data": np.zeros((12, 1024), np.uint8), b"labels": [0] * 12}, 2)

    message = raise_user_error(config_for(folder))

    assert str(batch_file) in message
    assert "(12, 1024)" in message


def test_load_dataset_missing_batch(batches):
    folder, _ = batches
    (folder / "data_batch_4").unlink()

    message = raise_user_error(config_for(folder))

    assert "data_batch_4" in message


def test_load_dataset_pickle_with_code(batches, tmp_path):
    folder, _ = batches
    marker = tmp_path / "executed"
    batch_file = folder / "data_batch_1"
    batch_file.write_bytes(
        b"cbuiltins\nopen\n(" + pickle.dumps(str(marker), protocol=0)[:-1] + b"S'w'\ntR."
    )

    message = raise_user_error(config_for(folder))

    assert str(batch_file) in message
    assert not marker.exists()


def test_load_dataset_subset_too_large(batches):
    folder, _ = batches

    message = raise_user_error(config_for(folder, train_subset=1000))

    assert "data.train_subset" in message
    assert "108" in message


def test_load_dataset_test_subset_too_large(batches):
    folder, _ = batches

    message = raise_user_error(config_for(folder, test_subset=13))

    assert "data.test_subset" in message
    assert "12" in message


def test_load_dataset_val_subset_below_classes(batches):
    folder, _ = batches

    message = raise_user_error(config_for(folder, val_subset=2))

    assert "data.val_subset" in message
    assert "cloud" in message


def test_load_dataset_validation_fraction_too_small(tmp_path):
    write_tree(tmp_path / "tree")

    message = raise_user_error(config_for(tmp_path / "tree", validation_fraction=0.1))

    assert "validation_fraction" in message
    assert "'apple'" in message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"format": "zip"}, "data.format"),
        ({"format": "keras", "path": "somewhere"}, "data.path"),
        ({"format": "folders", "path": None}, "data.path"),
        ({"validation_fraction": 1.0}, "data.validation_fraction"),
        ({"split_seed": -1}, "data.split_seed"),
        ({"train_subset": 0}, "data.train_subset"),
    ],
)
def test_load_dataset_invalid_config(tmp_path, overrides, key):
    config = DataConfig(**{"path": str(tmp_path), "cache_dir": None, **overrides})

    message = raise_user_error(config)

    assert key in message


# ---------------------------------------------------------------------------
# The real CIFAR-10 archive, when one is available


def test_read_raw_real_archive():
    path = os.environ.get("PIPELINE_CIFAR10_PATH")
    if not path or not os.path.isfile(path):
        pytest.skip("set PIPELINE_CIFAR10_PATH to the CIFAR-10 class-folder archive to run this test")

    x_train, y_train, x_test, y_test, class_names = data.read_raw(config_for(Path(path)))

    assert x_train.shape == (50_000, 32, 32, 3)
    assert x_test.shape == (10_000, 32, 32, 3)
    assert x_train.dtype == np.uint8
    assert class_names == data.CIFAR10_CLASS_NAMES
    assert np.bincount(y_train).tolist() == [5_000] * 10
    assert np.bincount(y_test).tolist() == [1_000] * 10
