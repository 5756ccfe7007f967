/* The training batch's crop + bilinear resize + mirror on a CPU (stages/train/augment.py), in one pass per clip.
 *
 * Stored clips x [N, T, K, H, W] (uint8 or float32) -> out float32 [N, T, S, S, K], which is [N, K, T, S, S] in
 * channels_last_3d memory, the model's input. Clip n is cropped to boxes[n] = (top, left, h, w), resized to
 * S x S as F.interpolate(bilinear, align_corners=False) does (source (i + 0.5) * len / S - 0.5, clamped at 0,
 * second tap clamped to the crop), mirrored when mirror[n] (output column j takes column S - 1 - j's taps and
 * channel k reads stored channel perm[k]) and multiplied by scale. Each output row is two taps of two stored
 * rows: the vertical pass runs along the stored row (contiguous), the result is turned to [w, K] in a small
 * buffer, and the horizontal pass writes the K channels of each output pixel contiguously, as the output
 * layout wants them. The dense matmuls the GPU path uses read every stored pixel once per output pixel of
 * its row; this reads each a few times. Three paths, chosen per clip at run time: portable C, AVX2 (8 lanes)
 * and AVX-512 (16 lanes, the horizontal pass by permutes, each output row streamed to memory from an L1
 * buffer); the two vector paths do the same arithmetic in the same order (equal to the bit), the portable one
 * scales after the horizontal pass. The vector paths skip zeros (nonzero_rows): heatmaps are mostly zeros.
 * bench/README.md has their speeds.
 */
#include "../../pipeline/native.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int i0, i1;
    float lam;
} Tap;

/* The two taps and weight of each of the S outputs over a crop of len pixels (PyTorch's upsample arithmetic:
 * the scale in float, an equal size is the identity). */
static void taps(Tap *t, int len, int S) {
    float scale = (float)len / (float)S;
    for (int i = 0; i < S; i++) {
        if (len == S) {
            t[i] = (Tap){i, i, 0.0f};
            continue;
        }
        float src = ((float)i + 0.5f) * scale - 0.5f;
        if (src < 0.0f) src = 0.0f;
        int i0 = (int)src;
        t[i] = (Tap){i0, i0 < len - 1 ? i0 + 1 : i0, src - (float)i0};
    }
}

typedef struct {
    const void *x;
    float *out;
    const int64_t *boxes, *perm;
    const uint8_t *mirror;
    int N, T, K, H, W, S, u8;
    float scale;
} Args;

/* Any K and crop width, any CPU: the reference arithmetic, vectorised where the compiler can. */
static void clip_generic(const Args *a, int n, const Tap *ty, const Tap *tx, float *v, float *vt) {
    const int T = a->T, K = a->K, H = a->H, W = a->W, S = a->S;
    const int64_t *b = a->boxes + 4 * (int64_t)n;
    const int top = (int)b[0], left = (int)b[1], w = (int)b[3], mir = a->mirror[n] != 0;
    const float scale = a->scale;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < S; i++) {
            const float lb = ty[i].lam, la = 1.0f - lb;
            for (int k = 0; k < K; k++) {
                const int64_t c = mir ? a->perm[k] : k;
                const int64_t plane = (((int64_t)n * T + t) * K + c) * H;
                const int64_t r0 = (plane + top + ty[i].i0) * W + left, r1 = (plane + top + ty[i].i1) * W + left;
                float *restrict row = v + (int64_t)k * w;
                if (a->u8) {
                    const uint8_t *restrict p0 = (const uint8_t *)a->x + r0, *restrict p1 = (const uint8_t *)a->x + r1;
                    for (int j = 0; j < w; j++) row[j] = la * (float)p0[j] + lb * (float)p1[j];
                } else {
                    const float *restrict p0 = (const float *)a->x + r0, *restrict p1 = (const float *)a->x + r1;
                    for (int j = 0; j < w; j++) row[j] = la * p0[j] + lb * p1[j];
                }
            }
            for (int j = 0; j < w; j++)
                for (int k = 0; k < K; k++) vt[(int64_t)j * K + k] = v[(int64_t)k * w + j];
            float *restrict o = a->out + ((((int64_t)n * T + t) * S + i) * S) * K;
            for (int j = 0; j < S; j++) {
                const Tap q = tx[mir ? S - 1 - j : j];
                const float wb = q.lam * scale, wa = (1.0f - q.lam) * scale;
                const float *restrict p0 = vt + (int64_t)q.i0 * K, *restrict p1 = vt + (int64_t)q.i1 * K;
                for (int k = 0; k < K; k++) o[(int64_t)j * K + k] = wa * p0[k] + wb * p1[k];
            }
        }
    }
}

/* The start of the 16-wide block at i (a multiple of 16) of n >= 16 items, as block8. */
static inline int block16(int i, int n) { return i + 16 > n ? n - 16 : i; }

/* One 16-output block of the horizontal pass: output j0 + l takes taps base + idx0[l] and base + idx1[l] of the
 * vertical pass's row with weights wa[l], wb[l] (mirroring folded in), both inside a 32-float window. */
typedef struct {
    int j0, base;
    int32_t idx0[16], idx1[16];
    float wa[16], wb[16];
} Block16;

/* The horizontal taps of the S >= 16 outputs as Block16s; 0 when a window would exceed 32 floats (a crop more
 * than about twice as wide as S), else the number of blocks. */
static int blocks16(Block16 *bl, const Tap *tx, int S, int mir) {
    int nb = 0;
    for (int j16 = 0; j16 < S; j16 += 16) {
        Block16 *B = &bl[nb++];
        B->j0 = block16(j16, S);
        int lo = INT32_MAX, hi = 0;
        for (int l = 0; l < 16; l++) {
            const Tap q = tx[mir ? S - 1 - (B->j0 + l) : B->j0 + l];
            lo = q.i0 < lo ? q.i0 : lo;
            hi = q.i1 > hi ? q.i1 : hi;
        }
        if (hi - lo >= 32) return 0;
        B->base = lo;
        for (int l = 0; l < 16; l++) {
            const Tap q = tx[mir ? S - 1 - (B->j0 + l) : B->j0 + l];
            B->idx0[l] = q.i0 - lo;
            B->idx1[l] = q.i1 - lo;
            B->wa[l] = 1.0f - q.lam;
            B->wb[l] = q.lam;
        }
    }
    return nb;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Eight floats from eight uint8 (or float32) values. */
__attribute__((target("avx2"))) static inline __m256 load8(const void *p, int u8) {
    if (!u8) return _mm256_loadu_ps((const float *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* The 8 x 8 block at src (row stride ss) transposed into dst (row stride ds). */
__attribute__((target("avx2"))) static inline void transpose8(const float *src, int64_t ss, float *dst, int64_t ds) {
    __m256 r[8], t[8], u[8];
    for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(src + q * ss);
    for (int q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
    }
    for (int q = 0; q < 8; q += 4) {
        u[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
        u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
        u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        _mm256_storeu_ps(dst + q * ds, _mm256_permute2f128_ps(u[q], u[q + 4], 0x20));
        _mm256_storeu_ps(dst + (q + 4) * ds, _mm256_permute2f128_ps(u[q], u[q + 4], 0x31));
    }
}

/* The start of the 8-wide block at i (a multiple of 8) of n >= 8 items: the last block starts at n - 8, overlapping
 * the one before it (the same values written twice), so no loop needs a scalar remainder. */
static inline int block8(int i, int n) { return i + 8 > n ? n - 8 : i; }

/* Whether any of len bytes at p is nonzero. */
__attribute__((target("avx2"))) static inline int any_nonzero(const uint8_t *p, int64_t len) {
    if (len < 32) {
        uint8_t acc = 0;
        for (int64_t j = 0; j < len; j++) acc |= p[j];
        return acc != 0;
    }
    __m256i acc = _mm256_setzero_si256();
    for (int64_t j32 = 0; j32 < len; j32 += 32) {
        const int64_t j = j32 + 32 > len ? len - 32 : j32;
        acc = _mm256_or_si256(acc, _mm256_loadu_si256((const __m256i *)(p + j)));
    }
    return !_mm256_testz_si256(acc, acc);
}

/* nz[c * h + r]: whether row top + r of stored channel c in frame t of clip n has a nonzero value inside the crop.
 * An output channel whose two tap rows are zero is exactly 0.0 (zero times finite weights), so the vector paths
 * skip it, and write rows with no such channel as zeros: heatmaps are mostly zeros (one person's joint blob
 * covers a few rows of a few channels), and the result is the same to the bit. */
__attribute__((target("avx2"))) static void nonzero_rows(const Args *a, int n, int t, uint8_t *nz) {
    const int K = a->K, item = a->u8 ? 1 : 4;
    const int64_t *b = a->boxes + 4 * (int64_t)n, stride = (int64_t)a->W * item;
    const int h = (int)b[2];
    for (int c = 0; c < K; c++) {
        const uint8_t *p = (const uint8_t *)a->x + ((((int64_t)n * a->T + t) * K + c) * a->H + b[0]) * stride +
                           b[1] * item;
        for (int r = 0; r < h; r++) nz[c * h + r] = (uint8_t)any_nonzero(p + r * stride, b[3] * item);
    }
}

/* Up to this many live channels in an output row, the vector paths write them into a zeroed row one value at a
 * time instead of transposing every channel. */
#define SCATTER_LIVE 4

/* on[k]: whether output channel k of an output row with vertical taps q reads a nonzero stored row (channel perm[k]
 * when mirrored); returns how many do. */
static inline int live_channels(const Args *a, int mir, const uint8_t *nz, int h, Tap q, uint8_t *on) {
    int live = 0;
    for (int k = 0; k < a->K; k++) {
        const int64_t c = mir ? a->perm[k] : k;
        on[k] = nz[c * h + q.i0] | nz[c * h + q.i1];
        live += on[k];
    }
    return live;
}

/* clip_generic's arithmetic in 8-lane AVX2 blocks (K >= 8 and w >= 8): the [K, w] row turned to [w, K] by 8 x 8
 * transposes, the scale folded into the vertical weights. */
__attribute__((target("avx2"))) static void clip_avx2(const Args *a, int n, const Tap *ty, const Tap *tx, float *v,
                                                       float *vt, uint8_t *nz, uint8_t *on) {
    const int T = a->T, K = a->K, H = a->H, W = a->W, S = a->S, u8 = a->u8, item = u8 ? 1 : 4;
    const int64_t *b = a->boxes + 4 * (int64_t)n;
    const int top = (int)b[0], left = (int)b[1], h = (int)b[2], w = (int)b[3], mir = a->mirror[n] != 0;
    const char *x = a->x;
    for (int t = 0; t < T; t++) {
        nonzero_rows(a, n, t, nz);
        for (int i = 0; i < S; i++) {
            float *o = a->out + ((((int64_t)n * T + t) * S + i) * S) * K;
            const int live = live_channels(a, mir, nz, h, ty[i], on);
            if (!live) {
                memset(o, 0, (size_t)S * K * sizeof(float));
                continue;
            }
            const __m256 lb = _mm256_set1_ps(ty[i].lam * a->scale), la = _mm256_set1_ps((1.0f - ty[i].lam) * a->scale);
            for (int k = 0; k < K; k++) {
                if (!on[k]) continue;
                const int64_t plane = (((int64_t)n * T + t) * K + (mir ? a->perm[k] : k)) * H;
                const char *p0 = x + ((plane + top + ty[i].i0) * W + left) * item;
                const char *p1 = x + ((plane + top + ty[i].i1) * W + left) * item;
                float *row = v + (int64_t)k * w;
                for (int j8 = 0; j8 < w; j8 += 8) {
                    const int j = block8(j8, w);
                    _mm256_storeu_ps(row + j, _mm256_add_ps(_mm256_mul_ps(la, load8(p0 + j * item, u8)),
                                                            _mm256_mul_ps(lb, load8(p1 + j * item, u8))));
                }
            }
            if (live <= SCATTER_LIVE) { /* the horizontal taps of the live channels, one value at a time */
                memset(o, 0, (size_t)S * K * sizeof(float));
                for (int k = 0; k < K; k++) {
                    if (!on[k]) continue;
                    const float *vk = v + (int64_t)k * w;
                    for (int j = 0; j < S; j++) {
                        const Tap q = tx[mir ? S - 1 - j : j];
                        o[(int64_t)j * K + k] = (1.0f - q.lam) * vk[q.i0] + q.lam * vk[q.i1];
                    }
                }
                continue;
            }
            for (int k = 0; k < K; k++)
                if (!on[k]) memset(v + (int64_t)k * w, 0, (size_t)w * sizeof(float));
            for (int k8 = 0; k8 < K; k8 += 8)
                for (int j8 = 0; j8 < w; j8 += 8) {
                    const int k = block8(k8, K), j = block8(j8, w);
                    transpose8(v + (int64_t)k * w + j, w, vt + (int64_t)j * K + k, K);
                }
            for (int j = 0; j < S; j++) {
                const Tap q = tx[mir ? S - 1 - j : j];
                const __m256 wb = _mm256_set1_ps(q.lam), wa = _mm256_set1_ps(1.0f - q.lam);
                const float *p0 = vt + (int64_t)q.i0 * K, *p1 = vt + (int64_t)q.i1 * K;
                for (int k8 = 0; k8 < K; k8 += 8) {
                    const int k = block8(k8, K);
                    _mm256_storeu_ps(o + (int64_t)j * K + k, _mm256_add_ps(_mm256_mul_ps(wa, _mm256_loadu_ps(p0 + k)),
                                                                           _mm256_mul_ps(wb, _mm256_loadu_ps(p1 + k))));
                }
            }
        }
    }
}

/* The 16 x 16 block at src (row stride ss) transposed into dst (row stride ds). */
__attribute__((target("avx512f"))) static inline void transpose16(const float *src, int64_t ss, float *dst,
                                                                  int64_t ds) {
    __m512 r[16], t[16];
    for (int q = 0; q < 16; q++) r[q] = _mm512_loadu_ps(src + q * ss);
    for (int q = 0; q < 16; q += 2) {
        t[q] = _mm512_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm512_unpackhi_ps(r[q], r[q + 1]);
    }
    for (int q = 0; q < 16; q += 4) {
        r[q] = _mm512_shuffle_ps(t[q], t[q + 2], 0x44);
        r[q + 1] = _mm512_shuffle_ps(t[q], t[q + 2], 0xEE);
        r[q + 2] = _mm512_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        r[q + 3] = _mm512_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
    }
    for (int g = 0; g < 16; g += 8)
        for (int q = 0; q < 4; q++) {
            t[g + q] = _mm512_shuffle_f32x4(r[g + q], r[g + q + 4], 0x88);
            t[g + q + 4] = _mm512_shuffle_f32x4(r[g + q], r[g + q + 4], 0xDD);
        }
    for (int q = 0; q < 8; q++) {
        _mm512_storeu_ps(dst + q * ds, _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88));
        _mm512_storeu_ps(dst + (q + 8) * ds, _mm512_shuffle_f32x4(t[q], t[q + 8], 0xDD));
    }
}

/* Sixteen floats from sixteen uint8 (or float32) values. */
__attribute__((target("avx512f"))) static inline __m512 load16(const void *p, int u8) {
    if (!u8) return _mm512_loadu_ps((const float *)p);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* A row of n floats from src (in cache; zeros when NULL) to dst with non-temporal stores of whole aligned 64-byte
 * lines (the model input is written once and read much later: caching it would first read each line from memory). */
__attribute__((target("avx512f"))) static inline void stream_row(float *dst, const float *src, int64_t n) {
    int64_t f = 0, head = (int64_t)(((64 - ((uintptr_t)dst & 63)) & 63) / sizeof(float));
    for (; f < head && f < n; f++) dst[f] = src ? src[f] : 0.0f;
    for (; f + 16 <= n; f += 16) _mm512_stream_ps(dst + f, src ? _mm512_loadu_ps(src + f) : _mm512_setzero_ps());
    for (; f < n; f++) dst[f] = src ? src[f] : 0.0f;
}

/* clip_avx2's arithmetic (so its result to the bit) with 16 lanes and fewer moves (K, w, S >= 16, blocks16 > 0).
 * Per output row: the vertical pass of every channel into v [K, w + 32]; the horizontal pass from it by
 * permutes within a 32-float window into h [K, S]; h turned to [S, K] by 16 x 16 transposes (a last channel
 * block overlapping the one before, as block8) into the L1 row r, which is streamed to the output. */
__attribute__((target("avx512f"))) static void clip_avx512(const Args *a, int n, const Tap *ty, const Block16 *bl,
                                                           int nb, float *v, float *h, float *r, uint8_t *nz,
                                                           uint8_t *on) {
    const int T = a->T, K = a->K, H = a->H, W = a->W, S = a->S, u8 = a->u8, item = u8 ? 1 : 4;
    const int64_t *b = a->boxes + 4 * (int64_t)n;
    const int top = (int)b[0], crop_h = (int)b[2], left = (int)b[1], w = (int)b[3], mir = a->mirror[n] != 0;
    const int64_t vs = w + 32; /* a row of v and the slack its last window reads */
    /* channels past the last full 16: one by one when at most 2 (cheaper than a 16 x 16 transpose each) */
    const int kb = K % 16 <= 2 ? K & ~15 : K;
    const char *x = a->x;
    for (int t = 0; t < T; t++) {
        nonzero_rows(a, n, t, nz);
        for (int i = 0; i < S; i++) {
            float *o = a->out + ((((int64_t)n * T + t) * S + i) * S) * K;
            const int live = live_channels(a, mir, nz, crop_h, ty[i], on);
            if (!live) {
                stream_row(o, NULL, (int64_t)S * K);
                continue;
            }
            const __m512 lb = _mm512_set1_ps(ty[i].lam * a->scale), la = _mm512_set1_ps((1.0f - ty[i].lam) * a->scale);
            for (int k = 0; k < K; k++) {
                if (!on[k]) continue;
                const int64_t plane = (((int64_t)n * T + t) * K + (mir ? a->perm[k] : k)) * H;
                const char *p0 = x + ((plane + top + ty[i].i0) * W + left) * item;
                const char *p1 = x + ((plane + top + ty[i].i1) * W + left) * item;
                float *vk = v + k * vs;
                for (int j16 = 0; j16 < w; j16 += 16) {
                    const int j = block16(j16, w);
                    _mm512_storeu_ps(vk + j, _mm512_add_ps(_mm512_mul_ps(la, load16(p0 + j * item, u8)),
                                                           _mm512_mul_ps(lb, load16(p1 + j * item, u8))));
                }
            }
            for (int m = 0; m < nb; m++) {
                const Block16 *B = &bl[m];
                const __m512i i0 = _mm512_loadu_si512(B->idx0), i1 = _mm512_loadu_si512(B->idx1);
                const __m512 wa = _mm512_loadu_ps(B->wa), wb = _mm512_loadu_ps(B->wb);
                for (int k = 0; k < K; k++) {
                    if (!on[k]) continue;
                    const float *vk = v + k * vs + B->base;
                    const __m512 lo = _mm512_loadu_ps(vk), hi = _mm512_loadu_ps(vk + 16);
                    _mm512_storeu_ps(h + (int64_t)k * S + B->j0,
                                     _mm512_add_ps(_mm512_mul_ps(wa, _mm512_permutex2var_ps(lo, i0, hi)),
                                                   _mm512_mul_ps(wb, _mm512_permutex2var_ps(lo, i1, hi))));
                }
            }
            if (live <= SCATTER_LIVE) {
                memset(r, 0, (size_t)S * K * sizeof(float));
                for (int k = 0; k < K; k++)
                    if (on[k])
                        for (int j = 0; j < S; j++) r[(int64_t)j * K + k] = h[(int64_t)k * S + j];
                stream_row(o, r, (int64_t)S * K);
                continue;
            }
            for (int k = 0; k < K; k++)
                if (!on[k]) memset(h + (int64_t)k * S, 0, (size_t)S * sizeof(float));
            for (int k16 = 0; k16 < kb; k16 += 16)
                for (int m = 0; m < nb; m++) {
                    const int k = block16(k16, K);
                    transpose16(h + (int64_t)k * S + bl[m].j0, S, r + (int64_t)bl[m].j0 * K + k, K);
                }
            for (int k = kb; k < K; k++)
                for (int j = 0; j < S; j++) r[(int64_t)j * K + k] = h[(int64_t)k * S + j];
            stream_row(o, r, (int64_t)S * K);
        }
    }
}
#endif

PyDoc_STRVAR(augment_doc,
             "augment(out, x, boxes, mirror, perm, N, T, K, H, W, S, scale, u8, isa)\n\n"
             "Crop, resize (bilinear, align_corners=False) and mirror N stored clips x (C-contiguous\n"
             "[N, T, K, H, W], uint8 when u8 else float32) into out (float32 [N, T, S, S, K]), times scale.\n"
             "boxes: int64 [N, 4] (top, left, height, width) inside H x W; mirror: uint8 [N]; perm: int64 [K].\n"
             "isa: the widest vector path to use where the CPU has it (0 portable, 1 AVX2, 2 AVX-512).");

static PyObject *py_augment(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out_o, *x_o, *boxes_o, *mirror_o, *perm_o;
    Py_ssize_t N, T, K, H, W, S;
    double scale;
    int u8, isa;
    if (!PyArg_ParseTuple(args, "OOOOOnnnnnndpi", &out_o, &x_o, &boxes_o, &mirror_o, &perm_o, &N, &T, &K, &H, &W,
                          &S, &scale, &u8, &isa))
        return NULL;
    if (N < 0 || T < 0 || K < 0 || H < 1 || W < 1 || S < 1 || T > INT32_MAX || K > INT32_MAX || H > INT32_MAX ||
        W > INT32_MAX || S > INT32_MAX || N > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad dimensions");
        return NULL;
    }
    Py_ssize_t n_x, n_out;
    if (__builtin_mul_overflow(N * T, K * H, &n_x) || __builtin_mul_overflow(n_x, W * (u8 ? 1 : 4), &n_x) ||
        __builtin_mul_overflow(N * T, S * S, &n_out) || __builtin_mul_overflow(n_out, K * 4, &n_out)) {
        PyErr_SetString(PyExc_ValueError, "dimensions too large");
        return NULL;
    }
    Py_buffer x = {0}, bx = {0}, mr = {0}, pm = {0}, out = {0};
    PyObject *result = NULL;
    Tap *ty = NULL, *tx = NULL;
    float *v = NULL, *vt = NULL;
    Block16 *bl = NULL;
    float *row = NULL;
    uint8_t *nz = NULL, *on = NULL;
    if (get_buffer(x_o, &x, n_x, 0, "x") < 0 || get_buffer(boxes_o, &bx, N * 4 * 8, 0, "boxes") < 0 ||
        get_buffer(mirror_o, &mr, N, 0, "mirror") < 0 || get_buffer(perm_o, &pm, K * 8, 0, "perm") < 0 ||
        get_buffer(out_o, &out, n_out, 1, "out") < 0)
        goto done;
    const int64_t *b = (const int64_t *)bx.buf, *p = (const int64_t *)pm.buf;
    Py_ssize_t widest = 1;
    for (Py_ssize_t n = 0; n < N; n++) {
        const int64_t *q = b + 4 * n;
        if (q[0] < 0 || q[1] < 0 || q[2] < 1 || q[3] < 1 || q[0] + q[2] > H || q[1] + q[3] > W) {
            PyErr_Format(PyExc_ValueError, "boxes[%zd]: (%lld, %lld, %lld, %lld) is not a crop of %zd x %zd", n,
                         (long long)q[0], (long long)q[1], (long long)q[2], (long long)q[3], H, W);
            goto done;
        }
        if (q[3] > widest) widest = q[3];
    }
    for (Py_ssize_t k = 0; k < K; k++) {
        if (p[k] < 0 || p[k] >= K) {
            PyErr_SetString(PyExc_ValueError, "perm: channel index out of range");
            goto done;
        }
    }
    ty = malloc(S * sizeof(Tap));
    tx = malloc(S * sizeof(Tap));
    const Py_ssize_t wide = widest > S ? widest : S;
    v = calloc(K * (widest + 32), sizeof(float)); /* zeroed: the 16-lane path's windows read past a row */
    vt = malloc((K * wide + 1) * sizeof(float));
    bl = malloc(((S + 15) / 16) * sizeof(Block16));
    row = malloc(S * K * sizeof(float));
    nz = malloc(K * H);
    on = malloc(K);
    if (!ty || !tx || !v || !vt || !bl || !row || !nz || !on) {
        PyErr_NoMemory();
        goto done;
    }
#ifdef HAVE_AVX2_PATH
    const int avx2 = isa >= 1 && __builtin_cpu_supports("avx2"), avx512 = isa >= 2 && __builtin_cpu_supports("avx512f");
#endif
    Args a = {.x = x.buf, .out = out.buf, .boxes = b, .perm = p, .mirror = mr.buf, .N = (int)N, .T = (int)T,
              .K = (int)K, .H = (int)H, .W = (int)W, .S = (int)S, .u8 = u8, .scale = (float)scale};
    Py_BEGIN_ALLOW_THREADS
    for (int n = 0; n < a.N; n++) {
        taps(ty, (int)b[4 * n + 2], a.S); /* every path's vertical and horizontal taps of this clip's box */
        taps(tx, (int)b[4 * n + 3], a.S);
#ifdef HAVE_AVX2_PATH
        if (avx512 && a.K >= 16 && a.S >= 16 && b[4 * n + 3] >= 16) {
            const int nb = blocks16(bl, tx, a.S, a.mirror[n] != 0);
            if (nb) {
                clip_avx512(&a, n, ty, bl, nb, v, vt, row, nz, on);
                continue;
            }
        }
        if (avx2 && a.K >= 8 && b[4 * n + 3] >= 8) {
            clip_avx2(&a, n, ty, tx, v, vt, nz, on);
            continue;
        }
#endif
        clip_generic(&a, n, ty, tx, v, vt);
    }
#ifdef HAVE_AVX2_PATH
    if (avx512) _mm_sfence(); /* the streamed rows are visible before the caller reads them */
#endif
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(ty);
    free(tx);
    free(v);
    free(vt);
    free(bl);
    free(row);
    free(nz);
    free(on);
    if (x.obj) PyBuffer_Release(&x);
    if (bx.obj) PyBuffer_Release(&bx);
    if (mr.obj) PyBuffer_Release(&mr);
    if (pm.obj) PyBuffer_Release(&pm);
    if (out.obj) PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"augment", py_augment, METH_VARARGS, augment_doc},
    {NULL, NULL, 0, NULL},
};

SKEL_MODULE(_augment, "C kernel for stages.train.augment (crop, resize, mirror of stored clips on a CPU).", methods)
