"""The bad-input matrix for ``ncli compare`` (issue 5): every case exits with the documented
code, one or two lines on stderr starting ``ncli: error:`` (typer's own parser errors, exit 2,
print its usage box), no traceback, nothing on stdout, and every existing file byte-identical.

tests/test_compare.py already covers: no inputs, garbage on stdin, a JSON line of another
schema or with a non-numeric metric, a missing file, empty stdin, --json with --csv, '-' twice,
a binary blob, an existing --plot target (exit code), a bad --plot suffix, no matplotlib.
"""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from test_bad_input import CASES as MEASURE_CASES
from test_bad_input import _valid

runner = CliRunner()


def snapshot(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def check_clean_failure(res, code, needle, root, before):
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stdout == "", res.stdout  # everything is loaded before anything is printed
    lines = res.stderr.strip().splitlines()
    if code == 2 and lines and lines[0].startswith("Usage:"):
        assert "Error" in res.stderr
    else:
        assert 1 <= len(lines) <= 2 and lines[0].startswith("ncli: error: "), res.stderr
    if needle is not None:
        assert needle in res.stderr, res.stderr
    assert snapshot(root) == before
    assert not list(root.rglob(".ncli-tmp-*"))


def _compare(*args, input=None):
    return runner.invoke(app, ["compare", *[str(a) for a in args]], input=input)


@pytest.fixture
def good(tmp_path, rng):
    return _valid(tmp_path / "good.h5", rng)


@pytest.fixture
def record(good):
    res = runner.invoke(app, ["measure", str(good), "--json"])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# -------------------------------------------------------------------- the measure matrix, through compare


COMPARE_ARGS = {"unknown split": ["--split", "val"]}
SKIP = {"unknown layer", "bad option value"}  # measure options compare does not have


@pytest.mark.parametrize("case", [c for c in MEASURE_CASES if c not in SKIP])
def test_compare_bad_feature_file(tmp_path, rng, good, case):
    """A bad feature file among good ones fails the whole comparison, naming it."""
    mutate, _extra, code, needle = MEASURE_CASES[case]
    bad = _valid(tmp_path / "bad.h5", rng)
    if mutate is not None:
        with h5py.File(bad, "a") as f:
            mutate(f)
    before = snapshot(tmp_path)
    res = _compare(good, bad, *COMPARE_ARGS.get(case, []))
    check_clean_failure(res, code, needle, tmp_path, before)
    assert "good.h5" in res.stderr or str(bad) in res.stderr


# -------------------------------------------------------------------- files that are no input


def _truncated(tmp_path, good):
    p = tmp_path / "trunc.h5"
    p.write_bytes(good.read_bytes()[:1500])
    return p


def _plain_h5(tmp_path, good):
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros((4, 3))
    return p


FILE_CASES = {
    "a directory": (lambda t, g: t, 3, "is a directory"),
    "a missing file among good ones": (lambda t, g: t / "missing.h5", 3, "no such file"),
    "a truncated HDF5 file": (_truncated, 3, "trunc.h5"),
    "an HDF5 file that is not a feature file": (_plain_h5, 3, "not an ncli feature file"),
    "a text file that is not JSON": (lambda t, g: (t / "n.txt").write_text("epoch,nc1\n1,0.5\n") and t / "n.txt", 3, "line 1: not JSON"),
    "an empty file": (lambda t, g: (t / "e.jsonl").write_bytes(b"") or t / "e.jsonl", 3, "no ncli measure records"),
    "latin-1 text": (lambda t, g: (t / "l.txt").write_bytes("épreuve".encode("latin-1")) and t / "l.txt", 3, "not UTF-8"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_compare_input_that_is_no_input(tmp_path, good, case):
    make, code, needle = FILE_CASES[case]
    target = make(tmp_path, good)
    before = snapshot(tmp_path)
    check_clean_failure(_compare(good, target), code, needle, tmp_path, before)


# -------------------------------------------------------------------- records of the wrong schema


def _with(record, **changes):
    r = json.loads(json.dumps(record))
    for k, v in changes.items():
        r[k] = v
    return r


RECORD_CASES = {
    "a JSON number": (lambda r: "3", "expected an object"),
    "a JSON string": (lambda r: json.dumps("ncli.measure/1"), "expected an object"),
    "wrong schema version": (lambda r: json.dumps(_with(r, schema="ncli.measure/9")), "schema 'ncli.measure/9'"),
    "file not a string": (lambda r: json.dumps(_with(r, file=7)), "'file' string"),
    "epoch a string": (lambda r: json.dumps(_with(r, epoch="10")), "'epoch' must be an integer"),
    "epoch a bool": (lambda r: json.dumps(_with(r, epoch=True)), "'epoch' must be an integer"),
    "no metrics": (lambda r: json.dumps(_with(r, metrics={})), "'metrics' object"),
    "metrics a list": (lambda r: json.dumps(_with(r, metrics=[1, 2])), "'metrics' object"),
    "splits missing": (lambda r: json.dumps({k: v for k, v in r.items() if k != "splits"}), "'splits' object"),
    "a split not an object": (lambda r: json.dumps(_with(r, splits={"train": 3})), "split 'train' is not an object"),
    "a split value not a number": (lambda r: json.dumps(_with(r, splits={"train": {"accuracy": "high"}})), "'accuracy'"),
    "layer not a string": (lambda r: json.dumps(_with(r, layer={"a": 1})), "'layer' must be a string"),
    "train_split not a string": (lambda r: json.dumps(_with(r, train_split=[1])), "'train_split' must be a string"),
    "a compare object with a bad run": (lambda r: json.dumps({"schema": "ncli.compare/1", "runs": [r, {"x": 1}]}), "runs[1]"),
    "JSON nested too deeply": (lambda r: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "truncated JSON": (lambda r: json.dumps(r)[:-10], "not JSON"),
    "two records on one line": (lambda r: json.dumps(r) + " " + json.dumps(r), "not JSON"),
    # issue 15: integers no float (or HDF5 attribute) can hold
    "a 400-digit metric": (lambda r: json.dumps(r).replace('"nc1": ', '"nc1": ' + "9" * 400 + ", \"was\": ", 1), "not a number (int64 or float)"),
    "a 400-digit epoch": (lambda r: json.dumps(_with(r, epoch=10**400)), "'epoch' must be an integer (int64)"),
    "a split value of 2^63": (lambda r: json.dumps(_with(r, splits={"train": {"accuracy": 2**63}})), "not a number (int64 or float)"),
}


@pytest.mark.parametrize("via", ["stdin", "file"])
@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_compare_records_of_the_wrong_schema(tmp_path, record, case, via):
    make, needle = RECORD_CASES[case]
    text = json.dumps(record) + "\n" + make(record) + "\n"  # the bad line is line 2
    if via == "stdin":
        before = snapshot(tmp_path)
        res = _compare("-", "--by", "layer", input=text) if case == "layer not a string" else _compare("-", input=text)
        where = "stdin line 2"
    else:
        f = tmp_path / "records.jsonl"
        f.write_text(text)
        before = snapshot(tmp_path)
        res = _compare(f, "--by", "layer") if case == "layer not a string" else _compare(f)
        where = f"{f} line 2"
    check_clean_failure(res, 3, needle, tmp_path, before)
    assert where in res.stderr


def test_garbage_bytes_on_stdin(tmp_path, good):
    before = snapshot(tmp_path)
    check_clean_failure(_compare("-", input=b"\xff\xfe\x00\x01garbage"), 3, "stdin: not UTF-8", tmp_path, before)
    check_clean_failure(_compare("-", input=good.read_bytes()), 3, "stdin: holds an HDF5 file", tmp_path, before)
    check_clean_failure(_compare("-", input="\x00" * 64 + "\n"), 3, "stdin line 1: not JSON", tmp_path, before)


# -------------------------------------------------------------------- options and the --plot target


def test_existing_plot_target_is_byte_identical(tmp_path, good):
    pytest.importorskip("matplotlib")
    target = tmp_path / "fig.png"
    target.write_bytes(b"not really a png, but mine")
    before = snapshot(tmp_path)
    check_clean_failure(_compare(good, "--plot", target), 4, "--force", tmp_path, before)
    # refused before measuring anything: a bad input is not even looked at
    check_clean_failure(_compare(tmp_path / "missing.h5", "--plot", target), 4, "--force", tmp_path, before)


PLOT_CASES = {
    "--plot in a missing folder": (lambda t: t / "no" / "fig.png", 3, "does not exist"),
    "--plot is a directory named like a figure": (lambda t: (t / "dir.png").mkdir() or t / "dir.png", 3, "is a directory"),
    "--plot without a figure suffix": (lambda t: t / "fig.gif", 2, ".png, .pdf or .svg"),
}


@pytest.mark.parametrize("case", list(PLOT_CASES))
def test_bad_plot_target(tmp_path, good, case):
    pytest.importorskip("matplotlib")
    make, code, needle = PLOT_CASES[case]
    target = make(tmp_path)
    before = snapshot(tmp_path)
    check_clean_failure(_compare(good, "--plot", target), code, needle, tmp_path, before)


OPTION_CASES = {
    "unknown option": (["--bogus"], 2, "--bogus"),
    "unknown --order": (["--order", "name"], 2, "name"),
    "unknown --by": (["--by", "epoch"], 2, "epoch"),
    "--chunk-rows 0": (["--chunk-rows", "0"], 2, "--chunk-rows"),
    "--split that the records were not measured with": (["--split", "test"], 2, "measured with --split train"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_options(tmp_path, good, record, case):
    extra, code, needle = OPTION_CASES[case]
    before = snapshot(tmp_path)
    res = _compare("-", *extra, input=json.dumps(record) + "\n")
    check_clean_failure(res, code, needle, tmp_path, before)


# -------------------------------------------------------------------- names are text (issue 15)

HOSTILE = "x[/]y[bold]z\x1b]0;pwned\x07\x1b[2J\u202e"  # rich markup, a retitle, clear screen, bidi


def _hostile_record(record):
    r = json.loads(json.dumps(record))
    r["file"] = f"runs/{HOSTILE}.h5"
    r["layer"] = HOSTILE
    r["metrics"][HOSTILE] = 1.5
    r["splits"][HOSTILE] = dict(r["splits"]["train"])
    return r


@pytest.mark.parametrize("fmt", [[], ["--by", "layer"]])
def test_names_from_records_are_shown_as_text(tmp_path, record, fmt):
    text = json.dumps(record) + "\n" + json.dumps(_hostile_record(record)) + "\n"
    res = _compare("-", *fmt, input=text)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out  # nothing reaches the terminal raw
    assert "x[/]y[bold]z\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in out  # the name, as written, escaped
    assert "Traceback" not in res.stderr


def test_error_messages_escape_names_from_records(tmp_path, record):
    res = _compare("-", "--split", "test", input=json.dumps(_hostile_record(record)) + "\n")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "\x1b" not in res.stderr and "\\x1b]0;pwned" in res.stderr


def test_a_feature_file_path_with_markup_is_text(tmp_path, rng):
    folder = tmp_path / "a[bold]["
    folder.mkdir()
    path = _valid(folder / "]b.h5", rng)  # the path reads a[bold][/]b.h5
    for args in (["measure", str(path)], ["measure", str(path), "--per-class"], ["compare", str(path), str(path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.stderr)
        assert "a[bold][/]b.h5" in res.stdout.replace("\n", "") or "]b.h5" in res.stdout


def test_class_names_are_text(tmp_path, rng):
    path = _valid(tmp_path / "f.h5", rng)
    with h5py.File(path, "a") as f:
        f.create_dataset("class_names", data=["[/]", "\x1b[2Jcat", "[red]dog"], dtype=h5py.string_dtype("utf-8"))
    res = runner.invoke(app, ["measure", str(path), "--per-class"])
    assert res.exit_code == 0, res.stderr
    assert "[/]" in res.stdout and "\\x1b[2Jcat" in res.stdout and "[red]dog" in res.stdout and "\x1b" not in res.stdout


# -------------------------------------------------------------------- CSV formula injection (issue 15)


def test_csv_cells_are_never_formulas_and_numbers_stay_numbers(tmp_path, record):
    import csv
    import io

    r = json.loads(json.dumps(record))
    r["file"] = "=cmd|' /C calc'!A0.h5"
    r["layer"] = "@SUM(A1:A9)"
    r["epoch"] = -3
    r["metrics"] = {"+evil": -0.25, "\tmetric": 2.0, "nc1": 0.5}
    r["splits"] = {"-split": dict(record["splits"]["train"]), "\rtrain": dict(record["splits"]["train"])}
    r["train_split"] = "-split"
    res = _compare("-", "--csv", input=json.dumps(r) + "\n")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows
    for row in rows:
        for column in ("run", "layer", "split", "metric"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), row
        float(row["value"])  # every value is a number
        assert row["epoch"] == "-3"
    assert {row["run"] for row in rows} == {"'=cmd|' /C calc'!A0.h5"}
    assert {row["metric"] for row in rows} >= {"'+evil", "\\tmetric", "nc1"}  # control characters escaped
    assert {row["split"] for row in rows} == {"'-split", "\\rtrain"}
    assert [row["value"] for row in rows if row["metric"] == "'+evil"] == ["-0.25"]
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(io.StringIO(res.stdout))
    assert str(frame["value"].dtype) == "float64" and str(frame["epoch"].dtype) == "int64"
    assert frame.loc[frame["metric"] == "'+evil", "value"].tolist() == [-0.25]


@pytest.mark.parametrize("by", ["run", "layer"])
def test_names_in_figures_are_text_not_math(tmp_path, record, by):
    pytest.importorskip("matplotlib")
    r = json.loads(json.dumps(record))
    r["file"] = "$\\frac{a$.h5"
    r["splits"]["$\\foo{$\x1b"] = dict(r["splits"]["train"])
    target = tmp_path / "fig.png"
    res = _compare("-", "--by", by, "--plot", target, input=json.dumps(r) + "\n")
    assert res.exit_code == 0, res.stderr
    assert target.exists() and res.stderr == f"ncli: wrote {target}\n"


# -------------------------------------------------------------------- endless inputs, pipes, the --plot target (issue 15)


def test_an_endless_line_is_refused_before_it_fills_memory(tmp_path, monkeypatch):
    from ncli.compare import load

    monkeypatch.setattr(load, "MAX_LINE_BYTES", 1 << 20)
    before = snapshot(tmp_path)
    check_clean_failure(_compare("/dev/zero"), 3, "/dev/zero: a line longer than 1 MiB", tmp_path, before)
    check_clean_failure(_compare("-", input=b"\x00" * (3 << 20)), 3, "stdin: a line longer than 1 MiB", tmp_path, before)


def test_records_from_a_pipe(tmp_path, record):
    """`ncli compare <(ncli measure ... --json)`: a FIFO is read as JSON lines, never as HDF5."""
    import os
    import threading

    fifo = tmp_path / "records"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:
            f.write(json.dumps(record) + "\n")

    writer = threading.Thread(target=write)
    writer.start()
    res = _compare(fifo, "--json")
    writer.join(10)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["runs"][0]["file"] == record["file"]


def test_plot_onto_one_of_the_inputs_is_refused(tmp_path, good, record):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs.svg"
    runs.write_text(json.dumps(record) + "\n")
    link = tmp_path / "again.svg"
    link.symlink_to(runs)
    before = snapshot(tmp_path)
    for target in (runs, link):
        check_clean_failure(_compare(runs, "--plot", target, "--force"), 2, "is also an input", tmp_path, before)


def test_plot_never_replaces_a_device(tmp_path, good):
    pytest.importorskip("matplotlib")
    import os

    fifo = tmp_path / "fig.png"
    os.mkfifo(fifo)
    res = _compare(good, "--plot", fifo, "--force")
    assert res.exit_code == 3 and "is a FIFO, not a regular file" in res.stderr, res.stderr
    import stat

    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_the_leftover_of_a_killed_plot_is_removed_by_the_next(tmp_path, good):
    """A SIGKILLed `compare --plot` leaves .ncli-tmp-<pid>-<hex>-fig.png (its process is gone):
    the next compare --plot in that folder removes it, as extract does for feature files."""
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ncli-tmp-{dead.pid}-0123abcd-fig.png"
    stale.write_bytes(b"half a figure")
    res = _compare(good, "--plot", tmp_path / "other.png")
    assert res.exit_code == 0, res.stderr
    assert not stale.exists() and (tmp_path / "other.png").exists()
    assert not list(tmp_path.glob(".ncli-tmp-*"))
