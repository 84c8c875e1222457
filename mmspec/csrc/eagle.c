/* One step of an EAGLE drafting layer in one call (mmspec/drafters/int8.py, Int8EagleLayer.step), float32
 * activations on int8 weights.
 *
 * Why (BENCHMARKS.md, "Session 11"): a drafted frame of the speech zoo heads ran its layer as six kernel calls
 * (skinny.c, attend.c) with some 25 torch operations and Python lines between them; inside the decode loop, where
 * every other call has just streamed megabytes through the caches, each of those small operations cost 5-40 us and
 * together about as much as the kernels. Here the same calls run back to back in C:
 *   1. the pair's input rows [feature | embedding] (or [embedding | feature]); the embedding is the sum of the
 *      frame's K codebook rows of the target's table, or given;
 *   2. fc (int8 product), then q/k/v in one product with the input norm and rotary angles read from a table by
 *      position;
 *   3. the new keys and values appended after the cached ones, in a caller's buffer of S + T slots;
 *   4. attention (attend.c), o with the residual, gate/up with the post-attention norm, down with the SiLU gate and
 *      the residual.
 * The arithmetic of every part is that of the separate calls (the same kernels), so the layer's output does not
 * depend on whether it ran here or as separate calls. A greedy chain (mmspec_eagle_chain) runs a drafter's whole
 * propose in one call: per round the int8 head read, the argmax of each codebook, and the step on that pair.
 */
#include <immintrin.h>
#include "vecmath.h"
#include <stdlib.h>
#include <string.h>

void mmspec_skinny_int8(const float *x, const float *norm, float eps, int gated, const signed char *Wp,
                        const float *sc, const float *b, const float *res, const float *cos, const float *sin,
                        int rotated, int head_dim, float *y, long rows, int in, int out, int threads);
void mmspec_attend(const float *q, long qr, long qh, long qt, const float *k, long kr, long kh, long ks,
                   const float *v, long vr, long vh, long vs, const float *mask, long mr, long mt, int W, float *out,
                   int R, int T, int Hq, int Hkv, int S, int D, float scale, int threads);

typedef struct { /* one int8 product: panels [ceil(out / 16), in, 16], scales [ceil(out / 16) * 16], bias or NULL */
    const signed char *w;
    const float *sc, *b;
} Product;

typedef struct { /* the layer's weights and sizes, filled once by the caller */
    Product fc, qkv, o, gate_up, down;
    const float *norm0, *norm1; /* RMSNorm weights before attention and before the MLP, or NULL (none) */
    float eps0, eps1, scale;
    int H, E, heads, D, I, embed_first;
} Layer;

/* The step on buffers that already hold S pairs per (row, head) and have room for `cap` (keys and values [B, heads,
 * cap, D]): the T new pairs' keys and values are written at slots S .. S + T - 1 and attention reads slots 0 .. S + T - 1.
 * Inputs as for mmspec_eagle_step; positions already checked against the tables. */
static void step(const Layer *L, const float *feats, const float *table, const long *frames, const long *offsets, int K,
                 const float *emb, const long *positions, int pb, const float *cos_table, const float *sin_table,
                 float *kbuf, float *vbuf, int cap, const float *mask, float *out, int B, int T, int S, int threads) {
    int H = L->H, E = L->E, h = L->heads, D = L->D, I = L->I, M = B * T, S2 = S + T, hd = h * D;
    size_t in = (size_t)H + E;
    float *xin = malloc(sizeof(float) * ((size_t)M * in + (size_t)M * H * 2 + (size_t)M * 3 * hd + (size_t)M * hd +
                                         (size_t)M * 2 * I + (size_t)M * 2 * D));
    float *x = xin + (size_t)M * in, *x2 = x + (size_t)M * H, *qkv = x2 + (size_t)M * H, *att = qkv + (size_t)M * 3 * hd;
    float *gu = att + (size_t)M * hd, *cs = gu + (size_t)M * 2 * I, *sn = cs + (size_t)M * D;
    for (int m = 0; m < M; m++) { /* 1. input rows and rotary angles */
        float *row = xin + (size_t)m * in, *f = row + (L->embed_first ? E : 0), *e = row + (L->embed_first ? 0 : H);
        memcpy(f, feats + (size_t)m * H, sizeof(float) * H);
        if (table) {
            memset(e, 0, sizeof(float) * E);
            for (int k = 0; k < K; k++) {
                long id = frames[(size_t)m * K + k];
                const float *t = table + (size_t)((id < 0 ? 0 : id) + offsets[k]) * E;
                for (int j = 0; j < E; j++) e[j] += t[j];
            }
        } else {
            memcpy(e, emb + (size_t)m * E, sizeof(float) * E);
        }
        long p = positions[(pb ? m : m % T)];
        memcpy(cs + (size_t)m * D, cos_table + p * D, sizeof(float) * D);
        memcpy(sn + (size_t)m * D, sin_table + p * D, sizeof(float) * D);
    }
    /* 2. fc, q/k/v */
    mmspec_skinny_int8(xin, NULL, 0.f, 0, L->fc.w, L->fc.sc, L->fc.b, NULL, NULL, NULL, 0, 0, x, M, (int)in, H, threads);
    mmspec_skinny_int8(x, L->norm0, L->eps0, 0, L->qkv.w, L->qkv.sc, L->qkv.b, NULL, cs, sn, 2 * h, D, qkv, M, H,
                       3 * hd, threads);
    /* 3. the new pairs' keys and values after the S held ones */
    for (int b = 0; b < B; b++)
        for (int j = 0; j < h; j++) {
            size_t base = ((size_t)b * h + j) * cap * D;
            for (int t = 0; t < T; t++) {
                const float *src = qkv + ((size_t)b * T + t) * 3 * hd;
                memcpy(kbuf + base + (size_t)(S + t) * D, src + hd + (size_t)j * D, sizeof(float) * D);
                memcpy(vbuf + base + (size_t)(S + t) * D, src + 2 * hd + (size_t)j * D, sizeof(float) * D);
            }
        }
    /* 4. attention, o + residual, gate/up after the norm, down with the SiLU gate + residual */
    mmspec_attend(qkv, (long)T * 3 * hd, D, 3 * hd, kbuf, (long)h * cap * D, (long)cap * D, D, vbuf, (long)h * cap * D,
                  (long)cap * D, D, mask, (long)T * S2, S2, S2, att, B, T, h, h, S2, D, L->scale, threads);
    mmspec_skinny_int8(att, NULL, 0.f, 0, L->o.w, L->o.sc, L->o.b, x, NULL, NULL, 0, 0, x2, M, hd, H, threads);
    mmspec_skinny_int8(x2, L->norm1, L->eps1, 0, L->gate_up.w, L->gate_up.sc, L->gate_up.b, NULL, NULL, NULL, 0, 0, gu,
                       M, H, 2 * I, threads);
    mmspec_skinny_int8(gu, NULL, 0.f, 1, L->down.w, L->down.sc, L->down.b, x2, NULL, NULL, 0, 0, out, M, I, H, threads);
    free(xin);
}

/* keys and values [B, heads, S, D] (contiguous) copied into buffers of `cap` slots per (row, head). */
static void hold(const float *keys, const float *values, float *kbuf, float *vbuf, int B, int h, int S, int cap, int D) {
    for (int r = 0; r < B * h; r++) {
        memcpy(kbuf + (size_t)r * cap * D, keys + (size_t)r * S * D, sizeof(float) * S * D);
        memcpy(vbuf + (size_t)r * cap * D, values + (size_t)r * S * D, sizeof(float) * S * D);
    }
}

/* feats [M, H] (M = B T, pair t of row b at m = b T + t); the embedding: table [*, E] rows frames[m, k] + offsets[k]
 * summed over k < K (frames int64 [M, K], negative ids read as 0), or emb [M, E] when table is NULL; positions int64
 * [B or 1, T] (pb: 1 when per row) index cos/sin tables [P, D]; keys and values [B, heads, S, D] -> grown [B, heads,
 * S + T, D] (caller's buffers); mask an additive [B, T, S + T] or NULL (pair t sees slots up to S + t); out [M, H].
 * Returns 0, -1 (nothing written) when a position is outside the rotary tables, or -2 when a frame's row is outside
 * the embedding table (table_rows rows). */
int mmspec_eagle_step(const Layer *L, const float *feats, const float *table, long table_rows, const long *frames,
                      const long *offsets, int K, const float *emb, const long *positions, int pb,
                      const float *cos_table, const float *sin_table, long P, const float *keys, const float *values,
                      float *grown_keys, float *grown_values, const float *mask, float *out, int B, int T, int S,
                      int threads) {
    for (int m = 0; m < B * T; m++) {
        long p = positions[(pb ? m : m % T)];
        if (p < 0 || p >= P) return -1;
        for (int k = 0; table && k < K; k++) {
            long id = frames[(size_t)m * K + k], row = (id < 0 ? 0 : id) + offsets[k];
            if (row >= table_rows) return -2;
        }
    }
    hold(keys, values, grown_keys, grown_values, B, L->heads, S, S + T, L->D);
    step(L, feats, table, frames, offsets, K, emb, positions, pb, cos_table, sin_table, grown_keys, grown_values, S + T,
         mask, out, B, T, S, threads);
    return 0;
}

/* The largest probability of softmax(l[0 .. n - 1]) given its maximum: 1 / sum exp(l - max). */
static float top_probability(const float *l, int n, float top) {
    __m512 total = _mm512_setzero_ps(), shift = _mm512_set1_ps(top);
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, l + j), shift));
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, e));
    }
    return 1.0f / _mm512_reduce_add_ps(total);
}

/* A greedy chain of up to n frames after each row's newest feature feat [B, H], with the cached pairs keys and values
 * [B, heads, S, D] (valid [B, S] bytes: 0 where a slot holds no pair of that row, or NULL: all hold one): round i reads
 * the frame from the feature through the int8 head (Vh outputs: K codebooks of V ids each; or one of Vh draft-vocabulary
 * ids, rows [Vh] mapping them to the target's ids, K = 1), the argmax of each codebook (the first on a tie), then
 * (before the last round) steps the layer on (feature, frame) at position first[b] + i. From the second round on, the
 * chain ends before a frame whose top probability (the least over its codebooks) is below `confidence` in every row.
 * The embedding table and offsets as for mmspec_eagle_step. frames_out int64 [B, n, K]. Returns the frames drafted
 * (1 .. n), -1 (nothing run) when a position is outside the rotary tables, or -2 when a codebook's ids would fall
 * outside the embedding table. */
int mmspec_eagle_chain(const Layer *L, const Product *head, int Vh, const long *rows, int K, int V, const float *feat,
                       const float *table, long table_rows, const long *offsets, const long *first,
                       const float *cos_table, const float *sin_table, long P, const float *keys, const float *values,
                       const unsigned char *valid, int B, int S, int n, float confidence, long *frames_out,
                       int threads) {
    int H = L->H, h = L->heads, D = L->D, cap = S + n - 1, drafted = n;
    for (int b = 0; b < B; b++)
        if (first[b] < 0 || first[b] + n - 1 > P) return -1;
    for (int k = 0; k < K; k++) /* every id the head can give (below V, or a draft vocabulary's, checked by its caller) */
        if (offsets[k] < 0 || offsets[k] + V > table_rows) return -2;
    float *kbuf = malloc(sizeof(float) * ((size_t)B * h * cap * D * 2 + (size_t)B * H * 2 + (size_t)B * Vh +
                                          (size_t)B * cap));
    float *vbuf = kbuf + (size_t)B * h * cap * D, *f = vbuf + (size_t)B * h * cap * D, *next = f + (size_t)B * H;
    float *logits = next + (size_t)B * H, *mask = logits + (size_t)B * Vh;
    long *ids = malloc(sizeof(long) * (size_t)B * K), *pos = malloc(sizeof(long) * (size_t)B);
    hold(keys, values, kbuf, vbuf, B, h, S, cap, D);
    memcpy(f, feat, sizeof(float) * (size_t)B * H);
    for (int i = 0; i < n; i++) {
        mmspec_skinny_int8(f, NULL, 0.f, 0, head->w, head->sc, head->b, NULL, NULL, NULL, 0, 0, logits, B, H, Vh,
                           threads);
        int unsure = 0; /* rows whose frame is below the confidence */
        for (int b = 0; b < B; b++) {
            float least = 1.0f;
            for (int k = 0; k < K; k++) {
                int width = rows ? Vh : V, best = 0;
                const float *l = logits + (size_t)b * Vh + (size_t)k * width;
                for (int j = 1; j < width; j++)
                    if (l[j] > l[best]) best = j;
                ids[(size_t)b * K + k] = rows ? rows[best] : best;
                if (i && confidence > 0.f) {
                    float p = top_probability(l, width, l[best]);
                    least = p < least ? p : least;
                }
            }
            unsure += i && confidence > 0.f && least < confidence;
        }
        if (unsure == B) { /* every row is unsure of this frame: the chain ends before it */
            drafted = i;
            break;
        }
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++) frames_out[((size_t)b * n + i) * K + k] = ids[(size_t)b * K + k];
        if (i + 1 == n) break;
        const float *m = NULL;
        if (valid) { /* one query per row: its own held slots and every drafted pair */
            int S2 = S + i + 1;
            for (int b = 0; b < B; b++)
                for (int j = 0; j < S2; j++)
                    mask[(size_t)b * S2 + j] = (j < S && !valid[(size_t)b * S + j]) ? -3.4028234663852886e38f : 0.f;
            m = mask;
        }
        for (int b = 0; b < B; b++) pos[b] = first[b] + i;
        step(L, f, table, ids, offsets, K, NULL, pos, 1, cos_table, sin_table, kbuf, vbuf, cap, m, next, B, 1, S + i,
             threads);
        memcpy(f, next, sizeof(float) * (size_t)B * H);
    }
    free(ids);
    free(pos);
    free(kbuf);
    return drafted;
}
