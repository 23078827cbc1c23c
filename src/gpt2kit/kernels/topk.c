/* The k largest logits of each row, for top-k sampling (sampling.draw_top_k).

   One pass over the row keeps the k best so far in a min-heap. 8 logits at a time are compared with the
   heap's smallest, and only a vector holding a better one is looked at further: over GPT-2's 50257
   logits almost every vector is passed over. torch.topk is the reference (tests/test_cpu.py). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    float value;
    int64_t id;
} entry;

/* a worse than b: smaller, or as large with a higher id (of equal logits the lower ids are kept) */
static inline int worse(entry a, entry b) { return a.value < b.value || (a.value == b.value && a.id > b.id); }

static void sift_down(entry *h, int64_t k, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && worse(h[l], h[m])) m = l;
        if (r < k && worse(h[r], h[m])) m = r;
        if (m == i) return;
        entry t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static inline void offer(entry *h, int64_t k, float v, int64_t id) {
    if (v > h[0].value) {
        h[0] = (entry){v, id};
        sift_down(h, k, 0);
    }
}

/* One row of N into values, ids (k, largest first). Returns 1, with nothing written, for a row holding a
   NaN or +inf: the caller leaves those to PyTorch, whose order the finite-logits check expects. */
static int row_topk(const float *x, int64_t N, int64_t k, entry *h, float *values, int64_t *ids) {
    const float inf = __builtin_inff();
    int bad = 0; /* !(x < inf) holds for +inf and for NaN */
    int64_t i = 0;
    for (; i < k; i++) {
        h[i] = (entry){x[i], i};
        bad |= !(x[i] < inf);
    }
    for (int64_t j = k / 2 - 1; j >= 0; j--) sift_down(h, k, j);
    for (; i < N && i % 8; i++) {
        bad |= !(x[i] < inf);
        offer(h, k, x[i], i);
    }
    __m256 bad8 = _mm256_setzero_ps();
    for (; i + 8 <= N; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(v, _mm256_set1_ps(inf), _CMP_NLT_UQ));
        int better = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(h[0].value), _CMP_GT_OQ));
        for (; better; better &= better - 1) /* offer checks again: the heap's smallest may have risen */
            offer(h, k, x[i + __builtin_ctz(better)], i + __builtin_ctz(better));
    }
    for (; i < N; i++) {
        bad |= !(x[i] < inf);
        offer(h, k, x[i], i);
    }
    if (bad || _mm256_movemask_ps(bad8)) return 1;
    for (int64_t n = k; n > 0; n--) { /* the smallest to the back, one at a time */
        values[n - 1] = h[0].value;
        ids[n - 1] = h[0].id;
        h[0] = h[n - 1];
        sift_down(h, n - 1, 0);
    }
    return 0;
}

/* x (B, N) fp32 -> values (B, k), ids (B, k). Returns how many rows held a NaN or +inf (not written), or
   -1 for k outside 1..N or no memory. */
int64_t gpt2kit_topk(const float *x, int64_t B, int64_t N, int64_t k, float *values, int64_t *ids, int threads) {
    if (k <= 0 || k > N) return -1;
    int64_t failed = 0, oom = 0;
    #pragma omp parallel num_threads(threads) if (B > 1) reduction(+ : failed, oom)
    {
        entry *h = malloc(sizeof(entry) * (size_t)k);
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (!h) { oom++; continue; }
            failed += row_topk(x + b * N, N, k, h, values + b * k, ids + b * k);
        }
        free(h);
    }
    return oom ? -1 : failed;
}
