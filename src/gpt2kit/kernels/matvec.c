/* Decoding's matrix products on x86 CPUs: y (M, N) = x (M, K) W^T (N, K) + b, for small M.

   Generating a token multiplies one row of activations (M = 1, or the batch) by every weight
   matrix, so the time is reading W: bytes, not FLOPs. These loops stream W once, in its own
   (out, in) order, for all M rows of x, in fp32, fp16 (widened with F16C), bf16 (widened by a
   16-bit shift, exact) or int8 with one fp32 scale per output row. Rows of W are split between
   threads with OpenMP; the library links the same libgomp as PyTorch, so both share one thread pool.

   One source, two instruction sets: gpt2kit/cpu/kernels.py compiles it with -mavx2 -mfma -mf16c,
   and where the CPU has AVX-512 (F, BW, VL, DQ) also with -mavx512*, which turns on the 16-lane
   vectors below (__AVX512F__). The arithmetic is the same: fp32 FMAs on widened weights. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef GPT2KIT_EMULATE_AVX512
/* Only for tests on machines without AVX-512 (tests/test_cpu.py): the 16-lane code below, compiled
   for AVX2 with SIMDe's portable AVX-512 intrinsics (Debian's libsimde-dev), so its lane counts,
   offsets and conversions are checked against PyTorch anywhere. Never used for real work. */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define __AVX512F__ 1
#define __AVX512VNNI__ 1
#define __AVX512BF16__ 1
/* What SIMDe 0.7 lacks, element by element. */
static inline __m512 emulated_cvtph_ps(__m256i h) {
    simde__m256i_private in = simde__m256i_to_private(h);
    simde__m512_private out;
    for (int i = 0; i < 16; i++) out.f32[i] = _cvtsh_ss(in.u16[i]);
    return simde__m512_from_private(out);
}
static inline __m512i emulated_cvtepu16_epi32(__m256i h) {
    simde__m256i_private in = simde__m256i_to_private(h);
    simde__m512i_private out;
    for (int i = 0; i < 16; i++) out.i32[i] = (int32_t)in.u16[i];
    return simde__m512i_from_private(out);
}
static inline __m512i emulated_cvtepi8_epi32(__m128i b) {
    simde__m128i_private in = simde__m128i_to_private(b);
    simde__m512i_private out;
    for (int i = 0; i < 16; i++) out.i32[i] = (int32_t)in.i8[i];
    return simde__m512i_from_private(out);
}
static inline __m512 emulated_cvtepi32_ps(__m512i v) {
    simde__m512i_private in = simde__m512i_to_private(v);
    simde__m512_private out;
    for (int i = 0; i < 16; i++) out.f32[i] = (float)in.i32[i];
    return simde__m512_from_private(out);
}
static inline float emulated_reduce_add_ps(__m512 v) {
    simde__m512_private p = simde__m512_to_private(v);
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += p.f32[i];
    return s;
}
static inline int32_t emulated_reduce_add_epi32(__m512i v) {
    simde__m512i_private p = simde__m512i_to_private(v);
    int32_t s = 0;
    for (int i = 0; i < 16; i++) s += p.i32[i];
    return s;
}
#define _mm512_reduce_add_epi32 emulated_reduce_add_epi32
#define _mm512_cvtepu16_epi32 emulated_cvtepu16_epi32
#define _mm512_cvtepi8_epi32 emulated_cvtepi8_epi32
#define _mm512_cvtepi32_ps emulated_cvtepi32_ps
#define _mm512_cvtph_ps emulated_cvtph_ps
#define _mm512_reduce_add_ps emulated_reduce_add_ps
#endif

#define ROWS 4   /* rows of W in flight: 4 streams keep the prefetchers busy */
#define MTILE 4  /* at most this many rows of x per pass over rows of W: 4x2 or 2x4 accumulators, so
                    accumulators + W + x registers fit AVX2's 16 */
/* Prefetch distance in bytes. The hardware prefetcher alone leaves fp16 and int8 rows at 11-12 GB/s
   on the EPYC these were tuned on; 1 KB ahead of each stream brings them to 20-25 GB/s (512 B to 4 KB
   all measure within noise of each other, 1 KB a little ahead). */
#define PF 1024

typedef enum { W_F32 = 0, W_F16 = 1, W_I8 = 2, W_BF16 = 3, W_I8A8 = 4, W_BF16A16 = 5 } wkind;

#if defined(__AVX512F__)
#define VL 16  /* fp32 lanes of a vector */
typedef __m512 vec;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vloadx(const float *p) { return _mm512_loadu_ps(p); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline float hsum(vec v) { return _mm512_reduce_add_ps(v); }
static inline vec loadw(const void *w, int64_t i, wkind kind) {
    if (kind == W_F32) return _mm512_loadu_ps((const float *)w + i);
    if (kind == W_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
    if (kind == W_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))), 16));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))));
}
#else
#define VL 8
#define NT 6   /* rows of W in a many-row tile (lanes_tile): 6 x 2 accumulators of AVX2's 16 registers */
typedef __m256 vec;
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vloadx(const float *p) { return _mm256_loadu_ps(p); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec vbcast(const float *p) { return _mm256_broadcast_ss(p); }
static inline void vstore(float *p, vec v) { _mm256_storeu_ps(p, v); }
static inline float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vec loadw(const void *w, int64_t i, wkind kind) {
    if (kind == W_F32) return _mm256_loadu_ps((const float *)w + i);
    if (kind == W_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    if (kind == W_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
}
#endif

static inline float load1(const void *w, int64_t i, wkind kind) {
    if (kind == W_F32) return ((const float *)w)[i];
    if (kind == W_F16) return _cvtsh_ss(((const uint16_t *)w)[i]);
    if (kind == W_BF16) {
        union { uint32_t u; float f; } b = { .u = (uint32_t)((const uint16_t *)w)[i] << 16 };
        return b.f;
    }
    return (float)((const int8_t *)w)[i];
}

static inline size_t elem_size(wkind kind) { return kind == W_F32 ? 4 : kind == W_I8 ? 1 : 2; }

/* y[m, n0:n0+R] for m in [m0, m0+mt): R rows of W (R <= ROWS) against mt <= MTILE rows of x. */
static inline __attribute__((always_inline)) void block(const float *x, int64_t m0, int mt, int64_t K, const void *W, int64_t n0, int R,
                         wkind kind, const float *scale, const float *bias, float *y, int64_t N) {
    vec acc[ROWS][MTILE];
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < MTILE; j++) acc[r][j] = vzero();
    const char *wbase = (const char *)W + (size_t)n0 * K * elem_size(kind);
    int64_t k = 0;
    if (mt == 1) {
        /* One row of x: the second accumulator of each row takes the odd 8-wide steps, so two
           chains of FMAs per row hide the FMA latency. */
        for (; k + 2 * VL <= K; k += 2 * VL) {
            vec x0 = vloadx(x + m0 * K + k), x1 = vloadx(x + m0 * K + k + VL);
            for (int r = 0; r < ROWS; r++) {
                if (r >= R) break;
                const char *wr = wbase + (size_t)r * K * elem_size(kind);
                _mm_prefetch(wr + k * elem_size(kind) + PF, _MM_HINT_T0);
                acc[r][0] = vfma(loadw(wr, k, kind), x0, acc[r][0]);
                acc[r][1] = vfma(loadw(wr, k + VL, kind), x1, acc[r][1]);
            }
        }
        for (int r = 0; r < ROWS; r++) acc[r][0] = vadd(acc[r][0], acc[r][1]);
    }
    for (; k + VL <= K; k += VL) {
        vec xv[MTILE];
        for (int j = 0; j < MTILE; j++) xv[j] = j < mt ? vloadx(x + (m0 + j) * K + k) : vzero();
        for (int r = 0; r < ROWS; r++) {
            if (r >= R) break;
            const char *wr = wbase + (size_t)r * K * elem_size(kind);
            /* The same line of the row ROWS rows on, which the next block of rows reads: several rows
               are read at once, so 1 KB ahead in each left their first lines to be fetched on demand
               (docs/performance.md has the gains). Once per cache line, and only on the first tile of
               x's rows: the later tiles find W in cache, and every prefetch takes a load slot from the
               products. */
            if (m0 == 0 && n0 + r + ROWS < N && ((k * elem_size(kind)) & 63) == 0)
                _mm_prefetch(wr + (size_t)ROWS * K * elem_size(kind) + k * elem_size(kind), _MM_HINT_T0);
            vec wv = loadw(wr, k, kind);
            for (int j = 0; j < mt; j++) acc[r][j] = vfma(wv, xv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++) {
        const void *wr = wbase + (size_t)r * K * elem_size(kind);
        for (int j = 0; j < mt; j++) {
            float s = hsum(acc[r][j]);
            for (int64_t kk = k; kk < K; kk++) s += load1(wr, kk, kind) * x[(m0 + j) * K + kk];
            if (scale) s *= scale[n0 + r];
            if (bias) s += bias[n0 + r];
            y[(m0 + j) * N + n0 + r] = s;
        }
    }
}

/* y[0, n] for one row n of W against one row of x: a single sequential stream with four chains of
   FMAs, the access pattern the memory system streams fastest. */
static inline __attribute__((always_inline)) void row1(const float *x, int64_t K, const void *W, int64_t n,
        wkind kind, const float *scale, const float *bias, float *y) {
    const char *wr = (const char *)W + (size_t)n * K * elem_size(kind);
    vec a0 = vzero(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 4 * VL <= K; k += 4 * VL) {
        _mm_prefetch(wr + k * elem_size(kind) + PF, _MM_HINT_T0);
        if (kind == W_F32) _mm_prefetch(wr + k * elem_size(kind) + PF + 64, _MM_HINT_T0);
        a0 = vfma(loadw(wr, k, kind), vloadx(x + k), a0);
        a1 = vfma(loadw(wr, k + VL, kind), vloadx(x + k + VL), a1);
        a2 = vfma(loadw(wr, k + 2 * VL, kind), vloadx(x + k + 2 * VL), a2);
        a3 = vfma(loadw(wr, k + 3 * VL, kind), vloadx(x + k + 3 * VL), a3);
    }
    for (; k + VL <= K; k += VL) a0 = vfma(loadw(wr, k, kind), vloadx(x + k), a0);
    float s = hsum(vadd(vadd(a0, a1), vadd(a2, a3)));
    for (; k < K; k++) s += load1(wr, k, kind) * x[k];
    if (scale) s *= scale[n];
    if (bias) s += bias[n];
    y[n] = s;
}

/* The specialisations below let the compiler fix R, mt and kind, so acc[][] lives in registers. */
#define BLOCK_FOR(KIND)                                                                          \
    static void run_##KIND(const float *x, int64_t M, int64_t K, const void *W, int64_t N,       \
                           const float *scale, const float *bias, float *y, int threads) {        \
        if (M == 1) {                                                                            \
            _Pragma("omp parallel for schedule(static) num_threads(threads)")                    \
            for (int64_t n = 0; n < N; n++) row1(x, K, W, n, KIND, scale, bias, y);        \
            return;                                                                              \
        }                                                                                        \
        int64_t nblocks = (N + ROWS - 1) / ROWS;                                                 \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                        \
        for (int64_t b = 0; b < nblocks; b++) {                                                  \
            int64_t n0 = b * ROWS;                                                               \
            int R = N - n0 < ROWS ? (int)(N - n0) : ROWS;                                        \
            int64_t m0 = 0;                                                                      \
            if (R == ROWS) {                                                                     \
                /* 4 rows of x at a time against 2 rows of W: each W vector loaded (and widened) \
                   once for 4 FMAs. */                                                           \
                int64_t m4 = M - M % 4;                                                          \
                for (int half = 0; half < 2 && m4 > 0; half++)                                   \
                    for (m0 = 0; m0 < m4; m0 += 4) block(x, m0, 4, K, W, n0 + 2 * half, 2, KIND, scale, bias, y, N); \
                m0 = m4;                                                                         \
                for (; m0 + 2 <= M; m0 += 2) block(x, m0, 2, K, W, n0, ROWS, KIND, scale, bias, y, N); \
                if (m0 < M) block(x, m0, 1, K, W, n0, ROWS, KIND, scale, bias, y, N);           \
            } else {                                                                             \
                for (; m0 < M; m0++) block(x, m0, 1, K, W, n0, R, KIND, scale, bias, y, N);     \
            }                                                                                    \
        }                                                                                        \
    }

BLOCK_FOR(W_F32)
BLOCK_FOR(W_F16)
BLOCK_FOR(W_I8)
BLOCK_FOR(W_BF16)

#if !defined(__AVX512F__)
/* Many rows of x (a multiple of LANES_ROWS): x's rows along the vector lanes instead of K. x is
   transposed once per call to xt (K, M). A tile is NT rows of W by two vectors of x's rows: each chunk of
   KC weights of its rows is widened into a small fp32 buffer, then every weight is broadcast once against
   both vectors of rows, NT + 2 loads per 2 NT FMAs, where block() loads 4 vectors of x and 2 of W per 8.
   AVX2 only: measured there (docs/performance.md); the 16-lane build keeps block() until timed on it. */
#define KC 128  /* weights widened a chunk of K at a time: NT x KC fp32 on the stack (3 KB) */
/* Whole pairs of vectors of rows only: elsewhere a lone vector would leave half the accumulators idle, or
   rows padded up to a vector would waste products, and block() is faster (0.86x at 20 rows, 0.97x at 40). */
#define LANES_ROWS (2 * VL)

/* Prefetches the next tile's rows of W, the share of them that belongs to chunk k0, so they arrive while
   this tile computes (the rows are contiguous: a tile is one run of memory). Streaming each row 1 KB
   ahead instead left a third of the loop's time waiting on weights: a tile reads 6 rows at once, a chunk
   of each, and their first chunks were always fetched on demand.
   always_inline: as a plain static inline function its prefetches were gone from the built loops (objdump). */
static inline __attribute__((always_inline)) void next_tile_share(const void *W, wkind kind, int64_t n0, int64_t K,
                                                                  int64_t N, int64_t k0) {
    const int64_t rows = N - (n0 + NT) < NT ? N - (n0 + NT) : NT;
    if (rows <= 0) return;
    const size_t es = elem_size(kind);
    const int64_t bytes = rows * K * (int64_t)es, share = rows * KC * (int64_t)es;  /* a chunk of each row */
    const char *next = (const char *)W + (size_t)(n0 + NT) * K * es;
    const int64_t from = k0 / KC * share, to = from + share < bytes ? from + share : bytes;
    for (int64_t b = from; b < to; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
}

/* y[m, n0 + r] for r < R and m in the two vectors of rows from row m0. */
static inline __attribute__((always_inline)) void lanes_tile(const float *xt, int64_t M, int64_t m0, int64_t K,
        const void *W, wkind kind, int64_t n0, int R, const float *scale, const float *bias, float *y, int64_t N) {
    vec acc[NT][2];
    float wide[NT * KC];
    for (int r = 0; r < NT; r++) acc[r][0] = acc[r][1] = vzero();
    const size_t es = elem_size(kind);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kn = K - k0 < KC ? K - k0 : KC;
        for (int r = 0; r < NT; r++) {  /* wide (NT, KC) <- this chunk of the tile's rows; zeros past R */
            float *out = wide + r * KC;
            if (r >= R) { memset(out, 0, sizeof(float) * KC); continue; }
            const char *wr = (const char *)W + (size_t)(n0 + r) * K * es;
            int64_t k = 0;
            for (; k + VL <= kn; k += VL) vstore(out + k, loadw(wr, k0 + k, kind));
            for (; k < kn; k++) out[k] = load1(wr, k0 + k, kind);
        }
        if (m0 == 0) next_tile_share(W, kind, n0, K, N, k0);
        const float *xk = xt + k0 * M + m0;
        for (int64_t k = 0; k < kn; k++, xk += M) {
            const vec x0 = vloadx(xk), x1 = vloadx(xk + VL);
            for (int r = 0; r < NT; r++) {
                const vec w = vbcast(wide + r * KC + k);
                acc[r][0] = vfma(w, x0, acc[r][0]);
                acc[r][1] = vfma(w, x1, acc[r][1]);
            }
        }
    }
    /* Spilled by constant indices (the loops above unroll), so acc itself stays in registers. */
    float lanes[NT][2 * VL];
    for (int r = 0; r < NT; r++) vstore(lanes[r], acc[r][0]), vstore(lanes[r] + VL, acc[r][1]);
    for (int r = 0; r < R; r++) {
        const float s = scale ? scale[n0 + r] : 1.0f, b = bias ? bias[n0 + r] : 0.0f;
        for (int i = 0; i < 2 * VL; i++) y[(m0 + i) * N + n0 + r] = lanes[r][i] * s + b;
    }
}

#define LANES_FOR(KIND)                                                                          \
    static int lanes_##KIND(const float *x, int64_t M, int64_t K, const void *W, int64_t N,      \
                            const float *scale, const float *bias, float *y, int threads) {       \
        float *xt = malloc(sizeof(float) * (size_t)(K * M)); /* (K, M): x transposed */          \
        if (!xt) return 1; /* the caller's block() loops need no memory */                       \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                        \
        for (int64_t k = 0; k < K; k++)                                                          \
            for (int64_t m = 0; m < M; m++) xt[k * M + m] = x[m * K + k];                        \
        const int64_t nblocks = (N + NT - 1) / NT;                                               \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                        \
        for (int64_t b = 0; b < nblocks; b++) {                                                  \
            const int64_t n0 = b * NT;                                                           \
            const int R = N - n0 < NT ? (int)(N - n0) : NT;                                      \
            for (int64_t m0 = 0; m0 < M; m0 += LANES_ROWS)                                       \
                lanes_tile(xt, M, m0, K, W, KIND, n0, R, scale, bias, y, N);                     \
        }                                                                                        \
        free(xt);                                                                                \
        return 0;                                                                                \
    }

LANES_FOR(W_F32)
LANES_FOR(W_F16)
LANES_FOR(W_I8)
LANES_FOR(W_BF16)
/* Whether product() ran x W^T on the lanes loops (else block()'s do it; S: the int8 scales or NULL). */
#define LANES(KIND, S) (M > 0 && M % LANES_ROWS == 0 && lanes_##KIND(x, M, K, W, N, S, bias, y, threads) == 0)
#else
#define LANES(KIND, S) 0
#endif

/* kind: 0 fp32, 1 fp16, 2 int8 (scale (N,) required), 3 bf16; where built for them (gpt2kit_kinds),
   4 int8 x int8 (scale (2, N): per-row scales, then each row's sum of weights) and 5 bf16 x bf16. x, W, y contiguous; scale and bias may be NULL.
   gelu: 1 applies GPT-2's GELU to every output (the MLP's first matrix). Returns 0, 1 on bad arguments, 2 out of memory. */

/* Rows of x rounded once per call, shared by every row of W: (M, Kp) with Kp = K rounded up to a
   whole vector and zeros after K, so the dot loops need no tail. */
static inline int64_t round_up(int64_t k, int64_t to) { return (k + to - 1) / to * to; }

#if defined(__AVX512VNNI__)
/* int8 weights x int8 activations: each row of x quantized symmetrically (scale max|x|/127) and
   offset by 128 to unsigned, then 64 products per vpdpbusd. The offset adds 128 * (sum of the
   row's weights), which scale[N + n] holds, and is taken off again. */
static int run_i8a8(const float *x, int64_t M, int64_t K, const int8_t *W, int64_t N, const float *scale,
                    const float *bias, float *y, int threads) {
    const int64_t Kp = round_up(K, 64);
    uint8_t *xq = calloc((size_t)(M * Kp + 64), 1);
    float *sx = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
    if (!xq || !sx) { free(xq); free(sx); return 2; }
    for (int64_t m = 0; m < M; m++) {
        float top = 0.0f;
        for (int64_t k = 0; k < K; k++) top = fmaxf(top, fabsf(x[m * K + k]));
        sx[m] = top > 0.0f ? top / 127.0f : 1.0f;
        for (int64_t k = 0; k < K; k++) xq[m * Kp + k] = (uint8_t)(lrintf(x[m * K + k] / sx[m]) + 128);
        for (int64_t k = K; k < Kp; k++) xq[m * Kp + k] = 128;  /* times a zero weight below */
    }
    const int64_t Kv = K - K % 64;  /* whole vectors of W; the rest of each row goes scalar */
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wr = W + n * K;
        for (int64_t m = 0; m < M; m++) {
            const uint8_t *xr = xq + m * Kp;
            __m512i acc = _mm512_setzero_si512();
            for (int64_t k = 0; k < Kv; k += 64)
                acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512((const void *)(xr + k)),
                                          _mm512_loadu_si512((const void *)(wr + k)));
            int64_t dot = _mm512_reduce_add_epi32(acc);
            for (int64_t k = Kv; k < K; k++) dot += (int64_t)xr[k] * wr[k];
            float s = (float)(dot - 128 * (int64_t)scale[N + n]) * sx[m] * scale[n];
            if (bias) s += bias[n];
            y[m * N + n] = s;
        }
    }
    free(xq); free(sx);
    return 0;
}
#endif

#if defined(__AVX512BF16__)
static inline uint16_t to_bf16(float f) {  /* round to nearest even, as PyTorch's .bfloat16() */
    union { float f; uint32_t u; } b = { .f = f };
    if ((b.u & 0x7f800000u) == 0x7f800000u) return (uint16_t)(b.u >> 16 | ((b.u & 0xffff) ? 0x40 : 0));  /* inf, nan */
    return (uint16_t)((b.u + 0x7fffu + ((b.u >> 16) & 1u)) >> 16);
}

static inline __m512bh load_bh(const uint16_t *p) { __m512bh v; memcpy(&v, p, 64); return v; }

/* bf16 weights x bf16 activations (x rounded to bf16 once per call), fp32 sums: 32 products
   per vdpbf16ps. */
static int run_bf16a16(const float *x, int64_t M, int64_t K, const uint16_t *W, int64_t N, const float *bias,
                       float *y, int threads) {
    const int64_t Kp = round_up(K, 32);
    uint16_t *xb = calloc((size_t)(M * Kp + 32), sizeof(uint16_t));
    if (!xb) return 2;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) xb[m * Kp + k] = to_bf16(x[m * K + k]);
    const int64_t Kv = K - K % 32;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *wr = W + n * K;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xr = xb + m * Kp;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t k = 0; k < Kv; k += 32) acc = _mm512_dpbf16_ps(acc, load_bh(xr + k), load_bh(wr + k));
            float s = _mm512_reduce_add_ps(acc);
            for (int64_t k = Kv; k < K; k++) s += load1(xr, k, W_BF16) * load1(wr, k, W_BF16);
            if (bias) s += bias[n];
            y[m * N + n] = s;
        }
    }
    free(xb);
    return 0;
}
#endif

/* Which kinds this build computes, one bit each (1 << kind): the int8 x int8 and bf16 x bf16 kinds
   only where the CPU has VNNI / AVX512-BF16 and the library was built for them. */
int gpt2kit_kinds(void) {
    int kinds = (1 << W_F32) | (1 << W_F16) | (1 << W_I8) | (1 << W_BF16);
#if defined(__AVX512VNNI__)
    kinds |= 1 << W_I8A8;
#endif
#if defined(__AVX512BF16__)
    kinds |= 1 << W_BF16A16;
#endif
    return kinds;
}

void gpt2kit_gelu(float *y, int64_t n); /* vmath.c */

/* GELU over y (n values) in place, split between the threads in whole vectors. */
static void gelu_all(float *y, int64_t n, int threads) {
    const int64_t chunk = 1024;
    const int64_t chunks = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int64_t c = 0; c < chunks; c++) gpt2kit_gelu(y + c * chunk, n - c * chunk < chunk ? n - c * chunk : chunk);
}

/* GELU in place over n values, split between the threads: a prompt pass's MLP (gpt2kit/cpu/gelu.py). */
void gpt2kit_gelu_all(float *y, int64_t n, int threads) { gelu_all(y, n, threads > 0 ? threads : 1); }

static int product(const float *x, int64_t M, int64_t K, const void *W, int64_t N, int kind, const float *scale,
                   const float *bias, float *y, int threads) {
    switch (kind) {
    case W_F32: if (!LANES(W_F32, NULL)) run_W_F32(x, M, K, W, N, NULL, bias, y, threads); return 0;
    case W_F16: if (!LANES(W_F16, NULL)) run_W_F16(x, M, K, W, N, NULL, bias, y, threads); return 0;
    case W_BF16: if (!LANES(W_BF16, NULL)) run_W_BF16(x, M, K, W, N, NULL, bias, y, threads); return 0;
    case W_I8:
        if (!scale) return 1;
        if (!LANES(W_I8, scale)) run_W_I8(x, M, K, W, N, scale, bias, y, threads);
        return 0;
#if defined(__AVX512VNNI__)
    case W_I8A8: if (!scale) return 1; return run_i8a8(x, M, K, W, N, scale, bias, y, threads);
#endif
#if defined(__AVX512BF16__)
    case W_BF16A16: return run_bf16a16(x, M, K, W, N, bias, y, threads);
#endif
    }
    return 1;
}

int gpt2kit_linear(const float *x, int64_t M, int64_t K, const void *W, int64_t N, int kind,
                   const float *scale, const float *bias, int gelu, float *y, int threads) {
    if (M < 0 || K <= 0 || N <= 0 || threads <= 0) return 1;
    int rc = product(x, M, K, W, N, kind, scale, bias, y, threads);
    if (rc == 0 && gelu) gelu_all(y, M * N, threads);
    return rc;
}
