/* Decoding many frames of a shard file in one call (stores/shard_codec.py: FrameChunks.decode_rows).
 *
 * Each frame is one inner chunk: a blosc 1 frame of lz4 blocks (as numcodecs.blosc.compress writes it with
 * shuffle off) followed by its crc32c. The training loader decodes 48 frames per clip; through numcodecs each
 * costs a Python call with ~2 us of argument checks, twice the decompression itself. This decodes the frames
 * straight into the caller's buffer and stops at the first frame it does not handle: a missing or damaged
 * chunk, or a blosc frame of another kind (shuffled, another codec); the caller decodes that one frame the
 * slow way, which reports the error or reads the other format, and goes on.
 */
#include "../pipeline/native.h"

#include <stdint.h>
#include <string.h>

#define EMPTY UINT64_MAX /* an absent chunk's offset in the sharding index */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

/* crc32c (Castagnoli), as google_crc32c.value. */
static uint32_t crc32c_portable(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(const uint8_t *p, size_t n) {
    uint64_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    uint32_t d = (uint32_t)c;
    for (; n; n--) d = _mm_crc32_u8(d, *p++);
    return ~d;
}
static uint32_t crc32c(const uint8_t *p, size_t n) {
    return __builtin_cpu_supports("sse4.2") ? crc32c_sse42(p, n) : crc32c_portable(p, n);
}
#else
static uint32_t crc32c(const uint8_t *p, size_t n) { return crc32c_portable(p, n); }
#endif

static inline uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* An LZ4 length's extension bytes (each added, while 255) after *ip onto *len; -1 when they run past iend. */
static inline int lz4_length(const uint8_t **ip, const uint8_t *iend, int64_t *len) {
    unsigned b;
    do {
        if (*ip >= iend) return -1;
        *len += b = *(*ip)++;
    } while (b == 255);
    return 0;
}

/* An LZ4 block of n bytes at src into exactly cap bytes at dst; 0 on success, -1 for anything malformed. */
static int lz4_block(const uint8_t *src, int64_t n, uint8_t *dst, int64_t cap) {
    const uint8_t *ip = src, *const iend = src + n;
    uint8_t *op = dst, *const oend = dst + cap;
    for (;;) {
        if (ip >= iend) return -1;
        const unsigned token = *ip++;
        int64_t lit = token >> 4;
        if (lit == 15 && lz4_length(&ip, iend, &lit) < 0) return -1;
        if (lit > iend - ip || lit > oend - op) return -1;
        memcpy(op, ip, (size_t)lit);
        op += lit;
        ip += lit;
        if (ip == iend) return op == oend ? 0 : -1; /* the last sequence has literals only */
        if (iend - ip < 2) return -1;
        int64_t dist = ip[0] | ip[1] << 8, len = token & 15;
        ip += 2;
        if (len == 15 && lz4_length(&ip, iend, &len) < 0) return -1;
        len += 4;
        if (dist == 0 || dist > op - dst || len > oend - op) return -1;
        /* an overlapping match repeats the last dist bytes: copy whole periods, doubling what one copy takes */
        while (len > 0) {
            const int64_t k = len < dist ? len : dist;
            memcpy(op, op - dist, (size_t)k);
            op += k;
            len -= k;
            dist += k;
        }
    }
}

/* A blosc 1 frame of n bytes into exactly cap bytes at dst: 0 on success, -1 when it is not a frame this reads
 * (shuffled, not lz4, inconsistent sizes or blocks). */
static int blosc_frame(const uint8_t *src, int64_t n, uint8_t *dst, int64_t cap) {
    if (n < 16) return -1;
    const int flags = src[2], typesize = src[3];
    const int64_t nbytes = le32(src + 4), blocksize = le32(src + 8), cbytes = le32(src + 12);
    if (nbytes != cap || cbytes != n) return -1;
    if (flags & 0x02) { /* stored uncompressed */
        if (n != 16 + cap) return -1;
        memcpy(dst, src + 16, (size_t)cap);
        return 0;
    }
    if ((flags & 0x0D) || flags >> 5 != 1 || blocksize < 1 || typesize < 1) return -1; /* shuffled or not lz4 */
    const int64_t nblocks = (nbytes + blocksize - 1) / blocksize;
    if (16 + 4 * nblocks > n) return -1;
    for (int64_t b = 0; b < nblocks; b++) {
        const int leftover = b == nblocks - 1 && nbytes % blocksize;
        const int64_t bsize = leftover ? nbytes % blocksize : blocksize;
        const int nsplits = !(flags & 0x10) && !leftover ? typesize : 1; /* as blosc_d */
        const int64_t split = bsize / nsplits;
        if (split * nsplits != bsize) return -1;
        int64_t at = le32(src + 16 + 4 * b);
        uint8_t *out = dst + b * blocksize;
        for (int s = 0; s < nsplits; s++, out += split) {
            if (at + 4 > n) return -1;
            const int64_t size = le32(src + at);
            at += 4;
            if (size > n - at) return -1;
            if (size == split)
                memcpy(out, src + at, (size_t)split);
            else if (lz4_block(src + at, size, out, split) < 0)
                return -1;
            at += size;
        }
    }
    return 0;
}

PyDoc_STRVAR(decode_doc,
             "decode(out, file, index, rows, start, data_end) -> int\n\n"
             "Decode frames rows[start:] of a memory-mapped shard file (its sharding index: uint64 [F, 2] offset,\n"
             "nbytes) into out (C-contiguous [len(rows), frame bytes]): each chunk's crc32c checked, its blosc lz4\n"
             "frame decoded. Returns len(rows) when all are decoded, else the position in rows of the first frame\n"
             "not decoded (missing, outside data_end, failing its checksum, or a blosc frame of another kind).");

static PyObject *py_decode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out_o, *file_o, *index_o, *rows_o;
    Py_ssize_t start, data_end;
    if (!PyArg_ParseTuple(args, "OOOOnn", &out_o, &file_o, &index_o, &rows_o, &start, &data_end)) return NULL;
    Py_buffer out = {0}, file = {0}, index = {0}, rows = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(file_o, &file, PyBUF_SIMPLE) < 0 || PyObject_GetBuffer(index_o, &index, PyBUF_C_CONTIGUOUS) < 0 ||
        PyObject_GetBuffer(rows_o, &rows, PyBUF_C_CONTIGUOUS) < 0 ||
        PyObject_GetBuffer(out_o, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        goto done;
    const Py_ssize_t nframes = index.len / 16, nrows = rows.len / 8;
    if (index.len % 16 || rows.len % 8 || start < 0 || start > nrows || data_end < 0 || data_end > file.len ||
        (nrows && out.len % nrows)) {
        PyErr_SetString(PyExc_ValueError, "decode: inconsistent buffers");
        goto done;
    }
    if (!crc_table[1]) crc_init(); /* under the GIL, before any thread runs the loop */
    const int64_t frame = nrows ? out.len / nrows : 0;
    const uint64_t *ix = index.buf;
    const int64_t *r = rows.buf;
    const uint8_t *map = file.buf;
    Py_ssize_t j = start;
    Py_BEGIN_ALLOW_THREADS
    for (; j < nrows; j++) {
        if (r[j] < 0 || r[j] >= nframes) break;
        const uint64_t off = ix[2 * r[j]], nbytes = ix[2 * r[j] + 1];
        if (off == EMPTY || nbytes < 4 || off > (uint64_t)data_end || nbytes > (uint64_t)data_end - off) break;
        const uint8_t *chunk = map + off;
        if (crc32c(chunk, nbytes - 4) != le32(chunk + nbytes - 4)) break;
        if (blosc_frame(chunk, (int64_t)nbytes - 4, (uint8_t *)out.buf + j * frame, frame) < 0) break;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(j);
done:
    if (out.obj) PyBuffer_Release(&out);
    if (file.obj) PyBuffer_Release(&file);
    if (index.obj) PyBuffer_Release(&index);
    if (rows.obj) PyBuffer_Release(&rows);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

SKEL_MODULE(_frames, "C decoder of a shard file's frames (stores/shard_codec.py).", methods)
