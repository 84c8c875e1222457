/* Attention of a few query frames over the cached sequence, float32, for the fast path's decode and verify forwards.
 *
 * Why (BENCHMARKS.md, "Session 10"): inside a verify forward over 9 frames with 460 cached slots, torch's CPU
 * flash-attention kernel took about 220 us per layer on the development CPU (2 vCPUs), 90 us for one frame, and a
 * frame's result differed in its last bits between the two (so speculative and plain decoding could part at a near
 * tie). Here each (row, head) pair is one task:
 *   1. scores, 16 keys at a time: per key, the products of its features with the query's in 16-lane pieces summed
 *      into one vector, then the 16 keys' vectors summed lane-wise by a fixed tree (sum16); times the scale, plus
 *      the additive mask (hidden keys: -inf). Keys are read in slot order, a stream the hardware prefetches;
 *   2. per query: the maximum, then exp(score - max) in 16-lane pieces (a polynomial, the same code for every key)
 *      and their sum, lane by lane, keys in order;
 *   3. per query: the values weighted by those exps, keys in order, over the sum.
 * A query's arithmetic depends only on its own visible keys and their slots, never on how many other queries run
 * with it, so a frame's attention is bit-identical in a one-frame decode and in a verify over many frames.
 *
 * Built with skinny.c into one library at first use (mmspec/skinny.py); AVX-512 only.
 */
#include <immintrin.h>
#include "vecmath.h"
#include <math.h>
#include <stdlib.h>

#define HIDDEN (-1e30f) /* mask entries at or below this hide a key (the fast path writes the dtype's minimum) */
#define INLINE static inline __attribute__((always_inline))

/* exp(x) on 16 lanes for x <= 0 (vecmath.h), with exactly 0 below -87 (exp underflows float32; -inf: a hidden key). */
INLINE __m512 exp16_weights(__m512 x) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ), exp16(x));
}

INLINE __mmask16 lanes(long left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

typedef struct {
    const float *q, *k, *v, *mask; /* this task's row and head */
    long qt, ks, vs, mt;           /* strides: query frame, key slot, value slot, mask frame */
    int T, S, D, moff;             /* moff: the slot the mask's first column is (slots before it: all visible) */
    float scale;
    float *scores; /* [T, S] */
} Task;

/* Sixteen vectors -> one: lane i holds the sum of the lanes of vector i (a fixed tree of pairwise sums). */
INLINE __m512 sum16(__m512 *v) {
    const __m512i lo1 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i hi1 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i lo2 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i hi2 = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    const __m512i lo3 = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    const __m512i hi3 = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    const __m512i lo4 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i hi4 = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_permutex2var_ps(v[2 * i], lo1, v[2 * i + 1]),
                             _mm512_permutex2var_ps(v[2 * i], hi1, v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_permutex2var_ps(a[2 * i], lo2, a[2 * i + 1]),
                             _mm512_permutex2var_ps(a[2 * i], hi2, a[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_ps(_mm512_permutex2var_ps(b[2 * i], lo3, b[2 * i + 1]),
                             _mm512_permutex2var_ps(b[2 * i], hi3, b[2 * i + 1]));
    return _mm512_add_ps(_mm512_permutex2var_ps(c[0], lo4, c[1]), _mm512_permutex2var_ps(c[0], hi4, c[1]));
}

/* 1. scores of every query against keys j0 .. j0 + 15 (fewer at the end of S): per key, the products of its
 * features with the query's in 16-lane pieces summed into one vector, then the 16 keys' vectors summed lane-wise
 * (sum16); times the scale, plus the mask; hidden keys get -inf. */
INLINE void score_block(const Task *a, int j0, int pieces, __mmask16 tail) {
    int n = a->S - j0 < 16 ? a->S - j0 : 16;
    __m512 hidden = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(a->scale);
    const __m512i slot = _mm512_add_epi32(_mm512_set1_epi32(j0),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (int t = 0; t < a->T; t++) {
        const float *qt = a->q + t * a->qt;
        __m512 qv[16], dots[16];
        for (int c = 0; c < pieces; c++)
            qv[c] = c == pieces - 1 ? _mm512_maskz_loadu_ps(tail, qt + 16 * c) : _mm512_loadu_ps(qt + 16 * c);
        for (int jj = 0; jj < 16; jj++) {
            if (jj >= n) { dots[jj] = _mm512_setzero_ps(); continue; }
            const float *kj = a->k + (long)(j0 + jj) * a->ks;
            __m512 d = _mm512_mul_ps(qv[0], pieces == 1 ? _mm512_maskz_loadu_ps(tail, kj) : _mm512_loadu_ps(kj));
            for (int c = 1; c < pieces; c++)
                d = _mm512_fmadd_ps(qv[c], c == pieces - 1 ? _mm512_maskz_loadu_ps(tail, kj + 16 * c)
                                                             : _mm512_loadu_ps(kj + 16 * c), d);
            dots[jj] = d;
        }
        __m512 s = _mm512_mul_ps(sum16(dots), scale);
        __mmask16 m = lanes(n), seen;
        if (a->mask) { /* lanes before the mask's first slot add nothing (a loaded 0 would add the same) */
            int lo = a->moff - j0;
            __mmask16 from = m & (lo <= 0 ? (__mmask16)0xFFFF : lo >= 16 ? (__mmask16)0 : (__mmask16)(0xFFFFu << lo));
            __m512 add = _mm512_maskz_loadu_ps(from, a->mask + t * a->mt + (j0 - a->moff));
            s = _mm512_add_ps(s, add);
            seen = _mm512_cmp_ps_mask(add, _mm512_set1_ps(HIDDEN), _CMP_GT_OQ);
        } else { /* a causal tail: query t sees keys up to S - T + t */
            seen = _mm512_cmp_epi32_mask(slot, _mm512_set1_epi32(a->S - a->T + t), _MM_CMPINT_LE);
        }
        _mm512_mask_storeu_ps(a->scores + (long)t * a->S + j0, m, _mm512_mask_blend_ps(seen, hidden, s));
    }
}

/* 3. out rows of queries t0 .. t0 + TB - 1, features 16 c0 .. 16 (c0 + NC) - 1: the values weighted by the exps. */
INLINE void value_block(const Task *a, int t0, int TB, int c0, int NC, __mmask16 tail, int pieces, float *const *dst) {
    __m512 acc[4][4];
    for (int t = 0; t < TB; t++)
        for (int c = 0; c < NC; c++) acc[t][c] = _mm512_setzero_ps();
    for (int j = 0; j < a->S; j++) {
        float w[4];
        int any = 0;
        for (int t = 0; t < TB; t++) { w[t] = a->scores[(long)(t0 + t) * a->S + j]; any |= w[t] != 0.f; }
        if (!any) continue; /* hidden for every query here (a weight of 0 adds nothing) */
        const float *vj = a->v + j * a->vs + 16 * c0;
        for (int c = 0; c < NC; c++) {
            __m512 x = c0 + c == pieces - 1 ? _mm512_maskz_loadu_ps(tail, vj + 16 * c) : _mm512_loadu_ps(vj + 16 * c);
            for (int t = 0; t < TB; t++) acc[t][c] = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), x, acc[t][c]);
        }
    }
    for (int t = 0; t < TB; t++)
        for (int c = 0; c < NC; c++) {
            __mmask16 m = c0 + c == pieces - 1 ? tail : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(dst[t] + 16 * (c0 + c), m, acc[t][c]);
        }
}

#define TB_SWITCH(CALL) switch (tb) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; default: CALL(4); }

/* q [R, Hq, T, D] at element strides (qr, qh, qt); keys and values [R, Hkv, S, D] at strides (kr, kh, ks) and
 * (vr, vh, vs); the head dimension contiguous everywhere; mask an additive [R, T, W] at strides (mr, mt, 1) over the
 * last W <= S slots, every earlier slot visible (entries <= -1e30 hide the key; W = S: a full mask, W = T: a tree's
 * frames over a cache without holes), or NULL: query t sees keys 0 .. S - T + t (a causal tail). Query head h reads
 * key/value head h / (Hq / Hkv). out [R, T, Hq, D], contiguous. A query that sees no key gets zeros. D <= 256. */
void mmspec_attend(const float *q, long qr, long qh, long qt, const float *k, long kr, long kh, long ks,
                   const float *v, long vr, long vh, long vs, const float *mask, long mr, long mt, int W, float *out,
                   int R, int T, int Hq, int Hkv, int S, int D, float scale, int threads) {
    int tasks = R * Hq, group = Hq / Hkv, pieces = (D + 15) / 16;
    __mmask16 tail = (D % 16) ? (__mmask16)((1u << (D % 16)) - 1) : (__mmask16)0xFFFF;
#pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(sizeof(float) * ((size_t)T * (size_t)S + 1));
        float *sums = malloc(sizeof(float) * (size_t)T);
#pragma omp for schedule(static)
        for (int task = 0; task < tasks; task++) {
            int r = task / Hq, h = task % Hq, g = h / group;
            Task a = {q + r * qr + h * qh, k + r * kr + g * kh, v + r * vr + g * vh, mask ? mask + r * mr : NULL,
                      qt, ks, vs, mt, T, S, D, S - W, scale, scores};
            for (int j0 = 0; j0 < S; j0 += 16) score_block(&a, j0, pieces, tail);
            for (int t = 0; t < T; t++) { /* 2. max, exps in place, sums */
                float *st = scores + (long)t * S;
                __m512 top = _mm512_set1_ps(-INFINITY);
                for (int j = 0; j < S; j += 16)
                    top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes(S - j), st + j));
                float most = _mm512_reduce_max_ps(top);
                if (most == -INFINITY) { /* sees no key: weights 0 */
                    for (int j = 0; j < S; j++) st[j] = 0.f;
                    sums[t] = 0.f;
                    continue;
                }
                __m512 total = _mm512_setzero_ps(), shift = _mm512_set1_ps(most);
                for (int j = 0; j < S; j += 16) {
                    __mmask16 m = lanes(S - j);
                    __m512 e = exp16_weights(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, st + j), shift));
                    _mm512_mask_storeu_ps(st + j, m, e);
                    total = _mm512_add_ps(total, e);
                }
                sums[t] = _mm512_reduce_add_ps(total);
            }
            for (int t0 = 0; t0 < T; t0 += 4) { /* 3. weighted values, then over the sums */
                int tb = T - t0 < 4 ? T - t0 : 4;
                float *dst[4];
                for (int t = 0; t < tb; t++) dst[t] = out + (((long)r * T + t0 + t) * Hq + h) * D;
                for (int c0 = 0; c0 < pieces; c0 += 4) {
                    int nc = pieces - c0 < 4 ? pieces - c0 : 4;
#define VALUE(N) switch (nc) { case 1: value_block(&a, t0, N, c0, 1, tail, pieces, dst); break;                    \
                               case 2: value_block(&a, t0, N, c0, 2, tail, pieces, dst); break;                    \
                               case 3: value_block(&a, t0, N, c0, 3, tail, pieces, dst); break;                    \
                               default: value_block(&a, t0, N, c0, 4, tail, pieces, dst); }
                    TB_SWITCH(VALUE)
                }
                for (int t = 0; t < tb; t++) {
                    float inv = sums[t0 + t] > 0.f ? 1.0f / sums[t0 + t] : 0.f;
                    for (int d = 0; d < D; d++) dst[t][d] *= inv;
                }
            }
        }
        free(sums);
        free(scores);
    }
}
