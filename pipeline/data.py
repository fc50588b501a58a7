"""Load CIFAR-10, split off a validation set, draw subsets and normalize per channel.

The images come from one of three sources: Keras' download (``data.path`` null), the
official python batches (a ``cifar-10-batches-py`` folder) or a class-folder tree
(``train/<class>/<image>`` and ``test/<class>/<image>``). Both local layouts may also be
packed in a tar archive, which is read member by member without extracting it.

Decoded uint8 images are cached as one ``.npz`` file under ``data.cache_dir``, and each
finished ``Dataset`` is kept in memory for the rest of the process, so every trial
reuses the same arrays. This module imports Keras only to download, so it works with
any Keras backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image

from pipeline.config import DATA_FORMATS, DataConfig, absolute_path
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

ACCEPTED_LAYOUTS = (
    "a cifar-10-batches-py folder (data_batch_1 to data_batch_5, test_batch and optionally "
    "batches.meta), a class-folder tree (train/<class>/<image> and test/<class>/<image>), "
    "or a .tar.gz archive of either"
)

_BATCH_TRAIN_FILES = tuple(f"data_batch_{number}" for number in range(1, 6))
_BATCH_TEST_FILE = "test_batch"
_BATCH_META_FILE = "batches.meta"
_BATCH_FILES = (*_BATCH_TRAIN_FILES, _BATCH_TEST_FILE, _BATCH_META_FILE)
_BATCH_IMAGE_SHAPE = (3, 32, 32)  # channels first, as the batch files store each row
_BATCH_ROW_LENGTH = 3 * 32 * 32
_TREE_SPLITS = ("train", "test")

# Bump when decoding changes, so that older cache files stop matching.
_CACHE_VERSION = 1
_STATS_CHUNK_PIXELS = 1 << 18  # pixels per chunk when computing channel statistics

# The only globals that a CIFAR-10 batch file needs: numpy arrays and Python 3 bytes.
# Anything else in a pickle could run arbitrary code, so the unpickler rejects it.
_ALLOWED_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)

# A file's content: bytes already read from an archive, or a path on disk to read later.
_Content = Union[bytes, str]


@dataclass(frozen=True, eq=False)  # eq=False: compare and hash by identity, not by arrays
class Dataset:
    """CIFAR-10 split into train, validation and test arrays, ready to train on.

    Images are float32 NHWC, standardized per channel with ``mean`` and ``std`` of the
    training split (after subsetting), both in raw pixel units 0 to 255. Labels are int32
    of shape (N,). One instance is shared by every caller in the process, so its arrays
    must not be modified in place.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    source: str


@dataclass(frozen=True)
class _RawData:
    """Decoded uint8 NHWC images with int32 labels, before the validation split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str


@dataclass
class _Tree:
    """A class-folder tree: for each split, each class folder's images sorted by name.

    Each image is a (name for messages, content) pair.
    """

    splits: dict[str, dict[str, list[tuple[str, _Content]]]]


_memory_cache: dict[tuple, Dataset] = {}
_memory_lock = threading.Lock()


# ---------------------------------------------------------------------------
# Public API


def load_dataset(config: DataConfig) -> Dataset:
    """Load, split, subset and normalize CIFAR-10 as ``config`` describes.

    The result is memoized on the config's values, with paths made absolute, so later
    calls in the same process return the same object without reading anything. Entries
    stay until ``clear_memory_cache``, because callers may key their own caches on the
    arrays' ids. Raises ``UserError`` for a bad config value or input file.
    """
    _check_config(config)
    key = _memory_key(config)
    with _memory_lock:
        dataset = _memory_cache.get(key)
        if dataset is not None:
            logger.debug("Reusing the CIFAR-10 arrays already loaded from %s", dataset.source)
            return dataset

        raw = _read_raw(config)
        dataset = _build_dataset(raw, config)
        _memory_cache[key] = dataset
        return dataset


def clear_memory_cache() -> None:
    """Forget every ``Dataset`` that ``load_dataset`` memoized in this process."""
    with _memory_lock:
        _memory_cache.clear()


def read_raw(config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode the source, or read its disk cache, before any split.

    Returns ``(x_train, y_train, x_test, y_test, class_names)`` with uint8 NHWC images
    and int32 labels of shape (N,). Raises ``UserError`` for a bad config value or file.
    """
    _check_config(config)
    raw = _read_raw(config)
    return raw.x_train, raw.y_train, raw.x_test, raw.y_test, raw.class_names


# ---------------------------------------------------------------------------
# Config checks and the in-memory cache


def _check_config(config: DataConfig) -> None:
    if not isinstance(config, DataConfig):
        raise TypeError(f"Expected a pipeline.config.DataConfig but got {type(config).__name__}.")

    if config.format not in DATA_FORMATS:
        raise UserError(f"data.format must be one of {', '.join(DATA_FORMATS)} but got {config.format!r}.")

    if config.format == "keras" and config.path is not None:
        raise UserError(
            f"data.format is 'keras', which downloads CIFAR-10, but data.path is {config.path!r}; "
            "set data.path=null to download, or data.format=auto to read the local copy."
        )

    if config.path is None and config.format in ("batches", "folders"):
        raise UserError(
            f"data.format is {config.format!r} but data.path is null; set data.path to the local copy, "
            "or data.format=auto to download with Keras."
        )

    fraction = config.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise UserError(
            f"data.validation_fraction must be a number between 0 and 1 (exclusive) but got {fraction!r}."
        )

    seed = config.split_seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"data.split_seed must be an integer of 0 or more but got {seed!r}.")

    for key in ("train_subset", "val_subset", "test_subset"):
        value = getattr(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"data.{key} must be a positive number of images or null but got {value!r}.")


def _memory_key(config: DataConfig) -> tuple:
    values = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in ("path", "cache_dir") and value is not None:
            value = absolute_path(value)
        values.append((field.name, value))
    return tuple(values)


# ---------------------------------------------------------------------------
# Reading the source, through the disk cache


def _read_raw(config: DataConfig) -> _RawData:
    if config.path is None or config.format == "keras":
        # Keras keeps its own copy of the download (under ~/.keras/datasets by default),
        # so this source skips the disk cache.
        return _download_with_keras()

    path = absolute_path(config.path)
    if not os.path.exists(path):
        raise UserError(
            f"data.path {path!r} does not exist; set data.path to {ACCEPTED_LAYOUTS}, "
            "or to null to download CIFAR-10 with Keras."
        )

    if config.cache_dir is None:
        return _decode_source(path, config.format)

    cache_path, key = _cache_location(absolute_path(config.cache_dir), path, config.format)
    raw = _load_cache(cache_path, key)
    if raw is not None:
        logger.info("Read decoded CIFAR-10 images from the cache %s", cache_path)
        return raw

    raw = _decode_source(path, config.format)
    _write_cache(cache_path, key, raw)
    logger.info("Cached the decoded images in %s", cache_path)
    return raw


def _decode_source(path: str, requested_format: str) -> _RawData:
    """Decode the local copy at ``path``, a folder or a tar archive, in the requested layout."""
    started = time.perf_counter()
    logger.info("Decoding CIFAR-10 from %s", path)
    if os.path.isdir(path):
        raw = _read_directory(path, requested_format)
    else:
        raw = _read_archive(path, requested_format)

    logger.info(
        "Decoded %d training and %d test images from %s in %.1f s",
        len(raw.y_train),
        len(raw.y_test),
        raw.source,
        time.perf_counter() - started,
    )
    return raw


def _choose_layout(where: str, requested_format: str, has_batches: bool, has_tree: bool) -> str:
    """Return "batches" or "folders" for the layouts found, checked against data.format."""
    if requested_format == "batches" and not has_batches:
        raise UserError(
            f"data.format is 'batches' but {where} contains no CIFAR-10 python batches "
            f"(data_batch_1 to data_batch_5 and test_batch); set data.format=auto or data.path to {ACCEPTED_LAYOUTS}."
        )

    if requested_format == "folders" and not has_tree:
        raise UserError(
            f"data.format is 'folders' but {where} contains no train/ and test/ class folders; "
            f"set data.format=auto or data.path to {ACCEPTED_LAYOUTS}."
        )

    if requested_format in ("batches", "folders"):
        return requested_format

    if has_batches and has_tree:
        raise UserError(
            f"{where} contains both CIFAR-10 python batches and train/ and test/ class folders; "
            "set data.format=batches or data.format=folders to choose one."
        )

    if has_batches:
        return "batches"
    if has_tree:
        return "folders"
    raise UserError(f"{where} has no layout that data.path accepts; set data.path to {ACCEPTED_LAYOUTS}.")


def _is_hidden(name: str) -> bool:
    """Return whether a path component is a dot-file or macOS metadata folder, which the readers skip."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part not in ("", "."))


def _read_bytes(content: _Content) -> bytes:
    if isinstance(content, bytes):
        return content

    try:
        with open(content, "rb") as file:
            return file.read()
    except OSError as error:
        raise UserError(f"Could not read {content!r}: {error}; check that the file is readable.") from error


# ---------------------------------------------------------------------------
# Sources on disk: folders and tar archives


def _visible_children(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError as error:
        raise UserError(f"Could not list data.path {path!r}: {error}; check that the folder is readable.") from error
    return sorted(name for name in names if not _is_hidden(name))


def _has_batch_files(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in (*_BATCH_TRAIN_FILES, _BATCH_TEST_FILE))


def _has_tree(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, split)) for split in _TREE_SPLITS)


def _find_layout_root(path: str, children: list[str], has_layout: Callable[[str], bool]) -> Optional[str]:
    """Return ``path`` or its one subfolder that has the layout, or None when neither has it."""
    if has_layout(path):
        return path

    matches = [os.path.join(path, name) for name in children if os.path.isdir(os.path.join(path, name))]
    matches = [folder for folder in matches if has_layout(folder)]
    if len(matches) > 1:
        raise UserError(
            f"data.path {path!r} contains several CIFAR-10 copies ({', '.join(matches)}); "
            "set data.path to one of them."
        )
    return matches[0] if matches else None


def _read_directory(path: str, requested_format: str) -> _RawData:
    children = _visible_children(path)
    if not children:
        raise UserError(f"data.path {path!r} is an empty folder; set data.path to {ACCEPTED_LAYOUTS}.")

    batches_root = _find_layout_root(path, children, _has_batch_files)
    tree_root = _find_layout_root(path, children, _has_tree)
    layout = _choose_layout(f"data.path {path!r}", requested_format, batches_root is not None, tree_root is not None)

    if layout == "batches":
        files = {
            name: os.path.join(batches_root, name)
            for name in _BATCH_FILES
            if os.path.isfile(os.path.join(batches_root, name))
        }
        return _parse_batches(files, batches_root, f"CIFAR-10 python batches in {batches_root}")

    tree = _list_tree_directory(tree_root)
    return _decode_tree(tree, tree_root, f"class folders in {tree_root}")


def _list_tree_directory(root: str) -> _Tree:
    splits: dict[str, dict[str, list[tuple[str, _Content]]]] = {}
    for split in _TREE_SPLITS:
        split_folder = os.path.join(root, split)
        if not os.path.isdir(split_folder):
            raise UserError(
                f"{root!r} has no {split}/ folder; a class-folder tree needs train/<class>/<image> "
                "and test/<class>/<image>."
            )

        classes: dict[str, list[tuple[str, _Content]]] = {}
        for name in _visible_children(split_folder):
            class_folder = os.path.join(split_folder, name)
            if not os.path.isdir(class_folder):
                raise UserError(
                    f"{class_folder!r} is a file directly inside {split}/; put each image in a class "
                    f"folder, {split}/<class>/<image>."
                )
            images = []
            for file_name in _visible_children(class_folder):
                file_path = os.path.join(class_folder, file_name)
                if os.path.isdir(file_path):
                    raise UserError(
                        f"{file_path!r} is a folder inside a class folder, but a class-folder tree "
                        "contains images directly in <split>/<class>/."
                    )
                images.append((file_path, file_path))
            classes[name] = images
        splits[split] = classes
    return _Tree(splits)


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _tree_position(parts: list[str]) -> Optional[int]:
    """Return the index of train/ or test/ in a member path, at the root or one folder down."""
    for index in (0, 1):
        if len(parts) > index + 1 and parts[index] in _TREE_SPLITS:
            return index
    return None


def _read_archive(path: str, requested_format: str) -> _RawData:
    """Read the archive in one streaming pass, keeping only members that a layout needs."""
    batch_members: dict[str, bytes] = {}
    tree_members: dict[str, Optional[bytes]] = {}  # None marks a folder
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                name = _member_name(member)
                if not name or _is_hidden(name) or not (member.isfile() or member.isdir()):
                    continue

                parts = name.split("/")
                if member.isfile() and parts[-1] in _BATCH_FILES:
                    batch_members[name] = _extract(archive, member)
                elif _tree_position(parts) is not None:
                    tree_members[name] = _extract(archive, member) if member.isfile() else None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(
            f"Could not read the archive data.path {path!r}: {error}. The file is truncated or "
            f"not a tar archive; set data.path to {ACCEPTED_LAYOUTS}."
        ) from error

    if not batch_members and not tree_members:
        raise UserError(
            f"The archive data.path {path!r} has no layout that data.path accepts; "
            f"set data.path to {ACCEPTED_LAYOUTS}."
        )

    batch_folders = sorted({os.path.dirname(name) for name in batch_members})
    tree_roots = sorted({"/".join(name.split("/")[: _tree_position(name.split("/"))]) for name in tree_members})
    for found, what in ((batch_folders, "CIFAR-10 python batches"), (tree_roots, "class-folder trees")):
        if len(found) > 1:
            listed = ", ".join(repr(folder or ".") for folder in found)
            raise UserError(
                f"The archive data.path {path!r} contains {what} in several folders ({listed}); "
                "pack only one copy."
            )

    where = f"the archive data.path {path!r}"
    layout = _choose_layout(where, requested_format, bool(batch_members), bool(tree_members))
    if layout == "batches":
        folder = batch_folders[0]
        files = {os.path.basename(name): data for name, data in batch_members.items()}
        location = f"{path}:{folder}" if folder else path
        return _parse_batches(files, location, f"CIFAR-10 python batches in {path}")

    tree = _list_tree_archive(path, tree_members)
    return _decode_tree(tree, path, f"class folders in {path}")


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = archive.extractfile(member)
    if file is None:
        raise tarfile.ReadError(f"member {member.name!r} has no data")
    return file.read()


def _list_tree_archive(path: str, members: dict[str, Optional[bytes]]) -> _Tree:
    splits: dict[str, dict[str, list[tuple[str, _Content]]]] = {split: {} for split in _TREE_SPLITS}
    for name in sorted(members):
        parts = name.split("/")
        position = _tree_position(parts)
        split, rest = parts[position], parts[position + 1 :]
        data = members[name]
        is_folder = data is None

        if len(rest) == 1 and is_folder:
            splits[split].setdefault(rest[0], [])
        elif len(rest) == 2 and not is_folder:
            splits[split].setdefault(rest[0], []).append((f"{path}:{name}", data))
        else:
            raise UserError(
                f"The archive data.path {path!r} contains {name!r}, which is not an image in a class "
                "folder; a class-folder tree holds images as train/<class>/<image> and test/<class>/<image>."
            )

    for split, classes in splits.items():
        if not classes:
            raise UserError(
                f"The archive data.path {path!r} has no {split}/ class folders; a class-folder tree needs "
                "train/<class>/<image> and test/<class>/<image>."
            )
    return _Tree(splits)


# ---------------------------------------------------------------------------
# Decoding: class-folder images and python batches


def _decode_tree(tree: _Tree, where: str, source: str) -> _RawData:
    """Decode every image of a class-folder tree into uint8 arrays, train classes first."""
    class_names = tuple(sorted(tree.splits["train"]))
    test_names = tuple(sorted(tree.splits["test"]))
    if class_names != test_names:
        raise UserError(
            f"The test/ class folders of {where!r} differ from the train/ class folders: train/ has "
            f"{list(class_names)} and test/ has {list(test_names)}; give both the same class folders."
        )

    items: list[tuple[str, _Content]] = []
    labels: list[np.ndarray] = []
    split_sizes = []
    for split in _TREE_SPLITS:
        size = 0
        for label, class_name in enumerate(class_names):
            images = tree.splits[split][class_name]
            if not images:
                raise UserError(
                    f"The class folder {split}/{class_name} of {where!r} contains no images; add images "
                    "or remove the folder from both train/ and test/."
                )
            items.extend(sorted(images, key=lambda image: image[0]))
            labels.append(np.full(len(images), label, dtype=np.int32))
            size += len(images)
        split_sizes.append(size)

    images = _decode_images(items)
    all_labels = np.concatenate(labels)
    train_size = split_sizes[0]
    return _RawData(
        x_train=images[:train_size],
        y_train=all_labels[:train_size],
        x_test=images[train_size:],
        y_test=all_labels[train_size:],
        class_names=class_names,
        source=source,
    )


def _decode_images(items: list[tuple[str, _Content]]) -> np.ndarray:
    """Decode images to one uint8 RGB array, requiring every image to match the first one's size."""
    output: Optional[np.ndarray] = None
    first_name = ""
    for index, (name, content) in enumerate(items):
        pixels = _decode_image(name, _read_bytes(content))
        if output is None:
            output = np.empty((len(items), *pixels.shape), dtype=np.uint8)
            first_name = name
        elif pixels.shape != output.shape[1:]:
            raise UserError(
                f"The image {name!r} is {pixels.shape[1]}x{pixels.shape[0]} pixels but the first image "
                f"{first_name!r} is {output.shape[2]}x{output.shape[1]}; resize the images to one size."
            )
        output[index] = pixels

    assert output is not None, "callers pass at least one image"
    return output


def _decode_image(name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != "RGB":
                return np.asarray(image.convert("RGB"))
            return np.asarray(image)
    except Exception as error:  # Pillow raises several types for a bad file, not only OSError.
        raise UserError(
            f"Could not decode the image {name!r}: {type(error).__name__}: {error}. The file is corrupt, "
            "truncated or in a format Pillow cannot read; replace or remove it."
        ) from error


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch file")
        return super().find_class(module, name)


def _unpickle_batch(name: str, content: _Content) -> dict:
    data = _read_bytes(content)
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # pickle raises many types for a corrupt or foreign file.
        raise UserError(
            f"Could not read the batch file {name!r}: {type(error).__name__}: {error}. The file is corrupt "
            "or not a CIFAR-10 python batch; replace it with the one from cifar-10-python.tar.gz."
        ) from error

    if not isinstance(batch, dict):
        raise UserError(
            f"The batch file {name!r} contains a {type(batch).__name__} instead of a dict; replace it with "
            "the one from cifar-10-python.tar.gz."
        )
    return batch


def _batch_value(batch: dict, key: str, name: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]

    raise UserError(
        f"The batch file {name!r} has no {key!r} entry (it has {sorted(map(str, batch))}); replace it with "
        "the one from cifar-10-python.tar.gz."
    )


def _read_class_names(files: dict[str, _Content], location: str) -> tuple[str, ...]:
    if _BATCH_META_FILE not in files:
        return CIFAR10_CLASS_NAMES

    name = f"{location}/{_BATCH_META_FILE}"
    meta = _unpickle_batch(name, files[_BATCH_META_FILE])
    names = _batch_value(meta, "label_names", name)
    try:
        return tuple(item.decode() if isinstance(item, bytes) else str(item) for item in names)
    except (TypeError, UnicodeDecodeError) as error:
        raise UserError(
            f"The label_names in {name!r} are not a list of strings ({error}); replace the file with the "
            "one from cifar-10-python.tar.gz or delete it to use the standard CIFAR-10 names."
        ) from error


def _parse_batch(name: str, content: _Content, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_batch(name, content)
    data = np.asarray(_batch_value(batch, "data", name))
    labels = np.asarray(_batch_value(batch, "labels", name))

    if data.ndim != 2 or data.shape[1] != _BATCH_ROW_LENGTH:
        raise UserError(
            f"The data in the batch file {name!r} has shape {data.shape}, but a CIFAR-10 batch has "
            f"shape (N, {_BATCH_ROW_LENGTH}); replace the file with the one from cifar-10-python.tar.gz."
        )

    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise UserError(
                f"The data in the batch file {name!r} is {data.dtype} with values outside 0 to 255, but "
                "CIFAR-10 pixels are uint8; replace the file with the one from cifar-10-python.tar.gz."
            )
        data = data.astype(np.uint8)

    if labels.ndim != 1 or len(labels) != len(data) or (labels.size and labels.dtype.kind not in "iu"):
        raise UserError(
            f"The batch file {name!r} has {labels.shape} labels of type {labels.dtype} for {len(data)} "
            "images, but needs one integer label per image; replace it with the one from cifar-10-python.tar.gz."
        )

    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise UserError(
            f"The batch file {name!r} contains label {int(outside[0])}, outside 0 to {num_classes - 1} "
            f"for {num_classes} classes; replace the file, or give a batches.meta that lists every class."
        )

    images = data.reshape(len(data), *_BATCH_IMAGE_SHAPE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _parse_batches(files: dict[str, _Content], location: str, source: str) -> _RawData:
    missing = [name for name in (*_BATCH_TRAIN_FILES, _BATCH_TEST_FILE) if name not in files]
    if missing:
        raise UserError(
            f"The CIFAR-10 python batches in {location!r} lack {', '.join(missing)}; the folder needs "
            "data_batch_1 to data_batch_5 and test_batch, as in cifar-10-python.tar.gz."
        )

    class_names = _read_class_names(files, location)
    train_parts = [_parse_batch(f"{location}/{name}", files[name], len(class_names)) for name in _BATCH_TRAIN_FILES]
    x_test, y_test = _parse_batch(f"{location}/{_BATCH_TEST_FILE}", files[_BATCH_TEST_FILE], len(class_names))
    return _RawData(
        x_train=np.concatenate([images for images, _ in train_parts]),
        y_train=np.concatenate([labels for _, labels in train_parts]),
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
        source=source,
    )


def _download_with_keras() -> _RawData:
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # urllib, socket, tarfile and Keras errors all mean the download failed.
        raise UserError(
            f"Downloading CIFAR-10 with keras.datasets.cifar10.load_data() failed: {type(error).__name__}: "
            f"{error}. Set data.path to a local copy: {ACCEPTED_LAYOUTS}."
        ) from error

    return _RawData(
        x_train=_channels_last(np.asarray(x_train, dtype=np.uint8)),
        y_train=np.asarray(y_train, dtype=np.int32).reshape(-1),
        x_test=_channels_last(np.asarray(x_test, dtype=np.uint8)),
        y_test=np.asarray(y_test, dtype=np.int32).reshape(-1),
        class_names=CIFAR10_CLASS_NAMES,
        source="Keras download (keras.datasets.cifar10)",
    )


def _channels_last(images: np.ndarray) -> np.ndarray:
    """Return NHWC images. Keras returns NCHW when its image_data_format is channels_first."""
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return images


# ---------------------------------------------------------------------------
# Disk cache of decoded images


def _source_signature(path: str) -> str:
    """Describe the source's state cheaply: size and mtime of the file, or of every file in the folder.

    A folder's own mtime misses edits inside its subfolders, so the folder case stats
    each file, about 60,000 calls for the class-folder tree of CIFAR-10.
    """
    status = os.stat(path)
    if not os.path.isdir(path):
        return f"file {status.st_size} {status.st_mtime_ns}"

    digest = hashlib.sha256()
    for folder, subfolders, file_names in os.walk(path):
        subfolders.sort()
        for file_name in sorted(file_names):
            file_path = os.path.join(folder, file_name)
            file_status = os.stat(file_path)
            relative = os.path.relpath(file_path, path)
            digest.update(f"{relative}\0{file_status.st_size}\0{file_status.st_mtime_ns}\n".encode())
    return f"folder {digest.hexdigest()}"


def _cache_location(cache_dir: str, path: str, requested_format: str) -> tuple[str, str]:
    """Return the cache file for the source and the key stored in it."""
    try:
        signature = _source_signature(path)
    except OSError as error:
        raise UserError(f"Could not read data.path {path!r}: {error}; check that it is readable.") from error

    key_text = f"version {_CACHE_VERSION}\npath {path}\nformat {requested_format}\n{signature}"
    key = hashlib.sha256(key_text.encode()).hexdigest()
    return os.path.join(cache_dir, f"cifar10-{key[:32]}.npz"), key


def _load_cache(cache_path: str, key: str) -> Optional[_RawData]:
    """Return the cached images, or None when the file is missing or corrupt."""
    if not os.path.exists(cache_path):
        return None

    try:
        with np.load(cache_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        raw = _raw_from_arrays(arrays, key)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        logger.warning("The cache file %s is corrupt (%s); decoding the source again to rebuild it", cache_path, error)
        return None
    return raw


def _raw_from_arrays(arrays: dict[str, np.ndarray], key: str) -> _RawData:
    if str(arrays["key"]) != key:
        raise ValueError("its key does not match the source")

    raw = _RawData(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        class_names=tuple(str(name) for name in arrays["class_names"]),
        source=str(arrays["source"]),
    )
    for images, labels in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int32 or labels.shape != images.shape[:1]:
            raise ValueError(f"arrays of shape {images.shape} and {labels.shape} do not match")
    return raw


def _write_cache(cache_path: str, key: str, raw: _RawData) -> None:
    """Write the cache file atomically: a temporary file in the same folder, then os.replace.

    An interrupted write leaves at most a stray ``.tmp`` file, never a partial cache file.
    """
    cache_dir = os.path.dirname(cache_path)
    temporary_path = None
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".cifar10-", suffix=".tmp", delete=False) as file:
            temporary_path = file.name
            np.savez(
                file,
                key=np.array(key),
                x_train=raw.x_train,
                y_train=raw.y_train,
                x_test=raw.x_test,
                y_test=raw.y_test,
                class_names=np.array(raw.class_names, dtype=str),
                source=np.array(raw.source),
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, cache_path)
        temporary_path = None
    except OSError as error:
        raise UserError(
            f"Could not write the cache file {cache_path!r}: {error}; set data.cache_dir to a writable "
            "folder with free space, or to null to disable the cache."
        ) from error
    finally:
        if temporary_path is not None and os.path.exists(temporary_path):
            os.remove(temporary_path)


# ---------------------------------------------------------------------------
# Validation split, subsets and normalization


def _indices_per_class(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Return each class's indices into ``labels`` in a random order drawn from ``rng``."""
    return [rng.permutation(np.flatnonzero(labels == label)) for label in range(num_classes)]


def _split_validation(
    per_class: list[np.ndarray], fraction: float, class_names: tuple[str, ...]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each class's shuffled indices into training and validation parts."""
    train_parts, val_parts = [], []
    for name, indices in zip(class_names, per_class):
        val_size = round(fraction * len(indices))
        if val_size == 0 or val_size == len(indices):
            change = "raise" if val_size == 0 else "lower"
            raise UserError(
                f"data.validation_fraction={fraction} leaves class {name!r} ({len(indices)} training images) "
                f"with {val_size} validation and {len(indices) - val_size} training images, but each part needs "
                f"at least one image; {change} data.validation_fraction or add images to the class."
            )
        val_parts.append(indices[:val_size])
        train_parts.append(indices[val_size:])
    return train_parts, val_parts


def _stratified_counts(available: list[int], total: int) -> list[int]:
    """Spread ``total`` over classes as evenly as their ``available`` counts allow."""
    counts = [0] * len(available)
    remaining = total
    while remaining > 0:
        open_classes = [index for index, count in enumerate(counts) if count < available[index]]
        share = remaining // len(open_classes)
        if share == 0:
            for index in open_classes[:remaining]:
                counts[index] += 1
            break

        for index in open_classes:
            added = min(share, available[index] - counts[index])
            counts[index] += added
            remaining -= added
    return counts


def _take_subset(per_class: list[np.ndarray], size: Optional[int], key: str, split: str) -> list[np.ndarray]:
    """Keep the first indices of each class, ``size`` in all, spread as evenly as possible."""
    if size is None:
        return per_class

    available = [len(indices) for indices in per_class]
    if size > sum(available):
        raise UserError(
            f"data.{key} is {size} but the {split} split has only {sum(available)} images; "
            f"set data.{key} to at most {sum(available)}, or to null to keep them all."
        )

    counts = _stratified_counts(available, size)
    return [indices[:count] for indices, count in zip(per_class, counts)]


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 per-channel mean and std of uint8 NHWC images.

    Each chunk's sums and sums of squares come from a float64 matrix product, which is
    several times faster than a reduction over the strided channel axis. Below 10**11
    pixels every partial sum is an integer under 2**53, so the float64 totals are exact.
    """
    pixels = images.reshape(-1, images.shape[-1])
    sums = np.zeros(pixels.shape[1], dtype=np.float64)
    squares = np.zeros(pixels.shape[1], dtype=np.float64)
    for start in range(0, len(pixels), _STATS_CHUNK_PIXELS):
        chunk = pixels[start : start + _STATS_CHUNK_PIXELS].astype(np.float64)
        sums += np.ones(len(chunk)) @ chunk
        squares += np.diag(chunk.T @ chunk)

    mean = sums / len(pixels)
    variance = np.maximum(squares / len(pixels) - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


def _normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``(images - mean) / std`` as float32, written in place to avoid temporary copies."""
    output = np.empty(images.shape, dtype=np.float32)
    np.subtract(images, mean, out=output)
    np.divide(output, std, out=output)
    return output


def _build_dataset(raw: _RawData, config: DataConfig) -> Dataset:
    """Split, subset and normalize decoded images into a ``Dataset``."""
    class_names = raw.class_names
    num_classes = len(class_names)
    if num_classes < 2:
        raise UserError(
            f"The data from {raw.source} has {num_classes} class ({list(class_names)}), but classification "
            "needs at least two; add class folders or set data.path to another copy."
        )

    rng = np.random.default_rng(config.split_seed)
    per_class = _indices_per_class(raw.y_train, num_classes, rng)
    train_parts, val_parts = _split_validation(per_class, config.validation_fraction, class_names)
    train_parts = _take_subset(train_parts, config.train_subset, "train_subset", "training")
    val_parts = _take_subset(val_parts, config.val_subset, "val_subset", "validation")

    empty_val = [name for name, indices in zip(class_names, val_parts) if len(indices) == 0]
    if empty_val:
        raise UserError(
            f"data.val_subset={config.val_subset} leaves no validation images for {', '.join(empty_val)}; "
            f"set data.val_subset to at least {num_classes}, one per class."
        )

    empty_train = [name for name, indices in zip(class_names, train_parts) if len(indices) == 0]
    if empty_train:
        logger.warning(
            "data.train_subset=%s leaves no training images for %s; set it to at least %d to train on every class",
            config.train_subset,
            ", ".join(empty_train),
            num_classes,
        )

    # The training order is shuffled once here, because a class-folder tree arrives sorted
    # by class and a bounded shuffle buffer in the input pipeline cannot undo that.
    order_rng = np.random.default_rng([config.split_seed, 2])
    train_indices = order_rng.permutation(np.concatenate(train_parts))
    val_indices = np.sort(np.concatenate(val_parts))
    if config.test_subset is None:
        test_indices = np.arange(len(raw.y_test))
    else:
        # A separate generator, so the test subset does not depend on the training labels.
        test_rng = np.random.default_rng([config.split_seed, 1])
        test_parts = _indices_per_class(raw.y_test, num_classes, test_rng)
        test_indices = np.sort(np.concatenate(_take_subset(test_parts, config.test_subset, "test_subset", "test")))

    x_train = raw.x_train[train_indices]
    mean, std = _channel_stats(x_train)
    if np.any(std == 0):
        logger.warning("A channel of the training images is constant (std %s); dividing it by 1 instead", std)
        std = np.where(std == 0, np.float32(1), std).astype(np.float32)

    dataset = Dataset(
        x_train=_normalize(x_train, mean, std),
        y_train=raw.y_train[train_indices].astype(np.int32),
        x_val=_normalize(raw.x_train[val_indices], mean, std),
        y_val=raw.y_train[val_indices].astype(np.int32),
        x_test=_normalize(raw.x_test[test_indices], mean, std),
        y_test=raw.y_test[test_indices].astype(np.int32),
        class_names=class_names,
        mean=mean,
        std=std,
        source=raw.source,
    )
    logger.info(
        "Loaded %s: %d training, %d validation and %d test images of shape %s in %d classes",
        raw.source,
        len(dataset.y_train),
        len(dataset.y_val),
        len(dataset.y_test),
        dataset.x_train.shape[1:],
        num_classes,
    )
    return dataset
