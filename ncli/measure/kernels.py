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

# the partial sums of a tile of pairs (pair_tile), in the order of _kernels.c's NCLI_PAIR_* enum
PAIR_SUMS = {name: i for i, name in enumerate(("abs", "cos1", "cos2", "cdnv", "cdnv0", "k1", "k2", "count"))}


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
        S is overwritten with the scores v."""
        if scale != 1.0:
            S *= np.float32(scale)
        S += table if rows is None else table[rows]
        finite = np.isfinite(S).all(axis=1)
        best = np.argmax(np.where(np.isfinite(S), S, -np.inf), axis=1)
        ar = np.arange(S.shape[0])
        top = S[ar, best].copy()
        S[ar, best] = -np.inf  # the runner-up is the max of the rest
        near = ~finite | ((top - S.max(axis=1)) <= tol)
        S[ar, best] = top
        return best, near

    @staticmethod
    def ncc_coords(Z: np.ndarray, coords: np.ndarray, y: np.ndarray, proj: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(E32, en): E = Z + coords[y] as float32 and ‖E‖² per row; adds Σ_rows Z² to proj."""
        if proj is not None:
            proj += np.einsum("ij,ij->j", Z, Z)
        E = Z + coords[y]
        return E.astype(np.float32), np.einsum("ij,ij->i", E, E)

    @staticmethod
    def pair_tile(
        G: np.ndarray, r0: int, c0: int, norm: np.ndarray, offset: float, cos_shift: float,
        s2: np.ndarray | None = None, points: np.ndarray | None = None, unit: np.ndarray | None = None,
        k_shift: float = 0.0, zero_u2: float = 0.0,
    ) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Sums over the pairs (a, b) = (r0 + i, c0 + j), a < b, of a tile G[i, j] = ⟨x_a, x_b⟩ of
        the Gram matrix of C vectors with norms ``norm`` (C,): returns (acc, zero_pair) with acc
        indexed by :data:`PAIR_SUMS` (cos = G/(‖x_a‖‖x_b‖)):
          abs: Σ|cos + offset|;  cos1, cos2: Σ(cos − cos_shift), Σ(cos − cos_shift)²;
          with ``s2`` (σ_c², the x being centred means, ``points`` the means): cdnv:
            Σ (σ_a² + σ_b²)/(2 d²) over pairs with d² > 0, cdnv0: the pairs with d² = 0, where
            d² = ‖x_a‖² + ‖x_b‖² − 2G or, when that is below 1e-3 (‖x_a‖² + ‖x_b‖²) (the
            expansion cancels), ‖points_a − points_b‖² directly;
          with ``unit`` (the rows x_c/‖x_c‖): k1, k2: Σ(k − k_shift), Σ(k − k_shift)² of
            k = −log(u²)/2, u² = 2 − 2cos or, below 2e-3, ‖unit_a − unit_b‖² directly; pairs
            with u² ≤ ``zero_u2`` (identical directions up to rounding) add nothing, and the
            first of them (row-major) is ``zero_pair``;
          count: the pairs."""
        rows, cols = G.shape
        ai, bj = np.nonzero(np.arange(r0, r0 + rows)[:, None] < np.arange(c0, c0 + cols)[None, :])
        a, b = ai + r0, bj + c0
        g = G[ai, bj]
        acc = np.zeros(len(PAIR_SUMS))
        zero_pair = None
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero vector: NaN sums, as in C
            cos = g / (norm[a] * norm[b])
        acc[PAIR_SUMS["abs"]] = np.sum(np.abs(cos + offset))
        dc = cos - cos_shift
        acc[PAIR_SUMS["cos1"]] = np.sum(dc)
        acc[PAIR_SUMS["cos2"]] = np.sum(dc * dc)
        acc[PAIR_SUMS["count"]] = a.size
        if s2 is not None:
            sq = norm * norm
            d2 = sq[a] + sq[b] - 2.0 * g
            for q in np.flatnonzero(d2 < 1e-3 * (sq[a] + sq[b])).tolist():
                d = points[a[q]] - points[b[q]]
                d2[q] = float(d @ d)
            positive = d2 > 0
            acc[PAIR_SUMS["cdnv"]] = np.sum((s2[a] + s2[b])[positive] / (2.0 * d2[positive]))
            acc[PAIR_SUMS["cdnv0"]] = a.size - np.count_nonzero(positive)
        if unit is not None:
            u2 = 2.0 - 2.0 * cos
            for q in np.flatnonzero(u2 < 2e-3).tolist():
                d = unit[a[q]] - unit[b[q]]
                u2[q] = float(d @ d)
            zero = u2 <= zero_u2
            if zero.any():
                q = int(np.argmax(zero))
                zero_pair = (int(a[q]), int(b[q]))
            with np.errstate(divide="ignore"):
                dk = -0.5 * np.log(u2[~zero]) - k_shift
            acc[PAIR_SUMS["k1"]] = np.sum(dk)
            acc[PAIR_SUMS["k2"]] = np.sum(dk * dk)
        return acc, zero_pair


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
        dbl = ctypes.c_double
        lib.ncli_pair_tile.argtypes = [vp, _i64, _i64, _i64, _i64, vp, dbl, dbl, vp, vp, vp, _i64, dbl, dbl, vp, vp, vp]
        lib.ncli_pair_tile.restype = None
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

    def pair_tile(self, G, r0, c0, norm, offset, cos_shift, s2=None, points=None, unit=None, k_shift=0.0, zero_u2=0.0):
        rows, cols = G.shape
        C = norm.shape[0]
        if not (0 <= r0 and r0 + rows <= C and 0 <= c0 and c0 + cols <= C):
            raise ValueError("pair_tile: the tile lies outside the C vectors")
        p = 0
        for arr in (points, unit):
            if arr is not None:
                if arr.ndim != 2 or arr.shape[0] != C or (p and arr.shape[1] != p):
                    raise ValueError("pair_tile: points/unit must be (C, p)")
                p = arr.shape[1]
        if s2 is not None and (s2.shape != (C,) or points is None):
            raise ValueError("pair_tile: s2 must be (C,) and come with points")
        acc = np.zeros(len(PAIR_SUMS))
        zero_pair = np.full(2, -1, dtype=np.int64)
        scratch = np.empty(cols)
        self._lib.ncli_pair_tile(
            _ptr(G, np.float64), rows, cols, r0, c0, _ptr(norm, np.float64), offset, cos_shift,
            None if s2 is None else _ptr(s2, np.float64), None if points is None else _ptr(points, np.float64),
            None if unit is None else _ptr(unit, np.float64), p, k_shift, zero_u2, scratch.ctypes.data, acc.ctypes.data,
            zero_pair.ctypes.data,
        )
        return acc, (None if zero_pair[0] < 0 else (int(zero_pair[0]), int(zero_pair[1])))


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
