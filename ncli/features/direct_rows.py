"""Whole-row reads of uncompressed HDF5 datasets straight from the file (``os.preadv``)."""

from __future__ import annotations

import os

import h5py
import numpy as np


class DirectRows:
    """Whole-row reads of an uncompressed 2-D dataset straight from the file with
    ``os.preadv`` into a new array. h5py's slicing copies through HDF5's type conversion and
    holds h5py's lock; this reads the same bytes in one system call per run of adjacent
    chunks, with the GIL released, so a reader thread overlaps the computing threads fully.

    :meth:`open` returns None (the caller uses h5py) unless the layout allows it: a file on
    the default ``sec2`` driver without user block, a native-endian numeric dataset stored
    contiguously or chunked by whole rows, no filters, no external storage, every chunk
    written. It also reads the first and the last row both ways and returns None if they
    differ, so an HDF5 layout this class does not know can only cost speed, never change
    a number.
    """

    def __init__(self, fd: int, shape: tuple[int, int], dtype: np.dtype, rows_per_chunk: int, offsets: np.ndarray):
        self.fd = fd
        self.shape = shape
        self.dtype = dtype
        self.rows_per_chunk = rows_per_chunk  # of the offsets table (n rows if contiguous)
        self.offsets = offsets  # file offset of each chunk (one entry if contiguous)

    @classmethod
    def open(cls, ds: h5py.Dataset) -> "DirectRows | None":
        if not hasattr(os, "preadv") or ds.ndim != 2 or ds.shape[0] == 0 or ds.shape[1] == 0:
            return None
        if ds.dtype.kind not in "fiu" or not ds.dtype.isnative:
            return None
        try:
            f = ds.file
            if f.driver != "sec2" or f.userblock_size != 0:
                return None
            dcpl = ds.id.get_create_plist()
            if dcpl.get_nfilters() != 0 or dcpl.get_external_count() != 0:
                return None
            n, p = (int(s) for s in ds.shape)
            row_bytes = p * ds.dtype.itemsize
            layout = dcpl.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                off = ds.id.get_offset()
                if off is None:
                    return None
                rows, offsets = n, np.array([off], dtype=np.int64)
            elif layout == h5py.h5d.CHUNKED and ds.chunks is not None and ds.chunks[1] == p:
                rows = int(ds.chunks[0])
                count = -(-n // rows)
                offsets = np.full(count, -1, dtype=np.int64)

                def record(info) -> None:
                    i = int(info.chunk_offset[0]) // rows
                    if info.byte_offset is not None and info.size == rows * row_bytes and 0 <= i < count:
                        offsets[i] = info.byte_offset

                if hasattr(ds.id, "chunk_iter"):
                    ds.id.chunk_iter(record)
                else:  # pragma: no cover - older HDF5
                    for i in range(ds.id.get_num_chunks()):
                        record(ds.id.get_chunk_info(i))
                if (offsets < 0).any():
                    return None
            else:
                return None
            reader = cls(f.id.get_vfd_handle(), (n, p), ds.dtype, rows, offsets)
            for sl in (slice(0, 1), slice(n - 1, n)):
                if reader.read(sl.start, sl.stop).tobytes() != ds[sl].tobytes():
                    return None
            return reader
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new C-contiguous array."""
        n, p = self.shape
        start, stop = max(0, start), min(n, stop)
        out = np.empty((max(0, stop - start), p), dtype=self.dtype)
        if out.size == 0:
            return out
        buf = memoryview(out).cast("B")
        row_bytes = p * self.dtype.itemsize
        c = self.rows_per_chunk
        r = start
        while r < stop:
            i = r // c
            off = int(self.offsets[i]) + (r - i * c) * row_bytes
            hi = min(stop, (i + 1) * c)
            while hi < stop and self.offsets[i + 1] == self.offsets[i] + c * row_bytes:  # adjacent chunks
                i += 1
                hi = min(stop, (i + 1) * c)
            want = (hi - r) * row_bytes
            got = os.preadv(self.fd, [buf[(r - start) * row_bytes : (hi - start) * row_bytes]], off)
            if got != want:
                raise OSError(f"short read ({got} of {want} bytes at offset {off})")
            r = hi
        return out
