"""Where each checkpoint's output goes: ``-o FILE`` for one checkpoint; ``-o FOLDER/`` (a
trailing slash, or an existing folder) for one or several, each written to
``FOLDER/<checkpoint stem>.h5``. Every output is checked before any work starts, so a run
that would stop on an existing file (without --force) stops before the first checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from ncli.console import note
from ncli.errors import InputError, UsageError
from ncli.outputs import check_output_path

OUTPUT_SUFFIX = ".h5"


def is_folder(path: str | os.PathLike) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):  # a name too long, a NUL byte: the output check says why
        return False


def names_folder(output: str | os.PathLike) -> bool:
    """Whether ``-o OUTPUT`` names a folder: it ends with a slash or is an existing folder."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or is_folder(text)


def output_name(checkpoint: str | os.PathLike) -> str:
    """``runs/ep5.pth`` -> ``ep5.h5``; a Hugging Face model folder ``hf/bert`` -> ``bert.h5``."""
    path = Path(checkpoint)
    return (path.name if is_folder(path) else path.stem) + OUTPUT_SUFFIX


def plan_outputs(checkpoints, output: str | os.PathLike, force: bool) -> tuple[list[Path], Path | None]:
    """The output path of each checkpoint (in order), and the folder to create first (None when
    nothing needs creating). Raises before any work when an output cannot be written as asked."""
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise UsageError("give at least one checkpoint")
    if not names_folder(output):
        if len(checkpoints) > 1:
            raise UsageError(
                f"-o {os.fspath(output)}: {len(checkpoints)} checkpoints need -o FOLDER/ (one file each, named after "
                "the checkpoint); a file name takes one checkpoint"
            )
        return [check_output_path(output, force)], None
    folder = Path(output)
    outs = [folder / output_name(checkpoint) for checkpoint in checkpoints]
    first_of: dict[Path, str] = {}
    for checkpoint, out in zip(checkpoints, outs):
        if out in first_of:
            raise UsageError(
                f"{first_of[out]} and {checkpoint} would both write {out}; extract them into different folders"
            )
        first_of[out] = str(checkpoint)
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"-o {os.fspath(output)}: {folder} is a file, not a folder")
        for out in outs:  # every output before the first checkpoint runs
            check_output_path(out, force)
        return outs, None
    existing = _missing_from(folder).parent  # the nearest folder above that exists
    if not existing.is_dir():
        raise InputError(f"-o {os.fspath(output)}: cannot create the output folder: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise InputError(f"-o {os.fspath(output)}: cannot create the output folder: {existing} is not writable")
    return outs, folder


def _missing_from(folder: Path) -> Path:
    """The topmost of ``folder`` and its parents that does not exist (``runs`` for a new
    ``runs/mlp/``): what creating ``folder`` creates, and what undoing it removes."""
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top if str(top) else Path(".")


def create_folder(folder: Path, *, say: bool) -> Path:
    """Create the output folder and any missing parents, as ``mkdir -p``; ``say``: one note on
    stderr. Returns the topmost folder created (for :func:`remove_empty_folder`)."""
    top = _missing_from(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)  # exist_ok: torchrun ranks may race here
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    if say:
        note(f"created the output folder {folder}{os.sep}")
    return top


def remove_empty_folder(folder: Path, top: Path) -> None:
    """Undo :func:`create_folder` after a run that wrote nothing: remove ``folder`` and its
    parents up to ``top``, each only while it is empty."""
    path = folder
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top or path.parent == path:
            return
        path = path.parent


def report_partial(written: list[Path], outs: list[Path], failed_checkpoint) -> None:
    """After a failure among several checkpoints: which outputs exist and which do not."""
    if len(outs) < 2:
        return
    done = ", ".join(str(path) for path in written) if written else "none"
    missing = len(outs) - len(written)
    note(
        f"stopped at {failed_checkpoint}: {len(written)} of {len(outs)} outputs written ({done}); "
        f"{missing} not written, nothing partial of them left behind"
    )
