/* One query's attention over one row and head of the KV cache, for decode_step.c, and the cache's
   writes. The cache holds fp32 or fp16 (kv16): a step reads every cached position of every row, so
   past a few hundred positions the cache's bytes, not the matrices, set the step's time. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

void gpt2kit_exp_shifted(float *w, int64_t n, float top); /* vmath.c */

static inline __attribute__((always_inline)) __m256 load8(const void *p, int64_t i, int kv16) {
    if (kv16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

static inline __attribute__((always_inline)) float load1(const void *p, int64_t i, int kv16) {
    return kv16 ? _cvtsh_ss(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* q (hs) . key (hs) */
static inline __attribute__((always_inline)) float dot(const float *q, const void *k, int64_t hs, int kv16) {
    __m256 acc = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= hs; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k, d, kv16), acc);
    float total = hsum(acc);
    for (; d < hs; d++) total += q[d] * load1(k, d, kv16);
    return total;
}

/* q (64) . each of 8 keys (8 x 64, one after another): one accumulator per key, summed across lanes
   together at the end. */
static inline __attribute__((always_inline)) __m256 dot8_64(const float *q, const void *k, int kv16) {
    __m256 a[8];
    for (int t = 0; t < 8; t++) a[t] = _mm256_setzero_ps();
    for (int d = 0; d < 64; d += 8) {
        __m256 qd = _mm256_loadu_ps(q + d);
        for (int t = 0; t < 8; t++) a[t] = _mm256_fmadd_ps(qd, load8(k, t * 64 + d, kv16), a[t]);
    }
    __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3])); /* keys 0-3, halves */
    __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7])); /* keys 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

/* out (hs) += p * value (hs) */
static inline __attribute__((always_inline)) void add_scaled(float *out, float p, const void *v, int64_t hs, int kv16) {
    int64_t d = 0;
    const __m256 pv = _mm256_set1_ps(p);
    for (; d + 8 <= hs; d += 8) _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, load8(v, d, kv16), _mm256_loadu_ps(out + d)));
    for (; d < hs; d++) out[d] += p * load1(v, d, kv16);
}

static inline __attribute__((always_inline)) void attend(const float *q, const void *kb, const void *vb,
        const uint8_t *valid, int64_t length, int64_t hs, float scale, float *w, float *out, int kv16) {
    const size_t es = kv16 ? 2 : 4;
    int64_t j = 0;
    if (hs == 64) {
        for (; j + 8 <= length + 1; j += 8) _mm256_storeu_ps(w + j, dot8_64(q, (const char *)kb + j * 64 * es, kv16));
        if (j <= length) { /* the last keys through the same code, zeros after them: a key's score never
                              depends on where the row's keys fall in groups of 8 */
            char rest[8 * 64 * 4] = {0};
            float dots[8];
            memcpy(rest, (const char *)kb + j * 64 * es, (size_t)(length + 1 - j) * 64 * es);
            _mm256_storeu_ps(dots, dot8_64(q, rest, kv16));
            memcpy(w + j, dots, sizeof(float) * (size_t)(length + 1 - j));
            j = length + 1;
        }
    }
    for (; j <= length; j++) w[j] = dot(q, (const char *)kb + j * hs * es, hs, kv16);
    float top = -INFINITY;
    for (j = 0; j <= length; j++) {
        w[j] = j == length || valid[j] ? w[j] * scale : -INFINITY;
        if (w[j] > top) top = w[j];
    }
    gpt2kit_exp_shifted(w, length + 1, top);
    /* Summed one after another: the masked keys' zeros change nothing, so a row's answer is the same
       whatever padding a batch gives it (the seed contract), as in the weighted sum below. */
    float sum = 0.0f;
    for (j = 0; j <= length; j++) sum += w[j];
    const float inv = 1.0f / sum;
    if (hs == 64) { /* the weighted sum of values in registers */
        __m256 acc[8];
        for (int d = 0; d < 8; d++) acc[d] = _mm256_setzero_ps();
        for (j = 0; j <= length; j++) {
            if (w[j] == 0.0f) continue;
            __m256 p = _mm256_set1_ps(w[j] * inv);
            const void *v = (const char *)vb + j * 64 * es;
            for (int d = 0; d < 8; d++) acc[d] = _mm256_fmadd_ps(p, load8(v, d * 8, kv16), acc[d]);
        }
        for (int d = 0; d < 8; d++) _mm256_storeu_ps(out + d * 8, acc[d]);
        return;
    }
    for (int64_t d = 0; d < hs; d++) out[d] = 0.0f;
    for (j = 0; j <= length; j++)
        if (w[j] != 0.0f) add_scaled(out, w[j] * inv, (const char *)vb + j * hs * es, hs, kv16);
}

/* out (hs) = the softmax over keys j = 0..length of q . k_j * scale, times the values v_j. Key j counts
   when it is not padding (the query always sees itself, as in model.py's mask). kb, vb: (S, hs) of one
   row and head, fp16 where kv16; w: length + 1 floats of scratch. Every GPT-2 has 64-wide heads: those
   go 8 keys at a time. */
void gpt2kit_attend(const float *q, const void *kb, const void *vb, const uint8_t *valid, int64_t length,
                    int64_t hs, float scale, float *w, float *out, int kv16) {
    if (kv16) attend(q, kb, vb, valid, length, hs, scale, w, out, 1);
    else attend(q, kb, vb, valid, length, hs, scale, w, out, 0);
}

/* hs values into the cache at dst, rounded to fp16 (to nearest, ties to even: PyTorch's .half()) where kv16. */
void gpt2kit_store_kv(void *dst, const float *src, int64_t hs, int kv16) {
    if (!kv16) {
        memcpy(dst, src, sizeof(float) * (size_t)hs);
        return;
    }
    uint16_t *d = dst;
    int64_t i = 0;
    for (; i + 8 <= hs; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < hs; i++) d[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
