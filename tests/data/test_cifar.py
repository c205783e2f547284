"""CIFAR batches: round trip of the toy writer, statistics, bad input, and no code run from a pickle."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geocl.data.cifar import CifarDataset
from geocl.data.natural_toy import write_toy_cifar
from geocl.errors import GeoclError


def _unpickle(path: Path) -> dict:
    with path.open("rb") as handle:
        return pickle.load(handle, encoding="latin1")


def test_cifar10_reads_the_writers_exact_pixels_labels_and_names(tmp_path: Path) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=4, per_class=6, test_per_class=2, train_batches=3, seed=1)
    assert sorted(p.name for p in root.iterdir()) == [
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "test_batch",
    ]
    batches = [_unpickle(root / f"data_batch_{n}") for n in (1, 2, 3)]
    assert all(b["data"].dtype == np.uint8 and b["data"].shape[1] == 3072 for b in batches)
    train = CifarDataset(root, "train")
    assert len(train) == 24 and train.classes == ["class0", "class1", "class2", "class3"]
    assert train.labels.tolist() == [label for b in batches for label in b["labels"]]
    # CIFAR's row layout: the red 32x32 plane, then green, then blue, each row-major.
    row = batches[1]["data"][3]
    item = len(batches[0]["labels"]) + 3
    raw = train.raw(item)
    for channel, y, x in [(0, 0, 0), (1, 5, 17), (2, 31, 2)]:
        assert raw[channel, y, x] == row[channel * 1024 + y * 32 + x]
    test = CifarDataset(root, "test")
    assert test.labels.tolist() == _unpickle(root / "test_batch")["labels"] and len(test) == 8
    assert CifarDataset(root, "val").labels.tolist() == test.labels.tolist()


def test_cifar_statistics_are_the_train_pixels_and_normalise_samples(tmp_path: Path) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=3, per_class=4, test_per_class=1, train_batches=2)
    train = CifarDataset(root)
    pixels = np.concatenate([_unpickle(root / f"data_batch_{n}")["data"] for n in (1, 2)]).reshape(-1, 3, 1024)
    stats = train.metadata["band_stats"]
    assert stats["mean"] == pytest.approx(pixels.mean(axis=(0, 2)).tolist())
    assert stats["std"] == pytest.approx(pixels.std(axis=(0, 2)).tolist())
    sample = train[5]
    expected = (train.raw(5).astype(np.float64) - np.array(stats["mean"])[:, None, None]) / np.array(stats["std"])[
        :, None, None
    ]
    assert sample["image"].dtype == torch.float32 and sample["label"] == int(train.labels[5])
    assert np.allclose(sample["image"].numpy(), expected, atol=1e-4)
    # The test split is normalised with the train statistics, not its own.
    assert CifarDataset(root, "test").metadata["band_stats"] == stats


def test_cifar100_layout_and_key_names(tmp_path: Path) -> None:
    root = write_toy_cifar(
        tmp_path / "cifar-100-python", num_classes=7, per_class=2, test_per_class=1, variant="cifar100"
    )
    assert sorted(p.name for p in root.iterdir()) == ["meta", "test", "train"]
    stored = _unpickle(root / "train")
    assert "fine_labels" in stored and "coarse_labels" in stored and "labels" not in stored
    data = CifarDataset(tmp_path, "train")  # the folder the archive was extracted into works too
    assert data.labels.tolist() == stored["fine_labels"]
    assert data.classes == _unpickle(root / "meta")["fine_label_names"]
    assert np.array_equal(data.images.reshape(len(data), -1), stored["data"])


def test_without_meta_file_classes_are_label_numbers_and_bytes_keys_are_named(tmp_path: Path) -> None:
    root = tmp_path / "no_meta"
    root.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for name in ("data_batch_1", "test_batch"):
        with (root / name).open("wb") as handle:
            pickle.dump({"data": data, "labels": [1, 0], "batch_label": "x"}, handle, protocol=2)
    dataset = CifarDataset(root)
    assert dataset.labels.tolist() == [1, 0] and dataset.classes == ["0", "1"]
    assert np.array_equal(dataset.raw(1).reshape(-1), data[1])
    # Bytes keys (a re-save of what pickle.load(..., encoding="bytes") gives) are not the
    # official layout: a user error naming the file.
    with (root / "data_batch_1").open("wb") as handle:
        pickle.dump({b"data": data, b"labels": [1, 0], b"batch_label": b"x"}, handle, protocol=2)
    with pytest.raises(GeoclError, match="corrupt CIFAR batch file") as caught:
        CifarDataset(root)
    assert caught.value.path == str(root / "data_batch_1")


def test_missing_and_corrupt_cifar_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(GeoclError) as caught:
        CifarDataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=2)
    (root / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(GeoclError, match="corrupt") as caught:
        CifarDataset(root)
    assert caught.value.path == str(root / "data_batch_2")
    (root / "test_batch").unlink()
    with pytest.raises(GeoclError) as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "test_batch")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GeoclError, match="not a CIFAR python folder"):
        CifarDataset(empty)


def test_corrupt_meta_file_and_wrong_pixel_type_are_named(tmp_path: Path) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1]}
    (root / "batches.meta").write_bytes(pickle.dumps({"names": ["a", "b"]}, protocol=2))
    with pytest.raises(GeoclError, match="label_names") as caught:
        CifarDataset(root, "test", band_stats=stats)
    assert caught.value.path == str(root / "batches.meta")
    (root / "batches.meta").unlink()
    with (root / "test_batch").open("wb") as handle:
        pickle.dump({"data": np.zeros((2, 3072), dtype=np.int64), "labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(GeoclError, match="uint8") as caught:
        CifarDataset(root, "test", band_stats=stats)
    assert caught.value.path == str(root / "test_batch")


class _RunsCode:
    """Pickles as a call of os.mkdir: what a booby-trapped "CIFAR batch" would hold."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        import os

        return (os.mkdir, (str(self.target),))


def test_a_pickle_that_names_a_function_is_refused_before_it_runs(tmp_path: Path) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    trapped = _unpickle(root / "test_batch")
    marker = tmp_path / "ran"
    trapped["batch_label"] = _RunsCode(marker)
    payload = pickle.dumps(trapped, protocol=2)
    (root / "test_batch").write_bytes(payload)
    with pytest.raises(GeoclError, match="refused: the file asks for posix.mkdir") as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "test_batch") and "nothing in it was run" in str(caught.value)
    assert not marker.exists()
    # the class-names file is read the same way
    trapped_meta = {"label_names": ["a", "b"], "num_vis": _RunsCode(marker)}
    (root / "batches.meta").write_bytes(pickle.dumps(trapped_meta, protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(_unpickle(root / "data_batch_1"), protocol=2))
    with pytest.raises(GeoclError, match="refused") as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "batches.meta") and not marker.exists()
    pickle.loads(payload)  # what reading it with pickle.load would have done
    assert marker.is_dir()


#: The pure-Python pickler (``pickle._Pickler``), whose per-type writers a subclass can replace.
_PurePickler: Any = getattr(pickle, "_Pickler")  # noqa: B009  (private: typeshed does not describe it)


class _Python2Pickler(_PurePickler):
    """Writes str and bytes as Python 2's str (SHORT_BINSTRING / BINSTRING), as the official archives hold them."""

    dispatch = dict(_PurePickler.dispatch)

    def save_python2_str(self, value: str | bytes) -> None:
        raw = value.encode("latin1") if isinstance(value, str) else value
        self.write((b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def _python2_pickle(content: dict) -> bytes:
    """``content`` as Python 2 and NumPy 1 pickled it: protocol 2, byte strings, numpy.core names."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, 2).dump(content)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_the_official_python2_pickles_are_read(tmp_path: Path, variant: str) -> None:
    root = write_toy_cifar(tmp_path / variant, variant=variant, num_classes=3, per_class=2, test_per_class=1)
    originals = {}
    for path in root.iterdir():
        originals[path.name] = _unpickle(path)
        raw = _python2_pickle(originals[path.name])
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        assert {"SHORT_BINSTRING", "BINSTRING"} & ops and "BINUNICODE" not in ops
        assert ("data" not in originals[path.name]) or b"numpy.core.multiarray\n_reconstruct" in raw
        path.write_bytes(raw)
    dataset = CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    test = originals["test_batch" if variant == "cifar10" else "test"]
    labels = test["labels" if variant == "cifar10" else "fine_labels"]
    assert dataset.labels.tolist() == labels and dataset.classes == ["class0", "class1", "class2"]
    assert np.array_equal(dataset.images.reshape(len(labels), -1), test["data"])


def test_protocol_5_numpy_integer_labels_and_empty_bytes_are_read(tmp_path: Path) -> None:
    # what a user's re-pack may hold: the newest protocol (arrays as buffers), labels as
    # numpy integers (list(array)), an empty byte string in a protocol-2 file
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    content = _unpickle(root / "data_batch_1")
    repacked = {**content, "labels": list(np.asarray(content["labels"], dtype=np.int64))}
    (root / "data_batch_1").write_bytes(pickle.dumps(repacked, protocol=5))
    (root / "test_batch").write_bytes(pickle.dumps({**_unpickle(root / "test_batch"), "batch_label": b""}, protocol=2))
    dataset = CifarDataset(root)
    assert dataset.labels.tolist() == content["labels"]
    assert np.array_equal(dataset.images.reshape(len(dataset.labels), -1), content["data"])
    CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})


def _call(module: bytes, name: bytes, *args: bytes) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)`` (each arg a pickled value's opcodes)."""
    return b"\x80\x02c" + module + b"\n" + name + b"\n(" + b"".join(args) + b"tR."


@pytest.mark.parametrize(
    "payload",
    [
        # numpy.ndarray called directly: 100 MB from a few bytes
        _call(b"numpy", b"ndarray", b"J\x00\xe1\xf5\x05\x85", _call(b"numpy", b"dtype", b"X\x02\x00\x00\x00u1")[2:-1]),
        # an object dtype
        _call(b"numpy", b"dtype", b"X\x02\x00\x00\x00O8"),
        # bytes() sized by the file: a gigabyte of zeros
        _call(b"builtins", b"bytes", b"J\x00\xca\x9a\x3b"),
        # another codec than latin-1 (hex doubles the size each time it is chained)
        _call(b"_codecs", b"encode", b"X\x01\x00\x00\x00a", b"X\x03\x00\x00\x00hex"),
        # _reconstruct asked for another shape
        _call(b"numpy.core.multiarray", b"_reconstruct", b"cnumpy\nndarray\n", b"J\x00\xe1\xf5\x05\x85", b"U\x01b"),
    ],
    ids=["ndarray-call", "object-dtype", "sized-bytes", "hex-codec", "reconstruct-shape"],
)
def test_the_calls_numpy_pickles_never_make_are_refused(tmp_path: Path, payload: bytes) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    (root / "test_batch").write_bytes(payload)
    with pytest.raises(GeoclError) as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "test_batch")
    assert "refused: the file asks for" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"data": np.zeros((1, 3072), np.uint8), "labels": 5}, "'labels' is not a list of integer labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": None}, "'labels' is not a list of integer labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [[1], [1, 2]]}, "'labels' is not a list of integer"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.5, 1.0]}, "'labels' is not a list of integer"),
        ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, "'data' is uint8 (2, 3000) for 2 labels"),
        ({"data": [1, 2], "labels": [0, 1]}, "'data' is list for 2 labels"),
    ],
)
def test_malformed_batches_are_one_line_naming_the_file(tmp_path: Path, content: dict, message: str) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    (root / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(GeoclError, match=re.escape(message)) as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "test_batch")


def test_a_meta_file_whose_names_are_not_a_list_is_named(tmp_path: Path) -> None:
    root = write_toy_cifar(tmp_path / "c10", num_classes=2, per_class=2, test_per_class=1, train_batches=1)
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": 5}, protocol=2))
    with pytest.raises(GeoclError, match="not a list of names") as caught:
        CifarDataset(root, "test", band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert caught.value.path == str(root / "batches.meta")
