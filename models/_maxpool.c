/* The SlowOnly stem's max pool (1x3x3, padding 1, spatial stride s) of a bf16 channels_last_3d tensor under CPU
 * autocast (models/maxpool.py): to the bit what PyTorch computes there, without its casts. Autocast runs
 * max_pool3d in float32: the bf16 input is cast up, pooled (PyTorch's float32 channels-last kernel), and the
 * gradient is summed in float32 and cast back to bf16; ~35 ms of a 355 ms bf16 training step of the Penn model
 * (batch 16, one thread), against ~6 ms forward and ~11 ms backward here.
 *
 * Forward: x [P, H, W, C] bf16 bits (P = N * D planes; channels last) -> y [P, OH, OW, C] float32, and with
 * taps each output's window position (kh * 3 + kw, 0..8) of its maximum. As PyTorch: over the window's
 * in-bounds positions in row-major order a value is taken when it is greater than the running maximum or NaN
 * (the first maximum wins a tie), starting from -inf at the first in-bounds position.
 * Backward: grad_y [P, OH, OW, C] float32 -> grad_x [P, H, W, C] bf16 bits: each input's float32 sum of the
 * gradients of the outputs that chose it, added in the outputs' row-major order (the order PyTorch scatters
 * them in; gathered here per input, so nothing is zeroed or scattered), rounded to bf16 once (to nearest even).
 * AVX-512 for 16 channels at a time where the CPU has it (AVX512BW/VL), portable C otherwise and for the
 * channels left over.
 */
#include "../pipeline/native.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t u) {
    union {
        uint32_t i;
        float f;
    } v = {(uint32_t)u << 16};
    return v.f;
}

/* c10::BFloat16's round_to_nearest_even. */
static inline uint16_t to_bf16(float f) {
    union {
        float f;
        uint32_t i;
    } v = {f};
    if (f != f) return 0x7fc0;
    return (uint16_t)((v.i + 0x7fffu + ((v.i >> 16) & 1u)) >> 16);
}

typedef struct {
    int64_t P;
    int H, W, C, s, OH, OW;
} Shape;

static inline int lo(int a, int b) { return a < b ? a : b; }
static inline int hi(int a, int b) { return a > b ? a : b; }

/* One output pixel's channels [c0, c0 + L), portable. */
static inline __attribute__((always_inline)) void forward_lanes(const Shape *sh, const uint16_t *x, float *q,
                                                                uint8_t *tq, int h0, int w0, int c0, int L) {
    const int W = sh->W, C = sh->C, kh0 = hi(0, -h0), kh1 = lo(3, sh->H - h0), kw0 = hi(0, -w0),
              kw1 = lo(3, W - w0);
    for (int c = c0; c < c0 + L; c++) {
        float m = -INFINITY;
        uint8_t t = (uint8_t)(kh0 * 3 + kw0);
        for (int kh = kh0; kh < kh1; kh++) {
            for (int kw = kw0; kw < kw1; kw++) {
                const float v = from_bf16(x[((int64_t)(h0 + kh) * W + (w0 + kw)) * C + c]);
                if (v > m || v != v) {
                    m = v;
                    t = (uint8_t)(kh * 3 + kw);
                }
            }
        }
        q[c] = m;
        if (tq) tq[c] = t;
    }
}

/* The outputs whose window (o * s - 1 .. o * s + 1) holds input i: [*o0, *o1], ascending. */
static inline void covering(int i, int s, int n_out, int *o0, int *o1) {
    *o0 = i <= 1 ? 0 : (i - 1 + s - 1) / s;
    *o1 = lo(n_out - 1, (i + 1) / s);
}

static inline __attribute__((always_inline)) void backward_lanes(const Shape *sh, const float *gy,
                                                                 const uint8_t *taps, uint16_t *q, int ih, int iw,
                                                                 int c0, int L) {
    const int C = sh->C, s = sh->s;
    int oh0, oh1, ow0, ow1;
    covering(ih, s, sh->OH, &oh0, &oh1);
    covering(iw, s, sh->OW, &ow0, &ow1);
    for (int c = c0; c < c0 + L; c++) {
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; oh++) {
            for (int ow = ow0; ow <= ow1; ow++) {
                const int64_t o = ((int64_t)oh * sh->OW + ow) * C + c;
                if (taps[o] == (ih - (oh * s - 1)) * 3 + (iw - (ow * s - 1))) acc += gy[o];
            }
        }
        q[c] = to_bf16(acc);
    }
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

AVX512 static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* to_bf16 in 16 lanes. */
AVX512 static inline void store_bf16x16(uint16_t *p, __m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                          _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}

/* forward_lanes and backward_lanes for 16 channels: the same comparisons and additions, lane by lane. */
AVX512 static inline void forward_x16(const Shape *sh, const uint16_t *x, float *q, uint8_t *tq, int h0, int w0,
                                      int c0) {
    const int W = sh->W, C = sh->C, kh0 = hi(0, -h0), kh1 = lo(3, sh->H - h0), kw0 = hi(0, -w0),
              kw1 = lo(3, W - w0);
    __m512 m = _mm512_set1_ps(-INFINITY);
    __m128i t = _mm_set1_epi8((char)(kh0 * 3 + kw0));
    for (int kh = kh0; kh < kh1; kh++) {
        for (int kw = kw0; kw < kw1; kw++) {
            const __m512 v = load_bf16x16(x + ((int64_t)(h0 + kh) * W + (w0 + kw)) * C + c0);
            const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            m = _mm512_mask_mov_ps(m, take, v);
            t = _mm_mask_mov_epi8(t, take, _mm_set1_epi8((char)(kh * 3 + kw)));
        }
    }
    _mm512_storeu_ps(q + c0, m);
    if (tq) _mm_storeu_si128((__m128i *)(tq + c0), t);
}

AVX512 static inline void backward_x16(const Shape *sh, const float *gy, const uint8_t *taps, uint16_t *q, int ih,
                                       int iw, int c0) {
    const int C = sh->C, s = sh->s;
    int oh0, oh1, ow0, ow1;
    covering(ih, s, sh->OH, &oh0, &oh1);
    covering(iw, s, sh->OW, &ow0, &ow1);
    __m512 acc = _mm512_setzero_ps();
    for (int oh = oh0; oh <= oh1; oh++) {
        for (int ow = ow0; ow <= ow1; ow++) {
            const char k = (char)((ih - (oh * s - 1)) * 3 + (iw - (ow * s - 1)));
            const int64_t o = ((int64_t)oh * sh->OW + ow) * C + c0;
            const __mmask16 mine = _mm_cmpeq_epi8_mask(_mm_loadu_si128((const __m128i *)(taps + o)), _mm_set1_epi8(k));
            acc = _mm512_mask_add_ps(acc, mine, acc, _mm512_loadu_ps(gy + o));
        }
    }
    store_bf16x16(q + c0, acc);
}

static inline __attribute__((always_inline)) void forward_plane(const Shape *sh, const uint16_t *x, float *y,
                                                                uint8_t *taps, int vec) {
    const int C = sh->C, s = sh->s, full = vec ? C - C % 16 : 0;
    for (int oh = 0; oh < sh->OH; oh++) {
        for (int ow = 0; ow < sh->OW; ow++) {
            const int64_t o = ((int64_t)oh * sh->OW + ow) * C;
            uint8_t *tq = taps ? taps + o : NULL;
            for (int c0 = 0; c0 < full; c0 += 16) forward_x16(sh, x, y + o, tq, oh * s - 1, ow * s - 1, c0);
            if (full < C) forward_lanes(sh, x, y + o, tq, oh * s - 1, ow * s - 1, full, C - full);
        }
    }
}

static inline __attribute__((always_inline)) void backward_plane(const Shape *sh, const float *gy,
                                                                 const uint8_t *taps, uint16_t *gx, int vec) {
    const int C = sh->C, full = vec ? C - C % 16 : 0;
    for (int ih = 0; ih < sh->H; ih++) {
        for (int iw = 0; iw < sh->W; iw++) {
            uint16_t *q = gx + ((int64_t)ih * sh->W + iw) * C;
            for (int c0 = 0; c0 < full; c0 += 16) backward_x16(sh, gy, taps, q, ih, iw, c0);
            if (full < C) backward_lanes(sh, gy, taps, q, ih, iw, full, C - full);
        }
    }
}

#define PLANES(SUFFIX, TARGET, VEC)                                                                           \
    TARGET static void forward_##SUFFIX(const Shape *sh, const uint16_t *x, float *y, uint8_t *taps) {       \
        const int64_t in = (int64_t)sh->H * sh->W * sh->C, out = (int64_t)sh->OH * sh->OW * sh->C;        \
        for (int64_t p = 0; p < sh->P; p++)                                                                 \
            forward_plane(sh, x + p * in, y + p * out, taps ? taps + p * out : NULL, VEC);                  \
    }                                                                                                       \
    TARGET static void backward_##SUFFIX(const Shape *sh, const float *gy, const uint8_t *taps, uint16_t *gx) { \
        const int64_t in = (int64_t)sh->H * sh->W * sh->C, out = (int64_t)sh->OH * sh->OW * sh->C;        \
        for (int64_t p = 0; p < sh->P; p++) backward_plane(sh, gy + p * out, taps + p * out, gx + p * in, VEC); \
    }

PLANES(avx512, AVX512, 1)
PLANES(base, , 0)

static int has_avx512(void) { return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"); }

/* The shape after checking it: consistent, and its element counts (x4 bytes) fit a Py_ssize_t. */
static int parse_shape(PyObject *args, Shape *sh, PyObject **a, PyObject **b, PyObject **c, Py_ssize_t *in,
                       Py_ssize_t *out) {
    if (!PyArg_ParseTuple(args, "OOOLiiiiii", a, b, c, &sh->P, &sh->H, &sh->W, &sh->C, &sh->s, &sh->OH, &sh->OW))
        return -1;
    if (sh->P < 0 || sh->H < 1 || sh->W < 1 || sh->C < 1 || sh->s < 1 || sh->OH != (sh->H - 1) / sh->s + 1 ||
        sh->OW != (sh->W - 1) / sh->s + 1) {
        PyErr_SetString(PyExc_ValueError, "maxpool: expected OH = (H - 1) // s + 1 and OW likewise, all sizes > 0");
        return -1;
    }
    if (!product(in, 5, (Py_ssize_t[]){sh->P, sh->H, sh->W, sh->C, 4}) ||
        !product(out, 5, (Py_ssize_t[]){sh->P, sh->OH, sh->OW, sh->C, 4}))
        return -1;
    *in /= 4;
    *out /= 4;
    return 0;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    (void)self;
    Shape sh;
    PyObject *xo, *yo, *to, *result = NULL;
    Py_ssize_t in, out;
    if (parse_shape(args, &sh, &xo, &yo, &to, &in, &out) < 0) return NULL;
    Py_buffer x = {0}, y = {0}, t = {0};
    if (get_buffer(xo, &x, in * 2, 0, "x") < 0 || get_buffer(yo, &y, out * 4, 1, "y") < 0 ||
        (to != Py_None && get_buffer(to, &t, out, 1, "taps") < 0))
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    (has_avx512() ? forward_avx512 : forward_base)(&sh, x.buf, y.buf, t.buf);
    Py_END_ALLOW_THREADS;
    result = Py_NewRef(Py_None);
done:
    if (x.obj) PyBuffer_Release(&x);
    if (y.obj) PyBuffer_Release(&y);
    if (t.obj) PyBuffer_Release(&t);
    return result;
}

static PyObject *py_backward(PyObject *self, PyObject *args) {
    (void)self;
    Shape sh;
    PyObject *gyo, *to, *gxo, *result = NULL;
    Py_ssize_t in, out;
    if (parse_shape(args, &sh, &gyo, &to, &gxo, &in, &out) < 0) return NULL;
    Py_buffer gy = {0}, t = {0}, gx = {0};
    if (get_buffer(gyo, &gy, out * 4, 0, "grad_y") < 0 || get_buffer(to, &t, out, 0, "taps") < 0 ||
        get_buffer(gxo, &gx, in * 2, 1, "grad_x") < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    (has_avx512() ? backward_avx512 : backward_base)(&sh, gy.buf, t.buf, gx.buf);
    Py_END_ALLOW_THREADS;
    result = Py_NewRef(Py_None);
done:
    if (gy.obj) PyBuffer_Release(&gy);
    if (t.obj) PyBuffer_Release(&t);
    if (gx.obj) PyBuffer_Release(&gx);
    return result;
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS,
     "forward(x, y, taps, P, H, W, C, s, OH, OW)\n\n"
     "x [P, H, W, C] bf16 bits -> y [P, OH, OW, C] float32; taps [P, OH, OW, C] uint8 (or None): each maximum's window "
     "position."},
    {"backward", py_backward, METH_VARARGS,
     "backward(grad_y, taps, grad_x, P, H, W, C, s, OH, OW)\n\n"
     "grad_y [P, OH, OW, C] float32 and the forward's taps -> grad_x [P, H, W, C] bf16 bits (every element "
     "written)."},
    {NULL, NULL, 0, NULL},
};

SKEL_MODULE(_maxpool, "The stem's 1x3x3 max pool of bf16 channels-last tensors under CPU autocast, to the bit.",
            methods)
