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

/* Natural logarithm of x > 0 (finite, normal), NaN for NaN, in plain arithmetic that the
 * compiler vectorises (libm's log is a call per element): x = 2^e m with m in [sqrt(1/2),
 * sqrt(2)), log m = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m - 1)/(m + 1),
 * |s| <= 0.1716, the series to s^24 (truncation < 1e-19); e ln 2 with ln 2 split in two so
 * that e * LN2_HI is exact. Error: a few units in the last place. */
static inline double ncli_log(double x) {
    const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
    int64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int64_t mbits = (bits & INT64_C(0x000fffffffffffff)) | INT64_C(0x3ff0000000000000);
    int64_t ebits = ((bits >> 52) & 0x7ff) | INT64_C(0x4330000000000000); /* 2^52 + biased exponent */
    double m, e;
    memcpy(&m, &mbits, sizeof m);
    memcpy(&e, &ebits, sizeof e);
    e = e - 4503599627370496.0 - 1023.0;
    int big = m > 1.4142135623730951;
    m = big ? 0.5 * m : m;
    e = big ? e + 1.0 : e;
    double s = (m - 1.0) / (m + 1.0), z = s * s;
    double series = 1.0 / 25.0;
    series = 1.0 / 23.0 + z * series;
    series = 1.0 / 21.0 + z * series;
    series = 1.0 / 19.0 + z * series;
    series = 1.0 / 17.0 + z * series;
    series = 1.0 / 15.0 + z * series;
    series = 1.0 / 13.0 + z * series;
    series = 1.0 / 11.0 + z * series;
    series = 1.0 / 9.0 + z * series;
    series = 1.0 / 7.0 + z * series;
    series = 1.0 / 5.0 + z * series;
    series = 1.0 / 3.0 + z * series;
    double log_m = 2.0 * s + 2.0 * s * (z * series);
    return e * LN2_HI + (e * LN2_LO + log_m) + (x - x); /* + (x - x): NaN stays NaN */
}

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the helpers below are always inlined: no vector passes a call */
/* The same in GCC vector extensions, eight at a time (each clone lowers them to its
 * instruction set): the same operations in the same order, so lane for lane the same bits. */
typedef double ncli_vd8 __attribute__((vector_size(64)));
typedef int64_t ncli_vl8 __attribute__((vector_size(64)));

static inline __attribute__((always_inline)) ncli_vd8 ncli_seld(ncli_vl8 mask, ncli_vd8 a, ncli_vd8 b) {
    return (ncli_vd8)(((ncli_vl8)a & mask) | ((ncli_vl8)b & ~mask));
}

static inline __attribute__((always_inline)) ncli_vd8 ncli_loadd(const double *p) {
    ncli_vd8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) ncli_vd8 ncli_log8(ncli_vd8 x) {
    const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
    const ncli_vd8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
    ncli_vl8 bits = (ncli_vl8)x;
    ncli_vl8 mbits = (bits & INT64_C(0x000fffffffffffff)) | INT64_C(0x3ff0000000000000);
    ncli_vl8 ebits = ((bits >> 52) & 0x7ff) | INT64_C(0x4330000000000000);
    ncli_vd8 m = (ncli_vd8)mbits, e = (ncli_vd8)ebits;
    e = e - 4503599627370496.0 - 1023.0;
    ncli_vl8 big = m > 1.4142135623730951;
    m = ncli_seld(big, 0.5 * m, m);
    e = ncli_seld(big, e + 1.0, e);
    ncli_vd8 s = (m - 1.0) / (m + 1.0), z = s * s;
    ncli_vd8 series = zero + 1.0 / 25.0;
    series = 1.0 / 23.0 + z * series;
    series = 1.0 / 21.0 + z * series;
    series = 1.0 / 19.0 + z * series;
    series = 1.0 / 17.0 + z * series;
    series = 1.0 / 15.0 + z * series;
    series = 1.0 / 13.0 + z * series;
    series = 1.0 / 11.0 + z * series;
    series = 1.0 / 9.0 + z * series;
    series = 1.0 / 7.0 + z * series;
    series = 1.0 / 5.0 + z * series;
    series = 1.0 / 3.0 + z * series;
    ncli_vd8 log_m = 2.0 * s + 2.0 * s * (z * series);
    return e * LN2_HI + (e * LN2_LO + log_m) + (x - x);
}
#endif

static inline double ncli_sum8(const double *a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }

/* Pairs (a, b) = (r0 + i, c0 + j) with a < b of the tile G (rows x cols, row-major, ld cols),
 * G[i, j] = <x_a, x_b> for C vectors x (norm: (C,) their norms). With cos = G / (norm_a norm_b)
 * every pair adds to acc[NCLI_PAIR_ABS..COS2]; when s2 is not NULL (CDNV; x = centred means)
 * d2 = sq_a + sq_b - 2 G (sq = norm^2), recomputed as ||pts_a - pts_b||^2 from the rows of pts
 * (C x p, the class means) where d2 < 1e-3 (sq_a + sq_b) (the expansion cancels there); when
 * unit is not NULL (GNC2; unit = (C x p) rows x_c / ||x_c||) u2 = 2 - 2 cos, recomputed as
 * ||unit_a - unit_b||^2 where u2 < 2e-3, and k = -log(u2)/2. The first pair (row-major) with
 * u2 <= zero_u2 (identical directions, up to rounding) is written to zero_pair[0..1]; such
 * pairs add nothing. Per row, eight interleaved partial sums per quantity (added in a fixed
 * tree), then the pairs recomputed directly; rows are added to acc in order. scratch: cols
 * doubles. */
NCLI_EXPORT NCLI_CLONES void ncli_pair_tile(const double *G, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                            const double *norm, double offset, double cos_shift, const double *s2,
                                            const double *pts, const double *unit, int64_t p, double k_shift,
                                            double zero_u2, double *scratch, double *acc, int64_t *zero_pair) {
    for (int64_t i = 0; i < rows; i++) {
        int64_t a = r0 + i;
        int64_t j0 = a + 1 - c0; /* first column with b > a */
        if (j0 < 0) j0 = 0;
        if (j0 >= cols) continue;
        int64_t n = cols - j0, t, l;
        const double *g = G + i * cols + j0, *nb = norm + c0 + j0;
        double *cs = scratch;
        double na = norm[a];
        double l_abs[8] = {0}, l_c1[8] = {0}, l_c2[8] = {0};
        for (t = 0; t + 8 <= n; t += 8) {
            for (l = 0; l < 8; l++) {
                double c = g[t + l] / (na * nb[t + l]);
                cs[t + l] = c;
                l_abs[l] += fabs(c + offset);
                double dc = c - cos_shift;
                l_c1[l] += dc;
                l_c2[l] += dc * dc;
            }
        }
        for (l = 0; t < n; t++, l++) {
            double c = g[t] / (na * nb[t]);
            cs[t] = c;
            l_abs[l] += fabs(c + offset);
            double dc = c - cos_shift;
            l_c1[l] += dc;
            l_c2[l] += dc * dc;
        }
        acc[NCLI_PAIR_ABS] += ncli_sum8(l_abs);
        acc[NCLI_PAIR_COS1] += ncli_sum8(l_c1);
        acc[NCLI_PAIR_COS2] += ncli_sum8(l_c2);
        acc[NCLI_PAIR_COUNT] += (double)n;
        if (s2 != NULL) {
            const double *s2b = s2 + c0 + j0;
            double sqa = na * na, s2a = s2[a];
            double l_cd[8] = {0}, l_zero[8] = {0}, l_close[8] = {0};
#define NCLI_CDNV_TERM(T, L)                                                                     \
    do {                                                                                         \
        double sqb = nb[T] * nb[T];                                                              \
        double d2 = sqa + sqb - 2.0 * g[T];                                                      \
        int close = d2 < 1e-3 * (sqa + sqb), positive = d2 > 0.0; /* no && or ||: they branch */ \
        int use = (close ^ 1) & positive, zero = (close ^ 1) & (positive ^ 1);                   \
        double term = (s2a + s2b[T]) / (2.0 * (use ? d2 : 1.0));                                 \
        l_cd[L] += use ? term : 0.0;                                                             \
        l_zero[L] += zero ? 1.0 : 0.0;                                                           \
        l_close[L] += close ? 1.0 : 0.0;                                                         \
    } while (0)
            t = 0;
#if defined(__GNUC__)
            {
                ncli_vd8 v_cd = {0}, v_zero = {0}, v_close = {0}, zeros = {0}, ones = zeros + 1.0;
                for (; t + 8 <= n; t += 8) {
                    ncli_vd8 nbv = ncli_loadd(nb + t), sqb = nbv * nbv;
                    ncli_vd8 d2 = sqa + sqb - 2.0 * ncli_loadd(g + t);
                    ncli_vl8 close = d2 < 1e-3 * (sqa + sqb), positive = d2 > 0.0;
                    ncli_vl8 use = ~close & positive, zero = ~close & ~positive;
                    ncli_vd8 term = (s2a + ncli_loadd(s2b + t)) / (2.0 * ncli_seld(use, d2, ones));
                    v_cd += ncli_seld(use, term, zeros);
                    v_zero += ncli_seld(zero, ones, zeros);
                    v_close += ncli_seld(close, ones, zeros);
                }
                memcpy(l_cd, &v_cd, sizeof l_cd);
                memcpy(l_zero, &v_zero, sizeof l_zero);
                memcpy(l_close, &v_close, sizeof l_close);
            }
#else
            for (; t + 8 <= n; t += 8)
                for (l = 0; l < 8; l++) NCLI_CDNV_TERM(t + l, l);
#endif
            for (l = 0; t < n; t++, l++) NCLI_CDNV_TERM(t, l);
#undef NCLI_CDNV_TERM
            double cd = ncli_sum8(l_cd), zero = ncli_sum8(l_zero);
            if (ncli_sum8(l_close) > 0.0) {
                for (t = 0; t < n; t++) {
                    double sqb = nb[t] * nb[t];
                    if (!(sqa + sqb - 2.0 * g[t] < 1e-3 * (sqa + sqb))) continue;
                    double d2 = ncli_sq_dist(pts + a * p, pts + (c0 + j0 + t) * p, p);
                    if (d2 > 0.0) {
                        cd += (s2a + s2b[t]) / (2.0 * d2);
                    } else {
                        zero += 1.0;
                    }
                }
            }
            acc[NCLI_PAIR_CDNV] += cd;
            acc[NCLI_PAIR_CDNV0] += zero;
        }
        if (unit != NULL) {
            double l_k1[8] = {0}, l_k2[8] = {0}, l_close[8] = {0};
#define NCLI_GNC2_TERM(T, L)                                                                     \
    do {                                                                                         \
        double u2 = 2.0 - 2.0 * cs[T];                                                           \
        int close = u2 < 2e-3;                                                                   \
        double dk = -0.5 * ncli_log(close ? 1.0 : u2) - k_shift;                                 \
        l_k1[L] += close ? 0.0 : dk;                                                             \
        l_k2[L] += close ? 0.0 : dk * dk;                                                        \
        l_close[L] += close ? 1.0 : 0.0;                                                         \
    } while (0)
            t = 0;
#if defined(__GNUC__)
            {
                ncli_vd8 v_k1 = {0}, v_k2 = {0}, v_close = {0}, zeros = {0}, ones = zeros + 1.0;
                for (; t + 8 <= n; t += 8) {
                    ncli_vd8 u2 = 2.0 - 2.0 * ncli_loadd(cs + t);
                    ncli_vl8 close = u2 < 2e-3;
                    ncli_vd8 dk = -0.5 * ncli_log8(ncli_seld(close, ones, u2)) - k_shift;
                    v_k1 += ncli_seld(close, zeros, dk);
                    v_k2 += ncli_seld(close, zeros, dk * dk);
                    v_close += ncli_seld(close, ones, zeros);
                }
                memcpy(l_k1, &v_k1, sizeof l_k1);
                memcpy(l_k2, &v_k2, sizeof l_k2);
                memcpy(l_close, &v_close, sizeof l_close);
            }
#else
            for (; t + 8 <= n; t += 8)
                for (l = 0; l < 8; l++) NCLI_GNC2_TERM(t + l, l);
#endif
            for (l = 0; t < n; t++, l++) NCLI_GNC2_TERM(t, l);
#undef NCLI_GNC2_TERM
            double k1 = ncli_sum8(l_k1), k2 = ncli_sum8(l_k2);
            if (ncli_sum8(l_close) > 0.0) {
                for (t = 0; t < n; t++) {
                    if (!(2.0 - 2.0 * cs[t] < 2e-3)) continue;
                    int64_t b = c0 + j0 + t;
                    double u2 = ncli_sq_dist(unit + a * p, unit + b * p, p);
                    if (u2 <= zero_u2) {
                        if (zero_pair[0] < 0) {
                            zero_pair[0] = a;
                            zero_pair[1] = b;
                        }
                        continue;
                    }
                    double dk = -0.5 * ncli_log(u2) - k_shift;
                    k1 += dk;
                    k2 += dk * dk;
                }
            }
            acc[NCLI_PAIR_K1] += k1;
            acc[NCLI_PAIR_K2] += k2;
        }
    }
}

/* ---- module stub --------------------------------------------------------------------------- */

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled per-block kernels of ncli measure; loaded with ctypes by ncli.measure.kernels.", -1, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
