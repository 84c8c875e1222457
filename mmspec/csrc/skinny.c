/* Skinny products for the fast path: y[m, :] = W x[m, :] (+ b) for a few rows m, float32.
 *
 * Why (BENCHMARKS.md, "Session 9"): a decode or verify forward multiplies 1..17 rows by every weight, and those
 * products are bound by streaming the weights from memory. oneDNN's kernel reached about 20 GB/s there on the
 * development CPU (2 vCPUs), a plain streaming read about 40-60 GB/s. Here the weight is stored in column panels
 * of 16 outputs, Wp[panel][i][0..15] (one 64-byte vector per input feature), so a row's 16 outputs are 16
 * independent accumulators updated with one broadcast x[m, i] and one fused multiply-add per vector of weights:
 * no horizontal sums, every weight read from memory once per call (prefetched a group of panels ahead), and each
 * output's sum runs over i in the same order whatever the chunk holds, so a row's products are bit-identical however
 * many rows run with it.
 *
 * The call also does a decoder layer's elementwise work around its products (BENCHMARKS.md, "Session 10": as torch
 * operations it cost about 0.7 ms of a 4.7 ms one-frame forward of the text zoo target): RMSNorm or the SiLU gate
 * on each input row, a residual added to the output, rotary angles on the q and k heads of the output. Each is
 * done row by row in a fixed order, so the bit-identity above holds with them too.
 *
 * Built at first use with the system C compiler for the machine it runs on (mmspec/skinny.py); the OpenMP calls
 * resolve to the runtime torch has already loaded, so the kernel shares torch's threads.
 */
#include <immintrin.h>
#include "vecmath.h"
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16_any __attribute__((vector_size(64), aligned(4)));  /* loads that need no alignment */

/* Outputs o .. o + 15 of a row (fewer at the end of out) from their sums: times the int8 scales (sc, padded to
 * whole panels) where there are any, plus the bias, then plus the residual row (res), into the output row y. */
static inline void finish(__m512 v, int o, int out, const float *sc, const float *b, const float *res, float *y) {
    __mmask16 n = out - o >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (out - o)) - 1);
    if (sc) { /* the barrier: a scaled sum is rounded before the bias or residual is added, never fused into one
               multiply-add (the compiler did so in some chunk sizes only: a row's bits then hung on its chunk) */
        v = _mm512_mul_ps(v, _mm512_loadu_ps(sc + o));
        __asm__("" : "+v"(v));
    }
    if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(n, b + o));
    if (res) v = _mm512_add_ps(_mm512_maskz_loadu_ps(n, res + o), v);
    _mm512_mask_storeu_ps(y + o, n, v);
}

/* The micro-kernel: a chunk of MM rows (1..16) of x [MM, in] times the np <= NB panels at w (16 outputs each, from
 * panel p0 on), NB panels per inner step (MM x NB accumulators and NB weight vectors stay in the 32 vector registers
 * of AVX-512), finished into y [MM, out]. WT: the weights' type, LOAD: 16 of them as a float vector; sc: per-output
 * scales (int8 weights) or NULL. */
#define MICRO(NAME, WT, LOAD, MM, NB)                                                                              \
static void NAME##_##MM##x##NB(const float *x, const WT *w, int np, int p0, const float *sc, const float *b,        \
                               const float *res, float *y, int in, int out, int fetch) {                           \
    vec16 acc[MM][NB];                                                                                             \
    for (int m = 0; m < MM; m++)                                                                                   \
        for (int j = 0; j < NB; j++) acc[m][j] = (vec16){0};                                                       \
    if (np == NB) {                                                                                                \
        for (int i = 0; i < in; i++) {                                                                             \
            vec16 wv[NB];                                                                                          \
            for (int j = 0; j < NB; j++) wv[j] = LOAD(w + ((size_t)j * in + i) * 16);                              \
            if (fetch) /* the next group's line into L2 (past the last: a prefetch never faults) */                \
                for (int j = 0; j < NB; j++)                                                                       \
                    _mm_prefetch((const char *)(w + ((size_t)(j + NB) * in + i) * 16), _MM_HINT_T1);                 \
            for (int m = 0; m < MM; m++) {                                                                         \
                float xs = x[(size_t)m * in + i];                                                                  \
                for (int j = 0; j < NB; j++) acc[m][j] += wv[j] * xs;                                              \
            }                                                                                                      \
        }                                                                                                          \
    } else { /* the last group holds fewer panels: the same sums, one panel at a time */                           \
        for (int j = 0; j < np; j++)                                                                               \
            for (int i = 0; i < in; i++) {                                                                         \
                vec16 wv = LOAD(w + ((size_t)j * in + i) * 16);                                                    \
                for (int m = 0; m < MM; m++) acc[m][j] += wv * x[(size_t)m * in + i];                              \
            }                                                                                                      \
    }                                                                                                              \
    for (int m = 0; m < MM; m++)                                                                                   \
        for (int j = 0; j < np; j++)                                                                               \
            finish((__m512)acc[m][j], (p0 + j) * 16, out, sc, b, res ? res + (size_t)m * out : NULL,                \
                   y + (size_t)m * out);                                                                           \
}

typedef void (*micro_f32)(const float *, const float *, int, int, const float *, const float *, const float *, float *,
                          int, int, int);
typedef void (*micro_i8)(const float *, const signed char *, int, int, const float *, const float *, const float *,
                         float *, int, int, int);

/* One pass over the weights for all the rows: each group of NB panels is read from memory once and every chunk of
 * rows runs over it while it sits in the core's cache (the chunks' sizes in size[0 .. chunks)). Reading the weights
 * once per chunk instead made 13-17 rows cost two streams of the weights (BENCHMARKS.md, "Session 12"). Only the
 * first chunk prefetches the next group: the later chunks' prefetches would find it in L2 already and only take
 * load slots (BENCHMARKS.md, "Session 14"). */
#define PASS(NAME, WT, NB)                                                                                         \
static void NAME##_pass##NB(const float *x, const WT *Wp, const float *sc, const float *b, const float *res, float *y, \
                            int in, int out, int threads, int chunks, const int *size) {                           \
    int panels = (out + 15) / 16, groups = (panels + NB - 1) / NB;                                                 \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                              \
    for (int g = 0; g < groups; g++) {                                                                             \
        int p0 = g * NB, np = panels - p0 < NB ? panels - p0 : NB;                                                 \
        const WT *w = Wp + (size_t)p0 * in * 16;                                                                   \
        const float *xc = x, *rc = res;                                                                            \
        float *yc = y;                                                                                             \
        for (int c = 0; c < chunks; c++) {                                                                         \
            NAME##_micro##NB[size[c]](xc, w, np, p0, sc, b, rc, yc, in, out, c == 0);                              \
            xc += (size_t)size[c] * in;                                                                            \
            yc += (size_t)size[c] * out;                                                                           \
            if (rc) rc += (size_t)size[c] * out;                                                                   \
        }                                                                                                          \
    }                                                                                                              \
}

#define LOAD_F32(p) (*(const vec16_any *)(p))
#define LOAD_I8(p) ((vec16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p)))))
/* Panels per inner step by the largest chunk's rows: four for 1-4 rows, three for 5-9 (27 accumulators at 9; each
 * broadcast row value then feeds three FMAs: 6-10% faster than two panels for 5-9 and 16 rows on an Intel Xeon,
 * BENCHMARKS.md "Session 11"), two for 10-16 (13-16 rows spill a few accumulators and still beat two chunks of
 * three panels by 8-17%, BENCHMARKS.md "Session 12"). A pass's smaller chunks use its width: `run` splits rows
 * into chunks at most one row apart, so a pass of three panels meets 5-9 rows, one of two 9-16 (the tables hold
 * those), and 17-28 rows run as a chunk of 14 and one of the rest on two panels (3-14 rows: 4-9% faster than two
 * even chunks of three panels for 17-28 rows, BENCHMARKS.md "Session 14"). */
#define KERNELS(NAME, WT, LOAD)                                                                                    \
    MICRO(NAME, WT, LOAD, 1, 4) MICRO(NAME, WT, LOAD, 2, 4) MICRO(NAME, WT, LOAD, 3, 4) MICRO(NAME, WT, LOAD, 4, 4)   \
    MICRO(NAME, WT, LOAD, 5, 3) MICRO(NAME, WT, LOAD, 6, 3) MICRO(NAME, WT, LOAD, 7, 3) MICRO(NAME, WT, LOAD, 8, 3)   \
    MICRO(NAME, WT, LOAD, 9, 3) MICRO(NAME, WT, LOAD, 3, 2) MICRO(NAME, WT, LOAD, 4, 2) MICRO(NAME, WT, LOAD, 5, 2)   \
    MICRO(NAME, WT, LOAD, 6, 2) MICRO(NAME, WT, LOAD, 7, 2) MICRO(NAME, WT, LOAD, 8, 2)                            \
    MICRO(NAME, WT, LOAD, 9, 2) MICRO(NAME, WT, LOAD, 10, 2)                                                       \
    MICRO(NAME, WT, LOAD, 11, 2) MICRO(NAME, WT, LOAD, 12, 2) MICRO(NAME, WT, LOAD, 13, 2)                         \
    MICRO(NAME, WT, LOAD, 14, 2) MICRO(NAME, WT, LOAD, 15, 2) MICRO(NAME, WT, LOAD, 16, 2)                          \
    static const micro_##NAME NAME##_micro4[5] = {0, NAME##_1x4, NAME##_2x4, NAME##_3x4, NAME##_4x4};              \
    static const micro_##NAME NAME##_micro3[10] = {0, 0, 0, 0, 0, NAME##_5x3, NAME##_6x3, NAME##_7x3, NAME##_8x3,  \
                                                   NAME##_9x3};                                                    \
    static const micro_##NAME NAME##_micro2[17] = {0, 0, 0, NAME##_3x2, NAME##_4x2, NAME##_5x2, NAME##_6x2,       \
                                                   NAME##_7x2, NAME##_8x2, NAME##_9x2, NAME##_10x2, NAME##_11x2,   \
                                                   NAME##_12x2, NAME##_13x2, NAME##_14x2, NAME##_15x2, NAME##_16x2}; \
    PASS(NAME, WT, 4) PASS(NAME, WT, 3) PASS(NAME, WT, 2)                                                          \
    typedef void (*pass_##NAME)(const float *, const WT *, const float *, const float *, const float *, float *, int, \
                                int, int, int, const int *);                                                       \
    static const pass_##NAME NAME##_passes[5] = {0, 0, NAME##_pass2, NAME##_pass3, NAME##_pass4};

KERNELS(f32, float, LOAD_F32)
KERNELS(i8, signed char, LOAD_I8)

static inline __mmask16 lanes(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* One row's input to a product, prepared in place of the torch operations the fast path would run before it:
 * RMSNorm (norm: its weight; x / sqrt(mean(x^2) + eps) * norm) or the SiLU gate (gated: x is [gate | up], 2 in
 * wide; silu(gate) * up). Sums and lanes run in the same order for every row, whatever rows run with it. */
static void prepare(const float *x, const float *norm, float eps, int gated, float *dst, int in) {
    if (norm) {
        __m512 sq = _mm512_setzero_ps();
        for (int i = 0; i < in; i += 16) {
            __m512 v = _mm512_maskz_loadu_ps(lanes(in - i), x + i);
            sq = _mm512_fmadd_ps(v, v, sq);
        }
        __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)in + eps));
        for (int i = 0; i < in; i += 16) {
            __mmask16 m = lanes(in - i);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale);
            _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, norm + i)));
        }
    } else { /* gated */
        for (int i = 0; i < in; i += 16) {
            __mmask16 m = lanes(in - i);
            __m512 g = _mm512_maskz_loadu_ps(m, x + i), u = _mm512_maskz_loadu_ps(m, x + in + i);
            __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(silu, u));
        }
    }
}

/* The product's rows before it (RMSNorm or the SiLU gate: `prepare`) and after it (rotary angles), around the chunks. */
static void run(const float *x, const float *norm, float eps, int gated, const void *Wp, int int8, const float *sc,
                const float *b, const float *res, const float *cos, const float *sin, int rotated, int head_dim,
                float *y, long rows, int in, int out, int threads) {
    float *y0 = y, *ready = NULL;
    long all = rows;
    if (norm || gated) {
        ready = malloc(sizeof(float) * (size_t)rows * (size_t)in);
        for (long m = 0; m < rows; m++) prepare(x + (size_t)m * in * (gated ? 2 : 1), norm, eps, gated,
                                               ready + (size_t)m * in, in);
        x = ready;
    }
    /* up to 16 rows in one chunk; 17-28 as 14 and the rest; more in as few chunks of at most 12 as cover them, of
     * even sizes; one pass of the weights over them all */
    long parts = rows <= 16 ? 1 : rows <= 28 ? 2 : (rows + 11) / 12;
    int *size = malloc(sizeof(int) * (size_t)parts), largest = 0;
    for (long c = 0, left = rows; c < parts; c++) {
        size[c] = rows > 16 && rows <= 28 ? (c == 0 ? 14 : (int)left) : (int)((left + (parts - c) - 1) / (parts - c));
        left -= size[c];
        if (size[c] > largest) largest = size[c];
    }
    int nb = largest <= 4 ? 4 : largest <= 9 ? 3 : 2; /* panels per step, by the largest chunk (`KERNELS`) */
    if (int8)
        i8_passes[nb](x, (const signed char *)Wp, sc, b, res, y, in, out, threads, (int)parts, size);
    else
        f32_passes[nb](x, (const float *)Wp, NULL, b, res, y, in, out, threads, (int)parts, size);
    free(size);
    free(ready);
    if (cos) /* rotary positions on the first `rotated` heads of each row (q and k): the rotate-half convention */
        for (long m = 0; m < all; m++) {
            const float *c = cos + (size_t)m * head_dim, *s = sin + (size_t)m * head_dim;
            int half = head_dim / 2;
            for (int h = 0; h < rotated; h++) {
                float *v = y0 + (size_t)m * out + (size_t)h * head_dim;
                for (int d = 0; d < half; d++) {
                    float a = v[d], b2 = v[d + half];
                    v[d] = a * c[d] - b2 * s[d];
                    v[d + half] = b2 * c[d + half] + a * s[d + half];
                }
            }
        }
}

/* x [rows, in] (gated: [rows, 2 in]) and y [rows, out] row-major and contiguous; Wp [ceil(out / 16), in, 16]
 * (zero-padded outputs); b [out] or NULL; norm [in] or NULL and gated 0/1 (at most one: the row preparation
 * above, else x as it is); res [rows, out] or NULL (added to y: a residual); cos and sin [rows, head_dim] or NULL:
 * then the first `rotated` heads of head_dim outputs in each row of y turn by those angles (rotary positions).
 * Up to 16 rows run as one chunk, 17-28 as 14 and the rest, more in as few chunks of at most 12 as cover them, of
 * even sizes, in one pass of the weights (`PASS`). */
void mmspec_skinny(const float *x, const float *norm, float eps, int gated, const float *Wp, const float *b,
                   const float *res, const float *cos, const float *sin, int rotated, int head_dim, float *y, long rows,
                   int in, int out, int threads) {
    run(x, norm, eps, gated, Wp, 0, NULL, b, res, cos, sin, rotated, head_dim, y, rows, in, out, threads);
}

/* The same with int8 weights Wp [ceil(out / 16), in, 16] and one scale per output, sc [ceil(out / 16) * 16]:
 * y = (x Wp) * sc + b (a drafter's guesses: mmspec.drafters.int8). */
void mmspec_skinny_int8(const float *x, const float *norm, float eps, int gated, const signed char *Wp,
                        const float *sc, const float *b, const float *res, const float *cos, const float *sin,
                        int rotated, int head_dim, float *y, long rows, int in, int out, int threads) {
    run(x, norm, eps, gated, Wp, 1, sc, b, res, cos, sin, rotated, head_dim, y, rows, in, out, threads);
}

/* RMSNorm of each row of x [rows, in] into y (weight norm [in], epsilon eps), as `prepare` does it before a product:
 * the fast path's final norm. */
void mmspec_rms_norm(const float *x, const float *norm, float eps, float *y, long rows, int in) {
    for (long m = 0; m < rows; m++) prepare(x + (size_t)m * in, norm, eps, 0, y + (size_t)m * in, in);
}
