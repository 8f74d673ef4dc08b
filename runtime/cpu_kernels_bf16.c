/* m7b's bf16 matrix-vector product for the CPU decode step (x86-64, AVX2 + FMA, OpenMP).

   y[n] = bf16(sum_k W[n][k] * x[k]) for a row-major bf16 matrix W (N x K) and a bf16 vector x (K), accumulated in
   float32 and rounded to nearest even, as torch's bf16 linear does. A decode step is one such product per weight:
   every weight byte is read once, so the step is bound by memory bandwidth if the kernel keeps up with it. CPUs
   without native bf16 instructions make torch's bf16 GEMV convert element by element (7-18 GB/s on the AVX2 machine
   of bench/README.md); here 16 weights are widened with two integer instructions (a bf16 is the top half of a
   float32: even elements by a 16-bit left shift of each 32-bit lane, odd elements by masking the low half), so the
   loop streams at the bandwidth of the memory.

   The vector is widened once per call into `scratch` (K floats), de-interleaved per block of 16: the 8 even
   elements, then the 8 odd ones, matching the two halves the shift and the mask produce. Each thread takes a
   contiguous range of rows and walks four quarters of it side by side (rows i, i+Q, i+2Q, i+3Q): four rows share
   each vector load, and the thread reads four independent streams of memory, which one core needs to keep enough
   reads in flight (with four adjacent rows, a matrix of short rows is a single stream, read at a third of the
   bandwidth). Any N and K work: a tail of K mod 16 elements and of N mod 4 rows takes a scalar path.

   Built by m7b/runtime/cpu_kernels_build.py with the system C compiler (-O3 -mavx2 -mfma -fopenmp) and loaded with ctypes
   after torch, so it shares torch's OpenMP runtime and thread pool. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float hsum(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_hadd_ps(h, h);
    h = _mm_hadd_ps(h, h);
    return _mm_cvtss_f32(h);
}

/* How far ahead (bytes) each row's stream is prefetched: the hardware prefetcher alone leaves a few % of the
   bandwidth unused with four streams per core (bench/README.md). */
#define PREFETCH_BYTES 1024

/* sum_k row_r[k] * x[k] for R rows (R = 4 or 1) at `rows`: blocks of 16 from `xs`, the tail from `x`. */
#define ROWS_DOT(R)                                                                                              \
    static inline void rows_dot_##R(const uint16_t *const *rows, const float *xs, const uint16_t *x, long K,     \
                                    float *out) {                                                                \
        const __m256i mask = _mm256_set1_epi32((int)0xffff0000u);                                               \
        __m256 even[R], odd[R];                                                                                  \
        for (int r = 0; r < R; r++) even[r] = odd[r] = _mm256_setzero_ps();                                     \
        const long blocks = K - K % 16;                                                                          \
        for (long k = 0; k < blocks; k += 16) {                                                                  \
            const __m256 xe = _mm256_loadu_ps(xs + k), xo = _mm256_loadu_ps(xs + k + 8);                         \
            if ((k & 31) == 0)                                                                                   \
                for (int r = 0; r < R; r++) _mm_prefetch((const char *)(rows[r] + k) + PREFETCH_BYTES, _MM_HINT_T0); \
            for (int r = 0; r < R; r++) {                                                                        \
                const __m256i v = _mm256_loadu_si256((const __m256i *)(rows[r] + k));                            \
                even[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), xe, even[r]);           \
                odd[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, mask)), xo, odd[r]);            \
            }                                                                                                    \
        }                                                                                                        \
        for (int r = 0; r < R; r++) {                                                                            \
            float acc = hsum(_mm256_add_ps(even[r], odd[r]));                                                    \
            for (long k = blocks; k < K; k++) acc += bf16_to_float(rows[r][k]) * bf16_to_float(x[k]);           \
            out[r] = acc;                                                                                        \
        }                                                                                                        \
    }
ROWS_DOT(4)
ROWS_DOT(1)

/* x (K bf16) as floats, de-interleaved per block of 16 (8 even, then 8 odd elements); the K mod 16 tail as is. */
static void widen(const uint16_t *x, long K, float *xs) {
    const long blocks = K - K % 16;
    for (long k = 0; k < blocks; k += 16)
        for (int j = 0; j < 8; j++) {
            xs[k + j] = bf16_to_float(x[k + 2 * j]);
            xs[k + 8 + j] = bf16_to_float(x[k + 2 * j + 1]);
        }
    for (long k = blocks; k < K; k++) xs[k] = bf16_to_float(x[k]);
}

/* Up to four matrices of K columns stacked as one (N = their rows together): wq, wk, wv in one call. */
typedef struct {
    const uint16_t *w[4];
    long rows[4];
    int count;
    long K;
} stack_t;

static inline const uint16_t *row_at(const stack_t *s, long n) {
    for (int i = 0; i < s->count - 1; i++) {
        if (n < s->rows[i]) return s->w[i] + n * s->K;
        n -= s->rows[i];
    }
    return s->w[s->count - 1] + n * s->K;
}

static void stack_matvec(const stack_t *s, const uint16_t *x, uint16_t *y, float *scratch, int threads) {
    const long K = s->K;
    long N = 0;
    for (int i = 0; i < s->count; i++) N += s->rows[i];
    widen(x, K, scratch);
#pragma omp parallel num_threads(threads)
    {
        const long t = omp_get_thread_num(), nt = omp_get_num_threads();
        const long begin = N * t / nt, end = N * (t + 1) / nt, quarter = (end - begin) / 4;
        for (long i = 0; i < quarter; i++) {
            const long n[4] = {begin + i, begin + quarter + i, begin + 2 * quarter + i, begin + 3 * quarter + i};
            const uint16_t *rows[4] = {row_at(s, n[0]), row_at(s, n[1]), row_at(s, n[2]), row_at(s, n[3])};
            float r[4];
            rows_dot_4(rows, scratch, x, K, r);
            for (int j = 0; j < 4; j++) y[n[j]] = float_to_bf16(r[j]);
        }
        for (long m = begin + 4 * quarter; m < end; m++) {
            const uint16_t *row = row_at(s, m);
            float r;
            rows_dot_1(&row, scratch, x, K, &r);
            y[m] = float_to_bf16(r);
        }
    }
}

/* y (N) = W (N x K) . x (K); scratch: K floats; threads: the OpenMP threads to use (torch's own count). */
void m7b_matvec_bf16(const uint16_t *w, const uint16_t *x, long N, long K, uint16_t *y, float *scratch, int threads) {
    const stack_t s = {{w}, {N}, 1, K};
    stack_matvec(&s, x, y, scratch, threads);
}

/* y (N0 + ... ) = [W0; W1; ...] . x for `count` (1-4) matrices of K columns, none copied. */
void m7b_matvec_stack_bf16(const uint16_t *const *ws, const long *rows, int count, const uint16_t *x, long K,
                           uint16_t *y, float *scratch, int threads) {
    stack_t s = {{0}, {0}, count, K};
    for (int i = 0; i < count; i++) {
        s.w[i] = ws[i];
        s.rows[i] = rows[i];
    }
    stack_matvec(&s, x, y, scratch, threads);
}

/* y = bf16(bf16(x * rsqrt(mean(x^2) + eps)) * weight), as the model's RMSNorm computes it, for one row of K. */
void m7b_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, long K, float eps, uint16_t *y) {
    float sum = 0.0f;
    for (long k = 0; k < K; k++) {
        const float v = bf16_to_float(x[k]);
        sum += v * v;
    }
    const float scale = 1.0f / sqrtf(sum / (float)K + eps);
    for (long k = 0; k < K; k++)
        y[k] = float_to_bf16(bf16_to_float(float_to_bf16(bf16_to_float(x[k]) * scale)) * bf16_to_float(weight[k]));
}

/* out = bf16(bf16(silu(gate)) * up) over H elements (SwiGLU's product, as torch computes it in bf16). */
void m7b_swiglu_bf16(const uint16_t *gate, const uint16_t *up, long H, uint16_t *out) {
    for (long h = 0; h < H; h++) {
        const float g = bf16_to_float(gate[h]);
        const float s = bf16_to_float(float_to_bf16(g / (1.0f + expf(-g))));
        out[h] = float_to_bf16(s * bf16_to_float(up[h]));
    }
}

#define HEAD_BATCH 4 /* query heads of one group computed together */

/* e^x for 8 floats (Cephes' expf: range reduction by ln 2, a degree-5 polynomial; relative error ~1e-7). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

/* scores[0..n) := exp(scores - max); returns 1 / their sum (0 for n = 0). */
static float softmax_in_place(float *scores, long n) {
    float top = -INFINITY;
    for (long i = 0; i < n; i++) top = scores[i] > top ? scores[i] : top;
    const __m256 shift = _mm256_set1_ps(top);
    __m256 sums = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + i), shift));
        _mm256_storeu_ps(scores + i, p);
        sums = _mm256_add_ps(sums, p);
    }
    float total = hsum(sums);
    for (; i < n; i++) {
        scores[i] = expf(scores[i] - top);
        total += scores[i];
    }
    return total > 0.0f ? 1.0f / total : 0.0f;
}

/* One decode position of grouped-query attention, from the stacked q|k|v row to the heads' outputs:
   rotate q and k by the position's (cos, sin) pairs (`freqs`: head_dim/2 pairs, float), rounding to bf16 as the
   model's rotary embedding does; store k and v in the rolling caches (n_kv x capacity x head_dim) at `slot`; then
   each query head h attends over the slots of its key/value head h / (n_heads / n_kv) that `mask` (capacity bytes,
   1 = visible) allows: softmax of scale * q.k in float, the values' weighted sum rounded to bf16 into `out`
   (torch's CPU flash attention rounds the probabilities to bf16 before the sum; kept in float here, the outputs
   differ from torch's by at most a few tenths of a percent of the largest, and lie closer to float32's)
   (n_heads x head_dim). Threads share the (key/value group, batch of up to 4 query heads) units: each key and
   value row is read once for a batch's heads, only the visible slots are visited, the exponentials are computed 8
   at a time. `scratch`: n_heads * (2 * head_dim + capacity) + capacity + 2 floats. Keys and values are read 16 at
   a time as the products read weights, against queries kept de-interleaved (per block of 16: the 8 even, then the
   8 odd elements). */
void m7b_attention_step_bf16(const uint16_t *qkv, const float *freqs, uint16_t *k_cache, uint16_t *v_cache, long slot,
                             const uint8_t *mask, long n_heads, long n_kv, long capacity, long head_dim, float scale,
                             uint16_t *out, float *scratch, int threads) {
    const long half = head_dim / 2, rep = n_heads / n_kv, blocks = head_dim - head_dim % 16;
    uint16_t *q = (uint16_t *)scratch; /* n_heads * head_dim rotated queries, bf16 */
    float *q_wide = scratch + n_heads * head_dim / 2 + 1;
    float *scores_all = q_wide + n_heads * head_dim;
    for (long h = 0; h < n_heads + n_kv; h++) {
        const uint16_t *src = qkv + h * head_dim;
        uint16_t *dst = h >= n_heads ? k_cache + ((h - n_heads) * capacity + slot) * head_dim : q + h * head_dim;
        for (long j = 0; j < half; j++) {
            const float a = bf16_to_float(src[2 * j]), b = bf16_to_float(src[2 * j + 1]);
            const float c = freqs[2 * j], s = freqs[2 * j + 1];
            dst[2 * j] = float_to_bf16(a * c - b * s);
            dst[2 * j + 1] = float_to_bf16(b * c + a * s);
        }
    }
    const uint16_t *v_new = qkv + (n_heads + n_kv) * head_dim;
    for (long g = 0; g < n_kv; g++)
        memcpy(v_cache + (g * capacity + slot) * head_dim, v_new + g * head_dim, head_dim * sizeof(uint16_t));
    int32_t *visible = (int32_t *)(scores_all + n_heads * capacity); /* the slots the mask allows, in order */
    long n_visible = 0;
    for (long s = 0; s < capacity; s++)
        if (mask[s]) visible[n_visible++] = (int32_t)s;
    const long batches = (rep + HEAD_BATCH - 1) / HEAD_BATCH, units = n_kv * batches;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long unit = 0; unit < units; unit++) {
        /* up to HEAD_BATCH query heads of one key/value group: each key and value row is read once for all of them */
        const long g = unit / batches, first = g * rep + (unit % batches) * HEAD_BATCH;
        const long count = rep - (first - g * rep) < HEAD_BATCH ? rep - (first - g * rep) : HEAD_BATCH;
        long heads[HEAD_BATCH];
        for (int b = 0; b < HEAD_BATCH; b++) heads[b] = first + (b < count ? b : 0); /* a short batch repeats its first */
        const float *qw[HEAD_BATCH];
        float *scores[HEAD_BATCH];
        for (int b = 0; b < HEAD_BATCH; b++) {
            qw[b] = q_wide + heads[b] * head_dim;
            scores[b] = scores_all + heads[b] * capacity;
        }
        for (long b = 0; b < count; b++) widen(q + (first + b) * head_dim, head_dim, q_wide + (first + b) * head_dim);
        const uint16_t *kg = k_cache + g * capacity * head_dim, *vg = v_cache + g * capacity * head_dim;
        const __m256i mask16 = _mm256_set1_epi32((int)0xffff0000u);
        for (long i = 0; i < n_visible; i++) {
            const uint16_t *row = kg + (long)visible[i] * head_dim;
            __m256 dot[HEAD_BATCH];
            for (int b = 0; b < HEAD_BATCH; b++) dot[b] = _mm256_setzero_ps();
            for (long d = 0; d < blocks; d += 16) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(row + d));
                const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(v, mask16));
                for (int b = 0; b < HEAD_BATCH; b++)
                    dot[b] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(qw[b] + d + 8),
                                             _mm256_fmadd_ps(lo, _mm256_loadu_ps(qw[b] + d), dot[b]));
            }
            for (int b = 0; b < HEAD_BATCH; b++) {
                float sum = hsum(dot[b]);
                for (long d = blocks; d < head_dim; d++) sum += qw[b][d] * bf16_to_float(row[d]);
                scores[b][i] = sum * scale;
            }
        }
        float inv[HEAD_BATCH];
        for (int b = 0; b < HEAD_BATCH; b++) /* a repeated head shares its first's row: turned into weights once */
            inv[b] = b < count ? softmax_in_place(scores[b], n_visible) : inv[0];
        uint16_t *o[HEAD_BATCH];
        for (int b = 0; b < HEAD_BATCH; b++) o[b] = out + heads[b] * head_dim;
        for (long d = 0; d < blocks; d += 16) {
            __m256 even[HEAD_BATCH], odd[HEAD_BATCH];
            for (int b = 0; b < HEAD_BATCH; b++) even[b] = odd[b] = _mm256_setzero_ps();
            for (long i = 0; i < n_visible; i++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(vg + (long)visible[i] * head_dim + d));
                const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(v, mask16));
                for (int b = 0; b < HEAD_BATCH; b++) {
                    const __m256 p = _mm256_broadcast_ss(scores[b] + i);
                    even[b] = _mm256_fmadd_ps(lo, p, even[b]);
                    odd[b] = _mm256_fmadd_ps(hi, p, odd[b]);
                }
            }
            for (long b = 0; b < count; b++) {
                float e[8], f[8];
                _mm256_storeu_ps(e, even[b]);
                _mm256_storeu_ps(f, odd[b]);
                for (int j = 0; j < 8; j++) {
                    o[b][d + 2 * j] = float_to_bf16(e[j] * inv[b]);
                    o[b][d + 2 * j + 1] = float_to_bf16(f[j] * inv[b]);
                }
            }
        }
        for (long d = blocks; d < head_dim; d++)
            for (long b = 0; b < count; b++) {
                float acc = 0.0f;
                for (long i = 0; i < n_visible; i++) acc += scores[b][i] * bf16_to_float(vg[(long)visible[i] * head_dim + d]);
                o[b][d] = float_to_bf16(acc * inv[b]);
            }
    }
}

/* The attention half of a block for one decode position, in place on the residual row `x`:
   x += wo . attention(rotary(stack(wq, wk, wv) . rms_norm(x))). `work` as m7b_block_step_bf16's (its first
   dim * 2 + (n_heads + 2 * n_kv) * head_dim + n_heads * head_dim elements); `scratch` as its. */
static void attention_half(uint16_t *x, const uint16_t *attention_norm, float eps, const uint16_t *wq,
                           const uint16_t *wk, const uint16_t *wv, const uint16_t *wo, long dim, long n_heads,
                           long n_kv, long head_dim, const float *freqs, uint16_t *k_cache, uint16_t *v_cache,
                           long slot, const uint8_t *mask, long capacity, uint16_t *work, float *scratch,
                           int threads) {
    const long q_size = n_heads * head_dim, qkv_size = (n_heads + 2 * n_kv) * head_dim;
    uint16_t *normed = work, *qkv = normed + dim, *heads = qkv + qkv_size, *proj = heads + q_size;
    m7b_rms_norm_bf16(x, attention_norm, dim, eps, normed);
    const stack_t qkv_stack = {{wq, wk, wv}, {q_size, n_kv * head_dim, n_kv * head_dim}, 3, dim};
    stack_matvec(&qkv_stack, normed, qkv, scratch, threads);
    m7b_attention_step_bf16(qkv, freqs, k_cache, v_cache, slot, mask, n_heads, n_kv, capacity, head_dim,
                            (float)(1.0 / sqrt((double)head_dim)), heads, scratch, threads);
    const stack_t wo_stack = {{wo}, {dim}, 1, q_size};
    stack_matvec(&wo_stack, heads, proj, scratch, threads);
    for (long d = 0; d < dim; d++) x[d] = float_to_bf16(bf16_to_float(x[d]) + bf16_to_float(proj[d]));
}

/* out (dim) = w2 . swiglu(stack(w1, w3) . normed): one SwiGLU feed-forward (a dense layer's, or one expert's).
   gate_up: 2 * hidden, mixed: hidden bf16 elements of work. */
static void swiglu_feed_forward(const uint16_t *normed, const uint16_t *w1, const uint16_t *w3, const uint16_t *w2,
                                long dim, long hidden, uint16_t *gate_up, uint16_t *mixed, uint16_t *out,
                                float *scratch, int threads) {
    const stack_t up_stack = {{w1, w3}, {hidden, hidden}, 2, dim};
    stack_matvec(&up_stack, normed, gate_up, scratch, threads);
    m7b_swiglu_bf16(gate_up, gate_up + hidden, hidden, mixed);
    const stack_t down_stack = {{w2}, {dim}, 1, hidden};
    stack_matvec(&down_stack, mixed, out, scratch, threads);
}

/* One transformer block for one decode position, in place on the residual row `x` (dim), exactly the model's
   TransformerBlock: x += wo . attention(rotary(stack(wq, wk, wv) . rms_norm(x))); x += w2 . swiglu(stack(w1, w3) .
   rms_norm(x)), each step rounded to bf16 where torch rounds it (attention's probabilities apart, see above). `work`: bf16 rows for the intermediate results,
   dim * 2 + (n_heads + 2 * n_kv) * head_dim + n_heads * head_dim + hidden * 3 elements; `scratch`: floats, as many
   as the largest of dim, hidden, n_heads * head_dim and n_heads * (2 * head_dim + capacity) + capacity + 2. */
void m7b_block_step_bf16(uint16_t *x, const uint16_t *attention_norm, const uint16_t *ffn_norm, float eps,
                         const uint16_t *wq, const uint16_t *wk, const uint16_t *wv, const uint16_t *wo,
                         const uint16_t *w1, const uint16_t *w3, const uint16_t *w2, long dim, long hidden,
                         long n_heads, long n_kv, long head_dim, const float *freqs, uint16_t *k_cache,
                         uint16_t *v_cache, long slot, const uint8_t *mask, long capacity, uint16_t *work,
                         float *scratch, int threads) {
    const long q_size = n_heads * head_dim, qkv_size = (n_heads + 2 * n_kv) * head_dim;
    uint16_t *normed = work, *proj = normed + dim + qkv_size + q_size;
    uint16_t *gate_up = proj + dim, *mixed = gate_up + 2 * hidden;
    attention_half(x, attention_norm, eps, wq, wk, wv, wo, dim, n_heads, n_kv, head_dim, freqs, k_cache, v_cache,
                   slot, mask, capacity, work, scratch, threads);
    m7b_rms_norm_bf16(x, ffn_norm, dim, eps, normed);
    swiglu_feed_forward(normed, w1, w3, w2, dim, hidden, gate_up, mixed, proj, scratch, threads);
    for (long d = 0; d < dim; d++) x[d] = float_to_bf16(bf16_to_float(x[d]) + bf16_to_float(proj[d]));
}

/* The top `k` of n gate logits, largest first (a tie goes to the lower expert index), into chosen (k indices). */
static void top_experts(const uint16_t *logits, long n, long k, long *chosen) {
    for (long j = 0; j < k; j++) {
        long best = -1;
        for (long e = 0; e < n; e++) {
            int taken = 0;
            for (long i = 0; i < j; i++) taken |= chosen[i] == e;
            if (!taken && (best < 0 || bf16_to_float(logits[e]) > bf16_to_float(logits[best]))) best = e;
        }
        chosen[j] = best;
    }
}

/* A Mixtral block for one decode position, in place on `x`, exactly runtime/moe.py's routing of one row: the
   attention half as m7b_block_step_bf16's; then gate logits (n_experts, bf16) = gate . rms_norm(x); the top k;
   their weights = bf16(softmax over the k logits in float32); out = the sum, in order, of bf16(expert_j(normed) *
   weight_j) (each sum rounded to bf16); x += out. Only the chosen experts' weights are read. w1s, w3s, w2s: each
   expert's matrices (n_experts pointers each); chosen: the k experts it took (for the caller's record). `work` as
   m7b_block_step_bf16's plus n_experts + dim elements; `scratch` as its (and at least k floats). */
void m7b_moe_block_step_bf16(uint16_t *x, const uint16_t *attention_norm, const uint16_t *ffn_norm, float eps,
                             const uint16_t *const *attention, const uint16_t *gate, const uint16_t *const *w1s,
                             const uint16_t *const *w3s, const uint16_t *const *w2s, long n_experts, long k,
                             long dim, long hidden, long n_heads, long n_kv, long head_dim, const float *freqs,
                             uint16_t *k_cache, uint16_t *v_cache, long slot, const uint8_t *mask, long capacity,
                             uint16_t *work, float *scratch, long *chosen, int threads) {
    const long q_size = n_heads * head_dim, qkv_size = (n_heads + 2 * n_kv) * head_dim;
    uint16_t *normed = work, *proj = normed + dim + qkv_size + q_size;
    uint16_t *gate_up = proj + dim, *mixed = gate_up + 2 * hidden, *logits = mixed + hidden, *out = logits + n_experts;
    attention_half(x, attention_norm, eps, attention[0], attention[1], attention[2], attention[3], dim, n_heads, n_kv,
                   head_dim, freqs, k_cache, v_cache, slot, mask, capacity, work, scratch, threads);
    m7b_rms_norm_bf16(x, ffn_norm, dim, eps, normed);
    const stack_t gate_stack = {{gate}, {n_experts}, 1, dim};
    stack_matvec(&gate_stack, normed, logits, scratch, threads);
    top_experts(logits, n_experts, k, chosen);
    float weights[k > 0 ? k : 1], total = 0.0f;
    const float top = bf16_to_float(logits[chosen[0]]);
    for (long j = 0; j < k; j++) {
        weights[j] = expf(bf16_to_float(logits[chosen[j]]) - top);
        total += weights[j];
    }
    for (long j = 0; j < k; j++) {
        const float w = bf16_to_float(float_to_bf16(weights[j] / total));
        const long e = chosen[j];
        swiglu_feed_forward(normed, w1s[e], w3s[e], w2s[e], dim, hidden, gate_up, mixed, proj, scratch, threads);
        for (long d = 0; d < dim; d++) {
            const float y = bf16_to_float(float_to_bf16(bf16_to_float(proj[d]) * w));
            out[d] = j == 0 ? float_to_bf16(y) : float_to_bf16(bf16_to_float(out[d]) + y);
        }
    }
    for (long d = 0; d < dim; d++) x[d] = float_to_bf16(bf16_to_float(x[d]) + bf16_to_float(out[d]));
}

/* Everything a whole decode step reads but the token and its position, laid out once per set of weights
   (runtime/cpu_kernels.py builds it; its ctypes Structure mirrors this field for field). Per layer l: norms[2l],
   norms[2l + 1] (attention_norm, ffn_norm); attention[4l .. 4l + 3] (wq, wk, wv, wo); gates[l] (gates NULL: dense
   layers, each with one feed-forward as its "expert"); w1s, w3s, w2s[l * n_experts ..]; k_caches[l], v_caches[l];
   chosen[l * k ..] receives the experts each layer took. embedding: (vocab, dim); slot_pos: each cache slot's position
   (-1: empty), the model's own buffer; freqs: its rotary table, (max_pos, head_dim / 2, 2) floats; x: dim bf16, mask:
   capacity bytes; work and scratch as m7b_moe_block_step_bf16's (scratch at least dim floats). */
typedef struct {
    long n_layers;
    const uint16_t *const *norms;
    float eps;
    const uint16_t *const *attention;
    const uint16_t *const *gates;
    const uint16_t *const *w1s;
    const uint16_t *const *w3s;
    const uint16_t *const *w2s;
    long n_experts, k, dim, hidden, n_heads, n_kv, head_dim;
    uint16_t *const *k_caches;
    uint16_t *const *v_caches;
    long capacity;
    const uint16_t *final_norm;
    float final_eps;
    const uint16_t *output;
    long vocab;
    const uint16_t *embedding;
    int64_t *slot_pos;
    const float *freqs;
    long max_pos, window;
    uint16_t *x;
    uint8_t *mask;
    uint16_t *work;
    float *scratch;
    long *chosen;
} m7b_decode_plan_t;

/* The slots position `pos` sees: mask[s] = 1 where pos - window < slot_pos[s] <= pos and slot_pos[s] >= 0, else 0
   (runtime/attention.band_mask for one query). */
void m7b_position_mask(const int64_t *slot_pos, long capacity, int64_t pos, long window, uint8_t *mask) {
    for (long s = 0; s < capacity; s++) {
        const int64_t k = slot_pos[s];
        mask[s] = k >= 0 && k <= pos && k > pos - window;
    }
}

/* One decode token, in the model's own order: the position's slot (pos % capacity) records pos in slot_pos (as
   Transformer.positions does), the mask of the slots it sees, x = the token's embedding row; then every block in
   turn (m7b_block_step_bf16's, or m7b_moe_block_step_bf16's), and logits (vocab) = output . rms_norm(x, final_norm,
   final_eps): the bits of one block call per layer followed by the norm and product calls. Returns 0; or 1, with
   nothing written, when the token is not in 0 .. vocab - 1 or the position not in 0 .. max_pos - 1. */
int m7b_decode_token_bf16(const m7b_decode_plan_t *p, const int64_t *token, const int64_t *position, uint16_t *logits,
                          int threads) {
    const int64_t id = *token, pos = *position;
    if (id < 0 || id >= p->vocab || pos < 0 || pos >= p->max_pos) return 1;
    const long slot = (long)(pos % p->capacity), half = p->head_dim / 2;
    p->slot_pos[slot] = pos;
    m7b_position_mask(p->slot_pos, p->capacity, pos, p->window, p->mask);
    memcpy(p->x, p->embedding + id * p->dim, (size_t)p->dim * sizeof(uint16_t));
    const float *freqs = p->freqs + pos * half * 2;
    for (long l = 0; l < p->n_layers; l++) {
        const uint16_t *const *a = p->attention + 4 * l;
        const long e = l * p->n_experts;
        if (p->gates == NULL)
            m7b_block_step_bf16(p->x, p->norms[2 * l], p->norms[2 * l + 1], p->eps, a[0], a[1], a[2], a[3], p->w1s[e],
                                p->w3s[e], p->w2s[e], p->dim, p->hidden, p->n_heads, p->n_kv, p->head_dim, freqs,
                                p->k_caches[l], p->v_caches[l], slot, p->mask, p->capacity, p->work, p->scratch,
                                threads);
        else
            m7b_moe_block_step_bf16(p->x, p->norms[2 * l], p->norms[2 * l + 1], p->eps, a, p->gates[l], p->w1s + e,
                                    p->w3s + e, p->w2s + e, p->n_experts, p->k, p->dim, p->hidden, p->n_heads,
                                    p->n_kv, p->head_dim, freqs, p->k_caches[l], p->v_caches[l], slot, p->mask,
                                    p->capacity, p->work, p->scratch, p->chosen + l * p->k, threads);
    }
    m7b_rms_norm_bf16(p->x, p->final_norm, p->dim, p->final_eps, p->work);
    m7b_matvec_bf16(p->output, p->work, p->vocab, p->dim, logits, p->scratch, threads);
    return 0;
}

/* The index of the largest of n bf16 values, the first one on a tie; a NaN counts as the largest (the first NaN),
   as torch.argmax and runtime/sampling.greedy pick. */
long m7b_argmax_bf16(const uint16_t *values, long n) {
    long best = 0;
    float top = bf16_to_float(values[0]);
    if (top != top) return 0;
    for (long i = 1; i < n; i++) {
        const float v = bf16_to_float(values[i]);
        if (v != v) return i;
        if (v > top) {
            top = v;
            best = i;
        }
    }
    return best;
}

/* Up to n greedy tokens after `token` at `position`: each step m7b_decode_token_bf16 into logits (vocab), its
   argmax (m7b_argmax_bf16) the next token, at the next position. Stops after writing `eos` (when eos >= 0) or a
   step that declines (a position past max_pos). Writes tokens[0 .. count - 1] and returns count: 0, with nothing
   written, when the first step declines. */
long m7b_decode_greedy_bf16(const m7b_decode_plan_t *p, int64_t token, int64_t position, long n, int64_t eos,
                            int64_t *tokens, uint16_t *logits, int threads) {
    long count = 0;
    while (count < n) {
        if (m7b_decode_token_bf16(p, &token, &position, logits, threads)) break;
        token = m7b_argmax_bf16(logits, p->vocab);
        tokens[count++] = token;
        position++;
        if (eos >= 0 && token == eos) break;
    }
    return count;
}
