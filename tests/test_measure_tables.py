"""`ncli measure` on a terminal as a user sees it: run under a pseudo-terminal of 60 and 80
columns, every number of the JSON output appears whole in the tables (never cut with "…"),
no line is wider than the terminal; the tables say which split the headline numbers are and
which μ_G was used; the measure-side messages of issue 14."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.console import fmt
from ncli.features import write_features

runner = CliRunner()
NCLI = shutil.which("ncli", path=os.path.dirname(sys.executable)) or shutil.which("ncli") or "ncli"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_terminal(args: list[str], columns: int) -> str:
    """stdout of ``ncli ARGS`` on a pseudo-terminal ``columns`` wide (stderr apart)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = dict(os.environ, COLUMNS=str(columns), LINES="50", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([NCLI, *args], stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def _json(args: list[str]) -> list[dict]:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


def _cells(text: str) -> set[str]:
    return {cell.strip() for line in text.splitlines() for cell in re.split("[│┃]", line)}


def _file(path, rng, *, C=5, p=12, n=300, names=None, scale=1.0):
    means = rng.standard_normal((C, p)) * 3
    y = np.arange(n) % C
    splits = {}
    for split, rows in (("train", n), ("test", n // 2)):
        labels = y[:rows]
        splits[split] = {"features": (means[labels] + rng.standard_normal((rows, p))) * scale, "labels": labels}
    return str(write_features(
        path, splits, num_classes=C, weight=means + 0.1 * rng.standard_normal(means.shape), bias=np.zeros(C),
        class_names=names, attrs={"epoch": 7},
    ))


def _assert_whole(text: str, records: list[dict], columns: int, per_class: bool = False) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= columns
    cells = _cells(text)
    for rec in records:
        for key, value in rec["metrics"].items():
            assert fmt(value) in cells, (key, fmt(value))
        for name, values in rec["splits"].items():
            for key, value in values.items():
                assert fmt(value) in cells, (name, key, fmt(value))
        for row in rec.get("per_class", []) if per_class else []:
            for key in ("num_samples", "sigma2", "mean_dist", "classifier_norm", "cos_classifier_mean"):
                assert fmt(row[key]) in cells, (row["class"], key)
            for split, value in row["ncc_disagreement"].items():
                assert fmt(value) in cells


@pytest.mark.parametrize("columns", [60, 80])
def test_one_file_per_class_never_cuts_a_number(tmp_path, rng, columns):
    path = _file(tmp_path / "run.h5", rng, scale=1e-3)  # values like 0.00123457: the widest
    text = _on_terminal(["measure", path, "--per-class"], columns)
    (rec,) = _json(["measure", path, "--per-class"])
    _assert_whole(text, [rec], columns, per_class=True)
    heads = _cells("\n".join(line for line in text.splitlines() if "┃" in line))
    assert "name" not in heads  # the file names no class: no empty name column
    assert "N_c" in heads


@pytest.mark.parametrize("columns", [60, 80])
def test_several_files_never_cut_a_number(tmp_path, rng, columns):
    paths = [_file(tmp_path / f"run{k}.h5", rng, scale=10.0 ** -k) for k in range(4)]
    text = _on_terminal(["measure", *paths], columns)
    records = _json(["measure", *paths])
    _assert_whole(text, records, columns)
    # the shared folder once (a heading, wrapped like text), the file names as column heads
    assert f"filesin{tmp_path}{os.sep}" in "".join(text.split())
    assert "run0.h5" in _cells(text)


def test_named_classes_keep_their_column(tmp_path, rng):
    path = _file(tmp_path / "named.h5", rng, names=["cat", "dog", "emu", "fox", "gnu"])
    text = _on_terminal(["measure", path, "--per-class"], 80)
    assert {"name", "cat", "gnu"} <= _cells(text)


def test_a_pipe_gets_one_table_per_kind(tmp_path, rng):
    path = _file(tmp_path / "run.h5", rng)
    res = runner.invoke(app, ["measure", path, "--per-class"])
    assert res.exit_code == 0
    assert res.stdout.count("┏") == 3  # metrics, splits, per class: never split when not a terminal


def test_table_says_the_headline_split_and_the_global_mean(tmp_path, rng):
    path = _file(tmp_path / "run.h5", rng)
    table = runner.invoke(app, ["measure", path]).stdout
    row = next(line for line in table.splitlines() if line.startswith("│ ncc_disagreement"))
    assert "'test' split" in row
    assert "μ_G: the mean of the class means (--global-mean class)" in table
    table = runner.invoke(app, ["measure", path, "--global-mean", "sample"]).stdout
    assert "μ_G: the mean of all samples (--global-mean sample)" in table
    only_train = str(write_features(
        tmp_path / "train.h5", {"train": {"features": rng.standard_normal((40, 3)), "labels": np.arange(40) % 4}},
        num_classes=4, weight=rng.standard_normal((4, 3)),
    ))
    table = runner.invoke(app, ["measure", only_train]).stdout
    row = next(line for line in table.splitlines() if line.startswith("│ ncc_disagreement"))
    assert "'train' split" in row
    (rec,) = _json(["measure", only_train])
    assert fmt(rec["metrics"]["ncc_disagreement"]) == fmt(rec["splits"]["train"]["ncc_disagreement"])


def test_a_test_only_file_names_the_split_option(tmp_path, rng):
    path = str(write_features(
        tmp_path / "test_only.h5", {"test": {"features": rng.standard_normal((40, 3)), "labels": np.arange(40) % 4}},
        num_classes=4,
    ))
    res = runner.invoke(app, ["measure", path])
    assert res.exit_code == 3
    assert res.stderr.strip() == (
        f"ncli: error: {path}: no split 'train' to take the class statistics from (the file has: 'test'); "
        "pick one with --split, e.g. --split test"
    )
    assert runner.invoke(app, ["measure", path, "--split", "test", "--json"]).exit_code == 0
    assert runner.invoke(app, ["measure", path, "--layer", "all"]).exit_code == 3  # the same message first


def test_a_layer_without_classifier_is_named_as_such(tmp_path, rng):
    y = np.arange(60) % 3
    H = rng.standard_normal((60, 4)) + 3 * np.eye(3, 4)[y]
    layers = {"block": H[:, :3] + rng.standard_normal((60, 3))}
    path = str(write_features(
        tmp_path / "layers.h5", {"train": {"features": H, "labels": y, "layers": layers}}, num_classes=3,
        weight=np.eye(3, 4), bias=np.zeros(3),
    ))
    table = runner.invoke(app, ["measure", path, "--layer", "block"]).stdout
    assert "— : not available (a stored layer has no classifier)" in table
    assert "stores no classifier" not in table  # the file has one
    plain = runner.invoke(app, ["measure", path]).stdout
    assert "not available" not in plain
    records = _json(["measure", path, "--layer", "all"])
    assert [r["layer"] for r in records] == ["block", None]  # the layer, then the penultimate features
    assert records[1] == _json(["measure", path])[0]


def test_a_file_extracted_from_test_data_only_names_the_split_option(tmp_path):
    pytest.importorskip("torch")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "test_only.h5")
    extracted = runner.invoke(app, [
        "extract", os.path.join(root, "fixtures/checkpoints/mlp_epoch0300.pt"), "--arch",
        os.path.join(root, "fixtures/models.py") + ":MLP", "--data", "test=" + os.path.join(root, "fixtures/digits.npz"),
        "-o", out, "-q",
    ])
    assert extracted.exit_code == 0, extracted.output
    res = runner.invoke(app, ["measure", out])
    assert res.exit_code == 3 and res.stdout == ""
    assert "no split 'train'" in res.stderr and "(the file has: 'test')" in res.stderr
    assert res.stderr.rstrip().endswith("pick one with --split, e.g. --split test")
    (rec,) = _json(["measure", out, "--split", "test"])
    assert rec["train_split"] == "test" and list(rec["splits"]) == ["test"]
