"""The epoch from a number in the file name when none is stored (issue 14, item 5): extract
records it as inferred, compare infers it for records without one, and orders naturally."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from extract_util import arch, invoke, make_data, model, ok, read
from ncli.cli import app
from ncli.features.epochs import epoch_from_name, natural_key

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ROOT / "fixtures" / "features"
GLOB_ORDER = ["ep1.h5", "ep100.h5", "ep20.h5", "ep200.h5", "ep400.h5", "ep5.h5", "ep50.h5"]  # the shell's order


@pytest.mark.parametrize("name,epoch", [
    ("mlp_epoch0300.pt", 300), ("epoch=5-step=100.ckpt", 5), ("ckpt_100.pth", 100), ("20.pt", 20), ("run_e7.pt", 7),
    ("resnet18_5.pth", 5), ("resnet18.pt", None), ("cifar10_resnet18.pt", None), ("step_100.pt", None),
    ("iter5000.pt", None), ("hf/checkpoint-500", None), ("a_1_2.pt", None), ("ep5_ep6.pt", None), ("last.ckpt", None),
    ("9" * 30 + ".pt", None),
])
def test_epoch_from_name(name, epoch):
    assert epoch_from_name(name) == epoch


def test_natural_order():
    assert sorted(GLOB_ORDER, key=natural_key) == ["ep1.h5", "ep5.h5", "ep20.h5", "ep50.h5", "ep100.h5", "ep200.h5", "ep400.h5"]


def test_extract_takes_the_epoch_from_the_checkpoint_name_and_records_it(tmp_path):
    data = make_data(tmp_path)
    checkpoints = []
    for epoch in (5, 20):  # plain state_dicts: no epoch stored
        torch.save(model("Net", seed=epoch).state_dict(), tmp_path / f"ep{epoch}.pt")
        checkpoints.append(tmp_path / f"ep{epoch}.pt")
    torch.save({"state_dict": model("Net").state_dict(), "epoch": 3}, tmp_path / "ep99.pt")  # stored: wins
    r = ok(invoke("extract", *checkpoints, tmp_path / "ep99.pt", "--arch", arch("Net"), "--data", data, "-o", f"{tmp_path}/runs/", "-q"))
    notes = [ln for ln in r.stderr.splitlines() if "taken from the file name" in ln]
    assert notes == [
        f"ncli: note: {checkpoints[0]}: no epoch stored; epoch 5 taken from the file name (recorded as epoch_source = "
        "'file name'; --epoch N sets it); likewise for the other checkpoints that store none"
    ], r.stderr
    for name, epoch, source in (("ep5", 5, "file name"), ("ep20", 20, "file name"), ("ep99", 3, None)):
        attrs = read(tmp_path / "runs" / f"{name}.h5")["attrs"]
        assert attrs["epoch"] == epoch and attrs.get("epoch_source") == source, (name, attrs)
    # --epoch given: nothing inferred, nothing said
    r = ok(invoke("extract", checkpoints[0], "--arch", arch("Net"), "--data", data, "-o", tmp_path / "given.h5", "--epoch", "7", "-q"))
    assert "file name" not in r.stderr
    attrs = read(tmp_path / "given.h5")["attrs"]
    assert attrs["epoch"] == 7 and "epoch_source" not in attrs
    # measure and compare carry it on
    record = json.loads(ok(invoke("measure", tmp_path / "runs" / "ep20.h5", "--json")).stdout)
    assert (record["epoch"], record["epoch_source"]) == (20, "file name")
    assert list(record)[:4] == ["schema", "file", "epoch", "epoch_source"]


@pytest.fixture
def unnumbered_runs(tmp_path):
    """Seven feature files without a stored epoch, named ep1 .. ep400."""
    for name in GLOB_ORDER:
        shutil.copy(FEATURES / "mlp_epoch0003.h5", tmp_path / name)
        with h5py.File(tmp_path / name, "r+") as f:
            del f.attrs["epoch"]
    return [str(tmp_path / name) for name in GLOB_ORDER]


def test_compare_infers_epochs_from_names_and_orders_naturally(unnumbered_runs):
    r = CliRunner().invoke(app, ["compare", *unnumbered_runs, "--json"])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)["runs"]
    assert [run["epoch"] for run in runs] == [1, 5, 20, 50, 100, 200, 400]
    assert all(run["epoch_source"] == "file name" for run in runs)
    notes = [ln for ln in r.stderr.splitlines() if "no epoch stored" in ln]
    assert len(notes) == 1 and "(7 runs)" in notes[0], r.stderr

    r = CliRunner().invoke(app, ["compare", *unnumbered_runs, "--csv"])
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0])[:4] == ["run", "epoch", "epoch_source", "step"]
    assert {row["epoch_source"] for row in rows} == {"file name"}
    assert [int(row["epoch"]) for row in rows if row["metric"] == "nc1"] == [1, 5, 20, 50, 100, 200, 400]


def test_compare_natural_order_breaks_ties(tmp_path):
    files = []
    for seed in ("seed10", "seed2"):  # the same stored epoch: the folders in natural order
        (tmp_path / seed).mkdir()
        files.append(str(shutil.copy(FEATURES / "mlp_epoch0003.h5", tmp_path / seed / "last.h5")))
    r = CliRunner().invoke(app, ["compare", *files, "--json"])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)["runs"]
    assert [run["file"] for run in runs] == [files[1], files[0]]
    assert all("epoch_source" not in run for run in runs) and "no epoch stored" not in r.stderr
