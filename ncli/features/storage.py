"""Where an HDF5 object's bytes come from, checked before anything is read.

HDF5 lets a file make its reader open other files: external links (an object in another
file), virtual datasets (rows mapped from other files) and external raw storage (a dataset's
bytes in a plain file: ``/etc/passwd`` read as features, or a FIFO that hangs the reader).
:class:`LocalFile` reads only the file it was given unless ``allow_external`` (the
``--allow-external`` option) says otherwise: every link is looked at before it is followed
(soft links are resolved here, at most ``MAX_SOFT_LINKS`` deep, so a loop is an error) and
every dataset before it is read.

A dataset must also hold what it claims (:meth:`LocalFile.check_storage`): all its bytes when
stored uncompressed, within the file's real size; when compressed, at most
``MAX_EXPANSION`` times its stored bytes (deflate, the strongest of HDF5's standard filters,
expands at most 1032:1). A file claiming 10¹² rows it does not hold is refused at once
instead of read as fill values until killed. Only h5py and the standard library here.
"""

from __future__ import annotations

import os
import posixpath
import stat

import h5py

from ncli.errors import InputError

MAX_SOFT_LINKS = 16
MAX_EXPANSION = 1100

ALLOW_HINT = "pass --allow-external to read it anyway (only for files whose source you trust)"


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"  # pragma: no cover


class LocalFile:
    """Link-checked access to an open HDF5 file (``h5``) read from ``path``."""

    def __init__(self, h5: h5py.File, path: str, *, allow_external: bool = False, label: str | None = None):
        self.h5 = h5
        self.path = path
        self.label = label or path  # how errors name the file
        self.allow_external = allow_external
        try:
            self.file_size = os.path.getsize(path)
        except OSError:
            self.file_size = None

    def fail(self, message: str) -> InputError:
        return InputError(f"{self.label}: {message}")

    # -- links -------------------------------------------------------------------------------
    def has(self, group: h5py.Group, name: str) -> bool:
        """Whether ``group`` has a link ``name`` (nothing is followed)."""
        return group.get(name, getlink=True) is not None

    def names(self, group: h5py.Group) -> list[str]:
        """The link names in ``group`` (nothing is followed)."""
        return list(group.keys())

    def child(self, group: h5py.Group, name: str, hops: int = 0):
        """``group[name]``, the link looked at before it is followed. KeyError when absent."""
        link = group.get(name, getlink=True)
        where = posixpath.join(group.name, name)
        if link is None:
            raise KeyError(where)
        if isinstance(link, h5py.HardLink):
            return group[name]
        if isinstance(link, h5py.SoftLink):
            if hops >= MAX_SOFT_LINKS:
                raise self.fail(f"{where}: soft links loop or nest more than {MAX_SOFT_LINKS} deep")
            return self.at(posixpath.join(group.name, link.path), hops + 1)
        if isinstance(link, h5py.ExternalLink):
            if self.allow_external:
                return group[name]
            raise self.fail(f"{where} is an external link to {link.filename}:{link.path} (another file); {ALLOW_HINT}")
        raise self.fail(f"{where} is a link of a kind ncli does not follow")

    def at(self, path: str, hops: int = 0):
        """The object at ``path`` (absolute, or relative to the root), every link checked."""
        node = self.h5
        for part in (p for p in path.split("/") if p):
            if not isinstance(node, h5py.Group):
                raise KeyError(path)
            node = self.child(node, part, hops)
        return node

    # -- datasets ----------------------------------------------------------------------------
    def dataset(self, group: h5py.Group, name: str) -> h5py.Dataset | None:
        """``group[name]`` checked to be a dataset that stores its own bytes; None when it is
        another kind of object."""
        obj = self.child(group, name)
        if not isinstance(obj, h5py.Dataset):
            return None
        self.check_storage(obj)
        return obj

    def check_storage(self, ds: h5py.Dataset) -> None:
        """Refuse a dataset whose bytes live elsewhere (unless allowed) or that claims more than
        it stores."""
        where = ds.name
        dcpl = ds.id.get_create_plist()
        if ds.is_virtual or dcpl.get_external_count() > 0:
            if self.allow_external:
                return
            kind = "a virtual dataset (rows mapped from other files)" if ds.is_virtual else "stored in an external raw file"
            raise self.fail(f"{where} is {kind}; {ALLOW_HINT}")
        claimed = int(ds.size) * ds.dtype.itemsize
        if claimed == 0:
            return
        stored = int(ds.id.get_storage_size())
        shape = "×".join(str(s) for s in ds.shape)
        if self.file_size is not None and stored > self.file_size:
            raise self.fail(f"{where} claims {_size(stored)} of storage, more than the whole file ({_size(self.file_size)}); damaged?")
        if dcpl.get_nfilters() == 0 and stored < claimed:
            raise self.fail(
                f"{where} claims {shape} values ({_size(claimed)}) but stores {_size(stored)}: unwritten or damaged"
            )
        if claimed > MAX_EXPANSION * stored:
            raise self.fail(
                f"{where} claims {shape} values ({_size(claimed)}) from {_size(stored)} of compressed storage, "
                f"more than {MAX_EXPANSION}× (no standard HDF5 compression expands that much): unwritten or damaged"
            )


def check_regular_file(path: str, what: str = "a feature file") -> os.stat_result:
    """stat ``path``: InputError unless it is a regular file that can be looked at (a device or
    a FIFO would hang or never end; a folder that cannot be searched is named)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is not a regular file (a device, FIFO or socket), not {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read (permission denied)")
    return st
