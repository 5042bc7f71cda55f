"""The README's commands in a fresh clone: every file they write is new there (an existing
one would need --force) and ignored by git (the clone stays clean)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = re.compile(r"(?:\s-o|--plot|\s>)\s+\"?([^\s\"]+)")


def _outputs() -> list[str]:
    """Relative paths written by the commands of the README's shell blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|console)\n(.*?)```", text, flags=re.S)
    paths = []
    for block in blocks:
        for path in OUTPUT.findall(block):
            if path.startswith(("/", "OUT", "-")) or "{" in path:
                continue
            paths.append(path.split("$")[0] + "x.h5" if "$" in path else path)  # runs/$(basename ...).h5
    return paths


def test_readme_outputs_are_new_and_ignored_in_a_clone():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = _outputs()
    assert "mlp300.h5" in paths and "runs/collapse.png" in paths  # the Quick start's and the pipeline's
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    for path in paths:
        assert path not in tracked, f"the README writes {path}, which a clone already has"
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert ignored.returncode == 0, f"the README writes {path}; .gitignore should hold it"
