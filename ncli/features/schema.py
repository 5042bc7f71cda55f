"""The feature-file format's constants and attribute conversions (``docs/format.md``): shared
by the reader, the writer and everything that recognises or assembles feature files."""

from __future__ import annotations

import numpy as np

FORMAT_NAME = "ncli.features"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file without user block
RESERVED_GROUPS = {"classifier"}  # root groups that are not splits
RESERVED_NAMES = RESERVED_GROUPS | {"class_names"}  # root names a split may not take
CHUNK_BYTES = 1 << 20  # about 1 MiB of whole rows per HDF5 chunk
# Beyond this magnitude a classifier's squares and products overflow float64 (no trained
# network has such weights: a damaged file or a diverged run); refused rather than measured as null.
CLASSIFIER_LIMIT = 1e100


def classifier_problem(array: np.ndarray) -> str | None:
    """Why a classifier weight or bias cannot be measured, or None: NaN/Inf, or a magnitude
    beyond :data:`CLASSIFIER_LIMIT`."""
    if not np.isfinite(array).all():
        return "contains NaN or Inf"
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > CLASSIFIER_LIMIT:
        return f"holds a value of magnitude {largest:.3g}, beyond {CLASSIFIER_LIMIT:.0e} (its products overflow float64)"
    return None


def attr_str(value) -> str | None:
    """An HDF5 attribute as text (bytes decoded, 0-d arrays unwrapped); None when absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attr_str(value.item())
    return str(value)


def attr_int(value) -> int | None:
    """An HDF5 attribute as an integer; None when absent or not an integer (booleans are not)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        return int(value.item())
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def split_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a split of a feature file (an HDF5 group at the root), or None."""
    if not name:
        return "it is empty"
    if "/" in name:
        return "it contains '/' (a path in HDF5)"
    if name in (".", ".."):
        return "HDF5 reads it as a path"
    if name in RESERVED_NAMES:
        return "the format reserves it"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains control characters"
    return None


def rows_per_chunk(p: int, itemsize: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Whole rows of ``p`` items in an HDF5 chunk of about ``target_bytes``."""
    return max(1, int(target_bytes // max(1, p * itemsize)))
