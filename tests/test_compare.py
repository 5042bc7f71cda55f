"""``ncli compare`` (issue 4): inputs, ordering, table/JSON/CSV, the figure, --by layer, errors.

A small synthetic epoch series is written with ``write_features``: class means fixed on a
simplex-like frame, within-class spread shrinking with the epoch, so NC1 falls.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.compare.load import LoadOptions, Run, load_runs, order_runs, read_input
from ncli.compare.table import SPARK_BLOCKS, compare_tables, fmt_trend, sparkline, trend_ratio
from ncli.errors import EnvironmentProblem, InputError, UsageError
from ncli.features import write_features
from ncli.measure import registry
from ncli.measure.record import measure_file
from ncli.measure.render import record_json

runner = CliRunner()

EPOCHS = (1, 10, 100, 1000)
CLASSES, DIM, PER_CLASS = 4, 6, 15


def _write_epoch(path, epoch, *, rng, means, step=None, layers=True):
    spread = 2.0 / (1 + epoch) ** 0.5
    splits = {}
    for s in ("train", "test"):
        y = np.repeat(np.arange(CLASSES), PER_CLASS)
        H = means[y] + spread * rng.normal(size=(len(y), DIM))
        d = {"features": H, "labels": y}
        if layers:
            d["layers"] = {
                "block1": H @ rng.normal(size=(DIM, 5)) + rng.normal(size=(len(y), 5)),
                "block2": H[:, :4] + 0.5 * spread * rng.normal(size=(len(y), 4)),
            }
        splits[s] = d
    W = means + 0.3 * rng.normal(size=means.shape) / (1 + epoch) ** 0.5
    attrs = {"epoch": epoch, "feature_layer": "fc"}
    if step is not None:
        attrs["step"] = step
    return str(write_features(path, splits, num_classes=CLASSES, weight=W, bias=np.zeros(CLASSES), attrs=attrs))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Files named so that the name order is NOT the epoch order; returned in epoch order."""
    d = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(7)
    means = 3.0 * np.linalg.qr(rng.normal(size=(DIM, CLASSES)))[0].T
    names = {1: "d_first.h5", 10: "b.h5", 100: "a.h5", 1000: "c_last.h5"}
    return [_write_epoch(d / names[e], e, rng=rng, means=means) for e in EPOCHS]


def _measured(path, **kw):
    """measure_file's record as it comes out of JSON (what --json prints)."""
    return json.loads(record_json(measure_file(path, **kw)))


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def _compare(args, **kw):
    return runner.invoke(app, ["compare", *args], **kw)


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("perm", [(3, 1, 0, 2), (0, 1, 2, 3), (2, 3, 1, 0)])
def test_orders_by_epoch_whatever_the_argument_order(series, perm):
    args = [series[i] for i in perm]
    out = json.loads(_ok(_compare([*args, "--json"])).stdout)
    assert [r["epoch"] for r in out["runs"]] == list(EPOCHS)
    assert [r["file"] for r in out["runs"]] == series


def test_order_given_keeps_the_argument_order(series):
    args = [series[2], series[0], series[3]]
    out = json.loads(_ok(_compare([*args, "--json", "--order", "given"])).stdout)
    assert [r["file"] for r in out["runs"]] == args
    assert out["order"] == "given"


def test_order_epoch_then_step_then_given_and_missing_epoch_last():
    def rec(name, epoch, step):
        return Run({"file": name, "epoch": epoch, "step": step}, name, 0)

    runs = [rec("none", None, None), rec("e2s5", 2, 5), rec("e2s1", 2, 1), rec("e1", 1, None), rec("e2s1b", 2, 1)]
    for i, r in enumerate(runs):
        r.position = i
    assert [r.source for r in order_runs(runs)] == ["e1", "e2s1", "e2s1b", "e2s5", "none"]
    assert [r.source for r in order_runs(runs, "given")] == [r.source for r in runs]


# --------------------------------------------------------------------------- same numbers as measure


def test_json_runs_are_the_measure_records(series):
    out = json.loads(_ok(_compare([*reversed(series), "--json"])).stdout)
    assert out["schema"] == "ncli.compare/1"
    assert out["runs"] == [_measured(p) for p in series]
    nc1 = [r["metrics"]["nc1"] for r in out["runs"]]
    assert out["trend"]["nc1"] == pytest.approx(nc1[-1] / nc1[0], rel=1e-12)
    assert nc1[0] / nc1[-1] > 10  # the synthetic series collapses


def test_json_is_deterministic(series):
    a = _ok(_compare([*series, "--json"])).stdout
    b = _ok(_compare([*reversed(series), "--json"])).stdout
    assert a == b and a.count("\n") == 1


def test_csv_is_tidy_and_gives_the_measure_numbers(series):
    text = _ok(_compare([series[1], series[0], "--csv"])).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["run", "epoch", "step", "layer", "split", "metric", "value"]
    assert [r["run"] for r in rows][0] == series[0]  # ordered by epoch
    recs = {p: _measured(p) for p in series[:2]}
    seen = set()
    for row in rows:
        rec = recs[row["run"]]
        assert int(row["epoch"]) == rec["epoch"] and row["step"] == ""
        if row["metric"] in rec["metrics"] and row["split"] == "train" and row["metric"] != "ncc_disagreement":
            expected = rec["metrics"][row["metric"]]
        else:
            expected = rec["splits"][row["split"]][row["metric"]]
        if expected is None:
            assert row["value"] == ""
        else:
            assert float(row["value"]) == expected  # full precision, exactly
        seen.add((row["run"], row["split"], row["metric"]))
    for p, rec in recs.items():
        for k in rec["metrics"]:
            split = "test" if k == "ncc_disagreement" else "train"
            assert (p, split, k) in seen
        assert rec["metrics"]["ncc_disagreement"] == rec["splits"]["test"]["ncc_disagreement"]
        for s in ("train", "test"):
            for k in ("num_samples", "accuracy", "ncc_accuracy", "ncc_disagreement"):
                assert (p, s, k) in seen


def test_stdin_records_are_used_as_given_not_measured_again(series, monkeypatch):
    lines = _ok(runner.invoke(app, ["measure", *series, "--json"])).stdout
    import ncli.measure.record

    def boom(*a, **k):
        raise AssertionError("compare measured again")

    monkeypatch.setattr(ncli.measure.record, "measure_file", boom)
    out = json.loads(_ok(_compare(["-", "--json"], input=lines)).stdout)
    assert out["runs"] == [json.loads(line) for line in lines.splitlines()]
    # shuffled lines are still ordered by epoch
    shuffled = "\n".join(reversed(lines.splitlines())) + "\n"
    out2 = json.loads(_ok(_compare(["-", "--json"], input=shuffled)).stdout)
    assert out2["runs"] == out["runs"]
    # CSV from stdin = CSV from the files
    monkeypatch.undo()
    assert _ok(_compare(["-", "--csv"], input=shuffled)).stdout == _ok(_compare([*series, "--csv"])).stdout


def test_json_lines_file_input_and_compare_output_fed_back(series, tmp_path):
    lines = _ok(runner.invoke(app, ["measure", *series[:2], "--json"])).stdout
    f = tmp_path / "records.jsonl"
    f.write_text(lines)
    out = json.loads(_ok(_compare([str(f), series[3], "--json"])).stdout)
    assert [r["epoch"] for r in out["runs"]] == [1, 10, 1000]
    again = json.loads(_ok(_compare(["-", "--json"], input=json.dumps(out) + "\n")).stdout)
    assert again["runs"] == out["runs"]


def test_split_and_global_mean_pass_through_to_measure(series, tmp_path):
    out = json.loads(_ok(_compare([series[0], "--json", "--global-mean", "sample", "--split", "test"])).stdout)
    assert out["runs"] == [_measured(series[0], global_mean="sample", split="test")]
    # records measured otherwise: a clear usage error rather than a silent mix
    lines = _ok(runner.invoke(app, ["measure", series[0], "--json"])).stdout
    r = _compare(["-", "--global-mean", "sample"], input=lines)
    assert r.exit_code == 2 and "global-mean" in r.stderr and r.stderr.count("\n") == 1


# --------------------------------------------------------------------------- the table


def test_table_rows_columns_trend_and_no_truncation_in_pipes(series):
    out = _ok(_compare([*reversed(series)])).stdout
    recs = [_measured(p) for p in series]
    lines = out.splitlines()
    assert lines[0] == f"runs in {os.path.dirname(series[0])}{os.sep}"  # common folder once
    header = "\n".join(lines[1:5])
    names = [os.path.basename(p) for p in series]
    assert [header.index(n) for n in names] == sorted(header.index(n) for n in names)  # epoch order
    nc1_line = next(line for line in lines if "│" in line and line.split("│")[1].strip() == "nc1")
    cells = [c.strip() for c in nc1_line.split("│")[2:-1]]
    assert cells[:-1] == [f"{r['metrics']['nc1']:.6g}" for r in recs]  # 6 significant digits, never cut
    ratio = recs[-1]["metrics"]["nc1"] / recs[0]["metrics"]["nc1"]
    assert cells[-1] == f"×{ratio:.6g}"
    for key in recs[0]["metrics"]:
        assert any(line.split("│")[1].strip() == key for line in lines if "│" in line)
    assert "train accuracy" in out and "test ncc_disagreement" in out
    assert not any(ch in out for ch in SPARK_BLOCKS)  # no sparkline in a pipe
    assert "…" not in out


def test_sparkline_on_terminals_only():
    recs = [{"file": f"r{i}", "metrics": {"nc1": v}, "splits": {"train": {}}} for i, v in enumerate((10.0, 1.0, 0.1, 0.01))]
    from rich.console import Console

    def render(spark):
        buf = io.StringIO()
        Console(file=buf, width=200, color_system=None).print(compare_tables(recs, sparklines=spark)[0])
        return buf.getvalue()

    assert "█▆▃▁ ×0.001" in render(True)
    assert not any(ch in render(False) for ch in SPARK_BLOCKS)


def test_narrow_terminal_splits_runs_over_tables_instead_of_cutting_numbers(series):
    from rich.console import Console

    recs = [_measured(p) for p in series]
    assert len(compare_tables(recs, sparklines=True, width=None)) == 1
    tables = compare_tables(recs, sparklines=True, width=70)
    assert len(tables) > 1
    buf = io.StringIO()
    console = Console(file=buf, width=70, color_system=None)
    for t in tables:
        console.print(t)
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 70
    for r in recs:
        assert f"{r['metrics']['nc1']:.6g}" in text
    assert [str(t.columns[-1].header) for t in tables].count("trend") == 1
    assert str(tables[-1].columns[-1].header) == "trend"


def test_trend_and_sparkline_units():
    assert trend_ratio([2.0, 3.0, 1.0]) == 0.5
    assert trend_ratio([0.0, 1.0]) is None
    assert trend_ratio([None, 1.0]) is None
    assert trend_ratio([1.0, None]) is None
    assert trend_ratio([1.0]) is None
    assert fmt_trend(None) == "—"
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1000.0, 10.0, 0.1]) == "█▅▁"  # log scale across decades
    assert sparkline([1.0, None, 1.0]) == "▄ ▄"
    assert sparkline([None, None]) == "  "


# --------------------------------------------------------------------------- the figure


def _data_lines(ax):
    """The lines of an axis that draw records (not the terminal-phase marker)."""
    from ncli.compare import plot

    return [line for line in ax.get_lines() if line.get_gid() != plot.TERMINAL_PHASE_GID]


def test_figure_has_the_papers_panels(series):
    pytest.importorskip("matplotlib")
    from ncli.compare import plot

    recs = [_measured(p) for p in series]
    fig = plot.build_figure(recs)
    axes = fig.axes
    assert len(axes) == 8
    assert [ax.get_title() for ax in axes] == list(registry.EPOCH_TITLES)
    titles = " ".join(ax.get_title() for ax in axes)
    for fig_no in ("Fig. 2", "Fig. 3", "Fig. 4", "Fig. 5", "Fig. 6", "Fig. 7"):
        assert fig_no in titles
    by_title = dict(zip(registry.EPOCH_TITLES, axes))
    assert by_title[registry.NC1_PANEL.title].get_yscale() == "log"
    assert all(ax.get_xscale() == "log" for ax in axes)  # epochs 1..1000 span decades
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in axes)
    # means and classifiers: two colours, the same in every NC2 panel
    from matplotlib.colors import to_hex

    for t in (registry.EQUINORM_PANEL.title, registry.EQUIANGULAR_PANEL.title, registry.MAXANGLE_PANEL.title):
        lines = {ln.get_label(): to_hex(ln.get_color()) for ln in _data_lines(by_title[t])}
        assert lines == {"class means": to_hex(plot.MEANS_COLOR), "classifiers": to_hex(plot.CLASSIFIERS_COLOR)}
    nc1_line = by_title[registry.NC1_PANEL.title].get_lines()[0]
    assert list(nc1_line.get_xdata()) == list(EPOCHS)
    assert list(nc1_line.get_ydata()) == [r["metrics"]["nc1"] for r in recs]
    acc = {ln.get_label(): list(ln.get_ydata()) for ln in _data_lines(by_title[registry.ACCURACY_PANEL.title])}
    assert acc["train"] == [r["splits"]["train"]["accuracy"] for r in recs]
    assert set(acc) == {"train", "test"}
    assert len(fig.legends) == 1
    # GNC2 beside the NC2 panels: the variance of the log inverse distances, per run
    gnc2 = by_title[registry.GNC2_PANEL.title]
    assert list(gnc2.get_lines()[0].get_ydata()) == [r["metrics"]["gnc2_log_var"] for r in recs]
    assert not any("simplex" in text.get_text() for ax in axes for text in ax.texts)  # C = 4 ≤ p + 1


def test_nc2_panels_say_no_simplex_etf_exists_when_c_exceeds_p_plus_1(series):
    pytest.importorskip("matplotlib")
    from ncli.compare import plot

    recs = [_measured(p) for p in series[:2]]
    for rec in recs:
        rec["feature_dim"] = 2  # C = 4 classes > p + 1 = 3
    recs[1]["classes_measured"], recs[1]["num_classes"] = 3, 9  # and --min-per-class kept 3 of 9 in one
    fig = plot.build_figure(recs)
    by_title = dict(zip(registry.EPOCH_TITLES, fig.axes))
    for panel in registry.EPOCH_PANELS:
        texts = [text.get_text() for text in by_title[panel.title].texts]
        assert ("no simplex ETF exists at C = 4 > p + 1 = 3" in texts) == panel.simplex, panel.title
    assert {panel.title for panel in registry.EPOCH_PANELS if panel.simplex} == {
        registry.EQUINORM_PANEL.title, registry.EQUIANGULAR_PANEL.title, registry.MAXANGLE_PANEL.title
    }
    assert "3 of 9 classes measured" in fig._suptitle.get_text()


def test_figure_without_epochs_uses_run_index_and_linear_x(series):
    pytest.importorskip("matplotlib")
    from ncli.compare import plot

    recs = [_measured(p) for p in series[:2]]
    recs[1]["epoch"] = None
    fig = plot.build_figure(recs)
    assert all("epoch not stored" in ax.get_xlabel() and ax.get_xscale() == "linear" for ax in fig.axes)
    assert list(fig.axes[1].get_lines()[0].get_xdata()) == [0, 1]
    assert plot.x_axis([{"epoch": 0}, {"epoch": 3}, {"epoch": 300}])[2] == "symlog"
    assert plot.x_axis([{"epoch": 10}, {"epoch": 300}])[2] == "linear"


def test_plot_writes_a_png_and_refuses_to_overwrite(series, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "collapse.png"
    r = _ok(_compare([*series, "--plot", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in r.stderr
    r = _compare([*series, "--plot", str(out)])
    assert r.exit_code == 4 and "--force" in r.stderr
    _ok(_compare([*series, "--plot", str(out), "--force", "--csv"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ncli-tmp-")]
    r = _compare([*series, "--plot", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and ".png, .pdf or .svg" in r.stderr


def test_plot_without_matplotlib_is_one_line_saying_how_to_install(series, tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    from ncli.compare import plot

    with pytest.raises(EnvironmentProblem, match=r"pip install 'neural-collapse-cli\[plot\]'"):
        plot.require_matplotlib()
    r = _compare([series[0], "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 5
    assert r.stderr.count("\n") == 1 and "pip install 'neural-collapse-cli[plot]'" in r.stderr
    assert r.stdout == ""  # failed before measuring or printing


# --------------------------------------------------------------------------- layers


def test_measure_layer_all_reports_each_stored_layer(series):
    lines = _ok(runner.invoke(app, ["measure", series[0], "--layer", "all", "--json"])).stdout.splitlines()
    recs = [json.loads(line) for line in lines]
    # the stored layers input -> output, then the penultimate features (as compare --by layer)
    assert [r["layer"] for r in recs] == ["block1", "block2", "fc"]
    assert recs[-1] == _measured(series[0])
    assert recs[-1]["metrics"]["self_duality"] is not None
    for r in recs[:-1]:
        assert r == _measured(series[0], layer=r["layer"])
        assert r["metrics"]["nc1"] is not None and r["metrics"]["self_duality"] is None
        assert r["splits"]["test"]["ncc_accuracy"] is not None
    table = _ok(runner.invoke(app, ["measure", series[0], "--layer", "all"])).stdout
    assert "layer block1" in table and "layer block2" in table and "layer fc" in table
    assert "(a stored layer has no classifier)" in table and "the file stores no classifier" not in table


def test_compare_by_layer_lays_layers_side_by_side(series):
    out = json.loads(_ok(_compare([series[3], series[0], "--by", "layer", "--json"])).stdout)
    assert out["by"] == "layer"
    assert [g["file"] for g in out["groups"]] == [series[0], series[3]]
    assert [g["layers"] for g in out["groups"]] == [["block1", "block2", "fc"]] * 2
    expected = [_measured(p, layer=lay) for p in (series[0], series[3]) for lay in ("block1", "block2", None)]
    assert out["runs"] == expected
    g0 = out["groups"][0]
    assert g0["trend"]["nc1"] == pytest.approx(expected[2]["metrics"]["nc1"] / expected[0]["metrics"]["nc1"])
    table = _ok(_compare([series[0], "--by", "layer"])).stdout
    head = table.splitlines()[:5]
    assert series[0] in head[0]
    assert "block1" in "\n".join(head) and "fc" in "\n".join(head)
    rows = {line.split("│")[1].strip() for line in table.splitlines() if "│" in line}
    assert {"nc1", "nc1_trace_ratio", "cdnv", "equinorm_means", "test ncc_accuracy"} <= rows
    assert "self_duality" not in rows and "equinorm_classifiers" not in rows


def test_by_layer_from_measure_lines(series):
    lines = _ok(runner.invoke(app, ["measure", series[0], "--layer", "all", "--json"])).stdout
    out = json.loads(_ok(_compare(["-", "--by", "layer", "--json"], input=lines)).stdout)
    assert out["groups"][0]["layers"] == ["block1", "block2", "fc"]  # the same order as compare --by layer
    by_layer = json.loads(_ok(_compare([series[0], "--by", "layer", "--json"])).stdout)
    assert out["runs"] == by_layer["runs"]


def test_by_layer_plot(series, tmp_path):
    pytest.importorskip("matplotlib")
    from ncli.compare import plot_layers

    recs = [_measured(series[0], layer=lay) for lay in ("block1", "block2", None)]
    fig = plot_layers.build_layer_figure([("epoch 1", recs)])
    assert [ax.get_title() for ax in fig.axes] == list(registry.LAYER_TITLES)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["block1", "block2", "fc"]
    out = tmp_path / "layers.svg"
    _ok(_compare([series[0], "--by", "layer", "--plot", str(out), "--csv"]))
    assert out.read_text().lstrip().startswith("<?xml")


def test_file_without_layers_by_layer_is_an_input_error(tmp_path):
    rng = np.random.default_rng(0)
    p = _write_epoch(tmp_path / "nolayers.h5", 5, rng=rng, means=np.eye(CLASSES, DIM) * 3, layers=False)
    r = _compare([p, "--by", "layer"])
    assert r.exit_code == 3 and "no layers" in r.stderr


# --------------------------------------------------------------------------- errors


def _one_line_error(r, code):
    assert r.exit_code == code, (r.exit_code, r.output)
    assert r.stderr.startswith("ncli: error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_no_inputs_is_a_usage_error():
    _one_line_error(_compare([]), 2)
    with pytest.raises(UsageError):
        load_runs([])


def test_garbage_on_stdin_names_stdin_and_the_line(series):
    good = _ok(runner.invoke(app, ["measure", series[0], "--json"])).stdout
    err = _one_line_error(_compare(["-"], input=good + "\nthis is not json\n"), 3)
    assert "stdin line 3" in err and "not JSON" in err


def test_a_json_line_that_is_not_a_record_names_file_and_line(tmp_path, series):
    good = _ok(runner.invoke(app, ["measure", series[0], "--json"])).stdout
    f = tmp_path / "mixed.jsonl"
    f.write_text(good + json.dumps({"schema": "something/2", "x": 1}) + "\n")
    err = _one_line_error(_compare([str(f)]), 3)
    assert f"{f} line 2" in err and "not an ncli measure record" in err
    f.write_text("[1, 2, 3]\n")
    assert "line 1" in _one_line_error(_compare([str(f)]), 3)
    bad = json.loads(good)
    bad["metrics"]["nc1"] = "big"
    err = _one_line_error(_compare(["-"], input=json.dumps(bad) + "\n"), 3)
    assert "stdin line 1" in err and "'nc1'" in err


def test_other_input_errors(tmp_path, series):
    _one_line_error(_compare([str(tmp_path / "missing.h5")]), 3)
    _one_line_error(_compare(["-"], input="\n\n"), 3)
    _one_line_error(_compare([series[0], "--json", "--csv"]), 2)
    _one_line_error(_compare(["-", "-"], input=""), 2)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\xff\xfe" * 10)
    assert "neither an HDF5" in _one_line_error(_compare([str(binary)]), 3)
    with pytest.raises(InputError, match="no such file"):
        read_input(str(tmp_path / "nope"), LoadOptions())


def test_compare_does_not_import_torch():
    import subprocess

    code = "import sys, ncli.cli, ncli.compare.load, ncli.compare.table, ncli.compare.export, ncli.compare.plot; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
