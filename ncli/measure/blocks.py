"""Blocks: the unit of work of the measure engine.

Rows are processed in fixed blocks of :func:`block_rows` rows, aligned at multiples of it from
the first row of a split, whatever the read size; every float64 sum adds one block's partial
result at a time, in row order. Results therefore depend on the rows only: bit-identical
whatever ``--chunk-rows`` and the number of worker threads (:func:`ordered_map`, each
worker with single-threaded BLAS: :func:`single_threaded_blas`).
"""

from __future__ import annotations

from collections import deque
from itertools import chain, islice
from typing import Iterator

import numpy as np

from ncli.errors import InputError
from ncli.features.reader import Chunk, FeatureFile

BLOCK_ROWS = 2048  # most rows per computational block (blocks fix the float64 summation order)
BLOCK_BYTES = 16 << 20  # a block's widest float64 work array stays about this size
MIN_BLOCK_ROWS = 128  # fewer rows make the float32 GEMMs slower per row (64: +20 % at C = 50k)


def block_rows(p: int, num_classes: int) -> int:
    """Rows per block for p features and C classes: ``BLOCK_ROWS``, halved (down to
    ``MIN_BLOCK_ROWS``) while a float64 (rows × max(p, 2C)) array exceeds ``BLOCK_BYTES``. It
    depends on the shape only, so results stay reproducible; it keeps work arrays cache-sized
    and memory flat for wide features and many classes (a vocabulary's C: two rows × C
    float32 score arrays per worker thread)."""
    width = max(p, 2 * num_classes)
    rows = BLOCK_ROWS
    while rows > MIN_BLOCK_ROWS and rows * width * 8 > BLOCK_BYTES:
        rows //= 2
    return rows


def file_blocks(ff: FeatureFile, split: str, chunk_rows: int | None = None, layer: str | None = None) -> Iterator[Chunk]:
    """The rows of a split of a feature file, in blocks of :func:`block_rows` rows.

    Reads are ``chunk_rows`` rounded up to a whole number of blocks.
    """
    p = ff.feature_dim if layer is None else ff.layer_info(split, layer)[1]
    per_block = block_rows(p, ff.num_classes)
    rows = int(chunk_rows or ff.default_chunk_rows(split, layer))
    rows = -(-rows // per_block) * per_block
    for chunk in ff.iter_chunks(split, rows, layer=layer):
        for off in range(0, chunk.labels.shape[0], per_block):
            part = slice(off, off + per_block)
            yield Chunk(chunk.start + off, chunk.features[part], chunk.labels[part])


def array_blocks(H: np.ndarray, y: np.ndarray, num_classes: int, start: int = 0) -> Iterator[Chunk]:
    """Rows held in memory (features (n, p), labels (n,) in [0, C)) as blocks; ``start`` is
    the index of the first row (blocks stay aligned when a split arrives in pieces whose
    lengths are multiples of :func:`block_rows`)."""
    y = np.asarray(y).astype(np.int64, copy=False)
    if H.ndim != 2 or y.shape != (H.shape[0],):
        raise ValueError(f"features must be (n, p) and labels (n,), not {H.shape} and {y.shape}")
    if y.size and not (0 <= y.min() and y.max() < num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    per_block = block_rows(H.shape[1], num_classes)
    for off in range(0, y.shape[0], per_block):
        part = slice(off, off + per_block)
        yield Chunk(start + off, np.ascontiguousarray(H[part]), y[part])


def unlabelled(blocks: Iterator[Chunk]) -> Iterator[Chunk]:
    """The blocks with every label 0: a split read as one class (an OOD split's mean)."""
    for block in blocks:
        yield Chunk(block.start, block.features, np.zeros(block.labels.shape[0], dtype=np.int64))


_blas = None


def single_threaded_blas():
    """A context in which numpy's BLAS runs one thread (small products on threads that other
    work keeps busy can take 10× longer). The library scan happens once (a
    ThreadpoolController made on first use, after numpy loaded its BLAS): a fresh
    ``threadpool_limits`` scans every loaded library, about 1 ms, too slow per batch for the
    accumulator API, which calls a backend once per batch."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def ordered_map(fn, items, workers: int = 1):
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` threads.

    Each block is processed whole by one thread (its arrays stay in that core's cache; numpy
    and BLAS release the GIL), and the caller adds the small per-block results in block
    order, so the float64 sums are bit-identical whatever the number of workers. At most
    2 × workers blocks are in flight.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    items = iter(items)
    first = list(islice(items, 2))
    if len(first) < 2:  # one block (a small file): no threads to start
        yield from map(fn, first)
        return
    items = chain(first, items)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ncli-block") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


class NonFiniteFeatures(InputError):
    """A block holds a row with NaN or Inf; the caller adds where (file, split). ``positions``:
    the rows' positions in the block when ``H`` holds only some of its rows."""

    def __init__(self, start: int, H: np.ndarray, positions: np.ndarray | None = None):
        bad = ~np.isfinite(H).all(axis=1)
        first = int(np.argmax(bad)) if bad.any() else 0
        self.row = start + (first if positions is None else int(positions[first]))
        super().__init__(f"row {self.row}: features contain NaN or Inf")
