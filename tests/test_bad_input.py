"""The bad-input matrix for `ncli measure`: every case exits non-zero with one or two clear
lines on stderr, no traceback, and leaves every existing file byte-identical."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.features import write_features

runner = CliRunner()


def _valid(path, rng, C=3, p=5, n=60):
    y = np.arange(n) % C
    H = (np.eye(C, p)[y] * 3 + rng.standard_normal((n, p))).astype(np.float32)
    return write_features(
        path,
        {"train": {"features": H, "labels": y}, "test": {"features": H[:20], "labels": y[:20]}},
        num_classes=C,
        weight=rng.standard_normal((C, p)),
        bias=np.zeros(C),
    )


def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


def _set_row(name, row, value):
    def mutate(f):
        arr = f[name][...]
        arr[row] = value
        _replace(f, name, arr)

    return mutate


CASES = {
    # name: (mutation of a valid file or None, extra args, expected code, text in the message)
    "unknown format version": (lambda f: f.attrs.__setitem__("ncli_format_version", 9), [], 3, "version 9"),
    "not an ncli file": (lambda f: f.attrs.__delitem__("ncli_format"), [], 3, "not an ncli feature file"),
    "missing features": (lambda f: f.__delitem__("train/features"), [], 3, "features missing"),
    "missing labels": (lambda f: f.__delitem__("train/labels"), [], 3, "labels missing"),
    "rows != labels": (lambda f: _replace(f, "train/labels", np.zeros(59, np.int64)), [], 3, "60 feature rows but 59 labels"),
    "1-D features": (lambda f: _replace(f, "train/features", np.zeros(60, np.float32)), [], 3, "2-D"),
    "labels out of range": (_set_row("train/labels", 41, 3), [], 3, "row 41: label 3"),
    "negative label": (_set_row("train/labels", 5, -1), [], 3, "row 5: label -1"),
    "labels not integers": (lambda f: _replace(f, "train/labels", np.zeros(60, np.float64)), [], 3, "must be integers"),
    "NaN in train": (_set_row("train/features", 33, np.nan), [], 3, "split 'train', row 33"),
    "Inf in test": (_set_row("test/features", 7, np.inf), [], 3, "split 'test', row 7"),
    "empty split": (lambda f: (_replace(f, "test/features", np.zeros((0, 5), np.float32)), _replace(f, "test/labels", np.zeros(0, np.int64))), [], 3, "empty"),
    "one class": (lambda f: f.attrs.__setitem__("num_classes", 1), [], 3, None),
    "class without train rows": (lambda f: _replace(f, "train/labels", np.where(f["train/labels"][...] == 2, 1, f["train/labels"][...])), [], 3, "class 2"),
    "classifier shape mismatch": (lambda f: _replace(f, "classifier/weight", np.zeros((3, 4))), [], 3, "classifier/weight has shape"),
    "unknown split": (None, ["--split", "val"], 3, "no split 'val'"),
    "unknown layer": (None, ["--layer", "block9"], 3, "no layer 'block9'"),
    "bad option value": (None, ["--global-mean", "median"], 2, None),
}


def _digest(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _check_clean_failure(res, code, needle):
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    err = res.stderr.strip().splitlines()
    assert 1 <= len(err) <= 2 or code == 2, res.stderr
    if code != 2:
        assert err[0].startswith("ncli: error: ")
    if needle:
        assert needle in res.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_measure_bad_file(tmp_path, rng, case):
    mutate, extra, code, needle = CASES[case]
    path = _valid(tmp_path / "f.h5", rng)
    if mutate is not None:
        with h5py.File(path, "a") as f:
            mutate(f)
    before = _digest([path])
    res = runner.invoke(app, ["measure", str(path), *extra])
    _check_clean_failure(res, code, needle)
    if code == 3:
        assert str(path) in res.stderr or "split" in res.stderr
    assert _digest([path]) == before


def test_measure_missing_directory_junk_truncated(tmp_path, rng):
    good = _valid(tmp_path / "good.h5", rng)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00garbage" * 100)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:1000])
    before = _digest([good, junk, trunc])
    for target, needle in (
        (tmp_path / "missing.h5", "no such file"),
        (tmp_path, "directory"),
        (junk, "not an HDF5 file"),
        (trunc, str(trunc)),
    ):
        res = runner.invoke(app, ["measure", str(target)])
        _check_clean_failure(res, 3, needle)
    # a bad file among good ones still fails the command, naming the bad one
    res = runner.invoke(app, ["measure", str(good), str(junk), "--json"])
    _check_clean_failure(res, 3, str(junk))
    assert _digest([good, junk, trunc]) == before
