"""Which records form one training run, for the figure (``compare --plot``): one line each.

By default a run is a folder: the records of files in the same directory. A record that
carries a run name (a string ``"run"``) is grouped by it instead. ``--group PATTERN`` names
the run from the file path: a regular expression searched in it, whose first group (or, with
no group, the whole match) is the run's name; every input must match. Runs keep the order in
which their first record comes (compare's order: by epoch), records theirs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ncli.console import printable
from ncli.errors import UsageError


@dataclass
class Series:
    """One training run of the figure: its name and its records, in drawing order."""

    label: str
    records: list[dict] = field(default_factory=list)


def group_pattern(text: str) -> re.Pattern:
    """``--group PATTERN`` compiled, or one usage error saying what is wrong with it."""
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise UsageError(f"--group {text!r}: not a regular expression ({exc})") from None
    return pattern


def run_name(record: dict, pattern: re.Pattern | None = None) -> str:
    """The run a record belongs to: from ``pattern``, else its stored run name, else its folder."""
    path = record["file"]
    if pattern is not None:
        match = pattern.search(path)
        if match is None:
            raise UsageError(
                f"--group {pattern.pattern!r}: {printable(path)} does not match; the pattern must match every input"
            )
        name = match.group(1) if pattern.groups else match.group(0)
        if not name:
            raise UsageError(f"--group {pattern.pattern!r}: names no run in {printable(path)} (an empty match)")
        return name
    stored = record.get("run")
    if isinstance(stored, str) and stored:
        return stored
    return _folder(record)


def group_series(records: list[dict], pattern: re.Pattern | None = None) -> list[Series]:
    """The records as runs (see the module docstring). Runs named by their folders are
    labelled by what tells the folders apart (``runs/mlp``, ``runs/cnn``: ``mlp``, ``cnn``)."""
    runs: dict[str, Series] = {}
    for record in records:
        name = run_name(record, pattern)
        runs.setdefault(name, Series(name)).records.append(record)
    folders = [run for run in runs.values() if pattern is None and run.label == _folder(run.records[0])]
    if len(folders) > 1:
        try:
            common = os.path.commonpath([run.label for run in folders])
        except ValueError:  # absolute and relative folders together
            common = ""
        short = [os.path.relpath(run.label, common) if common else run.label for run in folders]
        if all(label and not label.startswith("..") and label != "." for label in short):
            for run, label in zip(folders, short):
                run.label = label
    return list(runs.values())


def _folder(record: dict) -> str:
    return os.path.dirname(record["file"]) or "."
