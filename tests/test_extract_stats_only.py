"""``ncli extract --stats-only`` (one process and torchrun) against ``ncli measure`` of the
full feature file of the same run, and ``Accumulator.all_reduce`` across torchrun processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract_util import arch, invoke, make_data, model, ok

try:
    from reference import assert_record_matches
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches

import ncli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "fixtures" / "digits.npz"
FORMS = {
    "mlp": [ROOT / "fixtures" / "checkpoints" / "mlp_epoch0300.pt", "--arch", f"{ROOT / 'fixtures' / 'models.py'}:MLP"],
    "cnn": [ROOT / "fixtures" / "checkpoints" / "cnn_epoch0100.pt", "--arch", f"{ROOT / 'fixtures' / 'models.py'}:SmallCNN"],
    "scripted": [ROOT / "fixtures" / "checkpoints" / "cnn_epoch0100_scripted.pt"],
}
HERE = Path(__file__).resolve().parent


def _measured(path, *args) -> dict:
    record = json.loads(ok(invoke("measure", path, "--json", "--per-class", *args)).stdout)
    record.pop("file")
    return record


def _torchrun(*args, cwd: Path, script=None) -> subprocess.CompletedProcess:
    target = script if script is not None else ["-m", "ncli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("form", list(FORMS))
def test_stats_only_equals_measuring_the_feature_file(tmp_path, form):
    args = [*FORMS[form], "--data", DIGITS, "-b", "100", "--device", "cpu", "-q"]
    features, stats = tmp_path / "f.h5", tmp_path / "s.h5"
    ok(invoke("extract", *args, "-o", features))
    ok(invoke("extract", *args, "-o", stats, "--stats-only"))
    assert_record_matches(_measured(stats), _measured(features), per_class=True)
    assert {k: v for k, v in _measured(stats).items() if k not in ("metrics", "splits", "per_class")} == {
        k: v for k, v in _measured(features).items() if k not in ("metrics", "splits", "per_class")
    }  # epoch, step, layer, C, p, ...
    assert features.stat().st_size >= 20 * stats.stat().st_size, (features.stat().st_size, stats.stat().st_size)


def test_stats_only_split_and_global_mean(tmp_path):
    args = [*FORMS["mlp"], "--data", DIGITS, "--device", "cpu", "-q"]
    features, stats = tmp_path / "f.h5", tmp_path / "s.h5"
    ok(invoke("extract", *args, "-o", features))
    ok(invoke("extract", *args, "-o", stats, "--stats-only", "--split", "test", "--global-mean", "sample"))
    want = _measured(features, "--split", "test", "--global-mean", "sample")
    assert_record_matches(_measured(stats, "--split", "test", "--global-mean", "sample"), want, per_class=True)
    assert list(_measured(stats, "--split", "test", "--global-mean", "sample")["splits"]) == ["test", "train"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--stats-only", "--layer", "body.5"], "--layer does not apply with --stats-only"),
        (["--stats-only", "--compression", "gzip"], "--compression does not apply with --stats-only"),
        (["--split", "test"], "--split applies with --stats-only"),
        (["--global-mean", "sample"], "--global-mean applies with --stats-only"),
        (["--stats-only", "--split", "val"], "--split val: no such split in --data (train, test)"),
        (["--min-per-class", "3"], "--min-per-class applies with --stats-only"),
        (["--ood", "test"], "--ood applies with --stats-only"),
        (["--stats-only", "--ood", "val"], "--ood val: no such split in --data (train, test)"),
        (["--stats-only", "--ood", "train"], "cannot be the split that defines the metrics"),
    ],
)
def test_stats_only_option_errors(tmp_path, extra, needle):
    out = tmp_path / "s.h5"
    result = invoke("extract", *FORMS["mlp"], "--data", DIGITS, "--device", "cpu", "-o", out, *extra)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ncli-tmp-")]


def test_stats_only_min_per_class_and_ood_equal_the_feature_file(tmp_path):
    """A train split where class 3 is rare and class 7 absent, an OOD split of noise with
    labels outside the model's classes: --min-per-class and --ood decided in the passes, and
    `ncli measure` of the statistics file equals that of the feature file with the same options."""
    rng = np.random.default_rng(5)
    with np.load(DIGITS) as z:
        arrays = dict(z)
    y = arrays["y_train"]
    keep = (y != 7) & ((y != 3) | (np.cumsum(y == 3) <= 4))  # 4 rows of class 3, none of class 7
    data = tmp_path / "d.npz"
    np.savez(data, x_train=arrays["x_train"][keep], y_train=y[keep], x_test=arrays["x_test"], y_test=arrays["y_test"],
             x_ood=rng.uniform(0, 16, (150, 64)).astype(np.float32), y_ood=np.full(150, 99))
    args = [*FORMS["mlp"], "--data", f"train={data}", "--data", f"test={data}", "--device", "cpu", "-q", "-b", "64"]
    features, stats = tmp_path / "f.h5", tmp_path / "s.h5"
    with np.load(data) as z:  # the feature file needs labels in range: the OOD split's are ignored anyway
        arrays = dict(z)
    arrays["y_ood"] = np.zeros(150, np.int64)
    np.savez(tmp_path / "f.npz", **arrays)
    ok(invoke("extract", *FORMS["mlp"], "--data", tmp_path / "f.npz", "--device", "cpu", "-q", "-b", "64", "-o", features))
    ok(invoke("extract", *args, "--data", f"ood={data}", "-o", stats, "--stats-only", "--min-per-class", "5",
              "--ood", "ood"))
    options = ["--min-per-class", "5", "--ood", "ood"]
    got, want = _measured(stats, *options), _measured(features, *options)
    assert (got["classes_measured"], got["min_per_class"], got["ood"]) == (8, 5, {"split": "ood", "num_samples": 150})
    assert list(got["splits"]) == ["train", "test"] and got["metrics"]["nc5_orthodev"] is not None
    assert_record_matches(got, want, rtol=1e-9, per_class=True)
    refused = invoke("measure", stats, "--min-per-class", "3")  # class 3 has 4 rows: another selection
    assert refused.exit_code == 2 and "collected with --min-per-class 5 (8 of 10 classes)" in refused.output


def test_stats_only_refuses_features_the_model_makes_non_finite(tmp_path):
    data = make_data(tmp_path)
    with np.load(data) as z:
        arrays = dict(z)
    arrays["x_train"][5] = np.inf  # NaN features from this row on, in pass 1
    np.savez(tmp_path / "bad.npz", **arrays)
    ckpt = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ckpt)
    out = tmp_path / "s.h5"
    result = invoke("extract", ckpt, "--arch", arch("Net"), "--data", tmp_path / "bad.npz", "-o", out, "--stats-only", "-b", "4")
    assert result.exit_code == 3, result.output
    assert "--data train=" in result.output and "row 5: features contain NaN or Inf (the model produced them" in result.output
    assert not out.exists()


def test_stats_only_through_the_python_api(tmp_path):
    from ncli.extract.api import extract

    out = extract(FORMS["mlp"][0], tmp_path / "s.h5", {"train": DIGITS}, arch=FORMS["mlp"][2], stats_only=True,
                  device="cpu", progress=False)
    acc = ncli.Accumulator.load(out)
    assert acc.epoch == 300 and acc.layer == "fc" and acc.attrs["source_checkpoint_sha256"]
    assert acc.measure()["splits"]["train"]["num_samples"] == 1200


# -- torchrun --------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_stats_only_equals_the_feature_file(tmp_path):
    with np.load(DIGITS) as z:  # a split with one batch: rank 0's share of it is empty
        np.savez(tmp_path / "tiny.npz", x=z["x_test"][:50], y=z["y_test"][:50])
    args = [*FORMS["mlp"], "--data", DIGITS, "--data", f"tiny={tmp_path / 'tiny.npz'}", "-b", "256", "--device", "cpu"]
    features, stats = tmp_path / "f.h5", tmp_path / "s.h5"
    ok(invoke("extract", *args, "-o", features, "-q"))
    result = _torchrun("extract", *args, "-o", stats, "--stats-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("ncli: ")]
    assert len(lines) == 1 and f"wrote {stats}: 1847 samples" in lines[0] and "2 torchrun processes" in lines[0], lines
    assert_record_matches(_measured(stats), _measured(features), per_class=True)
    acc = ncli.Accumulator.load(stats)
    assert acc.attrs["world_size"] == 2 and "rank order" in acc.attrs["distributed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ncli-tmp-")]


@pytest.mark.slow
def test_torchrun_stats_only_with_min_per_class_and_ood(tmp_path):
    """Both ranks select the same classes from the reduced pass 1, and the OOD split's sum is
    reduced with it: the file equals the single-process one to rounding."""
    with np.load(DIGITS) as z:
        y = z["y_train"]
        keep = (y != 7) & ((y != 3) | (np.cumsum(y == 3) <= 4))
        np.savez(tmp_path / "d.npz", x_train=z["x_train"][keep], y_train=y[keep], x_test=z["x_test"], y_test=z["y_test"],
                 x_ood=z["x_test"][::-1] * 0.5, y_ood=np.full(len(z["y_test"]), -1))
    data = tmp_path / "d.npz"
    args = [*FORMS["mlp"], "--data", data, "-b", "128", "--device", "cpu", "--stats-only", "--min-per-class", "5",
            "--ood", "ood"]
    single, shared = tmp_path / "one.h5", tmp_path / "two.h5"
    ok(invoke("extract", *args, "-o", single, "-q"))
    result = _torchrun("extract", *args, "-o", shared, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    options = ["--min-per-class", "5", "--ood", "ood"]
    got = _measured(shared, *options)
    assert got["classes_measured"] == 8 and got["ood"] == {"split": "ood", "num_samples": 597}
    assert_record_matches(got, _measured(single, *options), rtol=1e-12, per_class=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ok", "p", "frozen", "selection"])
def test_all_reduce_over_torchrun(tmp_path, case):
    result = _torchrun(case, tmp_path, cwd=tmp_path, script=[str(HERE / "dist_accumulator.py")])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    if case in ("p", "frozen"):
        want = {"p": "the ranks' features differ in p (5, 6)", "frozen": "rank 1 differs from rank 0 in the pass"}[case]
        assert all(want in r.get("error", "") for r in ranks), ranks
        return
    sys.path.insert(0, str(HERE))
    import dist_accumulator

    H, y, Ht, yt, W, b, _ = dist_accumulator.data()
    selection = case == "selection"
    y = dist_accumulator.selection_labels(y) if selection else y
    single = ncli.Accumulator(dist_accumulator.C, W=W, b=b, min_per_class=dist_accumulator.MIN_PER_CLASS if selection else None)
    single.update(H, y)
    if selection:
        single.update(Ht + 1.0, None, split="ood")
    single.evaluate(H, y)
    single.evaluate(Ht, yt, split="test")
    want = single.measure(per_class=True, ood="ood" if selection else None)
    if selection:
        assert want["classes_measured"] == 3 and want["ood"] == {"split": "ood", "num_samples": 300}
    assert ranks[0] == ranks[1]  # every rank holds the same bits
    assert_record_matches(ranks[0]["record"], want, rtol=1e-12, per_class=True)
