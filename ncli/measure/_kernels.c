/* Fused per-block kernels for `ncli measure` (see kernels.py, which loads this file's
 * shared library with ctypes; ctypes releases the GIL for the duration of each call).
 *
 * Each kernel replaces several numpy passes over a block with one sweep. They are plain C99
 * on C-contiguous arrays with int64 sizes; nothing here allocates or calls Python. The
 * summation order is fixed by the source (explicit partial sums; the build uses
 * -ffp-contract=off, so no FMA contraction), so results are the same on every CPU, whatever
 * instruction set the compiler vectorises for. kernels.py has a numpy implementation of
 * every function with the same contract; tests compare the two.
 *
 * The module stub at the end (PyInit__kernels) only makes the library importable as
 * `ncli._kernels`, so that it is built and installed like any extension module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
/* one copy per instruction set, picked at load time (GCC/clang function multiversioning) */
#define NCLI_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NCLI_CLONES
#endif

#if defined(_WIN32)
#define NCLI_EXPORT __declspec(dllexport) /* ctypes finds only exported symbols in a DLL */
#else
#define NCLI_EXPORT
#endif

/* D[i,:] = H[i,:] - M[y[i],:], each difference formed in float64 (stored as TOUT: float64,
 * or float32 where only float32 products follow), and rn[i] = ||H[i,:] - M[y[i],:]||^2 from
 * the float64 differences, with eight fixed partial sums. H: (n, p), M: (C, p), D: (n, p),
 * rn: (n,). Labels must be valid (checked by the reader). */
#define CENTER_ROWS(NAME, TIN, TOUT)                                                            \
    NCLI_EXPORT NCLI_CLONES void NAME(const TIN *H, int64_t n, int64_t p, const int64_t *y,        \
                                      const double *M, TOUT *D, double *rn) {                    \
        for (int64_t i = 0; i < n; i++) {                                                        \
            const TIN *h = H + i * p;                                                            \
            const double *m = M + y[i] * p;                                                      \
            TOUT *d = D + i * p;                                                                 \
            double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
            int64_t j = 0;                                                                       \
            for (; j + 8 <= p; j += 8) {                                                         \
                for (int t = 0; t < 8; t++) {                                                    \
                    double v = (double)h[j + t] - m[j + t];                                      \
                    d[j + t] = (TOUT)v;                                                          \
                    a[t] += v * v;                                                               \
                }                                                                                \
            }                                                                                    \
            for (int t = 0; j < p; j++, t++) {                                                   \
                double v = (double)h[j] - m[j];                                                  \
                d[j] = (TOUT)v;                                                                  \
                a[t] += v * v;                                                               \
            }                                                                                    \
            rn[i] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));           \
        }                                                                                        \
    }

CENTER_ROWS(ncli_center_rows_f32_f64, float, double)
CENTER_ROWS(ncli_center_rows_f64_f64, double, double)
CENTER_ROWS(ncli_center_rows_f32_f32, float, float)
CENTER_ROWS(ncli_center_rows_f64_f32, double, float)

/* part[q,:] = sum of H[order[r],:] for r in [starts[q], starts[q+1]) (the last segment ends at
 * n), in float64, rows added in the order given. H: (*, p), part: (nseg, p). */
#define SEGMENT_SUMS(NAME, T)                                                                   \
    NCLI_EXPORT NCLI_CLONES void NAME(const T *H, int64_t n, int64_t p, const int64_t *order,      \
                                      const int64_t *starts, int64_t nseg, double *part) {       \
        for (int64_t q = 0; q < nseg; q++) {                                                     \
            double *acc = part + q * p;                                                          \
            int64_t lo = starts[q], hi = q + 1 < nseg ? starts[q + 1] : n;                       \
            memset(acc, 0, (size_t)p * sizeof(double));                                          \
            for (int64_t r = lo; r < hi; r++) {                                                  \
                const T *h = H + order[r] * p;                                                   \
                for (int64_t j = 0; j < p; j++) acc[j] += (double)h[j];                          \
            }                                                                                    \
        }                                                                                        \
    }

SEGMENT_SUMS(ncli_segment_sums_f32, float)
SEGMENT_SUMS(ncli_segment_sums_f64, double)

/* The largest and second largest of v[0..C) (all finite) and the first index of the
 * largest: one pass over eight interleaved lanes, each keeping its largest, second largest
 * and the index of its largest (ties keep the earlier index), then the lanes are merged.
 * A tie for the largest gives second == top. */
#if defined(__GNUC__)
typedef float ncli_vf8 __attribute__((vector_size(32)));
typedef int32_t ncli_vi8 __attribute__((vector_size(32)));
#define NCLI_SEL(mask, a, b) ((ncli_vf8)(((ncli_vi8)(a) & (mask)) | ((ncli_vi8)(b) & ~(mask))))
#endif

static inline void top2(const float *v, int64_t C, float *top, float *second, int64_t *arg) {
    float t1 = -INFINITY, t2 = -INFINITY;
    int64_t a1 = 0, c = 0;
#if defined(__GNUC__)
    if (C >= 16 && C < INT32_MAX) {
        ncli_vf8 m1, m2, x;
        ncli_vi8 ci = {0, 1, 2, 3, 4, 5, 6, 7}, i1;
        const ncli_vi8 eight = {8, 8, 8, 8, 8, 8, 8, 8};
        memcpy(&m1, v, sizeof m1);
        i1 = ci;
        for (int t = 0; t < 8; t++) m2[t] = -INFINITY;
        for (c = 8; c + 8 <= C; c += 8) {
            memcpy(&x, v + c, sizeof x);
            ci += eight;
            ncli_vi8 gt = x > m1;                /* strictly larger: ties keep the earlier index */
            ncli_vf8 lo = NCLI_SEL(gt, m1, x);   /* the smaller of the two (x when equal) */
            ncli_vi8 g2 = lo > m2;
            m2 = NCLI_SEL(g2, lo, m2);
            m1 = NCLI_SEL(gt, x, m1);
            i1 = (gt & ci) | (~gt & i1);
        }
        int lane = 0;
        t1 = m1[0];
        a1 = i1[0];
        for (int t = 1; t < 8; t++) {
            if (m1[t] > t1 || (m1[t] == t1 && i1[t] < a1)) {
                t1 = m1[t];
                a1 = i1[t];
                lane = t;
            }
        }
        for (int t = 0; t < 8; t++) {
            if (m2[t] > t2) t2 = m2[t];
            if (t != lane && m1[t] > t2) t2 = m1[t];
        }
    }
#endif
    for (; c < C; c++) { /* the tail, or every element without vector extensions */
        float x = v[c];
        if (x > t1) {
            t2 = t1;
            t1 = x;
            a1 = c;
        } else if (x > t2) {
            t2 = x;
        }
    }
    *top = t1;
    *second = t2;
    *arg = a1;
}

/* Decisions from float32 scores v[i,c] = scale * S[i,c] + T[r_i, c] (float32 arithmetic;
 * r_i = rows[i], or 0 for every row when rows is NULL; S is overwritten with v):
 * best[i] = the first c with the largest v; near[i] = 1 when the runner-up is within tol[i]
 * (v_best - v_second <= tol[i], the difference in float32) or any v is not finite (best[i]
 * is then 0), else 0. Rows marked near are decided again exactly by the caller.
 * S: (n, C), C >= 2. */
NCLI_EXPORT NCLI_CLONES void ncli_decide_f32(float *S, int64_t n, int64_t C, float scale, const float *table,
                                             const int64_t *rows, const double *tol, int64_t *best, uint8_t *near) {
    for (int64_t i = 0; i < n; i++) {
        float *v = S + i * C;
        const float *offset = table + (rows != NULL ? rows[i] * C : 0);
        int bad = 0;
        for (int64_t c = 0; c < C; c++) {
            float x = scale * v[c] + offset[c];
            v[c] = x;
            bad |= !(x - x == 0.0f); /* inf or NaN */
        }
        if (bad) {
            best[i] = 0;
            near[i] = 1;
            continue;
        }
        float top, second;
        int64_t arg;
        top2(v, C, &top, &second, &arg);
        best[i] = arg;
        near[i] = (uint8_t)((double)(float)(top - second) <= tol[i]);
    }
}

/* NCC coordinates: E[i,:] = Z[i,:] + coords[y[i],:] (h - mu_G in the basis U, from
 * Z = (h - mu_y) U), stored as float32 in E32; en[i] = ||E[i,:]||^2 in float64; when proj is
 * not NULL, proj[j] += Z[i,j]^2, rows added in order. Z: (n, k), coords: (C, k). */
NCLI_EXPORT NCLI_CLONES void ncli_ncc_coords(const double *Z, int64_t n, int64_t k, const double *coords, const int64_t *y,
                                 double *proj, float *E32, double *en) {
    for (int64_t i = 0; i < n; i++) {
        const double *z = Z + i * k;
        const double *m = coords + y[i] * k;
        float *e32 = E32 + i * k;
        if (proj != NULL) {
            for (int64_t j = 0; j < k; j++) proj[j] += z[j] * z[j];
        }
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t j = 0;
        for (; j + 8 <= k; j += 8) {
            for (int t = 0; t < 8; t++) {
                double e = z[j + t] + m[j + t];
                e32[j + t] = (float)e;
                a[t] += e * e;
            }
        }
        for (int t = 0; j < k; j++, t++) {
            double e = z[j] + m[j];
            e32[j] = (float)e;
            a[t] += e * e;
        }
        en[i] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

/* ---- pair statistics (tiled sweep over the pairs c < c' of C vectors, see pairs.py) ---- */

/* Partial sums, in this order, of one tile of a Gram matrix (indices into acc[]). */
enum {
    NCLI_PAIR_ABS,      /* sum |cos + offset|                               (max-angle)        */
    NCLI_PAIR_COS1,     /* sum (cos - cos_shift)                            (equiangularity)   */
    NCLI_PAIR_COS2,     /* sum (cos - cos_shift)^2                                             */
    NCLI_PAIR_CDNV,     /* sum (s2_a + s2_b) / (2 d2) over pairs with d2 > 0 (CDNV)            */
    NCLI_PAIR_CDNV0,    /* number of pairs with d2 <= 0 (CDNV undefined)                       */
    NCLI_PAIR_K1,       /* sum (k - k_shift), k = -log(u2)/2 over pairs with u2 > 0 (GNC2)     */
    NCLI_PAIR_K2,       /* sum (k - k_shift)^2                                                 */
    NCLI_PAIR_COUNT,    /* number of pairs seen                                                */
    NCLI_PAIR_SUMS
};

static double ncli_sq_dist(const double *a, const double *b, int64_t p) {
    double s = 0.0;
    for (int64_t t = 0; t < p; t++) {
        double d = a[t] - b[t];
        s += d * d;
    }
    return s;
}

/* Pairs (a, b) = (r0 + i, c0 + j) with a < b of the tile G (rows x cols, row-major, ld cols),
 * G[i, j] = <x_a, x_b> for C vectors x (norm: (C,) their norms). With cos = G / (norm_a norm_b)
 * every pair adds to acc[NCLI_PAIR_ABS..COS2]; when s2 is not NULL (CDNV; x = centred means)
 * d2 = sq_a + sq_b - 2 G (sq = norm^2), recomputed as ||pts_a - pts_b||^2 from the rows of pts
 * (C x p, the class means) where d2 < 1e-3 (sq_a + sq_b) (the expansion cancels there); when
 * unit is not NULL (GNC2; unit = (C x p) rows x_c / ||x_c||) u2 = 2 - 2 cos, recomputed as
 * ||unit_a - unit_b||^2 where u2 < 2e-3, and k = -log(u2)/2. The first pair (row-major) with
 * u2 <= zero_u2 (identical directions, up to rounding) is written to zero_pair[0..1]; such
 * pairs add nothing. Sums are per row, then added to acc
 * row by row (fixed order). scratch: cols doubles. */
NCLI_EXPORT void ncli_pair_tile(const double *G, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                const double *norm, double offset, double cos_shift, const double *s2,
                                const double *pts, const double *unit, int64_t p, double k_shift, double zero_u2,
                                double *scratch, double *acc, int64_t *zero_pair) {
    for (int64_t i = 0; i < rows; i++) {
        int64_t a = r0 + i;
        int64_t j0 = a + 1 - c0; /* first column with b > a */
        if (j0 < 0) j0 = 0;
        if (j0 >= cols) continue;
        const double *g = G + i * cols;
        const double *nb = norm + c0;
        double na = norm[a];
        double s_abs = 0.0, s_c1 = 0.0, s_c2 = 0.0;
        for (int64_t j = j0; j < cols; j++) {
            double c = g[j] / (na * nb[j]);
            scratch[j] = c;
            s_abs += fabs(c + offset);
            double dc = c - cos_shift;
            s_c1 += dc;
            s_c2 += dc * dc;
        }
        acc[NCLI_PAIR_ABS] += s_abs;
        acc[NCLI_PAIR_COS1] += s_c1;
        acc[NCLI_PAIR_COS2] += s_c2;
        acc[NCLI_PAIR_COUNT] += (double)(cols - j0);
        if (s2 != NULL) {
            double sqa = na * na, s2a = s2[a], s_cd = 0.0, zero = 0.0;
            for (int64_t j = j0; j < cols; j++) {
                int64_t b = c0 + j;
                double sqb = nb[j] * nb[j];
                double d2 = sqa + sqb - 2.0 * g[j];
                if (d2 < 1e-3 * (sqa + sqb)) d2 = ncli_sq_dist(pts + a * p, pts + b * p, p);
                if (d2 > 0.0) {
                    s_cd += (s2a + s2[b]) / (2.0 * d2);
                } else {
                    zero += 1.0;
                }
            }
            acc[NCLI_PAIR_CDNV] += s_cd;
            acc[NCLI_PAIR_CDNV0] += zero;
        }
        if (unit != NULL) {
            double s_k1 = 0.0, s_k2 = 0.0;
            for (int64_t j = j0; j < cols; j++) {
                double u2 = 2.0 - 2.0 * scratch[j];
                if (u2 < 2e-3) u2 = ncli_sq_dist(unit + a * p, unit + (c0 + j) * p, p);
                if (u2 <= zero_u2) {
                    if (zero_pair[0] < 0) {
                        zero_pair[0] = a;
                        zero_pair[1] = c0 + j;
                    }
                    continue;
                }
                double dk = -0.5 * log(u2) - k_shift;
                s_k1 += dk;
                s_k2 += dk * dk;
            }
            acc[NCLI_PAIR_K1] += s_k1;
            acc[NCLI_PAIR_K2] += s_k2;
        }
    }
}

/* ---- module stub --------------------------------------------------------------------------- */

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled per-block kernels of ncli measure; loaded with ctypes by ncli.measure.kernels.", -1, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
