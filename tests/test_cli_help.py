"""The command line's help and error policy as a user meets them: help texts at 80 and 100
columns, --debug, flags given a value."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ncli.cli import app

runner = CliRunner()
COMMANDS = ([], ["extract"], ["inspect"], ["measure"], ["compare"])
ROOT = Path(__file__).resolve().parents[1]
FIXTURE = str(ROOT / "fixtures/features/mlp_epoch0300.h5")
# the installed command, as a user types it (help shows "Usage: ncli", not "python -m ncli")
NCLI = shutil.which("ncli", path=os.path.dirname(sys.executable)) or shutil.which("ncli") or "ncli"


def _ncli(args, columns=None, **kwargs):
    env = dict(os.environ)
    if columns is not None:
        env["COLUMNS"] = str(columns)
        env.pop("TERMINAL_WIDTH", None)
    return subprocess.run([NCLI, *args], capture_output=True, text=True, env=env, **kwargs)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ncli")
def test_help_names_values_plainly(command):
    out = _ncli([*command, "--help"], columns=100).stdout
    assert "Usage: ncli" in out
    assert "<bool>" not in out  # a flag takes no value
    assert "<list[" not in out  # an argument or a repeatable option reads as its name
    assert not {"<str>", "<path>", "<int>", "<int range>"} & set(re.findall(r"<[^>|]*>", out))  # so does any option
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage  # no {files}... braces around a required argument
    assert "-h" in out and "--help" in out


def test_help_usage_line_names_the_arguments():
    assert "Usage: ncli measure [OPTIONS] FILE..." in _ncli(["measure", "-h"], columns=100).stdout
    assert "Usage: ncli compare [OPTIONS] [INPUT...]" in _ncli(["compare", "-h"], columns=100).stdout


@pytest.mark.parametrize("args", [["measure", FIXTURE, "--json", "true"], ["compare", FIXTURE, "--json", "false"]])
def test_flag_given_a_value_says_so(args):
    res = _ncli(args)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.startswith("ncli: error: ") and "take no value" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_debug_keeps_the_exit_code_and_adds_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.h5")
    plain = _ncli(["measure", missing])
    debug = _ncli(["--debug", "measure", missing])
    assert plain.returncode == debug.returncode == 3
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()  # the same one line, last


def test_debug_keeps_usage_and_refusal_codes(tmp_path):
    out = tmp_path / "plot.png"
    out.write_bytes(b"x")
    for args, code in ((["compare", FIXTURE, "--json", "--csv"], 2), (["compare", FIXTURE, "--plot", str(out)], 4)):
        assert runner.invoke(app, args).exit_code == code
        res = runner.invoke(app, ["--debug", *args])
        assert res.exit_code == code, res.output


def _example_lines(doc: str) -> list[str]:
    """The lines of a help text's examples: a command, or the continuation of one ending in \\."""
    lines, continued = [], False
    for line in doc.splitlines():
        text = line.strip()
        if text.startswith("ncli ") or (continued and text):
            lines.append(text)
        continued = text.endswith("\\")
    return lines


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("command", [c for c in COMMANDS if c], ids=lambda c: c[0])
def test_help_examples_never_wrap_mid_command(command, columns):
    (info,) = [c for c in app.registered_commands if c.callback.__name__ == command[0]]
    examples = _example_lines(info.callback.__doc__)
    assert examples, "every command's help shows an example"
    shown = [line.strip() for line in _ncli([*command, "--help"], columns=columns).stdout.splitlines()]
    for example in examples:
        assert example in shown, f"{example!r} is wrapped at {columns} columns"


def test_top_level_help_lists_the_pipeline_and_whole_command_summaries():
    out = _ncli(["--help"], columns=80).stdout
    lines = out.splitlines()
    for step in ("extract: checkpoint + data", "measure: feature file", "compare: many files", "inspect: a checkpoint"):
        assert any(line.strip().startswith(step) for line in lines), (step, out)  # a line each, not rewrapped
    commands = lines[lines.index("Commands:") + 1:]
    assert [line.split()[0] for line in commands if line.strip()] == ["extract", "inspect", "measure", "compare"]
    assert not any(line.rstrip().endswith("...") for line in commands), out  # no summary cut
