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

   Built by m7b/runtime/matvec.py with the system C compiler (-O3 -mavx2 -mfma -fopenmp) and loaded with ctypes
   after torch, so it shares torch's OpenMP runtime and thread pool. */
#include <immintrin.h>
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

/* y (N) = W (N x K) . x (K); scratch: K floats; threads: the OpenMP threads to use (torch's own count). */
void m7b_matvec_bf16(const uint16_t *w, const uint16_t *x, long N, long K, uint16_t *y, float *scratch, int threads) {
    const long blocks = K - K % 16;
    for (long k = 0; k < blocks; k += 16)
        for (int j = 0; j < 8; j++) {
            scratch[k + j] = bf16_to_float(x[k + 2 * j]);
            scratch[k + 8 + j] = bf16_to_float(x[k + 2 * j + 1]);
        }
#pragma omp parallel num_threads(threads)
    {
        const long t = omp_get_thread_num(), nt = omp_get_num_threads();
        const long begin = N * t / nt, end = N * (t + 1) / nt, quarter = (end - begin) / 4;
        for (long i = 0; i < quarter; i++) {
            const long n[4] = {begin + i, begin + quarter + i, begin + 2 * quarter + i, begin + 3 * quarter + i};
            const uint16_t *rows[4] = {w + n[0] * K, w + n[1] * K, w + n[2] * K, w + n[3] * K};
            float r[4];
            rows_dot_4(rows, scratch, x, K, r);
            for (int j = 0; j < 4; j++) y[n[j]] = float_to_bf16(r[j]);
        }
        for (long m = begin + 4 * quarter; m < end; m++) {
            const uint16_t *row = w + m * K;
            float r;
            rows_dot_1(&row, scratch, x, K, &r);
            y[m] = float_to_bf16(r);
        }
    }
}
