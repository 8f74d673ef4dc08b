/* m7b's weight-only quantized matrix-vector products for the CPU decode step (int8 per channel, int4 in groups of
   32), and a whole TransformerBlock on them in one call.

   Weights (runtime/quantize.py makes them):
     int8: q (N x K int8, symmetric, round(w / s)), s (N float32: max|w| / 127 of each output row);
     int4: q (N x K/2 bytes: per group of 32, byte j holds element j in its low nibble and j + 16 in its high one,
           each stored + 8, as llama.cpp's Q4_0), s (N x K/32 float16: the group's scale, its largest-magnitude
           element / -8).
   The activation row (bf16) is quantized once per call to int8 in blocks of 32 (llama.cpp's q8_0: d = max|x| / 127,
   q = rint(x / d)), so each product is an integer dot product of 32 weights with 32 activations, turned into float
   and scaled once per block (int8: by the activation block's d, the row's scale at the end; int4: by d_weight *
   d_activation). The integer lanes:
     int8: 8 int32 lanes per block (the sign trick, maddubs + madd or VNNI's dpbusd), lane j the sum of
           elements 4j..4j+3;
     int4: 4 int32 lanes per block, lane j the sum of elements 4j..4j+3 and 16+4j..16+4j+3 (the low and the high
           nibbles of bytes 4j..4j+3), added into the float lanes 0-3 for an even block and 4-7 for an odd one: two
           blocks' 32 bytes of nibbles are one 256-bit load, against the activations laid out to match once per
           call (`pair_activations`), so a pair of blocks costs about what one cost before.

   Every float operation is a separate multiply or add, in a fixed order (lane by lane over the blocks, then the
   lanes summed as `hsum` does: (l0+l4 + l1+l5) + (l2+l6 + l3+l7)), and the file is compiled with
   -ffp-contract=off, so the AVX2 build and the portable one (no AVX2: the same arithmetic in scalar C) give the same
   bits, and runtime/quantize.py's numpy reference gives them too (tests/runtime/test_quantized.py checks bit for
   bit). Threads walk four quarters of their range of rows side by side, as the bf16 kernel does (four streams of
   memory per core).

   The bf16 kernels (RMSNorm, SwiGLU, attention) come from cpu_kernels_bf16.c, included below when AVX2 is there;
   the portable build has no block step (the quantized step then runs the module, its products here). */
#include <math.h>
#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#define M7B_QUANT_AVX2 1
#include "cpu_kernels_bf16.c"
#else
static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#endif

#define QBLOCK 32
#define SCHEME_INT8 8
#define SCHEME_INT4 4

/* 1 when this build has the AVX2 paths and the block step. */
int m7b_quant_has_avx2(void) {
#ifdef M7B_QUANT_AVX2
    return 1;
#else
    return 0;
#endif
}

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            uint32_t m = man;
            do {
                e++;
                m <<= 1;
            } while ((m & 0x400u) == 0);
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (m & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* The activation row x (K bf16, K a multiple of 32) as int8 blocks of 32 (xq) with their scales (xd: K/32). */
void m7b_quantize_row_q8(const uint16_t *x, long K, int8_t *xq, float *xd) {
    for (long b = 0; b < K / QBLOCK; b++) {
        float v[QBLOCK], amax = 0.0f;
        for (int j = 0; j < QBLOCK; j++) {
            v[j] = bf16_to_float(x[b * QBLOCK + j]);
            const float a = fabsf(v[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        xd[b] = d;
        for (int j = 0; j < QBLOCK; j++) {
            float r = rintf(v[j] * id);
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            xq[b * QBLOCK + j] = (int8_t)r;
        }
    }
}

/* Up to four quantized matrices of K columns stacked as one: wq, wk, wv (or w1, w3) in one pass. */
typedef struct {
    const uint8_t *w[4];
    const void *s[4];
    long rows[4];
    int count;
    long K;
    int scheme;
} qstack_t;

static inline void qrow_at(const qstack_t *st, long n, const uint8_t **w, const void **s, long *row) {
    int i = 0;
    while (i < st->count - 1 && n >= st->rows[i]) n -= st->rows[i++];
    *w = st->w[i];
    *s = st->s[i];
    *row = n;
}

static inline float lanes_sum(const float *l) { return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])); }

/* One row's product, portable C: the AVX2 path's lanes and order exactly (the activations as given, not paired). */
static float qrow_dot_scalar(int scheme, const uint8_t *w, const void *s, long row, const int8_t *xq, const float *xd,
                             long K) {
    const long blocks = K / QBLOCK;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (long b = 0; b < blocks; b++) {
        const int8_t *xb = xq + b * QBLOCK;
        if (scheme == SCHEME_INT8) {
            const int8_t *wb = (const int8_t *)w + row * K + b * QBLOCK;
            for (int l = 0; l < 8; l++) {
                int32_t dot = 0;
                for (int j = 0; j < 4; j++) dot += (int32_t)wb[4 * l + j] * (int32_t)xb[4 * l + j];
                acc[l] = acc[l] + (float)dot * xd[b];
            }
            continue;
        }
        const uint8_t *p = w + row * (K / 2) + b * (QBLOCK / 2);
        const float d = half_to_float(((const uint16_t *)s)[row * blocks + b]) * xd[b];
        const int base = 4 * (int)(b % 2);
        for (int l = 0; l < 4; l++) {
            int32_t dot = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                dot += ((int32_t)(p[j] & 0x0f) - 8) * (int32_t)xb[j] + ((int32_t)(p[j] >> 4) - 8) * (int32_t)xb[j + 16];
            acc[base + l] = acc[base + l] + (float)dot * d;
        }
    }
    const float total = lanes_sum(acc);
    return scheme == SCHEME_INT8 ? total * ((const float *)s)[row] : total;
}

#ifdef M7B_QUANT_AVX2
/* acc + u . s in 8 int32 lanes, 256 bits wide: AVX-VNNI's VEX form (Alder Lake, Sapphire Rapids, Zen 5) or
   AVX512-VNNI's EVEX form on 256-bit registers (AVX512VL: Cascade Lake, Ice Lake, Zen 4): the same instruction. */
#if defined(__AVXVNNI__)
#define M7B_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define M7B_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#endif

/* 8 int32 lanes of unsigned u . signed s (lane j: bytes 4j..4j+3): one VNNI instruction where the CPU has it, else
   maddubs + madd (no saturation: |u| * |s| <= 127 * 127 per pair here). */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(M7B_DPBUSD)
    return M7B_DPBUSD(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* lo . x_lo + hi . x_hi in 8 int32 lanes, lo and hi nibbles (0..15): with VNNI two accumulating dpbusd,
   else two maddubs added in 16 bits (each pair sum at most 2 * 15 * 127, so the sum of two fits) and one madd. */
static inline __m256i dot2_u8s8(__m256i lo, __m256i x_lo, __m256i hi, __m256i x_hi) {
#if defined(M7B_DPBUSD)
    return M7B_DPBUSD(M7B_DPBUSD(_mm256_setzero_si256(), lo, x_lo), hi, x_hi);
#else
    const __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
    return _mm256_madd_epi16(sums, _mm256_set1_epi16(1));
#endif
}

static inline __m256 block_dot(__m256i w, __m256i x) {
    return _mm256_cvtepi32_ps(dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)));
}

static inline float lanes_hsum(__m256 a) {
    float l[8];
    _mm256_storeu_ps(l, a);
    return lanes_sum(l);
}

/* Four rows' products (each row: its matrix, scales and row index). */
static void qrows_dot_4(int scheme, const uint8_t *const *w, const void *const *s, const long *row, const int8_t *xq,
                        const float *xd, long K, float *out) {
    const long blocks = K / QBLOCK;
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    if (scheme == SCHEME_INT8) {
        const int8_t *p[4];
        for (int r = 0; r < 4; r++) p[r] = (const int8_t *)w[r] + row[r] * K;
        for (long b = 0; b < blocks; b++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK));
            const __m256 d = _mm256_set1_ps(xd[b]);
            if ((b & 1) == 0)
                for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(p[r] + b * QBLOCK + PREFETCH_BYTES), _MM_HINT_T0);
            for (int r = 0; r < 4; r++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p[r] + b * QBLOCK));
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(block_dot(v, x), d));
            }
        }
        for (int r = 0; r < 4; r++) out[r] = lanes_hsum(acc[r]) * ((const float *)s[r])[row[r]];
        return;
    }
    /* int4, two blocks a step: their 32 bytes of nibbles in one load, the low nibbles against the activations' x_lo
       (elements 0-15 of both blocks) and the high ones against x_hi (16-31), both as they are (0..15, unsigned:
       dpbusd's first operand, no sign trick), less the activations' lane sums times 8 (`bias`, the same for every
       row): the same integers as (q - 8) . x. The scales of 8 blocks are widened at once per row, each pair's two
       broadcast by one permute. A last, unpaired block takes the 128-bit form of the same steps on lanes 0-3. */
    const uint8_t *p[4];
    const uint16_t *sc[4];
    const int32_t *bias = (const int32_t *)(xd + blocks);
    for (int r = 0; r < 4; r++) {
        p[r] = w[r] + row[r] * (K / 2);
        sc[r] = (const uint16_t *)s[r] + row[r] * blocks;
    }
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (long bb = 0; bb < blocks; bb += 8) {
        const long end = bb + 8 < blocks ? bb + 8 : blocks;
        __m256 d[4];
        for (int r = 0; r < 4; r++) {
            if (end - bb == 8) {
                const __m256 ws = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc[r] + bb)));
                d[r] = _mm256_mul_ps(ws, _mm256_loadu_ps(xd + bb));
            } else {
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (long b = bb; b < end; b++) part[b - bb] = half_to_float(sc[r][b]) * xd[b];
                d[r] = _mm256_loadu_ps(part);
            }
        }
        long b = bb;
        for (; b + 2 <= end; b += 2) {
            const __m256i pick = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            const __m256i shift = _mm256_set1_epi32((int)(b - bb));
            const __m256i x_lo = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK));
            const __m256i x_hi = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK + QBLOCK));
            const __m256i offset = _mm256_loadu_si256((const __m256i *)(bias + b * 4));
            if ((b & 3) == 0)
                for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(p[r] + b * (QBLOCK / 2) + PREFETCH_BYTES), _MM_HINT_T0);
            for (int r = 0; r < 4; r++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p[r] + b * (QBLOCK / 2)));
                const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                const __m256i dot = _mm256_sub_epi32(dot2_u8s8(lo, x_lo, hi, x_hi), offset);
                const __m256 scale = _mm256_permutevar8x32_ps(d[r], _mm256_add_epi32(pick, shift));
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
            }
        }
        if (b < end) { /* the last block of an odd count: lanes 0-3 */
            const __m128i x_lo = _mm_loadu_si128((const __m128i *)(xq + b * QBLOCK));
            const __m128i x_hi = _mm_loadu_si128((const __m128i *)(xq + b * QBLOCK + QBLOCK / 2));
            const __m128i offset = _mm_loadu_si128((const __m128i *)(bias + b * 4));
            const __m128i low4 = _mm_set1_epi8(0x0f);
            for (int r = 0; r < 4; r++) {
                const __m128i v = _mm_loadu_si128((const __m128i *)(p[r] + b * (QBLOCK / 2)));
                const __m128i lo = _mm_and_si128(v, low4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
                const __m128i sums = _mm_add_epi16(_mm_maddubs_epi16(lo, x_lo), _mm_maddubs_epi16(hi, x_hi));
                const __m128i dot = _mm_sub_epi32(_mm_madd_epi16(sums, _mm_set1_epi16(1)), offset);
                float dl[8];
                _mm256_storeu_ps(dl, d[r]);
                const __m128 part = _mm_mul_ps(_mm_cvtepi32_ps(dot), _mm_set1_ps(dl[b - bb]));
                const __m128 lanes = _mm_add_ps(_mm256_castps256_ps128(acc[r]), part);
                acc[r] = _mm256_insertf128_ps(acc[r], lanes, 0);
            }
        }
    }
    for (int r = 0; r < 4; r++) out[r] = lanes_hsum(acc[r]);
}
#endif

/* y (the stack's rows, bf16) = the stacked matrices . x, from x already quantized (xq, xd). */
static void qstack_matvec_quantized(const qstack_t *st, const int8_t *xq, const float *xd, uint16_t *y, int threads) {
    long N = 0;
    for (int i = 0; i < st->count; i++) N += st->rows[i];
#pragma omp parallel num_threads(threads)
    {
        const long t = omp_get_thread_num(), nt = omp_get_num_threads();
        const long begin = N * t / nt, end = N * (t + 1) / nt, quarter = (end - begin) / 4;
        long m = begin;
#ifdef M7B_QUANT_AVX2
        for (long i = 0; i < quarter; i++) {
            const uint8_t *w[4];
            const void *s[4];
            long row[4], n[4];
            for (int j = 0; j < 4; j++) {
                n[j] = begin + j * quarter + i;
                qrow_at(st, n[j], &w[j], &s[j], &row[j]);
            }
            float r[4];
            qrows_dot_4(st->scheme, w, s, row, xq, xd, st->K, r);
            for (int j = 0; j < 4; j++) y[n[j]] = float_to_bf16(r[j]);
        }
        /* the last rows (fewer than four) one at a time through the same code, the row given four times */
        for (m = begin + 4 * quarter; m < end; m++) {
            const uint8_t *w[4];
            const void *s[4];
            long row[4];
            qrow_at(st, m, &w[0], &s[0], &row[0]);
            for (int j = 1; j < 4; j++) w[j] = w[0], s[j] = s[0], row[j] = row[0];
            float r[4];
            qrows_dot_4(st->scheme, w, s, row, xq, xd, st->K, r);
            y[m] = float_to_bf16(r[0]);
        }
#else
        for (; m < end; m++) {
            const uint8_t *w;
            const void *s;
            long row;
            qrow_at(st, m, &w, &s, &row);
            y[m] = float_to_bf16(qrow_dot_scalar(st->scheme, w, s, row, xq, xd, st->K));
        }
#endif
    }
}

/* int4's activations, in place: each pair of blocks (A, B) laid out as x_lo = A[0:16] B[0:16], then x_hi =
   A[16:32] B[16:32] (a last unpaired block as it is: its x_lo, then its x_hi); and `bias` (K/8 int32 after the K/32
   scales in xd): for block b, 8 x the sums of elements 4j..4j+3 and 16+4j..16+4j+3, j = 0..3 (the lane sums the
   nibbles' +8 adds). */
static void pair_activations(int8_t *xq, long K, int32_t *bias) {
    const long blocks = K / QBLOCK;
    for (long b = 0; b < blocks; b++)
        for (int j = 0; j < 4; j++) {
            int32_t sum = 0;
            for (int i = 4 * j; i < 4 * j + 4; i++) sum += (int32_t)xq[b * QBLOCK + i] + (int32_t)xq[b * QBLOCK + 16 + i];
            bias[4 * b + j] = 8 * sum;
        }
    for (long b = 0; b + 2 <= blocks; b += 2) {
        int8_t pair[2 * QBLOCK];
        memcpy(pair, xq + b * QBLOCK, sizeof pair);
        for (int i = 0; i < 16; i++) {
            xq[b * QBLOCK + i] = pair[i];
            xq[b * QBLOCK + 16 + i] = pair[QBLOCK + i];
            xq[b * QBLOCK + 32 + i] = pair[16 + i];
            xq[b * QBLOCK + 48 + i] = pair[QBLOCK + 16 + i];
        }
    }
}

static void qstack_matvec(const qstack_t *st, const uint16_t *x, uint16_t *y, int8_t *xq, float *xd, int threads) {
    m7b_quantize_row_q8(x, st->K, xq, xd);
#ifdef M7B_QUANT_AVX2
    if (st->scheme == SCHEME_INT4) pair_activations(xq, st->K, (int32_t *)(xd + st->K / QBLOCK));
#endif
    qstack_matvec_quantized(st, xq, xd, y, threads);
}

/* y = [W0; W1; ...] . x for `count` (1-4) quantized matrices of K columns (K a multiple of 32) of one scheme
   (8: int8 per channel, 4: int4 in groups of 32). xq: K bytes, xd: K/32 + K/4 floats of scratch. */
void m7b_matvec_quant(int scheme, const uint8_t *const *ws, const void *const *scales, const long *rows, int count,
                      const uint16_t *x, long K, uint16_t *y, int8_t *xq, float *xd, int threads) {
    qstack_t st = {{0}, {0}, {0}, count, K, scheme};
    for (int i = 0; i < count; i++) {
        st.w[i] = ws[i];
        st.s[i] = scales[i];
        st.rows[i] = rows[i];
    }
    qstack_matvec(&st, x, y, xq, xd, threads);
}

#ifdef M7B_QUANT_AVX2
/* m7b_block_step_bf16 with quantized products: ws/ss hold wq, wk, wv, wo, w1, w3, w2 and their scales. `work` and
   `scratch` as m7b_block_step_bf16's; xq: max(dim, hidden, n_heads * head_dim) bytes, xd: that / 32 + that / 4 floats. */
void m7b_block_step_quant(int scheme, uint16_t *x, const uint16_t *attention_norm, const uint16_t *ffn_norm,
                          float eps, const uint8_t *const *ws, const void *const *ss, long dim, long hidden,
                          long n_heads, long n_kv, long head_dim, const float *freqs, uint16_t *k_cache,
                          uint16_t *v_cache, long slot, const uint8_t *mask, long capacity, uint16_t *work,
                          float *scratch, int8_t *xq, float *xd, int threads) {
    const long q_size = n_heads * head_dim, qkv_size = (n_heads + 2 * n_kv) * head_dim;
    uint16_t *normed = work, *qkv = normed + dim, *heads = qkv + qkv_size, *proj = heads + q_size;
    uint16_t *gate_up = proj + dim, *mixed = gate_up + 2 * hidden;
    m7b_rms_norm_bf16(x, attention_norm, dim, eps, normed);
    const qstack_t qkv_stack = {{ws[0], ws[1], ws[2]}, {ss[0], ss[1], ss[2]}, {q_size, n_kv * head_dim, n_kv * head_dim},
                                3, dim, scheme};
    qstack_matvec(&qkv_stack, normed, qkv, xq, xd, threads);
    m7b_attention_step_bf16(qkv, freqs, k_cache, v_cache, slot, mask, n_heads, n_kv, capacity, head_dim,
                            (float)(1.0 / sqrt((double)head_dim)), heads, scratch, threads);
    const qstack_t wo_stack = {{ws[3]}, {ss[3]}, {dim}, 1, q_size, scheme};
    qstack_matvec(&wo_stack, heads, proj, xq, xd, threads);
    for (long d = 0; d < dim; d++) x[d] = float_to_bf16(bf16_to_float(x[d]) + bf16_to_float(proj[d]));
    m7b_rms_norm_bf16(x, ffn_norm, dim, eps, normed);
    const qstack_t up_stack = {{ws[4], ws[5]}, {ss[4], ss[5]}, {hidden, hidden}, 2, dim, scheme};
    qstack_matvec(&up_stack, normed, gate_up, xq, xd, threads);
    m7b_swiglu_bf16(gate_up, gate_up + hidden, hidden, mixed);
    const qstack_t down_stack = {{ws[6]}, {ss[6]}, {dim}, 1, hidden, scheme};
    qstack_matvec(&down_stack, mixed, proj, xq, xd, threads);
    for (long d = 0; d < dim; d++) x[d] = float_to_bf16(bf16_to_float(x[d]) + bf16_to_float(proj[d]));
}
#endif
