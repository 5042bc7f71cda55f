"""The epoch a file name tells, for checkpoints and feature files that store none, and the
natural order of names (``ep5`` before ``ep20``). Shared by ``ncli extract`` (recorded in the
file as ``epoch_source = "file name"``) and ``ncli compare`` (in its rows)."""

from __future__ import annotations

import os
import re

FROM_FILE_NAME = "file name"  # the value of epoch_source when the epoch was read from a name

INT64_MAX = (1 << 63) - 1
# a number after "epoch", "ep" or "e" (not inside a word): mlp_epoch0300, epoch=5-step=100, run_e20
_AFTER_EPOCH = re.compile(r"(?<![a-z0-9])(?:epochs?|ep|e)[_=\-.]?(\d+)(?!\d)", re.IGNORECASE)
# a number after a step or iteration word is never an epoch (step=100, iter_5000, HF checkpoint-500)
_AFTER_STEP = re.compile(r"(?<![a-z0-9])(?:global_step|steps?|iters?|iterations?|it|checkpoint-)[_=\-.]?(\d+)(?!\d)", re.IGNORECASE)
_TOKEN = re.compile(r"[^\W_]+")  # words between separators (_ - . = and others)


def _stem(name: str | os.PathLike) -> str:
    base = os.path.basename(os.path.normpath(os.fspath(name)))
    stem, suffix = os.path.splitext(base)
    return stem if suffix[1:].isalpha() or suffix[1:] in ("h5", "pt2", "hdf5") else base


def epoch_from_name(name: str | os.PathLike) -> int | None:
    """The epoch a file (or folder) name tells: the number after ``epoch``/``ep``/``e``, else
    the one number standing alone between separators (``ckpt_100.pth``, ``20.pt``); None when
    there is none or more than one, or the number is a step's (``step=100``) or part of a word
    (``resnet18``)."""
    stem = _stem(name)
    found = _AFTER_EPOCH.findall(stem)
    if len(set(int(n) for n in found)) == 1:
        return _in_range(found[0])
    if found:
        return None
    steps = {match.start(1) for match in _AFTER_STEP.finditer(stem)}
    alone = [m.group() for m in _TOKEN.finditer(stem) if m.group().isdigit() and m.start() not in steps]
    return _in_range(alone[0]) if len(alone) == 1 else None


def _in_range(digits: str) -> int | None:
    value = int(digits[:20])
    return value if len(digits.lstrip("0")) <= 19 and value <= INT64_MAX else None


def natural_key(name: str) -> tuple:
    """Sort key putting ``ep5`` before ``ep20`` before ``ep100`` (numbers compared as numbers)."""
    parts = re.split(r"(\d+)", os.fspath(name))
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts)
