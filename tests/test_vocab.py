"""Vocabulary-sized C: the tiled pair statistics, --min-per-class and --ood.

The tiled code paths run here at small C by forcing a small tile (``pair_tile``), and are
checked against the dense transcription of the spec (tests/reference.py) and against the
dense path of ncli itself: C < p and C > p + 1, imbalanced, with empty classes left out by
--min-per-class, with an OOD split; both kernels, and the torch backend's code on the CPU.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.errors import InputError
from ncli.features import write_features
from ncli.measure import kernels
from ncli.measure.engine import NumpyBackend
from ncli.measure.pairs import Gram, PairSweep
from ncli.measure.record import measure_file

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record


def _vocab_file(path, rng, *, C, p, counts, test_per_class=2, ood_rows=0, classifier=True, names=False):
    """A file with the given train counts per class (0 allowed), a test split with
    ``test_per_class`` rows of every class (including those without train samples) and an
    optional OOD split whose labels are arbitrary."""
    means = 3.0 * rng.standard_normal((C, p)) + 0.5
    y = np.repeat(np.arange(C), counts)
    y = y[rng.permutation(y.size)]
    H = means[y] + rng.standard_normal((y.size, p))
    yt = np.repeat(np.arange(C), test_per_class)
    Ht = means[yt] + 1.5 * rng.standard_normal((yt.size, p))
    splits = {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}}
    Hood = None
    if ood_rows:
        Hood = rng.standard_normal((ood_rows, p)) + 2.0
        splits["ood"] = {"features": Hood, "labels": rng.integers(0, C, ood_rows)}
    W = b = None
    if classifier:
        W = means - means.mean(axis=0) + 0.5 * rng.standard_normal((C, p))
        b = rng.standard_normal(C)
    class_names = [f"tok{c}" for c in range(C)] if names else None
    write_features(path, splits, num_classes=C, weight=W, bias=b, class_names=class_names)
    return dict(H=H, y=y, Ht=Ht, yt=yt, Hood=Hood, W=W, b=b, names=class_names)


def _backends(kernel_backend):
    out = [NumpyBackend(kernels=kernel_backend, pair_tile=7, threads=2)]
    try:
        from ncli.measure.engine_torch import TorchBackend

        out.append(TorchBackend("cpu", pair_tile=7))
    except ImportError:  # pragma: no cover - torch is installed for the tests
        pass
    return out


CASES = {
    # C < p, every class present, imbalanced
    "c-lt-p": dict(C=12, p=20, counts=[1, 9, 3, 40, 2, 7, 5, 11, 6, 4, 8, 2], k=None),
    # C > p + 1, imbalanced, two classes without train samples left out
    "c-gt-p-empty": dict(C=30, p=5, counts=[0, 3, 1, 12, 0] + [2, 5, 9, 4, 1] * 5, k=1),
    # C > p + 1 and --min-per-class 3 leaves out the rare classes (and their test rows)
    "c-gt-p-k3": dict(C=40, p=6, counts=[1, 2, 3, 4, 5, 6, 7, 8] * 5, k=3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiled_paths_match_the_dense_reference(tmp_path, rng, name, kernel_backend):
    case = CASES[name]
    data = _vocab_file(tmp_path / "v.h5", rng, C=case["C"], p=case["p"], counts=case["counts"], ood_rows=23, names=True)
    ref = reference_record(
        data["H"], data["y"], case["C"], data["W"], data["b"], {"test": (data["Ht"], data["yt"])},
        min_per_class=case["k"], ood=data["Hood"], class_names=data["names"],
    )
    dense = measure_file(tmp_path / "v.h5", per_class=True, min_per_class=case["k"], ood="ood")
    assert_record_matches(dense, ref, per_class=True)
    tiled = []
    for backend in _backends(kernel_backend):
        tiled.append(measure_file(tmp_path / "v.h5", per_class=True, min_per_class=case["k"], ood="ood", backend=backend))
        assert_record_matches(tiled[-1], ref, per_class=True)
        assert tiled[-1]["splits"] == dense["splits"]  # decisions are exact on every path
        for key, value in dense["metrics"].items():
            if isinstance(value, float):
                assert tiled[-1]["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-13), (type(backend).__name__, key)
    for key, value in tiled[0]["metrics"].items():  # the torch path equals the numpy path to ~1e-12
        assert tiled[-1]["metrics"][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_min_per_class_removes_samples_from_every_split(tmp_path, rng):
    """Classes below K are left out with all their rows: num_samples, accuracy, ncc_accuracy
    and the per-class rows count only the kept classes' samples, decisions are among them."""
    C, p = 9, 4
    counts = [5, 1, 6, 0, 7, 2, 8, 5, 3]  # K = 4 keeps 0, 2, 4, 6, 7
    data = _vocab_file(tmp_path / "v.h5", rng, C=C, p=p, counts=counts, test_per_class=3, names=True)
    rec = measure_file(tmp_path / "v.h5", per_class=True, min_per_class=4)
    kept = [0, 2, 4, 6, 7]
    assert rec["num_classes"] == C and rec["classes_measured"] == 5 and rec["min_per_class"] == 4
    assert rec["splits"]["train"]["num_samples"] == sum(counts[c] for c in kept)
    assert rec["splits"]["test"]["num_samples"] == 3 * len(kept)
    assert [row["class"] for row in rec["per_class"]] == kept
    assert [row["name"] for row in rec["per_class"]] == [f"tok{c}" for c in kept]
    assert [row["num_samples"] for row in rec["per_class"]] == [counts[c] for c in kept]
    # decisions among the kept classes, on the kept classes' rows only
    W, b = data["W"][kept], data["b"][kept]
    means = np.stack([data["H"][data["y"] == c].mean(axis=0) for c in kept])
    for split, (H, y) in {"train": (data["H"], data["y"]), "test": (data["Ht"], data["yt"])}.items():
        rows = np.isin(y, kept)
        label = np.searchsorted(kept, y[rows])
        net = np.argmax(H[rows] @ W.T + b, axis=1)
        ncc = np.argmin(((H[rows][:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        assert rec["splits"][split]["accuracy"] == np.count_nonzero(net == label) / rows.sum()
        assert rec["splits"][split]["ncc_accuracy"] == np.count_nonzero(ncc == label) / rows.sum()
        assert rec["splits"][split]["ncc_disagreement"] == np.count_nonzero(net != ncc) / rows.sum()
    ref = reference_record(
        data["H"], data["y"], C, data["W"], data["b"], {"test": (data["Ht"], data["yt"])}, min_per_class=4,
        class_names=data["names"],
    )
    assert_record_matches(rec, ref, per_class=True)
    # a K that keeps every class measures them all (and says which K was asked)
    every = measure_file(tmp_path / "v.h5", min_per_class=1)
    assert every["classes_measured"] == 8 and every["splits"]["test"]["num_samples"] == 3 * 8


def test_min_per_class_errors(tmp_path, rng):
    _vocab_file(tmp_path / "v.h5", rng, C=5, p=3, counts=[4, 0, 1, 2, 0])
    with pytest.raises(InputError, match=r"class 1 and 1 more has no samples .*--min-per-class K"):
        measure_file(tmp_path / "v.h5")
    with pytest.raises(InputError, match=r"1 of 5 classes have at least 3 train samples"):
        measure_file(tmp_path / "v.h5", min_per_class=3)
    res = CliRunner().invoke(app, ["measure", str(tmp_path / "v.h5")])
    assert res.exit_code == 3 and "--min-per-class" in res.stderr and "Traceback" not in res.stderr


def test_ood_split_gives_nc5_and_is_not_evaluated(tmp_path, rng):
    data = _vocab_file(tmp_path / "v.h5", rng, C=6, p=4, counts=[5, 6, 7, 5, 6, 7], ood_rows=31)
    rec = measure_file(tmp_path / "v.h5", ood="ood")
    assert set(rec["splits"]) == {"train", "test"}  # not evaluated as a split
    assert rec["ood"] == {"split": "ood", "num_samples": 31}
    means = np.stack([data["H"][data["y"] == c].mean(axis=0) for c in range(6)])
    mu = data["Hood"].mean(axis=0)
    want = np.mean([abs(m @ mu) / (np.linalg.norm(m) * np.linalg.norm(mu)) for m in means])
    assert rec["metrics"]["nc5_orthodev"] == pytest.approx(want, rel=1e-12)
    plain = measure_file(tmp_path / "v.h5")
    assert plain["metrics"]["nc5_orthodev"] is None and plain["ood"] is None
    assert set(plain["splits"]) == {"train", "test", "ood"}  # without --ood it is an ordinary split
    for key in ("nc1", "gnc2_log_mean", "equiangular_means"):
        assert rec["metrics"][key] == plain["metrics"][key]
    with pytest.raises(Exception, match="cannot be the split that defines the metrics"):
        measure_file(tmp_path / "v.h5", ood="train")
    with pytest.raises(InputError, match="no split 'nope'"):
        measure_file(tmp_path / "v.h5", ood="nope")


def test_ood_labels_are_ignored(tmp_path, rng):
    C, p = 4, 3
    H = rng.standard_normal((40, p)) + np.repeat(3 * np.eye(C, p), 10, axis=0)
    y = np.repeat(np.arange(C), 10)
    Hood = rng.standard_normal((9, p)) + 1.0
    recs = []
    for labels in (np.zeros(9, dtype=np.int64), np.arange(9) % C):
        path = tmp_path / f"o{labels[1]}.h5"
        write_features(path, {"train": {"features": H, "labels": y}, "ood": {"features": Hood, "labels": labels}},
                       num_classes=C)
        recs.append(measure_file(path, ood="ood", min_per_class=1))
    assert recs[0]["metrics"] == recs[1]["metrics"]


# ------------------------------------------------------------------------ the pair sweep itself


def _brute(V, sigma2=None, points=None):
    C = V.shape[0]
    pairs = [(a, c) for a in range(C) for c in range(a + 1, C)]
    n = np.linalg.norm(V, axis=1)
    cos = np.array([V[a] @ V[c] / (n[a] * n[c]) for a, c in pairs])
    unit = V / n[:, None]
    k = np.array([-math.log(np.linalg.norm(unit[a] - unit[c])) for a, c in pairs])
    out = dict(cos_std=np.std(cos, ddof=1), maxangle=np.mean(np.abs(cos + 1 / (C - 1))), k_mean=k.mean(), k_var=k.var())
    if sigma2 is not None:
        out["cdnv"] = np.mean([(sigma2[a] + sigma2[c]) / (2 * np.sum((points[a] - points[c]) ** 2)) for a, c in pairs])
    return out


@pytest.mark.parametrize("tile", [1, 2, 5, 16, 1000])
@pytest.mark.parametrize("C, p", [(17, 4), (9, 30)])
def test_pair_sweep_against_pairwise_loops(rng, kernel_backend, tile, C, p):
    points = 2.0 * rng.standard_normal((C, p)) + 4.0
    V = points - points.mean(axis=0)
    V[3] = V[2] + 1e-7 * rng.standard_normal(p)  # a near-identical pair: recomputed directly
    points[3] = points[2] + V[3] - V[2]
    sigma2 = rng.uniform(0.5, 2.0, C)
    want = _brute(V, sigma2, points)
    got = PairSweep(tile=tile, threads=2, kernels=kernel_backend)(V, sigma2=sigma2, points=points, gnc2=True)
    assert got.cos_std() == pytest.approx(want["cos_std"], rel=1e-10)
    assert got.maxangle() == pytest.approx(want["maxangle"], rel=1e-10)
    assert got.cdnv() == pytest.approx(want["cdnv"], rel=1e-7)  # dominated by the 1e-7 pair
    assert got.gnc2_mean == pytest.approx(want["k_mean"], rel=1e-9)
    assert got.gnc2_ss / got.num_pairs == pytest.approx(want["k_var"], rel=1e-8)
    dense = Gram.of(V, sigma2=sigma2, points=points)
    assert got.cos_std() == pytest.approx(dense.cos_std(), rel=1e-10)
    assert got.etf_distance() == pytest.approx(dense.etf_distance(), rel=1e-9)


def test_pair_sweep_spread_survives_a_large_mean(rng, kernel_backend):
    """Cosines all near one value with a tiny spread: the shifted sums keep the std, where
    E[cos²] − E[cos]² would cancel it away."""
    C, p = 40, 64
    base = rng.standard_normal(p)
    V = base + 1e-6 * rng.standard_normal((C, p))  # cos ≈ 1 − O(1e-12): spread ~1e-12
    want = _brute(V)["cos_std"]
    got = PairSweep(tile=7, kernels=kernel_backend)(V).cos_std()
    assert got == pytest.approx(want, rel=1e-3)  # the brute force itself carries ~1e-16 per cosine


def test_pair_sweep_names_identical_directions(rng, kernel_backend):
    V = rng.standard_normal((8, 3))
    V[6] = 2.5 * V[4]  # same direction, another norm
    sums = PairSweep(tile=3, kernels=kernel_backend)(V, gnc2=True)
    assert sums.identical == (4, 6)
    V[1] = 0.0  # a zero vector has no direction: the statistics are undefined, not an error
    sums = PairSweep(tile=3, kernels=kernel_backend)(V, gnc2=True)
    assert not math.isfinite(sums.gnc2_mean) and not math.isfinite(sums.cos_mean)


def test_torch_pair_sweep_equals_numpy(rng):
    pytest.importorskip("torch")
    from ncli.measure.engine_torch import TorchPairSweep

    import torch

    C, p = 23, 6
    points = rng.standard_normal((C, p))
    V = points - points.mean(axis=0)
    sigma2 = rng.uniform(0.5, 2.0, C)
    cpu = PairSweep(tile=4)(V, sigma2=sigma2, points=points, gnc2=True)
    dev = TorchPairSweep(torch.device("cpu"), tile=4)(V, sigma2=sigma2, points=points, gnc2=True)
    for name in ("cos_mean", "cos_ss", "abs_offset_sum", "cdnv_sum", "gnc2_mean", "gnc2_ss"):
        assert getattr(dev, name) == pytest.approx(getattr(cpu, name), rel=1e-12), name


def test_no_c_by_c_matrix_above_one_tile(tmp_path, rng):
    """C = 3000 with tiles of 256: peak traced memory stays far below one C × C float64
    matrix (72 MB); the same file measured densely (one tile) needs more than that."""
    C, p = 3000, 8
    counts = np.full(C, 2)
    _vocab_file(tmp_path / "v.h5", rng, C=C, p=p, counts=counts, test_per_class=1)
    dense_bytes = C * C * 8

    def peak(tile):
        tracemalloc.start()
        try:
            measure_file(tmp_path / "v.h5", backend=NumpyBackend(threads=1, pair_tile=tile))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(256) < dense_bytes / 3
    assert peak(4096) > dense_bytes  # the guard can fail: the dense path does form C × C


# ---------------------------------------------------------------------------------------- CLI


def test_cli_min_per_class_and_ood(tmp_path, rng):
    _vocab_file(tmp_path / "v.h5", rng, C=7, p=3, counts=[6, 0, 5, 1, 7, 4, 5], ood_rows=12)
    runner = CliRunner()
    res = runner.invoke(app, ["measure", str(tmp_path / "v.h5"), "--json", "--min-per-class", "4", "--ood", "ood"])
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert (rec["num_classes"], rec["classes_measured"], rec["min_per_class"]) == (7, 5, 4)
    assert rec["ood"] == {"split": "ood", "num_samples": 12} and rec["metrics"]["nc5_orthodev"] is not None
    table = runner.invoke(app, ["measure", str(tmp_path / "v.h5"), "--min-per-class", "4", "--ood", "ood"])
    assert "5 of 7 classes measured (≥ 4 train samples each)" in table.stdout
    assert "out-of-distribution split 'ood' (12 samples)" in table.stdout
    compared = runner.invoke(app, ["compare", str(tmp_path / "v.h5"), "--min-per-class", "4", "--ood", "ood", "--json"])
    assert compared.exit_code == 0, compared.stderr
    assert json.loads(compared.stdout)["runs"][0]["metrics"] == rec["metrics"]
    lines = tmp_path / "r.jsonl"
    lines.write_text(res.stdout)
    mismatch = runner.invoke(app, ["compare", str(lines), "--min-per-class", "2"])
    assert mismatch.exit_code == 2 and "--min-per-class 4, not 2" in mismatch.stderr
    table = runner.invoke(app, ["compare", str(lines)])
    assert table.exit_code == 0 and "classes_measured" in table.stdout


def test_cli_prints_notes_for_null_gnc2(tmp_path):
    H = np.array([[-3.5], [-2.5], [0.5], [1.5], [1.5], [2.5]])  # p = 1: classes 1 and 2 share a direction
    path = tmp_path / "p1.h5"
    write_features(path, {"train": {"features": H, "labels": np.array([0, 0, 1, 1, 2, 2])}}, num_classes=3)
    res = CliRunner().invoke(app, ["measure", str(path), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["metrics"]["gnc2_log_mean"] is None
    assert "ncli: note: " in res.stderr and "class 1 and class 2 have the same direction" in res.stderr


def test_compiled_and_numpy_pair_kernels_agree(rng):
    if kernels.compiled_kernels is None:
        pytest.skip(kernels.why_not_compiled)
    V = rng.standard_normal((50, 7))
    points = V + 1.0
    sigma2 = rng.uniform(0.1, 1.0, 50)
    a = PairSweep(tile=9, kernels=kernels.compiled_kernels)(V, sigma2=sigma2, points=points, gnc2=True)
    b = PairSweep(tile=9, kernels=kernels.numpy_kernels)(V, sigma2=sigma2, points=points, gnc2=True)
    for name in ("cos_mean", "cos_ss", "abs_offset_sum", "cdnv_sum", "gnc2_mean", "gnc2_ss"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12), name
