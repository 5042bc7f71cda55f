"""What cannot be computed is an InputError naming file, split and class/row (metrics.md,
"When something cannot be computed") — never a silent NaN."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ncli.errors import InputError
from ncli.features import write_features

measure = pytest.importorskip("ncli.measure.record")


def _data(rng, C=3, n=30, p=4):
    means = 10.0 * rng.normal(size=(C, p))
    y = np.arange(n, dtype=np.int64) % C
    H = means[y] + rng.normal(size=(n, p))
    return H, y


def _message(excinfo, path) -> str:
    """The error text with the path taken out (tmp paths contain digits); asserts it names the file."""
    msg = str(excinfo.value)
    assert str(path) in msg or path.name in msg, f"message does not name the file: {msg!r}"
    return msg.replace(str(path), "<file>").replace(path.name, "<file>")


def _names_row(msg: str, row: int) -> bool:
    return re.search(rf"\brows?\b\D{{0,4}}{row}\b", msg) is not None


def _names_class(msg: str, c: int) -> bool:
    return re.search(rf"\bclass(es)?\b\D{{0,6}}{c}\b", msg) is not None


def test_class_without_train_rows(tmp_path):
    rng = np.random.default_rng(0)
    H, y = _data(rng, C=3)
    y[y == 2] = 1  # class 2 has no train rows
    Ht, yt = _data(rng, C=3, n=9)  # it does have test rows: still an error (stats come from train)
    path = tmp_path / "empty_class.h5"
    write_features(path, {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
                   num_classes=3, weight=rng.normal(size=(3, 4)))
    with pytest.raises(InputError) as ei:
        measure.measure_file(str(path))
    msg = _message(ei, path)
    assert _names_class(msg, 2), msg


def test_fewer_than_two_classes(tmp_path):
    rng = np.random.default_rng(1)
    H = rng.normal(size=(10, 3))
    y = np.zeros(10, dtype=np.int64)
    path = tmp_path / "one_class.h5"
    write_features(path, {"train": {"features": H, "labels": y}}, num_classes=1)
    with pytest.raises(InputError) as ei:
        measure.measure_file(str(path))
    _message(ei, path)


@pytest.mark.parametrize(
    "split,row,value,chunk_rows",
    [("train", 7, 3, None), ("train", 7, 3, 5), ("train", 0, -1, None), ("test", 4, 5, 3), ("test", 2, -2, None)],
)
def test_label_out_of_range(tmp_path, split, row, value, chunk_rows):
    rng = np.random.default_rng(2)
    H, y = _data(rng, C=3)
    Ht, yt = _data(rng, C=3, n=9)
    target = y if split == "train" else yt
    target[row] = value
    path = tmp_path / "bad_label.h5"
    write_features(path, {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
                   num_classes=3, weight=rng.normal(size=(3, 4)))
    with pytest.raises(InputError) as ei:
        measure.measure_file(str(path), chunk_rows=chunk_rows)
    msg = _message(ei, path)
    assert split in msg, msg
    assert _names_row(msg, row), msg


@pytest.mark.parametrize(
    "split,row,bad,chunk_rows",
    [
        ("train", 13, np.nan, None),
        ("train", 13, np.nan, 5),  # row 13 is row 3 of the third chunk: the index must be global
        ("train", 0, np.inf, None),
        ("test", 4, np.nan, None),
        ("test", 7, -np.inf, 3),
    ],
)
def test_nonfinite_features(tmp_path, split, row, bad, chunk_rows):
    rng = np.random.default_rng(3)
    H, y = _data(rng, C=3)
    Ht, yt = _data(rng, C=3, n=12)
    target = H if split == "train" else Ht
    target[row, 1] = bad
    target[row + 2, 0] = bad  # a later bad row too: the message names the first
    path = tmp_path / "nan.h5"
    write_features(path, {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
                   num_classes=3, weight=rng.normal(size=(3, 4)))
    with pytest.raises(InputError) as ei:
        measure.measure_file(str(path), chunk_rows=chunk_rows)
    msg = _message(ei, path)
    assert split in msg, msg
    assert _names_row(msg, row), msg


def test_nonfinite_features_float32(tmp_path):
    rng = np.random.default_rng(4)
    H, y = _data(rng, C=3)
    H = H.astype(np.float32)
    H[21, 3] = np.nan
    path = tmp_path / "nan32.h5"
    write_features(path, {"train": {"features": H, "labels": y}}, num_classes=3)
    with pytest.raises(InputError) as ei:
        measure.measure_file(str(path), chunk_rows=8)
    msg = _message(ei, path)
    assert "train" in msg and _names_row(msg, 21), msg
