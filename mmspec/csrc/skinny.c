/* Skinny products for the fast path: y[m, :] = W x[m, :] (+ b) for a few rows m, float32.
 *
 * Why (BENCHMARKS.md, "Session 9"): a decode or verify forward multiplies 1..17 rows by every weight, and those
 * products are bound by streaming the weights from memory. oneDNN's kernel reached about 20 GB/s there on the
 * development CPU (2 vCPUs), a plain streaming read about 40-60 GB/s. Here the weight is stored in column panels
 * of 16 outputs, Wp[panel][i][0..15] (one 64-byte vector per input feature), so a row's 16 outputs are 16
 * independent accumulators updated with one broadcast x[m, i] and one fused multiply-add per vector of weights:
 * no horizontal sums, every weight read once per chunk of up to 12 rows, and each output's sum runs over i in
 * the same order whatever the chunk holds, so a row's products are bit-identical however many rows run with it.
 *
 * Built at first use with the system C compiler for the machine it runs on (mmspec/skinny.py); the OpenMP calls
 * resolve to the runtime torch has already loaded, so the kernel shares torch's threads.
 */
#include <stddef.h>

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16_any __attribute__((vector_size(64), aligned(4)));  /* loads that need no alignment */

/* One chunk of MM rows (1..12) over every panel; NB panels (16 outputs each) per inner step (MM x NB
 * accumulators and NB weight vectors stay in the 32 vector registers of AVX-512). */
#define CHUNK(MM, NB)                                                                                              \
static void chunk_##MM(const float *x, const float *Wp, const float *b, float *y, int in, int out, int threads) { \
    int panels = (out + 15) / 16, groups = (panels + NB - 1) / NB;                                                 \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                              \
    for (int g = 0; g < groups; g++) {                                                                             \
        int p0 = g * NB, np = panels - p0 < NB ? panels - p0 : NB;                                                 \
        vec16 acc[MM][NB];                                                                                         \
        for (int m = 0; m < MM; m++)                                                                               \
            for (int j = 0; j < NB; j++) acc[m][j] = (vec16){0};                                                   \
        const vec16_any *w = (const vec16_any *)(Wp + (size_t)p0 * in * 16);                                             \
        if (np == NB) {                                                                                            \
            for (int i = 0; i < in; i++) {                                                                         \
                vec16 wv[NB];                                                                                      \
                for (int j = 0; j < NB; j++) wv[j] = w[(size_t)j * in + i];                                        \
                for (int m = 0; m < MM; m++) {                                                                     \
                    float xs = x[(size_t)m * in + i];                                                              \
                    for (int j = 0; j < NB; j++) acc[m][j] += wv[j] * xs;                                          \
                }                                                                                                  \
            }                                                                                                      \
        } else { /* the last group holds fewer panels: the same sums, one panel at a time */                       \
            for (int j = 0; j < np; j++)                                                                           \
                for (int i = 0; i < in; i++) {                                                                     \
                    vec16 wv = w[(size_t)j * in + i];                                                              \
                    for (int m = 0; m < MM; m++) acc[m][j] += wv * x[(size_t)m * in + i];                          \
                }                                                                                                  \
        }                                                                                                          \
        for (int m = 0; m < MM; m++)                                                                               \
            for (int j = 0; j < np; j++) {                                                                         \
                int o = (p0 + j) * 16, n = out - o < 16 ? out - o : 16;                                            \
                float *dst = y + (size_t)m * out + o;                                                              \
                for (int l = 0; l < n; l++) dst[l] = acc[m][j][l] + (b ? b[o + l] : 0.f);                          \
            }                                                                                                      \
    }                                                                                                              \
}

CHUNK(1, 4) CHUNK(2, 4) CHUNK(3, 4) CHUNK(4, 4) CHUNK(5, 2) CHUNK(6, 2) CHUNK(7, 2) CHUNK(8, 2)
CHUNK(9, 2) CHUNK(10, 2) CHUNK(11, 2) CHUNK(12, 2)

typedef void (*chunk_fn)(const float *, const float *, const float *, float *, int, int, int);
static const chunk_fn chunks[13] = {0, chunk_1, chunk_2, chunk_3, chunk_4, chunk_5, chunk_6, chunk_7, chunk_8,
                                    chunk_9, chunk_10, chunk_11, chunk_12};

/* x [rows, in] and y [rows, out] row-major and contiguous; Wp [ceil(out / 16), in, 16] (zero-padded outputs);
 * b [out] or NULL. Rows run in as few chunks of at most 12 as cover them, of even sizes (each chunk reads the
 * weights once). */
void mmspec_skinny(const float *x, const float *Wp, const float *b, float *y, long rows, int in, int out, int threads) {
    long parts = (rows + 11) / 12;
    while (rows > 0) {
        int m = (int)((rows + parts - 1) / parts);
        chunks[m](x, Wp, b, y, in, out, threads);
        x += (size_t)m * in;
        y += (size_t)m * out;
        rows -= m;
        parts -= 1;
    }
}
