"""Statistics files (docs/format.md): written by Accumulator.save, read by `ncli measure` and
`ncli compare` wherever a feature file is accepted; what needs per-sample data is refused in
one line; damaged files are refused; the size does not grow with the data."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import ncli
from ncli.cli import app
from ncli.features import write_features
from ncli.features.stats_file import FORMAT_NAME, is_statistics_file
from ncli.measure.record import measure_file

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record

runner = CliRunner()
C, P = 5, 8


def _data(rng, n, C=C, p=P):
    means = rng.standard_normal((C, p)) * 4
    y = np.arange(n) % C
    return (means[y] + rng.standard_normal((n, p))).astype(np.float32), y


def _accumulated(rng, n=400, **kw):
    H, y = _data(rng, n)
    Ht, yt = _data(rng, n // 2)
    W, b = rng.standard_normal((C, P)), rng.standard_normal(C)
    acc = ncli.Accumulator(C, W=W, b=b, **kw)
    for rows in np.array_split(np.arange(n), 4):
        acc.update(H[rows], y[rows])
    acc.evaluate(H, y)
    acc.evaluate(Ht, yt, split="test")
    return acc, (H, y, Ht, yt, W, b)


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_measure_of_a_saved_file_is_the_accumulators_record(tmp_path, rng):
    acc, (H, y, Ht, yt, W, b) = _accumulated(rng, epoch=7, step=70)
    path = acc.save(tmp_path / "run.stats.h5")
    assert is_statistics_file(path) and not is_statistics_file(tmp_path / "missing.h5")
    result = _invoke("measure", path, "--json", "--per-class")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got == json.loads(json.dumps({**acc.measure(per_class=True), "file": str(path)}))
    assert_record_matches(got, reference_record(H, y, C, W, b, {"test": (Ht, yt)}), per_class=True)
    table = _invoke("measure", path)
    assert table.exit_code == 0 and "nc1" in table.stdout and "test" in table.stdout


def test_compare_takes_statistics_files_beside_feature_files(tmp_path, rng):
    acc, (H, y, Ht, yt, W, b) = _accumulated(rng, epoch=2)
    stats = acc.save(tmp_path / "e2.stats.h5")
    features = write_features(
        tmp_path / "e1.h5", {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
        num_classes=C, weight=W, bias=b, attrs={"epoch": 1},
    )
    result = _invoke("compare", stats, features, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [run["epoch"] for run in runs] == [1, 2]  # ordered by the stored epoch
    assert_record_matches(runs[1], {**runs[0], "per_class": None}, rtol=1e-12)  # the same data, two routes
    assert _invoke("compare", stats, "--csv").exit_code == 0
    lines = _invoke("measure", stats, "--json").stdout
    (tmp_path / "records.jsonl").write_text(lines)
    assert _invoke("compare", tmp_path / "records.jsonl", stats, "--json").exit_code == 0


@pytest.mark.parametrize(
    "args,needle,code",
    [
        (["measure", "{f}", "--layer", "fc"], "--layer fc: a statistics file holds", 2),
        (["measure", "{f}", "--layer", "all"], "a statistics file stores no layers", 2),
        (["measure", "{f}", "--chunk-rows", "64"], "--chunk-rows does not apply to a statistics file", 2),
        (["measure", "{f}", "--split", "test"], "collected with split 'train' defining the metrics", 2),
        (["measure", "{f}", "--global-mean", "sample"], "kept projected along the basis of --global-mean class", 2),
        (["compare", "{f}", "--chunk-rows", "64"], "--chunk-rows does not apply", 2),
        (["compare", "{f}", "--by", "layer"], "stores no layers", 2),
        (["measure", "{f}", "--min-per-class", "100"], "collected with no --min-per-class (5 of 5 classes)", 2),
        (["measure", "{f}", "--ood", "val"], "--ood val: no class sums of split 'val'", 2),
        (["measure", "{f}", "--ood", "train"], "cannot be the split that defines the metrics", 2),
    ],
)
def test_what_needs_per_sample_data_is_refused_in_one_line(tmp_path, rng, args, needle, code):
    acc, _ = _accumulated(rng, nc1_method="project")
    path = acc.save(tmp_path / "s.h5")
    result = _invoke(*[a.format(f=path) for a in args])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("ncli: error: ") and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_scatter_file_is_measured_with_either_global_mean(tmp_path, rng):
    acc, (H, y, Ht, yt, W, b) = _accumulated(rng, nc1_method="scatter")
    path = acc.save(tmp_path / "s.h5")
    for kind in ("class", "sample"):
        record = measure_file(path, global_mean=kind)
        assert_record_matches(record, reference_record(H, y, C, W, b, {"test": (Ht, yt)}, global_mean=kind))


def test_the_layout_is_the_documented_one(tmp_path, rng):
    acc, _ = _accumulated(rng, epoch=4, attrs={"source_checkpoint": "ckpt.pt"}, nc1_method="project")
    path = acc.save(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        assert attrs["ncli_format"] == FORMAT_NAME and attrs["ncli_format_version"] == 1
        assert (attrs["num_classes"], attrs["feature_dim"], attrs["train_split"]) == (C, P, "train")
        assert (attrs["global_mean"], attrs["within_form"], attrs["min_per_class"]) == ("class", "projected", 0)
        assert (attrs["epoch"], attrs["source_checkpoint"]) == (4, "ckpt.pt")
        assert set(f["train"]) == {"counts", "sums", "evaluated_counts", "disagree_per_class", "ss_within", "within"}
        assert set(f["test"]) == {"evaluated_counts", "disagree_per_class"}  # evaluated only: no class sums
        assert f["train/sums"].dtype == np.float64 and f["train/counts"][...].sum() == 400
        assert f["train"].attrs["num_samples"] == 400 and f["test"].attrs["decisions"] == b"classifier"
        assert f["classifier/weight"].shape == (C, P)


def test_the_size_does_not_grow_with_the_data(tmp_path, rng):
    sizes = []
    for n in (500, 50_000):
        acc, _ = _accumulated(rng, n=n)
        sizes.append(acc.save(tmp_path / f"{n}.h5").stat().st_size)
    assert sizes[0] == sizes[1]


def _damage(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda f: f.attrs.__setitem__("ncli_format_version", 9), "statistics format version 9 is not supported"),
        (lambda f: f["train"].attrs.__setitem__("num_samples", 401), "decision counts do not add up"),
        (lambda f: f["train/sums"].__setitem__((0, 0), np.nan), "/train/sums contains NaN or Inf"),
        (lambda f: f["train/counts"].__setitem__(0, -1), "/train/counts holds a negative count"),
        (lambda f: f.attrs.__setitem__("train_split", "val"), "split 'val', which defines the metrics, lacks"),
        (lambda f: f.attrs.__setitem__("within_form", "dense"), "within_form 'dense': not a value"),
        (lambda f: f["train"].attrs.__setitem__("decisions", "guess"), "decisions 'guess' is not one of"),
        (lambda f: f.attrs.__setitem__("min_per_class", 100), "counts samples of classes that --min-per-class 100 leaves out"),
        (lambda f: f["train/disagree_per_class"].__setitem__(0, 10**6), "disagree_per_class does not add up"),
        (lambda f: f["classifier"].move("weight", "w"), "/classifier/weight missing"),
        (lambda f: f["classifier/weight"].__setitem__((0, 0), 1e200), "/classifier/weight holds a value of magnitude 1e+200"),
    ],
)
def test_damaged_files_are_refused_in_one_line(tmp_path, rng, edit, needle):
    acc, _ = _accumulated(rng)
    path = acc.save(tmp_path / "s.h5")
    _damage(path, edit)
    result = _invoke("measure", path)
    assert result.exit_code == 3, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_measuring_a_statistics_file_does_not_import_torch(tmp_path, rng):
    acc, _ = _accumulated(rng)
    path = acc.save(tmp_path / "s.h5")
    code = (
        "import sys; from ncli.cli import main; sys.argv=['ncli','measure',%r,'--json'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n" % str(path)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_classes"] == C
