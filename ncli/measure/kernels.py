"""Per-block kernels of `ncli measure`: compiled C (``_kernels.c``) or numpy.

Each function has one contract and two implementations: ``_CKernels`` calls the shared
library built from ``_kernels.c`` with ctypes (one sweep per block, the GIL released for the
call, so worker threads scale); ``_NumpyKernels`` does the same with numpy operations. The
compiled one is used when it was built at install time (``pip install`` compiles it where a C
compiler is present, and installs without it otherwise); ``NCLI_KERNELS=numpy`` in the
environment forces numpy. Both give the same decisions; float64 sums may differ in their last
bits (different summation order), far below the 1e-9 the metrics are tested to, and each is
bit-reproducible on its own. :data:`default_kernels` is the one used unless a
:class:`ncli.measure.engine.NumpyBackend` is given the other (``ncli --version`` names it).

All arrays are C-contiguous; labels are int64 in [0, C) (the reader has checked them).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

_i64 = ctypes.c_int64


class _NumpyKernels:
    """The reference implementation (numpy only)."""

    name = "numpy"

    @staticmethod
    def center_rows(H: np.ndarray, y: np.ndarray, means: np.ndarray, D: np.ndarray) -> np.ndarray:
        """D[i] = H[i] − means[y[i]], formed in float64 and stored in D (float64, or float32
        where only float32 products follow); returns rn[i] = ‖H[i] − means[y[i]]‖² from the
        float64 differences."""
        if D.dtype == np.float64:
            np.take(means, y, axis=0, out=D)
            np.subtract(H, D, out=D)
            return np.einsum("ij,ij->i", D, D)
        D64 = H - means[y]
        D[...] = D64
        return np.einsum("ij,ij->i", D64, D64)

    @staticmethod
    def segment_sums(H: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Row q of the result = float64 sum of H[order[starts[q]:starts[q+1]]]."""
        n, p = H.shape
        ends = np.r_[starts[1:], n]
        part = np.empty((starts.size, p), dtype=np.float64)
        for q, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist())):
            H[order[lo:hi]].sum(axis=0, dtype=np.float64, out=part[q])
        return part

    @staticmethod
    def decide(
        S: np.ndarray, scale: float, table: np.ndarray, tol: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(best, near) of float32 scores v[i] = scale·S[i] + table[rows[i]] (``table`` a
        (C,) vector added to every row when ``rows`` is None): best = first argmax per row;
        near = runner-up within ``tol`` (difference in float32) or a score not finite.
        S is overwritten (scratch)."""
        if scale != 1.0:
            S *= np.float32(scale)
        S += table if rows is None else table[rows]
        finite = np.isfinite(S).all(axis=1)
        best = np.argmax(np.where(np.isfinite(S), S, -np.inf), axis=1)
        ar = np.arange(S.shape[0])
        top = S[ar, best].copy()
        S[ar, best] = -np.inf  # the runner-up is the max of the rest
        near = ~finite | ((top - S.max(axis=1)) <= tol)
        return best, near

    @staticmethod
    def ncc_coords(Z: np.ndarray, coords: np.ndarray, y: np.ndarray, proj: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(E32, en): E = Z + coords[y] as float32 and ‖E‖² per row; adds Σ_rows Z² to proj."""
        if proj is not None:
            proj += np.einsum("ij,ij->j", Z, Z)
        E = Z + coords[y]
        return E.astype(np.float32), np.einsum("ij,ij->i", E, E)


def _ptr(a: np.ndarray, dtype) -> int:
    """The data address of a C-contiguous array of ``dtype`` (checked: the C code trusts it)."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"kernel argument must be a C-contiguous {np.dtype(dtype).name} array, not {a.dtype} {a.flags.c_contiguous}")
    return a.ctypes.data


def _check_labels(y: np.ndarray, C: int) -> None:
    """Row indices the C code will follow must be in [0, C) (a few µs per block)."""
    if y.size and not (0 <= y.min() and y.max() < C):
        raise ValueError(f"kernel labels outside [0, {C})")


class _CKernels:
    """The compiled kernels (``_kernels.c``), same contracts as :class:`_NumpyKernels`.

    Arguments go to C as plain addresses (ctypes' ndpointer checks cost ~30 µs a call); each
    array's dtype, contiguity and shape are checked here first."""

    name = "compiled"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        vp = ctypes.c_void_p
        for suffix in ("f32", "f64"):
            for out in ("f32", "f64"):
                f = getattr(lib, f"ncli_center_rows_{suffix}_{out}")
                f.argtypes = [vp, _i64, _i64, vp, vp, vp, vp]
                f.restype = None
            f = getattr(lib, f"ncli_segment_sums_{suffix}")
            f.argtypes = [vp, _i64, _i64, vp, vp, _i64, vp]
            f.restype = None
        lib.ncli_decide_f32.argtypes = [vp, _i64, _i64, ctypes.c_float, vp, vp, vp, vp, vp]
        lib.ncli_decide_f32.restype = None
        lib.ncli_ncc_coords.argtypes = [vp, _i64, _i64, vp, vp, vp, vp, vp]
        lib.ncli_ncc_coords.restype = None
        self._lib = lib

    @staticmethod
    def _rows(H: np.ndarray) -> tuple[np.ndarray, str, type]:
        if H.dtype == np.float64:
            return np.ascontiguousarray(H), "f64", np.float64
        # float32 as is; float16 layers are exact in float32
        return np.ascontiguousarray(H, dtype=np.float32), "f32", np.float32

    def center_rows(self, H, y, means, D):
        H, suffix, dt = self._rows(H)
        n, p = H.shape
        out = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}[D.dtype]
        if D.shape != (n, p) or means.ndim != 2 or means.shape[1] != p or y.shape != (n,):
            raise ValueError("center_rows: shapes do not match")
        _check_labels(y, means.shape[0])
        rn = np.empty(n, dtype=np.float64)
        getattr(self._lib, f"ncli_center_rows_{suffix}_{out}")(
            _ptr(H, dt), n, p, _ptr(y, np.int64), _ptr(means, np.float64), _ptr(D, D.dtype), rn.ctypes.data
        )
        return rn

    def segment_sums(self, H, order, starts):
        H, suffix, dt = self._rows(H)
        n, p = H.shape
        if order.shape != (n,) or starts.ndim != 1 or (starts.size and not 0 <= starts[0] <= starts[-1] <= n):
            raise ValueError("segment_sums: order/starts do not match the rows")
        part = np.empty((starts.size, p), dtype=np.float64)
        getattr(self._lib, f"ncli_segment_sums_{suffix}")(
            _ptr(H, dt), n, p, _ptr(order, np.int64), _ptr(starts, np.int64), starts.size, part.ctypes.data
        )
        return part

    def decide(self, S, scale, table, tol, rows=None):
        n, C = S.shape
        if rows is None:
            if table.shape != (C,):
                raise ValueError("decide: table must have C values")
            prows = None
        else:
            if table.ndim != 2 or table.shape[1] != C or rows.shape != (n,):
                raise ValueError("decide: shapes do not match")
            _check_labels(rows, table.shape[0])
            prows = _ptr(rows, np.int64)
        if tol.shape != (n,):
            raise ValueError("decide: tol must have n values")
        best = np.empty(n, dtype=np.int64)
        near = np.empty(n, dtype=np.uint8)
        self._lib.ncli_decide_f32(
            _ptr(S, np.float32), n, C, scale, _ptr(table, np.float32), prows, _ptr(tol, np.float64),
            best.ctypes.data, near.ctypes.data,
        )
        return best, near.view(bool)

    def ncc_coords(self, Z, coords, y, proj):
        n, k = Z.shape
        if coords.ndim != 2 or coords.shape[1] != k or y.shape != (n,):
            raise ValueError("ncc_coords: shapes do not match")
        if proj is not None and proj.shape != (k,):
            raise ValueError("ncc_coords: proj must have k values")
        _check_labels(y, coords.shape[0])
        E32 = np.empty((n, k), dtype=np.float32)
        en = np.empty(n, dtype=np.float64)
        self._lib.ncli_ncc_coords(
            _ptr(Z, np.float64), n, k, _ptr(coords, np.float64), _ptr(y, np.int64),
            None if proj is None else _ptr(proj, np.float64), E32.ctypes.data, en.ctypes.data,
        )
        return E32, en


def _load_compiled() -> tuple[_CKernels | None, str | None]:
    """(the compiled kernels or None, why not)."""
    try:
        from ncli.measure import _kernels
    except ImportError:
        return None, "not compiled at install time (no C compiler?)"
    try:
        return _CKernels(_kernels.__file__), None
    except (OSError, AttributeError) as exc:  # pragma: no cover - a broken build
        return None, f"cannot load {_kernels.__file__}: {exc}"


numpy_kernels = _NumpyKernels()
compiled_kernels, why_not_compiled = _load_compiled()
if os.environ.get("NCLI_KERNELS", "").strip().lower() == "numpy":
    default_kernels, why_not_compiled = numpy_kernels, "NCLI_KERNELS=numpy"
else:
    default_kernels = compiled_kernels or numpy_kernels  # what a NumpyBackend uses unless told (ncli --version)
