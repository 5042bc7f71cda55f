"""Format-1 reader and writer: layout, validation, atomic writes."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ncli.errors import InputError, RefusedError
from ncli.features import FeatureFile, FeatureWriter, write_features
from ncli.outputs import TEMP_PREFIX


def _data(rng, n=50, p=6, C=3):
    y = np.arange(n) % C
    H = rng.standard_normal((n, p)).astype(np.float32)
    return H, y


def test_layout_matches_spec(tmp_path, rng):
    H, y = _data(rng)
    W = rng.standard_normal((3, 6)).astype(np.float32)
    path = write_features(
        tmp_path / "f.h5",
        {"train": {"features": H, "labels": y, "index": np.arange(50), "logits": H @ W.T}},
        num_classes=3,
        weight=W,
        bias=np.zeros(3, np.float32),
        class_names=["a", "b", "c"],
        attrs={"epoch": 7, "feature_layer": "fc"},
    )
    with h5py.File(path, "r") as f:
        assert f.attrs["ncli_format"] == "ncli.features"
        assert int(f.attrs["ncli_format_version"]) == 1
        assert int(f.attrs["num_classes"]) == 3
        assert int(f.attrs["epoch"]) == 7
        assert f["train/features"].shape == (50, 6)
        assert f["train/features"].dtype == np.float32
        assert f["train/labels"].dtype == np.int64
        assert f["train/index"].dtype == np.int64
        assert f["train/logits"].shape == (50, 3)
        assert f["classifier/weight"].shape == (3, 6)
        # row-chunked: a chunk holds whole rows
        assert f["train/features"].chunks[1] == 6
        assert [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][...]] == ["a", "b", "c"]
        np.testing.assert_array_equal(f["train/features"][...], H)
    with FeatureFile(path) as ff:
        assert ff.num_classes == 3 and ff.feature_dim == 6 and ff.epoch == 7
        assert ff.feature_layer == "fc"
        assert ff.class_names() == ["a", "b", "c"]
        W64, b = ff.classifier()
        assert W64.dtype == np.float64
        np.testing.assert_array_equal(W64, W.astype(np.float64))


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 1000])
def test_iter_chunks_covers_all_rows(tmp_path, rng, chunk_rows):
    H, y = _data(rng)
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=3)
    with FeatureFile(path) as ff:
        parts = list(ff.iter_chunks("train", chunk_rows))
    assert [c.start for c in parts] == list(range(0, 50, chunk_rows))
    np.testing.assert_array_equal(np.concatenate([c.features for c in parts]), H)
    np.testing.assert_array_equal(np.concatenate([c.labels for c in parts]), y)


def test_streaming_appends_and_no_partial_file(tmp_path, rng):
    out = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with FeatureWriter(out, num_classes=3) as w:
            H, y = _data(rng)
            w.append("train", features=H, labels=y)
            raise RuntimeError("boom")
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TEMP_PREFIX)]
    with FeatureWriter(out, num_classes=3) as w:
        for _ in range(3):
            H, y = _data(rng, n=10)
            w.append("train", features=H, labels=y)
    with FeatureFile(out) as ff:
        assert ff.split("train").num_samples == 30


def test_never_replaces_without_force(tmp_path, rng):
    out = tmp_path / "f.h5"
    out.write_bytes(b"precious")
    H, y = _data(rng)
    with pytest.raises(RefusedError, match="--force"):
        write_features(out, {"train": {"features": H, "labels": y}}, num_classes=3)
    assert out.read_bytes() == b"precious"
    write_features(out, {"train": {"features": H, "labels": y}}, num_classes=3, force=True)
    with FeatureFile(out) as ff:
        assert ff.num_classes == 3


def _corrupt(tmp_path, rng, mutate):
    H, y = _data(rng)
    path = write_features(
        tmp_path / "f.h5",
        {"train": {"features": H, "labels": y}},
        num_classes=3,
        weight=rng.standard_normal((3, 6)),
    )
    with h5py.File(path, "a") as f:
        mutate(f)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.attrs.__setitem__("ncli_format", "other"), "ncli_format"),
        (lambda f: f.attrs.__delitem__("ncli_format"), "not an ncli feature file"),
        (lambda f: f.attrs.__setitem__("ncli_format_version", 2), "version 2"),
        (lambda f: f.attrs.__delitem__("num_classes"), "num_classes"),
        (lambda f: f.__delitem__("train/labels"), "labels missing"),
        (lambda f: f.__delitem__("train/features"), "features missing"),
        (lambda f: (f.__delitem__("train/labels"), f.create_dataset("train/labels", data=np.zeros(49, int))), "50 feature rows but 49 labels"),
        (lambda f: (f.__delitem__("train/features"), f.create_dataset("train/features", data=np.zeros(50))), "2-D"),
        (lambda f: (f.__delitem__("train/labels"), f.create_dataset("train/labels", data=np.zeros(50))), "integers"),
        (lambda f: (f.__delitem__("classifier/weight"), f.create_dataset("classifier/weight", data=np.zeros((3, 5)))), "classifier/weight has shape"),
        (lambda f: f.__delitem__("train"), "no split"),
    ],
)
def test_validation_errors(tmp_path, rng, mutate, message):
    path = _corrupt(tmp_path, rng, mutate)
    with pytest.raises(InputError, match=message) as exc:
        FeatureFile(path)
    assert str(path) in str(exc.value)


def test_label_out_of_range_names_split_and_row(tmp_path, rng):
    H, y = _data(rng)
    y = y.copy()
    y[17] = 3
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=3)
    with FeatureFile(path) as ff, pytest.raises(InputError, match=r"split 'train', row 17: label 3"):
        list(ff.iter_chunks("train", 5))


def test_not_hdf5_missing_and_directory(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="not an HDF5 file"):
        FeatureFile(junk)
    with pytest.raises(InputError, match="no such file"):
        FeatureFile(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="directory"):
        FeatureFile(tmp_path)


def test_truncated_file(tmp_path, rng):
    H, y = _data(rng, n=2000, p=16)
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        with FeatureFile(path) as ff:
            list(ff.iter_chunks("train"))


# -- direct reads (DirectRows): the same bytes as h5py, or not used at all ----------------------


def _raw_file(path, make, n=1000, p=7):
    """A format-1 file whose train features are created by ``make(group, data)``."""
    rng = np.random.default_rng(3)
    H = rng.standard_normal((n, p)).astype(np.float32)
    y = rng.integers(0, 3, n)
    with h5py.File(path, "w") as f:
        f.attrs["ncli_format"] = "ncli.features"
        f.attrs["ncli_format_version"] = 1
        f.attrs["num_classes"] = 3
        g = f.create_group("train")
        make(g, H)
        g.create_dataset("labels", data=y)
    return H


def _direct(path):
    from ncli.features.direct_rows import DirectRows

    with h5py.File(path, "r") as f:
        return DirectRows.open(f["train/features"]) is not None


@pytest.mark.parametrize(
    "layout,expected",
    [
        ("chunked", True),
        ("contiguous", True),
        ("odd-chunks", True),
        ("gzip", False),
        ("big-endian", False),
        ("column-chunks", False),
        ("unwritten-chunk", False),
    ],
)
def test_direct_reads_equal_h5py(tmp_path, layout, expected):
    makers = {
        "chunked": lambda g, H: g.create_dataset("features", data=H, chunks=(64, H.shape[1])),
        "contiguous": lambda g, H: g.create_dataset("features", data=H),
        "odd-chunks": lambda g, H: g.create_dataset("features", data=H, chunks=(37, H.shape[1]), maxshape=(None, H.shape[1])),
        "gzip": lambda g, H: g.create_dataset("features", data=H, chunks=(64, H.shape[1]), compression="gzip"),
        "big-endian": lambda g, H: g.create_dataset("features", data=H.astype(">f4"), chunks=(64, H.shape[1])),
        "column-chunks": lambda g, H: g.create_dataset("features", data=H, chunks=(64, 3)),
    }

    def unwritten(g, H):
        ds = g.create_dataset("features", shape=H.shape, dtype=H.dtype, chunks=(64, H.shape[1]))
        ds[:500] = H[:500]  # rows 500.. never written: HDF5 returns the fill value
        H[500:] = 0

    makers["unwritten-chunk"] = unwritten
    path = tmp_path / f"{layout}.h5"
    H = _raw_file(path, makers[layout])
    assert _direct(path) is expected
    if layout == "unwritten-chunk":  # rows HDF5 would return as fill values are never read (issue 15)
        with pytest.raises(InputError, match="/train/features claims 1000×7 values .* unwritten"):
            FeatureFile(path)
        return
    with FeatureFile(path) as ff:
        for rows in (1, 37, 64, 100, 1000):
            got = np.concatenate([ch.features for ch in ff.iter_chunks("train", rows)])
            np.testing.assert_array_equal(got, H)


def test_direct_reads_refuse_user_block(tmp_path):
    path = tmp_path / "ub.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.attrs["ncli_format"] = "ncli.features"
        f.attrs["ncli_format_version"] = 1
        f.attrs["num_classes"] = 2
        f.create_dataset("train/features", data=rng.standard_normal((100, 4)), chunks=(10, 4))
        f.create_dataset("train/labels", data=rng.integers(0, 2, 100))
    assert not _direct(path)
    with FeatureFile(path) as ff:
        assert next(ff.iter_chunks("train", 100)).features.shape == (100, 4)


def test_measure_same_with_and_without_direct_reads(tmp_path, rng, monkeypatch):
    from ncli.features.direct_rows import DirectRows
    from ncli.measure.record import measure_file

    C, p, n = 5, 12, 3000
    means = rng.standard_normal((C, p))
    y = rng.integers(0, C, n)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    path = write_features(tmp_path / "m.h5", {"train": {"features": H, "labels": y}}, num_classes=C,
                          weight=rng.standard_normal((C, p)))
    assert _direct(path)
    direct = measure_file(path, per_class=True)
    monkeypatch.setattr(DirectRows, "open", classmethod(lambda cls, ds: None))
    assert measure_file(path, per_class=True) == direct
