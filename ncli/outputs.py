"""Writing outputs safely: one place for every file ncli writes (feature files, plots, shards).

An output is written under a temporary name next to its final path and moved into place only
when complete (:func:`commit`), so a reader never sees half a file, and an existing file is
never replaced unless the user asked (``--force``). The temporary name
``.ncli-tmp-<pid>-<hex>-<name>`` carries the writer's pid: the leftover of a killed writer
(its process gone) is removed by the next writer in that folder (:func:`cleanup_stale_temps`).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from ncli.errors import InputError, RefusedError

TEMP_PREFIX = ".ncli-tmp-"  # + "<pid>-<hex>-<name>"
_TEMP_RE = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-.+$")


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name in ``path``'s folder, recognisable by :func:`cleanup_stale_temps`."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any work) when ``path`` cannot be written as asked."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: is a directory; give a file name for the output")
    if out.exists() and not force:
        raise RefusedError(f"{out}: already exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{out}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: output folder {parent} is not writable")
    return out


def commit(tmp: Path, final: Path, *, force: bool) -> None:
    """Move the complete temporary file ``tmp`` to ``final`` atomically. Without ``force`` an
    existing ``final`` (even one that appeared while writing) is kept and RefusedError raised.
    ``tmp`` is gone afterwards in every case but an unexpected OSError."""
    if force:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic: fails if the path appeared meanwhile
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise RefusedError(f"{final}: appeared while writing; pass --force to replace it") from None
    except OSError:  # no hard links on this filesystem
        if final.exists():
            tmp.unlink(missing_ok=True)
            raise RefusedError(f"{final}: already exists; pass --force to replace it") from None
        os.replace(tmp, final)
        return
    tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could have written: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _locked(path: Path) -> bool:
    """Whether another process holds an HDF5 writer's lock (flock) on ``path``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def cleanup_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of killed writers in ``folder``: ``.ncli-tmp-<pid>-<hex>-<name>``
    files whose process is gone (and that no process holds open for writing). Anything else,
    and any error, is left alone. Returns the removed paths."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _pid_alive(pid) or _locked(Path(e.path)):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except (OSError, ValueError):
            continue
    return removed
