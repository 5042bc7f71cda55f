"""`ncli measure` through the command line: JSON lines, table, errors, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.features import write_features
from ncli.measure.record import measure_file

runner = CliRunner()


def _file(tmp_path, rng, name="f.h5", C=4, p=8, n=200, classifier=True, epoch=None):
    means = rng.standard_normal((C, p)) * 4
    y = np.arange(n) % C
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float32)
    yt = np.arange(n // 2) % C
    Ht = (means[yt] + rng.standard_normal((n // 2, p))).astype(np.float32)
    return write_features(
        tmp_path / name,
        {"train": {"features": H, "labels": y}, "test": {"features": Ht, "labels": yt}},
        num_classes=C,
        weight=means if classifier else None,
        bias=np.zeros(C) if classifier else None,
        attrs={"epoch": epoch} if epoch is not None else None,
    )


def test_json_lines_one_per_file(tmp_path, rng):
    a = _file(tmp_path, rng, "a.h5", epoch=1)
    b = _file(tmp_path, rng, "b.h5", epoch=2)
    res = runner.invoke(app, ["measure", str(a), str(b), "--json"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    recs = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in recs] == [1, 2]
    assert recs[0] == json.loads(json.dumps(measure_file(a)))
    assert recs[0]["schema"] == "ncli.measure/1"
    assert set(recs[0]["splits"]) == {"train", "test"}
    assert recs[0]["global_mean"] == "class"


def test_json_is_deterministic_across_chunk_sizes(tmp_path, rng):
    a = _file(tmp_path, rng, n=999)
    outs = set()
    for rows in ("7", "100", "5000"):
        res = runner.invoke(app, ["measure", str(a), "--json", "--chunk-rows", rows])
        assert res.exit_code == 0
        rec = json.loads(res.stdout)
        outs.add(json.dumps({k: rec[k] for k in ("splits",)}))
    assert len(outs) == 1  # decisions are exact counts, identical whatever the chunking


def test_table_is_complete_in_a_pipe(tmp_path, rng):
    a = _file(tmp_path, rng)
    res = runner.invoke(app, ["measure", str(a), "--per-class"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    for key in ("nc1", "nc1_trace_ratio", "cdnv", "self_duality", "ncc_disagreement", "σ_c²"):
        assert key in out
    assert "…" not in out  # nothing cut
    rec = measure_file(a)
    assert f"{rec['metrics']['nc1']:.6g}" in out


def test_no_classifier_reports_not_available(tmp_path, rng):
    a = _file(tmp_path, rng, classifier=False)
    rec = json.loads(runner.invoke(app, ["measure", str(a), "--json"]).stdout)
    assert rec["metrics"]["self_duality"] is None
    assert rec["metrics"]["ncc_disagreement"] is None
    assert rec["splits"]["train"]["accuracy"] is None
    assert rec["metrics"]["nc1"] is not None
    res = runner.invoke(app, ["measure", str(a)])
    assert "—" in res.stdout and "not available" in res.stdout


def test_global_mean_option(tmp_path, rng):
    a = _file(tmp_path, rng)
    rec = json.loads(runner.invoke(app, ["measure", str(a), "--json", "--global-mean", "sample"]).stdout)
    assert rec["global_mean"] == "sample"
    res = runner.invoke(app, ["measure", str(a), "--global-mean", "median"])
    assert res.exit_code == 2


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["measure", "missing.h5"], 3, "no such file"),
        (["measure", "{a}", "--split", "val"], 3, "no split 'val'"),
        (["measure"], 2, ""),
    ],
)
def test_errors_are_one_line(tmp_path, rng, args, code, needle):
    a = _file(tmp_path, rng)
    args = [x.replace("{a}", str(a)) for x in args]
    res = runner.invoke(app, args)
    assert res.exit_code == code
    assert "Traceback" not in res.output
    if needle:
        assert needle in res.stderr
        assert res.stderr.startswith("ncli: error: ")
        assert len(res.stderr.strip().splitlines()) == 1


def test_measure_does_not_import_torch(tmp_path, rng):
    a = _file(tmp_path, rng)
    code = (
        "import sys; from ncli.cli import main; sys.argv=['ncli','measure',%r,'--json'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n" % str(a)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_classes"] == 4


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "ncli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("ncli ")


@pytest.mark.parametrize("global_mean", ["class", "sample"])
def test_bias_collapse_in_json_table_csv_and_compare(tmp_path, rng, global_mean):
    """A registry metric reaches every output: ‖W μ_G + b‖ with μ_G as --global-mean says."""
    C, p, n = 4, 6, 203  # imbalanced: the two global means differ
    means = rng.standard_normal((C, p)) * 4
    y = np.arange(n) % C
    H = means[y] + rng.standard_normal((n, p))
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    path = write_features(tmp_path / "f.h5", {"train": {"features": H, "labels": y}}, num_classes=C, weight=W, bias=b)
    class_means = np.stack([H[y == c].mean(axis=0) for c in range(C)])
    mu_g = class_means.mean(axis=0) if global_mean == "class" else H.mean(axis=0)
    want = float(np.sqrt(np.sum((W @ mu_g + b) ** 2)))
    res = runner.invoke(app, ["measure", str(path), "--json", "--global-mean", global_mean])
    assert json.loads(res.stdout)["metrics"]["bias_collapse"] == pytest.approx(want, rel=1e-12)
    table = runner.invoke(app, ["measure", str(path), "--global-mean", global_mean]).stdout
    assert any("bias_collapse" in line and "‖W μ_G + b‖" in line and f"{want:.6g}" in line for line in table.splitlines())
    csv_text = runner.invoke(app, ["compare", str(path), "--csv", "--global-mean", global_mean]).stdout
    assert any(line.split(",")[5:] == ["bias_collapse", repr(json.loads(res.stdout)["metrics"]["bias_collapse"])]
               for line in csv_text.splitlines())
    compared = json.loads(runner.invoke(app, ["compare", str(path), str(path), "--json"]).stdout)
    assert "bias_collapse" in compared["trend"]
    no_classifier = _file(tmp_path, rng, "plain.h5", classifier=False)
    assert json.loads(runner.invoke(app, ["measure", str(no_classifier), "--json"]).stdout)["metrics"]["bias_collapse"] is None
