/* The per-element functions of a decoding step, 8 lanes at a time (AVX2 + FMA, which every CPU the
   kernels build for has): e^x for attention's softmax and GPT-2's tanh GELU for the MLP.

   libm's scalar tanhf and expf were about a tenth of a 16-row step of 124M; these take a few
   instructions per 8 values. Every element goes through the same vector code, the tail of an array
   included (copied into a full vector), so a value's result never depends on where it sits. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* e^x: 0 below -87 (where e^x < 2^-125), x capped at 88 (e^88 < FLT_MAX), NaN stays NaN.
   x = n ln2 + r with |r| <= ln2/2; e^r by its Taylor series to r^7 (the first term left out is
   under 2^-27 of the result); 2^n built in the exponent bits. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* max/min return their second operand for a NaN */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* ln2 in two parts: n * 0.693359375 is exact in fp32, so r keeps its low bits */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

/* 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x / (1 + e^(-2u)): the same
   function, with no cancellation near 1 + tanh(u) = 0. */
static inline __m256 gelu8(__m256 x) {
    __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
    __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* y[0:n] = GELU(y[0:n]) in place. */
void gpt2kit_gelu(float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(y + i)));
    if (i < n) {
        float t[8] = {0};
        memcpy(t, y + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(t, gelu8(_mm256_loadu_ps(t)));
        memcpy(y + i, t, sizeof(float) * (size_t)(n - i));
    }
}

/* w[0:n] = e^(w[j] - top) in place (-inf, a masked score, gives 0). */
void gpt2kit_exp_shifted(float *w, int64_t n, float top) {
    const __m256 t = _mm256_set1_ps(top);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(w + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(w + i), t)));
    if (i < n) {
        float tail[8];
        for (int k = 0; k < 8; k++) tail[k] = i + k < n ? w[i + k] : 0.0f;
        _mm256_storeu_ps(tail, exp8(_mm256_sub_ps(_mm256_loadu_ps(tail), t)));
        memcpy(w + i, tail, sizeof(float) * (size_t)(n - i));
    }
}
