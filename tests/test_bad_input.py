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


def _beside(f, name: str) -> str:
    """A path next to the file being mutated."""
    import os

    return os.path.join(os.path.dirname(f.filename), name)


def _external_link(f):
    other = _beside(f, "other.h5")
    with h5py.File(other, "w") as g:
        g["features"] = np.zeros((20, 5), np.float32)
        g["labels"] = np.zeros(20, np.int64)
    del f["test"]
    f["test"] = h5py.ExternalLink(other, "/")


def _virtual(f):
    other = _beside(f, "other.h5")
    with h5py.File(other, "w") as g:
        g["x"] = np.ones((60, 5), np.float32)
    layout = h5py.VirtualLayout(shape=(60, 5), dtype="f4")
    layout[:] = h5py.VirtualSource(other, "x", shape=(60, 5))
    del f["train/features"]
    f["train"].create_virtual_dataset("features", layout)


def _external_storage(target):
    def mutate(f):
        import os

        path = _beside(f, "raw")
        if target == "fifo":
            os.mkfifo(path)  # opening it for reading would hang
        else:  # another file's bytes: here numbers, so that --allow-external can measure them
            np.random.default_rng(2).standard_normal((60, 5)).astype(np.float32).tofile(path)
        del f["train/features"]
        f["train"].create_dataset("features", shape=(60, 5), dtype="f4", external=[(path, 0, 60 * 5 * 4)])

    return mutate


def _claims(split, rows=None, cols=None):
    def mutate(f):
        n = rows or f[split]["labels"].shape[0]
        p = cols or f[split]["features"].shape[1]
        del f[split]["features"]
        f[split].create_dataset("features", shape=(n, p), dtype="f4", chunks=(min(n, 4096), min(p, 1 << 16)))
        if rows:
            del f[split]["labels"]
            f[split].create_dataset("labels", shape=(n,), dtype="i8", chunks=(4096,))
        if cols and "classifier" in f:
            del f["classifier"]

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
    "classifier of magnitude 1e308": (_set_row("classifier/weight", 1, 1.1e308), [], 3, "/classifier/weight holds a value of magnitude 1.1e+308"),
    "NaN in the bias": (_set_row("classifier/bias", 0, np.nan), [], 3, "/classifier/bias contains NaN or Inf"),
    "unknown split": (None, ["--split", "val"], 3, "no split 'val'"),
    # issue 15: other files, links, impossible sizes
    "external link": (_external_link, [], 3, "/test is an external link to"),
    "virtual dataset": (_virtual, [], 3, "/train/features is a virtual dataset"),
    "external raw storage": (_external_storage("file"), [], 3, "/train/features is stored in an external raw file"),
    "external raw storage in a FIFO": (_external_storage("fifo"), [], 3, "--allow-external"),
    "soft-link loop": (lambda f: (f.__delitem__("test"), f.__setitem__("test", h5py.SoftLink("/loop")), f.__setitem__("loop", h5py.SoftLink("/test"))), [], 3, "soft links loop"),
    "dangling soft link": (lambda f: (f.__delitem__("test"), f.__setitem__("test", h5py.SoftLink("/nowhere"))), [], 3, "/nowhere"),
    "class_names a group": (lambda f: f.create_group("class_names"), [], 3, "/class_names must be a 1-D dataset of strings"),
    "10^12 rows claimed": (_claims("train", rows=10**12), [], 3, "claims 1000000000000×5 values"),
    "p = 10^9 claimed": (_claims("train", cols=10**9), [], 3, "claims 60×1000000000 values"),
    "num_classes 2^40": (lambda f: (f.attrs.__setitem__("num_classes", 2**40), f.__delitem__("classifier")), [], 3, "num_classes is 1099511627776"),
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


# ---------------------------------------------------------------------------------------
# issue 15: files that are not what they claim, and files that name other files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["external link", "virtual dataset", "external raw storage"])
def test_allow_external_reads_other_files_when_asked(tmp_path, rng, case):
    path = _valid(tmp_path / "f.h5", rng)
    with h5py.File(path, "a") as f:
        CASES[case][0](f)
    assert runner.invoke(app, ["measure", str(path)]).exit_code == 3
    for command in (["measure", str(path), "--json", "--allow-external"], ["compare", str(path), "--json", "--allow-external"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 0, res.stderr


def _flip_btree_signature(path):
    raw = bytearray(path.read_bytes())
    at = raw.find(b"TREE")
    assert at > 0
    raw[at : at + 4] = b"XREE"
    path.write_bytes(bytes(raw))


def test_corrupted_hdf5_metadata_is_an_input_error(tmp_path, rng):
    path = _valid(tmp_path / "f.h5", rng)
    _flip_btree_signature(path)
    before = _digest([path])
    for command in (["measure", str(path)], ["compare", str(path)]):
        res = runner.invoke(app, command)
        _check_clean_failure(res, 3, str(path))
    assert _digest([path]) == before


def test_a_file_truncated_while_it_is_read(tmp_path, rng):
    from ncli.errors import InputError
    from ncli.features import FeatureFile

    path = _valid(tmp_path / "f.h5", rng, n=5000, p=64)
    with FeatureFile(path) as ff:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        with pytest.raises(InputError, match=r"split 'train': cannot read rows"):
            for _ in ff.iter_chunks("train", 100):
                pass


def test_devices_and_fifos_are_not_feature_files(tmp_path):
    import os

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    for target in ("/dev/zero", str(fifo)):
        res = runner.invoke(app, ["measure", target])
        _check_clean_failure(res, 3, "not a regular file")


def _unreadable(monkeypatch, folder):
    """os.stat/open of anything in ``folder`` fail with EACCES, as in a folder without x
    permission (root ignores real permissions, so the test also runs as root)."""
    import builtins
    import os

    real_stat, real_open = os.stat, builtins.open
    inside = str(folder) + os.sep

    def stat(path, *args, **kwargs):
        if str(path).startswith(inside):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    def opening(path, *args, **kwargs):
        if str(path).startswith(inside):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(builtins, "open", opening)


def test_a_file_in_an_unreadable_folder(tmp_path, rng, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    path = _valid(folder / "f.h5", rng)
    _unreadable(monkeypatch, folder)
    for command in (["measure", str(path)], ["compare", str(path)], ["measure", str(path), "--json"]):
        res = runner.invoke(app, command)
        _check_clean_failure(res, 3, f"{path}: cannot read (Permission denied)")


def test_a_file_in_an_unreadable_folder_for_real(tmp_path, rng):
    import os
    import subprocess
    import sys

    if os.geteuid() == 0:
        pytest.skip("root reads any folder")
    folder = tmp_path / "locked"
    folder.mkdir()
    path = _valid(folder / "f.h5", rng)
    unreadable = tmp_path / "mode000.h5"
    unreadable.write_bytes(path.read_bytes())
    unreadable.chmod(0)
    folder.chmod(0)
    try:
        for target in (path, unreadable):
            for command in (["measure", str(target)], ["compare", str(target)]):
                done = subprocess.run([sys.executable, "-m", "ncli", *command], capture_output=True, text=True)
                assert done.returncode == 3, done.stderr
                assert done.stderr.count("\n") == 1 and str(target) in done.stderr, done.stderr
    finally:
        folder.chmod(0o755)
        unreadable.chmod(0o644)
