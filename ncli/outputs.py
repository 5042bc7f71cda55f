"""Writing outputs safely: one place for every file ncli writes (feature files, plots, shards).

An output is written under a temporary name next to its final path and moved into place only
when complete (:func:`commit`), so a reader never sees half a file, and an existing file is
never replaced unless the user asked (``--force``). The temporary name
``.ncli-tmp-<pid>-<hex>-<name>`` carries the writer's pid: the leftover of a killed writer
(its process gone) is removed by the next writer in that folder (:func:`cleanup_stale_temps`).
Only regular files are ever replaced (never a device, a FIFO or a socket), and a write that
fails for lack of space is one error naming the output (:func:`write_failure`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from ncli.errors import EnvironmentProblem, InputError, NcliError, RefusedError

TEMP_PREFIX = ".ncli-tmp-"  # + "<pid>-<hex>-<name>"
_TEMP_RE = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-.+$")


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` allows."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def fitted_name(path: Path, prefix: str, name: str | None = None) -> Path:
    """``prefix + name`` (default: ``path``'s name) in ``path``'s folder, the name shortened
    (its end kept) when the whole would exceed the file system's name limit."""
    name = path.name if name is None else name
    room = name_max(path.parent if str(path.parent) else ".") - len(prefix.encode())
    if len(name.encode()) > room:
        name = name.encode()[-max(room, 1):].decode("utf-8", "ignore") or "out"
    return path.with_name(prefix + name)


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name in ``path``'s folder, recognisable by :func:`cleanup_stale_temps`."""
    return fitted_name(path, f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-")


_NOT_REGULAR = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
                stat.S_IFSOCK: "a socket"}


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any work) when ``path`` cannot be written as asked."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        if len(out.name.encode()) > name_max(parent if parent.is_dir() else "."):
            raise InputError(f"{out}: the file name is longer than the file system allows ({name_max(parent)} bytes)")
        try:
            mode = os.lstat(out).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        if mode is not None:
            if out.is_dir():
                raise InputError(f"{out}: is a directory; give a file name for the output")
            kind = _NOT_REGULAR.get(stat.S_IFMT(mode))
            if kind is not None:  # even with --force: a device or a FIFO is never replaced by a file
                raise InputError(f"{out}: is {kind}, not a regular file; ncli writes only regular files")
            if not force:
                raise RefusedError(f"{out}: already exists; pass --force to replace it")
        if not parent.exists():
            raise InputError(f"{out}: output folder {parent} does not exist")
        if not parent.is_dir():
            raise InputError(f"{out}: {parent} is not a folder")
        if not os.access(parent, os.W_OK):
            raise InputError(f"{out}: output folder {parent} is not writable")
    except OSError as exc:  # e.g. a folder on the way that cannot be searched
        raise InputError(f"{out}: cannot check the output path ({exc.strerror or exc})") from None
    return out


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (hard links, symbolic links, ./ and ../ seen through)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


# errno -> what the user reads; a write failing with these is not ncli's bug nor the input's
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large (a file-size limit)"}
if hasattr(errno, "EDQUOT"):
    _NO_SPACE[errno.EDQUOT] = "disk quota exceeded"
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))  # HDF5 reports the system error inside its text
    return int(found.group(1)) if found else None


def write_failure(path: str | os.PathLike, exc: BaseException) -> NcliError | None:
    """The one-line error for a failed write of the output ``path`` (a full disk: exit 5, a
    read-only or forbidden folder: exit 3); None when ``exc`` is none of these."""
    code = _errno_of(exc)
    if code in _NO_SPACE:
        return EnvironmentProblem(f"{path}: cannot write: {_NO_SPACE[code]}; nothing was written, an existing file is unchanged")
    if code in _NO_ACCESS:
        return InputError(f"{path}: cannot write: {os.strerror(code)}")
    return None


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
