/* One decoding step of GPT-2 (one new token for each of B rows) in a single call.

   At batch 1 the matrices of 124M take 7-20 ms a token with matvec.c, and driving the ~300 small
   PyTorch operations around them from Python (LayerNorm, attention, residuals, ~20 us each) took
   another 5 ms. Here the whole step is one C call: the same arithmetic as gpt2kit/model.py
   (LayerNorm, attention over the KV cache with its padding mask, tanh GELU, tied output head), in
   fp32, with the matrices through gpt2kit_linear and attention through attention.c. Prompts (many tokens at once) still go through
   PyTorch, which fills the same cache. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int gpt2kit_linear(const float *x, int64_t M, int64_t K, const void *W, int64_t N, int kind,
                   const float *scale, const float *bias, int gelu, float *y, int threads);

/* One matrix of the model: weight (N, K) stored as `kind` (gpt2kit_linear's), its scales (int8
   only) and bias (or NULL). */
typedef struct {
    const void *weight;
    const float *scale;
    const float *bias;
    int64_t kind;
} matrix;

typedef struct {
    const float *ln_1_w, *ln_1_b;
    matrix c_attn, attn_c_proj;
    const float *ln_2_w, *ln_2_b;
    matrix c_fc, mlp_c_proj;
} layer;

/* Field order and types mirror the ctypes Structures in gpt2kit/cpu/structs.py. */
typedef struct {
    int64_t n_layer, n_embd, n_head, n_vocab;
    float eps;              /* LayerNorm epsilon */
    const float *wte, *wpe; /* (n_vocab, C), (n_ctx, C), fp32 */
    const float *ln_f_w, *ln_f_b;
    matrix head;            /* (n_vocab, C) */
    const layer *h;         /* n_layer of them */
} model;

void gpt2kit_attend(const float *q, const void *kb, const void *vb, const uint8_t *valid, int64_t length,
                    int64_t hs, float scale, float *w, float *out, int kv16); /* attention.c */
void gpt2kit_store_kv(void *dst, const float *src, int64_t hs, int kv16);

static void layer_norm(const float *x, const float *w, const float *b, float eps, int64_t B, int64_t C, float *out) {
    for (int64_t i = 0; i < B; i++) {
        const float *xi = x + i * C;
        float mean = 0.0f, var = 0.0f;
        for (int64_t c = 0; c < C; c++) mean += xi[c];
        mean /= (float)C;
        for (int64_t c = 0; c < C; c++) var += (xi[c] - mean) * (xi[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        for (int64_t c = 0; c < C; c++) out[i * C + c] = (xi[c] - mean) * rstd * w[c] + b[c];
    }
}

static int linear(const model *m, const matrix *mat, const float *x, int64_t B, int64_t K, int64_t N, int gelu,
                  float *y, int threads) {
    (void)m;
    return gpt2kit_linear(x, B, K, mat->weight, N, (int)mat->kind, mat->scale, mat->bias, gelu, y, threads);
}

/* tokens, positions, slots: (B,): row i's token, its position, and its row of the cache (a batch's dead
   slots are not computed: a row that left costs nothing until another takes its slot). k_cache, v_cache:
   (n_layer, Bc, n_head, S, hs), fp32 or fp16 (kv16), written at index `length`. valid: (Bc, S) bytes, 0 at left padding.
   logits: (B, n_vocab) out. Returns 0 on success. */
int gpt2kit_decode_step(const model *m, const int64_t *tokens, const int64_t *positions, const int64_t *slots,
                        int64_t B, int64_t Bc, void *k_cache, void *v_cache, int kv16, const uint8_t *valid,
                        int64_t S, int64_t length, float *logits, int threads) {
    const size_t es = kv16 ? 2 : 4; /* bytes of a cached value */
    const int64_t C = m->n_embd, nh = m->n_head, hs = C / nh, L = m->n_layer;
    if (B <= 0 || B > Bc || length < 0 || length >= S || C % nh != 0) return 1;
    for (int64_t i = 0; i < B; i++)
        if (slots[i] < 0 || slots[i] >= Bc) return 1;
    float *x = malloc(sizeof(float) * B * C);       /* the residual stream (B, C) */
    float *h = malloc(sizeof(float) * B * C);       /* LayerNorm output, then attention output */
    float *qkv = malloc(sizeof(float) * B * 3 * C); /* (B, 3C): q | k | v */
    float *f = malloc(sizeof(float) * B * 4 * C);   /* the MLP's hidden layer (B, 4C) */
    float *y = malloc(sizeof(float) * B * C);
    float *att = malloc(sizeof(float) * B * nh * (length + 1)); /* attention weights (B, nh, length+1) */
    int rc = 0;
    if (!x || !h || !qkv || !f || !y || !att) { rc = 2; goto done; }
    const float scale = 1.0f / sqrtf((float)hs);

    for (int64_t i = 0; i < B; i++)
        for (int64_t c = 0; c < C; c++)
            x[i * C + c] = m->wte[tokens[i] * C + c] + m->wpe[positions[i] * C + c];

    for (int64_t l = 0; l < L; l++) {
        const layer *ly = &m->h[l];
        layer_norm(x, ly->ln_1_w, ly->ln_1_b, m->eps, B, C, h);
        if ((rc = linear(m, &ly->c_attn, h, B, C, 3 * C, 0, qkv, threads))) goto done;
        /* Store this token's keys and values at cache index `length`. */
        for (int64_t i = 0; i < B; i++)
            for (int64_t hd = 0; hd < nh; hd++) {
                size_t at = ((((size_t)l * Bc + slots[i]) * nh + hd) * S + length) * hs * es;
                gpt2kit_store_kv((char *)k_cache + at, qkv + i * 3 * C + C + hd * hs, hs, kv16);
                gpt2kit_store_kv((char *)v_cache + at, qkv + i * 3 * C + 2 * C + hd * hs, hs, kv16);
            }
        /* Attention of the one query over keys 0..length. Result into h (B, C). */
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t bh = 0; bh < B * nh; bh++) {
            int64_t i = bh / nh, hd = bh % nh;
            size_t at = (((size_t)l * Bc + slots[i]) * nh + hd) * S * hs * es;
            gpt2kit_attend(qkv + i * 3 * C + hd * hs, (const char *)k_cache + at, (const char *)v_cache + at,
                           valid + slots[i] * S, length, hs, scale, att + bh * (length + 1), h + i * C + hd * hs, kv16);
        }
        if ((rc = linear(m, &ly->attn_c_proj, h, B, C, C, 0, y, threads))) goto done;
        for (int64_t e = 0; e < B * C; e++) x[e] += y[e];
        layer_norm(x, ly->ln_2_w, ly->ln_2_b, m->eps, B, C, h);
        if ((rc = linear(m, &ly->c_fc, h, B, C, 4 * C, 1, f, threads))) goto done;
        if ((rc = linear(m, &ly->mlp_c_proj, f, B, 4 * C, C, 0, y, threads))) goto done;
        for (int64_t e = 0; e < B * C; e++) x[e] += y[e];
    }
    layer_norm(x, m->ln_f_w, m->ln_f_b, m->eps, B, C, h);
    rc = linear(m, &m->head, h, B, C, m->n_vocab, 0, logits, threads);
done:
    free(x); free(h); free(qkv); free(f); free(y); free(att);
    return rc;
}
