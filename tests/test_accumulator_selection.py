"""The accumulator and statistics files with a class selection (--min-per-class) and an
out-of-distribution split (--ood): equal to measuring the feature file of the same rows with
the same options (1e-9 relative), whatever the route (numpy, the torch device path, given
logits, merged accumulators, a saved file measured by the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import ncli
from ncli.cli import app
from ncli.errors import NcliError
from ncli.features import write_features
from ncli.measure.record import measure_file
from test_accumulator import _batches

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record

torch = pytest.importorskip("torch")

runner = CliRunner()
C, P, K = 8, 5, 3
TRAIN_COUNTS = [40, 3, 0, 25, 2, 30, 18, 1]  # K = 3 keeps classes 0, 1, 3, 5, 6
KEPT = [0, 1, 3, 5, 6]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def data(rng, tmp_path):
    """Train rows with the counts above, a test split with rows of every class (the left-out
    ones too), an OOD split with arbitrary labels; and the feature file of all of it."""
    means = 3.0 * rng.standard_normal((C, P)) + 0.5
    y = rng.permutation(np.repeat(np.arange(C), TRAIN_COUNTS))
    H = (means[y] + rng.standard_normal((y.size, P))).astype(np.float32)
    yt = rng.permutation(np.repeat(np.arange(C), 6))
    Ht = (means[yt] + 1.5 * rng.standard_normal((yt.size, P))).astype(np.float32)
    Hood = (rng.standard_normal((37, P)) + 2.0).astype(np.float32)
    yood = rng.integers(0, C, Hood.shape[0])
    W = (means - means.mean(axis=0) + 0.5 * rng.standard_normal((C, P))).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    path = write_features(
        tmp_path / "features.h5",
        {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt},
         "ood": {"features": Hood, "labels": yood}},
        num_classes=C, weight=W, bias=b,
    )
    return dict(H=H, y=y, Ht=Ht, yt=yt, Hood=Hood, yood=yood, W=W, b=b, path=path)


def _feed(acc, rng, d, convert=lambda a: a, logits=False, ood_labels=False, evaluate=True):
    for rows in _batches(rng, len(d["y"]), sizes=(1, 5, 17, 64)):
        acc.update(convert(d["H"][rows]), convert(d["y"][rows]))
    for rows in _batches(rng, len(d["yood"]), sizes=(1, 5, 17, 64)):
        acc.update(convert(d["Hood"][rows]), convert(d["yood"][rows]) if ood_labels else None, split="ood")
    if not evaluate:
        return acc
    for split, X, labels in (("train", d["H"], d["y"]), ("test", d["Ht"], d["yt"])):
        for rows in _batches(rng, len(labels), sizes=(1, 5, 17, 64)):
            z = convert(X[rows].astype(np.float64) @ d["W"].T.astype(np.float64) + d["b"]) if logits else None
            acc.evaluate(convert(X[rows]), convert(labels[rows]), split=split, logits=z)
    return acc


@pytest.mark.parametrize(
    "engine,convert,logits",
    [
        ("auto", lambda a: a, False),  # numpy arrays: the numpy kernels
        ("torch", torch.from_numpy, False),  # CPU tensors through the torch device path
        ("auto", lambda a: a, True),  # the network's decisions from given logits
        ("torch", torch.from_numpy, True),
    ],
    ids=["numpy", "device-path", "numpy-logits", "device-path-logits"],
)
def test_min_per_class_and_ood_equal_the_feature_file(rng, data, engine, convert, logits):
    want = measure_file(data["path"], per_class=True, min_per_class=K, ood="ood")
    assert want["classes_measured"] == len(KEPT) and [row["class"] for row in want["per_class"]] == KEPT
    assert_record_matches(want, reference_record(data["H"], data["y"], C, data["W"], data["b"],
                                                 {"test": (data["Ht"], data["yt"])}, min_per_class=K, ood=data["Hood"]),
                          per_class=True)
    W, b = (None, None) if logits else (convert(data["W"]), convert(data["b"]))
    acc = _feed(ncli.Accumulator(C, W=W, b=b, min_per_class=K, engine=engine), rng, data, convert, logits=logits)
    got = acc.measure(W=data["W"], b=data["b"], per_class=True, ood="ood")
    assert (got["min_per_class"], got["classes_measured"], got["ood"]) == (K, len(KEPT), want["ood"])
    assert_record_matches(got, want, rtol=1e-9, per_class=True)
    for name in ("train", "test"):  # decisions are exact: the counts equal
        assert got["splits"][name]["num_samples"] == want["splits"][name]["num_samples"]
        assert got["splits"][name]["accuracy"] == want["splits"][name]["accuracy"]
    without = acc.measure()  # no --ood: no NC5, the OOD split is in no record
    assert without["metrics"]["nc5_orthodev"] is None and set(without["splits"]) == {"train", "test"}


def test_a_saved_file_is_measured_with_the_same_options(rng, data, tmp_path):
    acc = _feed(ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K, epoch=3), rng, data, ood_labels=True)
    path = acc.save(tmp_path / "run.stats.h5")
    want = measure_file(data["path"], per_class=True, min_per_class=K, ood="ood")
    result = _invoke("measure", path, "--min-per-class", K, "--ood", "ood", "--json", "--per-class")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got == json.loads(json.dumps({**acc.measure(per_class=True, ood="ood"), "file": str(path)}))
    assert_record_matches(got, want, rtol=1e-9, per_class=True)
    loaded = ncli.Accumulator.load(path)
    assert loaded.min_per_class == K
    assert_record_matches(loaded.measure(ood="ood"), want, rtol=1e-12)
    assert _invoke("measure", path, "--min-per-class", K).exit_code == 0
    compared = _invoke("compare", path, data["path"], "--min-per-class", K, "--ood", "ood", "--json")
    assert compared.exit_code == 0, compared.output
    runs = json.loads(compared.stdout)["runs"]
    assert [run["classes_measured"] for run in runs] == [len(KEPT)] * 2
    assert_record_matches(runs[0], {**runs[1], "per_class": None}, rtol=1e-9)


def test_a_selection_that_differs_from_the_passes_is_refused(rng, data, tmp_path):
    acc = _feed(ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K), rng, data)
    path = acc.save(tmp_path / "run.stats.h5")
    for args, needle in (
        ([], "collected with --min-per-class 3 (5 of 8 classes)"),  # class 2 has no train row
        (["--min-per-class", "20"], "--min-per-class 20 (3 of 8 classes) needs the features again"),
    ):
        result = _invoke("measure", path, *args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("ncli: error: ") and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # --min-per-class 2 keeps class 4 (2 rows) too: refused; --min-per-class 3 only is the file's
    assert _invoke("measure", path, "--min-per-class", 2).exit_code == 2
    assert _invoke("measure", path, "--min-per-class", 3).exit_code == 0


def test_another_k_selecting_the_same_classes_is_accepted(rng, tmp_path):
    """Passes without a selection, every class with train rows: --min-per-class 1 keeps every
    class, so the file answers it (the record says the K asked, as the feature file's does)."""
    y = np.arange(120) % 4
    H = (rng.standard_normal((4, 6))[y] * 3 + rng.standard_normal((120, 6))).astype(np.float32)
    W, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    features = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=4, weight=W, bias=b)
    acc = ncli.Accumulator(4, W=W, b=b)
    acc.update(H, y)
    acc.evaluate(H, y)
    path = acc.save(tmp_path / "s.h5")
    got, want = measure_file(path, min_per_class=1), measure_file(features, min_per_class=1)
    assert got["min_per_class"] == want["min_per_class"] == 1
    assert_record_matches(got, want, rtol=1e-9)
    assert _invoke("measure", path, "--min-per-class", 31).exit_code == 2  # 30 rows a class: none kept


def test_merged_accumulators_with_a_selection_equal_one(rng, data):
    whole = _feed(ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K), rng, data)
    parts = [ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K) for _ in range(3)]
    for i, rows in enumerate(np.array_split(rng.permutation(len(data["y"])), 3)):
        parts[i].update(data["H"][rows], data["y"][rows])
    for i, rows in enumerate(np.array_split(np.arange(len(data["yood"])), 3)):
        parts[i].update(data["Hood"][rows], None, split="ood")
    first = parts[0].merge(parts[1]).merge(parts[2])
    workers = [first.copy() for _ in range(2)]
    for split, X, labels in (("train", data["H"], data["y"]), ("test", data["Ht"], data["yt"])):
        for i, rows in enumerate(np.array_split(np.arange(len(labels)), 2)):
            workers[i].evaluate(X[rows], labels[rows], split=split)
    merged = workers[0].merge(workers[1])
    assert_record_matches(merged.measure(per_class=True, ood="ood"), whole.measure(per_class=True, ood="ood"),
                          rtol=1e-9, per_class=True)
    other = ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K + 1)
    with pytest.raises(NcliError, match="min_per_class"):
        other.merge(ncli.Accumulator(C, W=data["W"], b=data["b"], min_per_class=K))


def test_unlabelled_batches_are_for_other_splits_only(rng, data):
    acc = ncli.Accumulator(C)
    with pytest.raises(NcliError, match="labels are needed: this split defines the metrics"):
        acc.update(data["H"], None)
    acc.update(data["Hood"], None, split="ood")
    with pytest.raises(NcliError, match="fed with labels, but earlier batches of this split were fed without"):
        acc.update(data["Hood"], data["yood"], split="ood")
    acc.update(data["H"], data["y"])
    with pytest.raises(NcliError, match="no class sums of split 'val'"):
        _feed(ncli.Accumulator(C, min_per_class=K), rng, data).measure(ood="val")
    with pytest.raises(NcliError, match="at least 1|positive integer"):
        ncli.Accumulator(C, min_per_class=0)
