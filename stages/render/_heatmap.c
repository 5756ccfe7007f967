/* Heatmap kernel for stages.render.heatmap.render_volume: pyskl's GeneratePoseTarget, one pass in C.
 *
 * Arithmetic follows pyskl operation by operation under NumPy 1 (the only NumPy pyskl and mmaction2's
 * port run on: NumPy 2 removed the np.Inf they use): scalar expressions with python numbers are float64
 * there, so the window bounds (int(mu +- 3 sigma)) and a limb's squared length are computed in double;
 * array expressions keep float32, so the patches are float32. pyskl takes the limb exp in
 * double (its int64 `seg_dominate` mask promotes d2_seg to float64); we take it in float32 (Cephes' expf
 * on 8 lanes at once), which moves a value by an ulp or two (< 3e-7, far inside the 1e-5 bound).
 * Joint values can differ in the last ulp where glibc's expf and numpy's vectorised exp disagree.
 * A limb only visits, per row, the columns of its capsule (points within the distance where its value
 * falls below the cut, plus 0.01 px for rounding), not its whole bounding box: long limbs cost their
 * length, not their box; the undrawn tail is an error below the cut (2e-6; uint8: 0).
 * Compile without -ffast-math and with -ffp-contract=off so no FMA changes the rounding.
 *
 * Layouts: [K, T, H, W] (the render_volume contract) or [T, K, H, W] (the stored layout: one frame of all
 * channels is one contiguous chunk).
 *
 * Inputs are validated by the Python wrapper and checked again here (dimensions, sigma, every size
 * product against overflow, buffer sizes, limb indices), so a direct call cannot write out of bounds;
 * non-finite points are skipped so the float -> int window conversions stay defined. The output must be
 * zero-filled; float16/uint8 pixels are converted one by one as they are drawn.
 */
#include "../../pipeline/native.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { OUT_F32 = 0, OUT_F16 = 1, OUT_U8 = 2 };

typedef struct {
    const float *kp;  /* [M, T, V, 2] */
    const float *sc;  /* [M, T, V] or NULL (every score is 1) */
    const int64_t *limbs; /* [L, 2] or NULL (joints) */
    Py_ssize_t M, T, V, H, W, K;
    Py_ssize_t k_step, t_step; /* frames between consecutive channels / time steps in the output */
    double s3d; /* 3 * sigma: window bounds are float64 scalar arithmetic */
    float s2f;  /* float32(sigma ** 2), as an array expression casts the python float */
    double s2d; /* sigma ** 2 in double, for the limb path */
} Params;

static const float EPS = 1e-3f;
static const double CUT = 2e-6; /* float limb values below this are not drawn (see draw_limb) */

/* max(int(v), 0) with int() truncating toward zero; v is finite. */
static inline int win_lo(double v, int n) {
    if (!(v > 0.0)) return 0;
    if (v >= (double)n) return n;
    return (int)v;
}

/* min(int(v) + 1, n); v is finite. Returns <= 0 when the window is empty on the low side. */
static inline int win_hi(double v, int n) {
    if (v >= (double)n) return n;
    if (v <= -1.0) return 0;
    return (int)v + 1;
}

/* numpy's float32 -> float16 astype (round to nearest, ties to even) for finite f, branch-free
 * (F. Giesen's float_to_half_fast3_rtne): the kernel's values are a mix of normal and subnormal
 * halves, and branching on that mispredicts. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t x, sub;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    /* normal half: rebias the exponent (-112 << 23), round the 13 dropped bits to nearest even */
    uint32_t normal = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
    /* subnormal half: adding 0.5f aligns the 10 mantissa bits at the bottom, the FPU rounds */
    float g;
    memcpy(&g, &x, sizeof g);
    g += 0.5f;
    memcpy(&sub, &g, sizeof sub);
    sub -= 0x3f000000u;
    uint32_t h = x < 0x38800000u ? sub : normal;
    h = x >= 0x47800000u ? 0x7c00u : h; /* >= 65536 overflows; [65520, 65536) rounds up to inf above */
    return (uint16_t)(sign | h);
}

/* round(v * 255) with ties to even, saturated to 0..255. */
static inline uint8_t f32_to_u8(float f) {
    float r = rintf(f * 255.0f);
    if (!(r > 0.0f)) return 0;
    if (r >= 255.0f) return 255;
    return (uint8_t)r;
}

/* frame[i] = max(frame[i], v) in the output dtype. Both conversions are monotonic, so the max of the
 * converted values equals the conversion of the float32 max; v >= 0, and non-negative float16 bit
 * patterns order like their values. */
static inline __attribute__((always_inline)) void put_max(void *frame, Py_ssize_t i, float v, int kind) {
    if (kind == OUT_F32) {
        float *d = (float *)frame + i;
        if (v > *d) *d = v;
    } else if (kind == OUT_F16) {
        uint16_t h = f32_to_f16(v), *d = (uint16_t *)frame + i;
        if (h > *d) *d = h;
    } else {
        uint8_t u = f32_to_u8(v), *d = (uint8_t *)frame + i;
        if (u > *d) *d = u;
    }
}

/* generate_a_heatmap for one point: float32 patch, element-wise max into frame [H, W]. */
static inline __attribute__((always_inline)) void draw_joint(void *frame, const Params *p, float mx, float my,
                                                             float c, int kind) {
    if (c < EPS) return;
    if (!isfinite(mx) || !isfinite(my)) return;
    int W = (int)p->W, H = (int)p->H;
    int x0 = win_lo((double)mx - p->s3d, W), x1 = win_hi((double)mx + p->s3d, W);
    int y0 = win_lo((double)my - p->s3d, H), y1 = win_hi((double)my + p->s3d, H);
    float s2f = p->s2f;
    for (int i = y0; i < y1; i++) {
        float dy = (float)i - my;
        float dy2 = dy * dy;
        for (int j = x0; j < x1; j++) {
            float dx = (float)j - mx;
            float d2 = dx * dx + dy2;
            put_max(frame, (Py_ssize_t)i * W + j, expf(-d2 / 2.0f / s2f) * c, kind);
        }
    }
}

/* A limb row is drawn in blocks of BLOCK pixels with GCC/Clang vector extensions: 8 float32 lanes are one
 * AVX register or two SSE2 ones. Lane for lane the same IEEE operations as scalar code, so with
 * -ffp-contract=off every build rounds alike. Everything taking or returning a vector is inlined, so the
 * ABI note GCC gives for 32-byte vectors without AVX does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
enum { BLOCK = 8 };
typedef float f32x8 __attribute__((vector_size(4 * BLOCK)));
typedef int32_t i32x8 __attribute__((vector_size(4 * BLOCK)));
typedef uint8_t u8x8 __attribute__((vector_size(BLOCK)));

static inline f32x8 splat8(float s) { return (f32x8){s, s, s, s, s, s, s, s}; }

/* m ? a : b lane by lane (m: all ones or zero). */
static inline f32x8 select8(i32x8 m, f32x8 a, f32x8 b) { return (f32x8)((m & (i32x8)a) | (~m & (i32x8)b)); }

/* exp(x) for finite x <= 0: Cephes' expf (S. L. Moshier), 2^n exp(r) with |r| <= ln 2 / 2 and a degree-6
 * polynomial, within about 2 ulp of the correctly rounded value; below -87 it returns exp(-87) (< 2e-38). */
static inline f32x8 exp_neg8(f32x8 x) {
    x = select8(x > -87.0f, x, (f32x8){0} - 87.0f);
    f32x8 big = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23 + round(x / ln 2): its low bits */
    f32x8 n = big - 12582912.0f;
    f32x8 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    f32x8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    f32x8 y = p * (r * r) + r + 1.0f;
    return y * (f32x8)(((i32x8)big - 0x4b400000 + 127) << 23); /* 2^n: normal for n >= -126 */
}

/* One segment a-b as generate_a_limbmap draws it, plus the capsule (points within r of the segment) outside
 * which its value is below the cut, with the per-row chord's coefficients taken out of the row loop. */
typedef struct {
    float ax, ay, bx, by, ex, ey; /* ends, end - start */
    f32x8 vax, vay, vbx, vby, vex, vey, d2ab, half_inv_ab, neg_half_inv_s2, c; /* the same, in every lane */
    double r, r2, len2;
    double kx, wp; /* band along the segment, row y: centre ax + (y - ay) kx, half-width wp (ey != 0) */
    double ky, l2x; /* projection within [0, len^2]: from ax - (y - ay) ky, width l2x (ex != 0) */
} Limb;

static inline double min_d(double a, double b) { return a < b ? a : b; }
static inline double max_d(double a, double b) { return a > b ? a : b; }

/* Columns [*j0, *j1) of row y that can lie within r of the segment (length >= 1): the row's chord through
 * the capsule (convex), the union of the chords of the discs at both ends and of the band along the
 * segment, widened to whole pixels. Returns 0 when the row misses the capsule. */
static inline int capsule_row(const Limb *q, int y, int *j0, int *j1) {
    double lo = INFINITY, hi = -INFINITY;
    double dy = y - (double)q->ay, dyb = y - (double)q->by;
    if (fabs(dy) <= q->r) {
        double h = sqrt(q->r2 - dy * dy);
        lo = q->ax - h, hi = q->ax + h;
    }
    if (fabs(dyb) <= q->r) {
        double h = sqrt(q->r2 - dyb * dyb);
        lo = min_d(lo, q->bx - h), hi = max_d(hi, q->bx + h);
    }
    double plo = -INFINITY, phi = INFINITY, qlo = -INFINITY, qhi = INFINITY;
    if (q->ey != 0.0f) {
        double cx = q->ax + dy * q->kx;
        plo = cx - q->wp, phi = cx + q->wp;
    } else if (fabs(dy) > q->r) {
        plo = INFINITY;
    }
    if (q->ex != 0.0f) {
        double q1 = q->ax - dy * q->ky, q2 = q1 + q->l2x;
        qlo = min_d(q1, q2), qhi = max_d(q1, q2);
    } else if (dy * q->ey < 0.0 || dy * q->ey > q->len2) {
        qlo = INFINITY;
    }
    double blo = max_d(plo, qlo), bhi = min_d(phi, qhi);
    if (blo <= bhi) lo = min_d(lo, blo), hi = max_d(hi, bhi);
    if (!(lo <= hi)) return 0;
    lo = floor(lo), hi = ceil(hi) + 1.0;
    *j0 = lo < -1.0 ? -1 : (lo > 1e9 ? 1000000000 : (int)lo);
    *j1 = hi < -1.0 ? -1 : (hi > 1e9 ? 1000000000 : (int)hi);
    return 1;
}

/* Pixels jb .. jb + BLOCK - 1 of the row at y = yf, from dst (the output pixel of column jb; dya2, dyb2: the
 * squared y offsets from the ends); lanes outside [j0, j1) are left as they are. pyskl's value: the squared distance to the segment by its projection formula, in float32
 * and in its order, then exp(-d2 / 2 / sigma^2) * c (both divisions as reciprocals: an ulp at most). */
static inline __attribute__((always_inline)) void limb_block(void *dst, const Limb *q, f32x8 yf, f32x8 dya2,
                                                             f32x8 dyb2, int jb, int j0, int j1, int kind) {
    const f32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    f32x8 xf = lane + splat8((float)jb);
    i32x8 inside = (xf >= splat8((float)j0)) & (xf < splat8((float)j1));
    f32x8 dxa = xf - q->vax, dxb = xf - q->vbx;
    f32x8 d2s = dxa * dxa + dya2;
    f32x8 d2e = dxb * dxb + dyb2;
    f32x8 coeff = (d2s - d2e + q->d2ab) * q->half_inv_ab;
    f32x8 lx = xf - (coeff * q->vex + q->vax);
    f32x8 ly = yf - (coeff * q->vey + q->vay);
    f32x8 d2p = lx * lx + ly * ly;
    f32x8 d2 = select8(coeff <= 0.0f, d2s, select8(coeff >= 1.0f, d2e, d2p));
    f32x8 v = exp_neg8(d2 * q->neg_half_inv_s2) * q->c;
    v = (f32x8)(inside & (i32x8)v); /* 0 outside: max leaves the pixel */
    if (kind == OUT_F32) {
        f32x8 d;
        memcpy(&d, dst, sizeof d);
        d = select8(v > d, v, d);
        memcpy(dst, &d, sizeof d);
    } else if (kind == OUT_U8) {
        f32x8 s = v * 255.0f;
        s = select8(s < 255.0f, s, (f32x8){0} + 255.0f);
        s = s + 8388608.0f; /* 2^23 + rint(s) (ties to even): the low byte */
        typedef uint8_t u8x32 __attribute__((vector_size(32)));
        u8x32 b = (u8x32)s;
        u8x8 u = __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28), d;
        memcpy(&d, dst, sizeof d);
        u8x8 m = (u8x8)(u > d);
        d = (m & u) | (~m & d);
        memcpy(dst, &d, sizeof d);
    } else {
        for (int l = 0; l < BLOCK; l++) put_max(dst, l, v[l], kind);
    }
}

/* generate_a_limbmap for one segment a-b. Only the capsule where the value is at least the cut is drawn: a
 * row's chord through it, in blocks of BLOCK pixels (inside the row; a block shifted back from the row's end
 * overlaps the one before, harmless as lanes off the chord are masked and max is idempotent). The cut is
 * 2e-6 (an error below it) for float output, and a quarter of a uint8 step for uint8 output, whose pixels
 * outside round to 0 either way: the same values as the float path wherever either draws. */
static inline __attribute__((always_inline)) void draw_limb(void *frame, const Params *p, float ax, float ay,
                                                            float bx, float by, float ca, float cb, int kind) {
    float c = ca < cb ? ca : cb; /* python min(start_value, end_value) */
    if (c < EPS) return;
    if (!isfinite(ax) || !isfinite(ay) || !isfinite(bx) || !isfinite(by)) return;
    int W = (int)p->W, H = (int)p->H;
    float minx = ax < bx ? ax : bx, maxx = bx > ax ? bx : ax;
    float miny = ay < by ? ay : by, maxy = by > ay ? by : ay;
    int x0 = win_lo((double)minx - p->s3d, W), x1 = win_hi((double)maxx + p->s3d, W);
    int y0 = win_lo((double)miny - p->s3d, H), y1 = win_hi((double)maxy + p->s3d, H);
    if (x0 >= x1 || y0 >= y1) return;
    float abx = ax - bx, aby = ay - by;            /* float32 scalar differences */
    double d2ab_d = (double)abx * abx + (double)aby * aby; /* float32 scalar ** 2: float64 */
    if (d2ab_d < 1.0) {
        draw_joint(frame, p, ax, ay, ca, kind);
        return;
    }
    double cut = kind == OUT_U8 ? 0.25 / 255.0 : CUT; /* uint8: half the rounding threshold, a margin for d2 */
    if (!(c > cut)) return;
    float d2ab = (float)d2ab_d; /* cast to float32 where it meets the arrays */
    Limb q = {.ax = ax, .ay = ay, .bx = bx, .by = by, .ex = bx - ax, .ey = by - ay,
              .vax = splat8(ax), .vay = splat8(ay), .vbx = splat8(bx), .vby = splat8(by), .vex = splat8(bx - ax),
              .vey = splat8(by - ay), .d2ab = splat8(d2ab), .half_inv_ab = splat8(0.5f / d2ab),
              .neg_half_inv_s2 = splat8(-0.5f / p->s2f), .c = splat8(c)};
    q.r = sqrt(2.0 * p->s2d * log((double)c / cut)) + 0.01; /* + 0.01 px for float32 rounding */
    q.r2 = q.r * q.r;
    q.len2 = (double)q.ex * q.ex + (double)q.ey * q.ey;
    double len = sqrt(q.len2);
    if (q.ey != 0.0f) q.kx = (double)q.ex / q.ey, q.wp = q.r * len / fabs((double)q.ey);
    if (q.ex != 0.0f) q.ky = (double)q.ey / q.ex, q.l2x = q.len2 / q.ex;
    size_t item = kind == OUT_F32 ? 4 : (kind == OUT_F16 ? 2 : 1);
    for (int i = y0; i < y1; i++) {
        int j0, j1;
        if (!capsule_row(&q, i, &j0, &j1)) continue;
        if (j0 < x0) j0 = x0;
        if (j1 > x1) j1 = x1;
        if (j0 >= j1) continue;
        char *row = (char *)frame + (size_t)i * W * item;
        float yf = (float)i, dya = yf - ay, dyb = yf - by;
        f32x8 vy = splat8(yf), dya2 = splat8(dya * dya), dyb2 = splat8(dyb * dyb);
        if (W < BLOCK) { /* a frame narrower than a block: draw into a padded copy of the row */
            char pad[4 * BLOCK] = {0};
            memcpy(pad, row, W * item);
            limb_block(pad, &q, vy, dya2, dyb2, 0, j0, j1, kind);
            memcpy(row, pad, W * item);
            continue;
        }
        for (int j = j0; j < j1; j += BLOCK) {
            int jb = j + BLOCK <= W ? j : W - BLOCK; /* blocks stay in the row; a shifted one overlaps */
            limb_block(row + (size_t)jb * item, &q, vy, dya2, dyb2, jb, j0, j1, kind);
        }
    }
}

/* Every (channel, frame, person); always inlined so each output kind gets its own loop. */
static inline __attribute__((always_inline)) void render_kind(const Params *p, char *out, size_t itemsize,
                                                              int kind) {
    Py_ssize_t T = p->T, V = p->V, HW = p->H * p->W;
    for (Py_ssize_t k = 0; k < p->K; k++) {
        for (Py_ssize_t t = 0; t < T; t++) {
            void *frame = out + (size_t)((k * p->k_step + t * p->t_step) * HW) * itemsize;
            for (Py_ssize_t m = 0; m < p->M; m++) {
                Py_ssize_t base = (m * T + t) * V;
                const float *kp = p->kp + 2 * base;
                if (p->limbs == NULL) {
                    float c = p->sc ? p->sc[base + k] : 1.0f;
                    draw_joint(frame, p, kp[2 * k], kp[2 * k + 1], c, kind);
                } else {
                    Py_ssize_t a = (Py_ssize_t)p->limbs[2 * k], b = (Py_ssize_t)p->limbs[2 * k + 1];
                    float ca = p->sc ? p->sc[base + a] : 1.0f, cb = p->sc ? p->sc[base + b] : 1.0f;
                    draw_limb(frame, p, kp[2 * a], kp[2 * a + 1], kp[2 * b], kp[2 * b + 1], ca, cb, kind);
                }
            }
        }
    }
}

/* With GCC on x86-64 Linux, one build of render for AVX2 (8-lane blocks in one register) and one for the
 * baseline (two SSE2 registers), chosen when the module loads; both round alike (no FMA: -ffp-contract=off). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
static void render(const Params *p, void *out, int kind) {
    if (kind == OUT_F32)
        render_kind(p, out, 4, OUT_F32);
    else if (kind == OUT_F16)
        render_kind(p, out, 2, OUT_F16);
    else
        render_kind(p, out, 1, OUT_U8);
}

PyDoc_STRVAR(render_doc,
             "render(out, keypoint, score, limbs, M, T, V, H, W, sigma, kind, layout)\n\n"
             "Draw pyskl heatmaps into the zero-filled C-contiguous buffer out: [K, T, H, W] (layout 0)\n"
             "or [T, K, H, W] (layout 1).\n"
             "keypoint: float32 [M, T, V, 2]; score: float32 [M, T, V] or None (all ones);\n"
             "limbs: int64 [K, 2] or None (joints, K = V); kind: 0 float32, 1 float16, 2 uint8.");

static PyObject *py_render(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out_o, *kp_o, *sc_o, *limbs_o;
    Py_ssize_t M, T, V, H, W, L = 0;
    double sigma;
    int kind, layout;
    if (!PyArg_ParseTuple(args, "OOOOnnnnndii", &out_o, &kp_o, &sc_o, &limbs_o, &M, &T, &V, &H, &W, &sigma,
                          &kind, &layout))
        return NULL;
    if (M < 0 || T < 0 || V < 0 || H < 0 || W < 0 || H > INT32_MAX / 2 || W > INT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "bad dimensions");
        return NULL;
    }
    if (!isfinite(sigma) || sigma <= 0) {
        PyErr_SetString(PyExc_ValueError, "sigma must be positive and finite");
        return NULL;
    }
    Py_ssize_t n_kp, n_sc;
    if (!product(&n_kp, 5, (Py_ssize_t[]){M, T, V, 2, (Py_ssize_t)sizeof(float)})) return NULL;
    if (!product(&n_sc, 4, (Py_ssize_t[]){M, T, V, (Py_ssize_t)sizeof(float)})) return NULL;
    if (kind < OUT_F32 || kind > OUT_U8) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (float32), 1 (float16) or 2 (uint8)");
        return NULL;
    }
    if (layout != 0 && layout != 1) {
        PyErr_SetString(PyExc_ValueError, "layout must be 0 ([K, T, H, W]) or 1 ([T, K, H, W])");
        return NULL;
    }
    Py_buffer kp = {0}, sc = {0}, lb = {0}, out = {0};
    PyObject *result = NULL;
    if (get_buffer(kp_o, &kp, n_kp, 0, "keypoint") < 0) goto done;
    if (sc_o != Py_None && get_buffer(sc_o, &sc, n_sc, 0, "score") < 0)
        goto done;
    if (limbs_o != Py_None) {
        if (PyObject_GetBuffer(limbs_o, &lb, PyBUF_C_CONTIGUOUS) < 0) goto done;
        if (lb.len % (2 * (Py_ssize_t)sizeof(int64_t)) != 0) {
            PyErr_SetString(PyExc_ValueError, "limbs: expected int64 [K, 2]");
            goto done;
        }
        L = lb.len / (2 * (Py_ssize_t)sizeof(int64_t));
        const int64_t *l = (const int64_t *)lb.buf;
        for (Py_ssize_t i = 0; i < 2 * L; i++) {
            if (l[i] < 0 || l[i] >= V) {
                PyErr_SetString(PyExc_ValueError, "limbs: joint index out of range");
                goto done;
            }
        }
    }
    Py_ssize_t K = limbs_o == Py_None ? V : L;
    static const Py_ssize_t itemsize[] = {4, 2, 1};
    Py_ssize_t n_out;
    if (!product(&n_out, 5, (Py_ssize_t[]){K, T, H, W, itemsize[kind]})) goto done;
    if (get_buffer(out_o, &out, n_out, 1, "out") < 0) goto done;
    Params p = {
        .kp = (const float *)kp.buf,
        .sc = sc_o == Py_None ? NULL : (const float *)sc.buf,
        .limbs = limbs_o == Py_None ? NULL : (const int64_t *)lb.buf,
        .M = M, .T = T, .V = V, .H = H, .W = W, .K = K,
        .k_step = layout == 0 ? T : 1,
        .t_step = layout == 0 ? 1 : K,
        .s3d = 3.0 * sigma,
        .s2f = (float)(sigma * sigma),
        .s2d = sigma * sigma,
    };
    Py_BEGIN_ALLOW_THREADS
    render(&p, out.buf, kind);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (kp.obj) PyBuffer_Release(&kp);
    if (sc.obj) PyBuffer_Release(&sc);
    if (lb.obj) PyBuffer_Release(&lb);
    if (out.obj) PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"render", py_render, METH_VARARGS, render_doc},
    {NULL, NULL, 0, NULL},
};

SKEL_MODULE(_heatmap, "C kernel for stages.render.heatmap (pyskl heatmap semantics).", methods)
