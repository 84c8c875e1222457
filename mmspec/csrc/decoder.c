/* A Llama-family decoder stack's forward over the fast path's static cache in one call (mmspec/fast.py, FastDecoder),
 * float32, for decode and verify forwards (up to 128 rows of frames, up to 32 frames per row).
 *
 * Why (BENCHMARKS.md, "Session 13"): on the text zoo target the products of a one-frame forward took 1.8 ms as back
 * to back kernel calls, and the same forward run layer by layer from Python 3.6-4.0 ms on an Intel Xeon (2 vCPUs):
 * each of a layer's five kernel calls cost 20-30 us of argument checks, tensor allocations and ctypes conversions,
 * and the views and slice copies between them as much again. Here every layer runs back to back in C:
 *   1. q/k/v in one product with the input norm and the rotary angles on the q and k heads (skinny.c);
 *   2. the new keys and values written into the cache at slots length .. length + T - 1;
 *   3. attention over slots 0 .. length + T - 1 (attend.c), with the caller's additive mask or the causal tail;
 *   4. o plus the residual, gate/up after the post-attention norm, down on the SiLU gate plus the residual;
 * then the final RMSNorm. Each step is the very kernel call FastDecoder makes from Python with the same arguments,
 * so the hidden states are bit-identical to that path's (tests/test_fast.py checks it).
 */
#include <stdlib.h>
#include <string.h>

void mmspec_skinny(const float *x, const float *norm, float eps, int gated, const float *Wp, const float *b,
                   const float *res, const float *cos, const float *sin, int rotated, int head_dim, float *y, long rows,
                   int in, int out, int threads);
void mmspec_attend(const float *q, long qr, long qh, long qt, const float *k, long kr, long kh, long ks,
                   const float *v, long vr, long vh, long vs, const float *mask, long mr, long mt, int W, float *out,
                   int R, int T, int Hq, int Hkv, int S, int D, float scale, int threads);
void mmspec_rms_norm(const float *x, const float *norm, float eps, float *y, long rows, int in);

typedef struct { /* one decoder layer: products in skinny.c's panels, their biases or NULL, the two RMSNorms */
    const float *qkv, *qkv_b, *o, *o_b, *gate_up, *gate_up_b, *down, *down_b;
    const float *norm0, *norm1;
    float eps0, eps1, scale;
} DecoderLayer;

/* x [M, H] (M = R T; frame t of row r at m = r T + t): the forward's input embeddings; cos and sin [M, D]: each
 * frame's rotary angles; keys and values: layer l, row r, key head j, slot s at l * cl + r * cr + (j * slots + s) * D
 * (slots per head `slots`, D contiguous); the T new frames' keys and values go to slots length .. length + T - 1 (the
 * caller made room); mask an additive [R or 1, T, W] at strides (mr, mt, 1) over the last W slots, or NULL (frame t
 * sees slots up to length + t); norm [H], eps: the final RMSNorm; out [M, H]. I: the MLP's inner width. */
void mmspec_decoder(const DecoderLayer *layers, int L, const float *x_in, const float *cos, const float *sin,
                    float *keys, float *values, long cl, long cr, int slots, int length, const float *mask, long mr,
                    long mt, int W, const float *norm, float eps, float *out, int R, int T, int H, int heads,
                    int kv_heads, int D, int I, int threads) {
    long M = (long)R * T;
    int width = (heads + 2 * kv_heads) * D, S = length + T;
    float *x = malloc(sizeof(float) * (size_t)M * ((size_t)2 * H + width + (size_t)heads * D + (size_t)2 * I));
    float *x2 = x + (size_t)M * H, *qkv = x2 + (size_t)M * H, *att = qkv + (size_t)M * width;
    float *gu = att + (size_t)M * heads * D;
    memcpy(x, x_in, sizeof(float) * (size_t)M * H);
    for (int l = 0; l < L; l++) {
        const DecoderLayer *ly = layers + l;
        float *kl = keys + (size_t)l * cl, *vl = values + (size_t)l * cl;
        /* 1. q/k/v after the input norm, q and k heads turned by their positions */
        mmspec_skinny(x, ly->norm0, ly->eps0, 0, ly->qkv, ly->qkv_b, NULL, cos, sin, heads + kv_heads, D, qkv, M, H,
                      width, threads);
        /* 2. this forward's keys and values into the cache */
        for (int r = 0; r < R; r++)
            for (int j = 0; j < kv_heads; j++) {
                size_t base = (size_t)r * cr + ((size_t)j * slots + length) * D;
                for (int t = 0; t < T; t++) {
                    const float *src = qkv + ((size_t)r * T + t) * width + (size_t)(heads + j) * D;
                    memcpy(kl + base + (size_t)t * D, src, sizeof(float) * D);
                    memcpy(vl + base + (size_t)t * D, src + (size_t)kv_heads * D, sizeof(float) * D);
                }
            }
        /* 3. attention, 4. o + residual, gate/up after the norm, down on the SiLU gate + residual */
        mmspec_attend(qkv, (long)T * width, D, width, kl, cr, (long)slots * D, D, vl, cr, (long)slots * D, D, mask, mr,
                      mt, W, att, R, T, heads, kv_heads, S, D, ly->scale, threads);
        mmspec_skinny(att, NULL, 0.f, 0, ly->o, ly->o_b, x, NULL, NULL, 0, 0, x2, M, heads * D, H, threads);
        mmspec_skinny(x2, ly->norm1, ly->eps1, 0, ly->gate_up, ly->gate_up_b, NULL, NULL, NULL, 0, 0, gu, M, H, 2 * I,
                      threads);
        mmspec_skinny(gu, NULL, 0.f, 1, ly->down, ly->down_b, x2, NULL, NULL, 0, 0, x, M, I, H, threads);
    }
    mmspec_rms_norm(x, norm, eps, out, M, H);
    free(x);
}
