"""--x-key/--y-key patterns ('X_{split}') with a bare --data FILE take every split it holds;
missing datasets say when only the case differs (issue 14, item 3)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from extract_util import arch, check_against, invoke, make_data, model, ok, read


@pytest.fixture
def world(tmp_path):
    m = model("Net")
    torch.save(m.state_dict(), tmp_path / "net.pt")
    data = make_data(tmp_path)  # x_train, y_train, x_test, y_test
    with np.load(data) as z:
        arrays = dict(z)
    return tmp_path, m, data, arrays


def extract(root, data, *extra):
    return invoke("extract", root / "net.pt", "--arch", arch("Net"), "--data", data, "-o", root / "out.h5", "-q", *extra)


def test_sklearn_style_patterns_take_every_split_of_a_bare_file(world):
    root, m, data, arrays = world
    sk = root / "sk.npz"
    np.savez(sk, X_train=arrays["x_train"], y_train=arrays["y_train"], X_test=arrays["x_test"], y_test=arrays["y_test"])
    ok(extract(root, sk, "--x-key", "X_{split}", "--y-key", "y_{split}"))
    with h5py.File(root / "out.h5", "r") as f:
        assert sorted(k for k in f if k != "classifier") == ["test", "train"]
    check_against(m, root / "out.h5", data)  # the same rows as the lower-case file's, split by split


def test_patterns_in_hdf5_groups(world):
    root, m, data, arrays = world
    grouped = root / "grouped.h5"
    with h5py.File(grouped, "w") as f:
        for split in ("train", "test"):
            f[f"{split}/images"] = arrays[f"x_{split}"]
            f[f"{split}/targets"] = arrays[f"y_{split}"]
        f["test/ignored"] = np.zeros(3)
    ok(extract(root, grouped, "--x-key", "{split}/images", "--y-key", "{split}/targets"))
    check_against(m, root / "out.h5", data)
    assert read(root / "out.h5", "test")["features"].shape[0] == len(arrays["y_test"])


def test_a_pattern_and_an_explicit_split_take_that_split_only(world):
    root, _, _, arrays = world
    sk = root / "sk.npz"
    np.savez(sk, X_train=arrays["x_train"], y_train=arrays["y_train"], X_test=arrays["x_test"], y_test=arrays["y_test"])
    ok(extract(root, f"test={sk}", "--x-key", "X_{split}", "--y-key", "y_{split}"))
    with h5py.File(root / "out.h5", "r") as f:
        assert sorted(k for k in f if k != "classifier") == ["test"]


def test_a_file_without_x_y_names_the_key_options(world):
    root, _, _, arrays = world
    odd = root / "odd.npz"
    np.savez(odd, inputs=arrays["x_train"], targets=arrays["y_train"])
    r = extract(root, odd)
    assert r.exit_code == 3
    assert "name them with --x-key/--y-key" in r.stderr and "(the file has: inputs, targets)" in r.stderr
    ok(extract(root, odd, "--x-key", "inputs", "--y-key", "targets"))


def test_names_that_differ_only_in_case_are_pointed_out(world):
    root, _, _, arrays = world
    sk = root / "sk.npz"
    np.savez(sk, X_train=arrays["x_train"], y_train=arrays["y_train"], X_test=arrays["x_test"], y_test=arrays["y_test"])
    r = extract(root, sk)  # a bare file: which patterns would read it
    assert r.exit_code == 3 and len(r.stderr.strip().splitlines()) == 1
    assert "the names differ only in case: --x-key 'X_{split}' --y-key 'y_{split}' reads every split" in r.stderr
    r = extract(root, f"train={sk}")  # one split: the dataset it looked for
    assert r.exit_code == 3 and "no dataset 'x_train'; did you mean 'X_train'?" in r.stderr
    r = extract(root, sk, "--x-key", "x_{split}", "--y-key", "y_{split}")  # a pattern in the wrong case
    assert r.exit_code == 3 and "did you mean 'X_train', 'y_train'?" in r.stderr
    r = extract(root, sk, "--x-key", "Z_{split}", "--y-key", "y_{split}")  # nothing close: no guess
    assert r.exit_code == 3 and "no split has both --x-key 'Z_{split}' and --y-key 'y_{split}'" in r.stderr
    assert "did you mean" not in r.stderr
