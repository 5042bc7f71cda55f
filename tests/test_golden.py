"""Golden outputs: `ncli measure --json` and `ncli compare --json/--csv` on the bundled fixtures
(and two synthetic files) must stay byte-identical across refactors.

The golden text was produced by this machine kind with the compiled measure kernels; the
numpy kernels may differ in the last bits of float64 sums, so the test runs with the compiled
ones only. After an intended change of the numbers, regenerate and say why in the commit:

    python tests/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
MLP = [f"fixtures/features/mlp_epoch{e:04d}.h5" for e in (1, 3, 10, 30, 100, 300)]
CNN = "fixtures/features/cnn_epoch0100.h5"

# name -> (arguments after `ncli`, folder to run in: "root" or "synthetic")
CASES = {
    "measure_fixtures": (["measure", *MLP, CNN, "--json"], "root"),
    "measure_per_class": (["measure", MLP[-1], CNN, "--json", "--per-class"], "root"),
    "measure_sample_mean": (["measure", MLP[0], MLP[-1], "--json", "--global-mean", "sample"], "root"),
    "measure_test_split": (["measure", MLP[-1], "--json", "--split", "test"], "root"),
    "measure_layers": (["measure", CNN, "--json", "--layer", "all", "--per-class"], "root"),
    "compare_json": (["compare", *MLP, "--json"], "root"),
    "compare_csv": (["compare", *MLP, "--csv"], "root"),
    "compare_layers": (["compare", CNN, "--by", "layer", "--json"], "root"),
    "measure_synthetic": (["measure", "wide.h5", "no_classifier.h5", "--json", "--per-class"], "synthetic"),
    "measure_sparse_classes": (
        ["measure", "sparse.h5", "--json", "--per-class", "--min-per-class", "3", "--ood", "ood"], "synthetic"
    ),
}


def write_synthetic(folder: Path) -> None:
    """Deterministic files: C > p with a classifier (the scatter path), no classifier, and
    classes without train samples with an OOD split (--min-per-class, --ood)."""
    from ncli.features import write_features

    rng = np.random.default_rng(20261201)
    C, p = 24, 16
    means = rng.standard_normal((C, p)) * 3
    y = rng.integers(0, C, 3000)
    y[:C] = np.arange(C)
    H = (means[y] + rng.standard_normal((3000, p))).astype(np.float32)
    yt = rng.integers(0, C, 700)
    Ht = (means[yt] + 1.5 * rng.standard_normal((700, p))).astype(np.float32)
    W = means + 0.3 * rng.standard_normal((C, p))
    b = 0.1 * rng.standard_normal(C)
    splits = {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}}
    write_features(folder / "wide.h5", splits, num_classes=C, weight=W, bias=b, attrs={"epoch": 7}, force=True)
    small = {"train": {"features": H[:, :5].astype(np.float64), "labels": y % 6}}
    write_features(folder / "no_classifier.h5", small, num_classes=6, force=True)
    # a vocabulary in miniature: 40 classes, Zipf-like counts (some classes without train
    # samples), a test split with every class, and an out-of-distribution split
    C = 40
    means = rng.standard_normal((C, 8)) * 2
    y = np.minimum((1.0 / rng.uniform(0.02, 1.0, 600)).astype(np.int64) - 1, C - 1)
    yt = np.arange(C).repeat(3)
    sparse = {
        "train": {"features": (means[y] + rng.standard_normal((600, 8))).astype(np.float32), "labels": y},
        "test": {"features": (means[yt] + rng.standard_normal((yt.size, 8))).astype(np.float32), "labels": yt},
        "ood": {"features": (rng.standard_normal((50, 8)) + 1.0).astype(np.float32), "labels": np.zeros(50, np.int64)},
    }
    W = means - means.mean(axis=0) + 0.5 * rng.standard_normal((C, 8))
    write_features(folder / "sparse.h5", sparse, num_classes=C, weight=W, bias=0.1 * rng.standard_normal(C), force=True)


def run_case(name: str, synthetic: Path) -> str:
    args, where = CASES[name]
    env = dict(os.environ, NCLI_KERNELS="", OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "ncli", *args],
        cwd=ROOT if where == "root" else synthetic,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, f"{name}: exit {res.returncode}\n{res.stderr}"
    return res.stdout


def _max_rel_diff(a: str, b: str) -> str:
    """For the failure message: the largest relative difference between numbers of two texts."""
    try:
        xa = [json.loads(line) for line in a.splitlines() if line.strip()]
        xb = [json.loads(line) for line in b.splitlines() if line.strip()]
    except ValueError:
        return "not JSON"
    worst = [0.0, ""]

    def walk(u, v, path):
        if isinstance(u, dict) and isinstance(v, dict):
            for k in set(u) | set(v):
                walk(u.get(k), v.get(k), f"{path}.{k}")
        elif isinstance(u, list) and isinstance(v, list) and len(u) == len(v):
            for i, (p, q) in enumerate(zip(u, v)):
                walk(p, q, f"{path}[{i}]")
        elif isinstance(u, float) and isinstance(v, float):
            d = abs(u - v) / max(abs(u), abs(v), 1e-300)
            if d > worst[0]:
                worst[:] = [d, path]
        elif u != v:
            worst[:] = [float("inf"), f"{path}: {u!r} != {v!r}"]

    walk(xa, xb, "")
    return f"max relative difference {worst[0]:.3g} at {worst[1]}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("golden")
    write_synthetic(folder)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_output_unchanged(name, synthetic):
    import ncli.measure.kernels

    if ncli.measure.kernels.compiled_kernels is None:
        pytest.skip("golden outputs are those of the compiled kernels")
    expected = (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")
    got = run_case(name, synthetic)
    if name.startswith(("measure", "compare_json", "compare_layers")):
        detail = _max_rel_diff(expected, got)
    else:
        detail = "CSV differs"
    assert got == expected, f"{name}: output changed ({detail})"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden.py --regenerate")
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp))
        for case in sorted(CASES):
            (GOLDEN / f"{case}.txt").write_text(run_case(case, Path(tmp)), encoding="utf-8")
            print("wrote", GOLDEN / f"{case}.txt")
