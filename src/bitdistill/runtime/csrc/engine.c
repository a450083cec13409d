/* The decode engine: one call runs a whole forward step (all layers, attention with the KV cache, the LM
 * head) for T tokens at positions pos0..pos0+T-1, inside a single OpenMP parallel region. Work is split by
 * hand (static ranges per thread) with explicit barriers, so a decode step costs one fork/join.
 *
 * Numerics follow the Hugging Face eager forward in fp32 and BitLinear's eval path exactly (int8 per-token
 * activations, integer sums, acc * (delta / s)); the only differences are float summation orders. */
#include "bd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#define BARRIER _Pragma("omp barrier")
#else
#define BARRIER
#endif

typedef struct {
    int max_seq, max_t, nthreads, kp_max, width;
    float *kc, *vc;                 /* [layer][kv head][max_seq][head_dim] */
    float *x, *h, *q, *k, *v, *att, *g, *u, *tmp;
    int8_t *xq;
    float *xs;
    int32_t *xsum;
    uint8_t *ubuf;                  /* per thread: 4 * kp_max unpacked codes */
    float *scores;                  /* per thread: max_seq */
} bd_state;

static int ceil_to(int n, int m) { return (n + m - 1) / m * m; }
static int imax(int a, int b) { return a > b ? a : b; }

void bd_state_free(bd_state *st) {
    if (!st) return;
    free(st->kc); free(st->vc); free(st->x); free(st->h); free(st->q); free(st->k); free(st->v);
    free(st->att); free(st->g); free(st->u); free(st->tmp); free(st->xq); free(st->xs); free(st->xsum);
    free(st->ubuf); free(st->scores); free(st);
}

bd_state *bd_state_new(const bd_model *m, int max_seq, int max_t, int nthreads) {
    if (max_seq < 1 || max_t < 1 || nthreads < 1) return NULL;
    bd_state *st = calloc(1, sizeof(bd_state));
    if (!st) return NULL;
    st->max_seq = max_seq;
    st->max_t = max_t;
    st->nthreads = nthreads;
    int qd = m->n_heads * m->head_dim, kvd = m->n_kv * m->head_dim;
    st->width = imax(imax(m->hidden, qd), m->inter);
    st->kp_max = ceil_to(st->width, BD_BLOCK);
    size_t cache = (size_t)m->n_layers * kvd * max_seq, T = max_t;
    st->kc = calloc(cache, sizeof(float));
    st->vc = calloc(cache, sizeof(float));
    st->x = malloc(T * m->hidden * sizeof(float));
    st->h = malloc(T * st->width * sizeof(float));
    st->q = malloc(T * qd * sizeof(float));
    st->k = malloc(T * kvd * sizeof(float));
    st->v = malloc(T * kvd * sizeof(float));
    st->att = malloc(T * qd * sizeof(float));
    st->g = malloc(T * m->inter * sizeof(float));
    st->u = malloc(T * m->inter * sizeof(float));
    st->tmp = malloc(T * m->hidden * sizeof(float));
    st->xq = malloc(T * st->kp_max);
    st->xs = malloc(T * sizeof(float));
    st->xsum = malloc(T * sizeof(int32_t));
    st->ubuf = malloc((size_t)nthreads * 4 * st->kp_max);
    st->scores = malloc((size_t)nthreads * max_seq * sizeof(float));
    if (!st->kc || !st->vc || !st->x || !st->h || !st->q || !st->k || !st->v || !st->att || !st->g || !st->u ||
        !st->tmp || !st->xq || !st->xs || !st->xsum || !st->ubuf || !st->scores) {
        bd_state_free(st);
        return NULL;
    }
    return st;
}

size_t bd_state_bytes(const bd_model *m, int max_seq) {
    return (size_t)2 * m->n_layers * m->n_kv * m->head_dim * max_seq * sizeof(float);
}

static inline void part(int n, int tid, int nth, int *a, int *b) {
    int q = n / nth, r = n % nth;
    *a = tid * q + (tid < r ? tid : r);
    *b = *a + q + (tid < r);
}

static void rmsnorm(const float *x, const float *w, int n, float eps, float *y) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * (x[i] * inv);
}

/* rows [0,T) of x[T][stride_in] normed into y (may alias x) by this thread's share */
static void norm_rows(const float *x, const float *w, int T, int n, float eps, float *y, int tid, int nth) {
    int a, b;
    part(T, tid, nth, &a, &b);
    for (int t = a; t < b; t++) rmsnorm(x + (size_t)t * n, w, n, eps, y + (size_t)t * n);
}

static void quant_rows(const float *x, int T, int n, int kp, bd_state *st, int tid, int nth) {
    int a, b;
    part(T, tid, nth, &a, &b);
    for (int t = a; t < b; t++) bd_quantize_row(x + (size_t)t * n, n, kp, st->xq + (size_t)t * kp, &st->xs[t], &st->xsum[t]);
}

static void linear(const bd_linear *L, int T, float *y, bd_state *st, int tid, int nth) {
    int a, b;
    part(L->np / BD_ROWS, tid, nth, &a, &b);
    bd_linear_rows(L, a, b, st->xq, st->xs, st->xsum, T, y, st->ubuf + (size_t)tid * 4 * st->kp_max);
}

static inline float act(int kind, float x) {
    if (kind == BD_ACT_SILU) return x / (1.0f + expf(-x));
    if (kind == BD_ACT_GELU_TANH) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

static void rope(float *v, const float *inv_freq, float scale, int hd, int pos) {
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float f = (float)pos * inv_freq[i];
        float c = cosf(f) * scale, s = sinf(f) * scale;
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

static void layer_forward(const bd_model *m, const bd_layer *L, int li, int T, int pos0, bd_state *st, int tid,
                          int nth) {
    const int H = m->hidden, hd = m->head_dim, nh = m->n_heads, nkv = m->n_kv;
    const int qd = nh * hd, kvd = nkv * hd, I = m->inter;
    int a, b;

    /* attention block */
    norm_rows(st->x, L->in_norm, T, H, m->eps, st->h, tid, nth);
    BARRIER
    quant_rows(st->h, T, H, L->q.kp, st, tid, nth);
    BARRIER
    linear(&L->q, T, st->q, st, tid, nth);
    linear(&L->k, T, st->k, st, tid, nth);
    linear(&L->v, T, st->v, st, tid, nth);
    BARRIER
    /* per (token, head): q/k norm, RoPE, cache write */
    part(T * (nh + nkv), tid, nth, &a, &b);
    for (int it = a; it < b; it++) {
        int t = it / (nh + nkv), hh = it % (nh + nkv), pos = pos0 + t;
        if (hh < nh) {
            float *qh = st->q + (size_t)t * qd + (size_t)hh * hd;
            if (L->q_norm) rmsnorm(qh, L->q_norm, hd, m->eps, qh);
            rope(qh, L->inv_freq, L->rope_scale, hd, pos);
        } else {
            int kh = hh - nh;
            float *kv = st->k + (size_t)t * kvd + (size_t)kh * hd;
            if (L->k_norm) rmsnorm(kv, L->k_norm, hd, m->eps, kv);
            rope(kv, L->inv_freq, L->rope_scale, hd, pos);
            size_t off = (((size_t)li * nkv + kh) * st->max_seq + pos) * hd;
            memcpy(st->kc + off, kv, hd * sizeof(float));
            memcpy(st->vc + off, st->v + (size_t)t * kvd + (size_t)kh * hd, hd * sizeof(float));
        }
    }
    BARRIER
    /* per (token, head): causal (optionally sliding-window) softmax attention over the cache */
    float *sc = st->scores + (size_t)tid * st->max_seq;
    const int rep = nh / nkv;
    part(T * nh, tid, nth, &a, &b);
    for (int it = a; it < b; it++) {
        int t = it / nh, hh = it % nh, pos = pos0 + t, kh = hh / rep;
        int lo = (L->window > 0 && pos - L->window + 1 > 0) ? pos - L->window + 1 : 0;
        const float *qh = st->q + (size_t)t * qd + (size_t)hh * hd;
        const float *kb = st->kc + ((size_t)li * nkv + kh) * st->max_seq * hd;
        const float *vb = st->vc + ((size_t)li * nkv + kh) * st->max_seq * hd;
        float mx = -INFINITY;
        for (int j = lo; j <= pos; j++) {
            const float *kj = kb + (size_t)j * hd;
            float s = 0.0f;
            for (int d = 0; d < hd; d++) s += qh[d] * kj[d];
            s *= m->attn_scale;
            if (m->attn_softcap > 0.0f) s = tanhf(s / m->attn_softcap) * m->attn_softcap;
            sc[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        for (int j = lo; j <= pos; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        float *o = st->att + (size_t)t * qd + (size_t)hh * hd;
        for (int d = 0; d < hd; d++) o[d] = 0.0f;
        for (int j = lo; j <= pos; j++) {
            const float *vj = vb + (size_t)j * hd;
            float p = sc[j] / sum;
            for (int d = 0; d < hd; d++) o[d] += p * vj[d];
        }
    }
    BARRIER
    if (L->o.sub_norm) {
        norm_rows(st->att, L->o.sub_norm, T, qd, m->eps, st->att, tid, nth);
        BARRIER
    }
    quant_rows(st->att, T, qd, L->o.kp, st, tid, nth);
    BARRIER
    linear(&L->o, T, st->tmp, st, tid, nth);
    BARRIER
    part(T, tid, nth, &a, &b);
    for (int t = a; t < b; t++) {
        float *o = st->tmp + (size_t)t * H, *x = st->x + (size_t)t * H;
        if (L->post_attn_norm) rmsnorm(o, L->post_attn_norm, H, m->eps, o);
        for (int i = 0; i < H; i++) x[i] += o[i];
        rmsnorm(x, L->pre_ffn_norm, H, m->eps, st->h + (size_t)t * H);
    }
    BARRIER
    /* feed-forward block */
    quant_rows(st->h, T, H, L->gate.kp, st, tid, nth);
    BARRIER
    linear(&L->gate, T, st->g, st, tid, nth);
    linear(&L->up, T, st->u, st, tid, nth);
    BARRIER
    part(T * I, tid, nth, &a, &b);
    for (int i = a; i < b; i++) st->g[i] = act(m->act, st->g[i]) * st->u[i];
    BARRIER
    if (L->down.sub_norm) {
        norm_rows(st->g, L->down.sub_norm, T, I, m->eps, st->g, tid, nth);
        BARRIER
    }
    quant_rows(st->g, T, I, L->down.kp, st, tid, nth);
    BARRIER
    linear(&L->down, T, st->tmp, st, tid, nth);
    BARRIER
    part(T, tid, nth, &a, &b);
    for (int t = a; t < b; t++) {
        float *o = st->tmp + (size_t)t * H, *x = st->x + (size_t)t * H;
        if (L->post_ffn_norm) rmsnorm(o, L->post_ffn_norm, H, m->eps, o);
        for (int i = 0; i < H; i++) x[i] += o[i];
    }
    BARRIER
}

/* Returns 0 on success, a negative code when the arguments do not fit the state (checked before any work). */
int bd_forward(const bd_model *m, bd_state *st, const int32_t *tokens, int T, int pos0, float *logits,
               int all_logits, int nthreads) {
    if (!m || !st || T < 1 || T > st->max_t || pos0 < 0 || pos0 + T > st->max_seq) return -1;
    if (nthreads < 1 || nthreads > st->nthreads) return -2;
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return -3;
    const int H = m->hidden, V = m->vocab;
    const int t0 = all_logits ? 0 : T - 1, nout = T - t0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        int a, b;
        part(T, tid, nth, &a, &b);
        for (int t = a; t < b; t++) {
            float *x = st->x + (size_t)t * H;
            bd_row_to_f32(m->embed, m->embed_dtype, m->embed_rscale, tokens[t], H, x);
            if (m->embed_scale != 1.0f)
                for (int i = 0; i < H; i++) x[i] *= m->embed_scale;
        }
        BARRIER
        for (int li = 0; li < m->n_layers; li++) layer_forward(m, &m->layers[li], li, T, pos0, st, tid, nth);
        /* final norm (+ symmetric int8 quantization for an int8 head) of the rows that need logits */
        part(nout, tid, nth, &a, &b);
        for (int t = a; t < b; t++) {
            float *h = st->h + (size_t)t * H;
            rmsnorm(st->x + (size_t)(t0 + t) * H, m->final_norm, H, m->eps, h);
            if (m->head_dtype == BD_I8) bd_quantize_row_sym(h, H, st->xq + (size_t)t * H, &st->xs[t]);
        }
        BARRIER
        part((V + 3) / 4, tid, nth, &a, &b);
        int r1 = b * 4 < V ? b * 4 : V;
        bd_dense_rows(m->head, m->head_dtype, m->head_rscale, V, H, a * 4, r1, st->h, st->xq, st->xs, nout,
                      logits);
        if (m->final_softcap > 0.0f) {
            BARRIER
            part(nout * V, tid, nth, &a, &b);
            for (int i = a; i < b; i++) logits[i] = tanhf(logits[i] / m->final_softcap) * m->final_softcap;
        }
    }
    return 0;
}

/* ---- entry points for tests and micro-benchmarks of single kernels ---- */

void bd_quantize(const float *x, int T, int k, int kp, int8_t *xq, float *s, int32_t *sum) {
    for (int t = 0; t < T; t++) bd_quantize_row(x + (size_t)t * k, k, kp, xq + (size_t)t * kp, &s[t], &sum[t]);
}

/* int32 sums sum_k W_q[row,k] * xq[t,k]; gemm=1 takes the prefill (unpack + reuse) path. */
void bd_ternary_acc(const uint8_t *w, int n, int kp, const int8_t *xq, int T, int32_t *acc, int gemm) {
    const int nb = kp / BD_BLOCK, ng = (n + 3) / 4;
    uint8_t *u = gemm ? malloc((size_t)4 * kp) : NULL;
    for (int g = 0; g < ng; g++) {
        const uint8_t *wg = w + (size_t)g * kp;
        if (u) bd_unpack4(wg, nb, u);
        for (int t = 0; t < T; t++) {
            const int8_t *xt = xq + (size_t)t * kp;
            int32_t a[4], xsum = 0;
            for (int i = 0; i < kp; i++) xsum += xt[i];
            if (u)
                bd_udot4(u, kp, xt, a);
            else
                bd_tdot4(wg, xt, nb, a);
            for (int r = 0; r < 4 && g * 4 + r < n; r++) acc[(size_t)t * n + g * 4 + r] = a[r] - xsum;
        }
    }
    free(u);
}

/* A BitLinear forward (quantize + ternary matmul + scale + bias) for x[T][k] -> y[T][n]. */
int bd_linear_forward(const bd_linear *L, const float *x, int T, float *y, int nthreads, int gemm) {
    int8_t *xq = malloc((size_t)T * L->kp);
    float *xs = malloc((size_t)T * sizeof(float));
    int32_t *xsum = malloc((size_t)T * sizeof(int32_t));
    uint8_t *ub = gemm ? malloc((size_t)nthreads * 4 * L->kp) : NULL;
    if (!xq || !xs || !xsum || (gemm && !ub)) {
        free(xq); free(xs); free(xsum); free(ub);
        return -1;
    }
    bd_quantize(x, T, L->k, L->kp, xq, xs, xsum);
    int ng = L->np / BD_ROWS;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        int a, b;
        part(ng, tid, nth, &a, &b);
        bd_linear_rows(L, a, b, xq, xs, xsum, T, y, ub ? ub + (size_t)tid * 4 * L->kp : NULL);
    }
    free(xq); free(xs); free(xsum); free(ub);
    return 0;
}

/* A dense (LM head) matmul x[T][k] -> y[T][n]; int8 weights quantize x symmetrically per row first. */
int bd_dense_forward(const void *w, int dtype, const float *rscale, int n, int k, const float *x, int T, float *y,
                     int nthreads) {
    int8_t *xq = malloc((size_t)T * k + 1);
    float *xs = malloc((size_t)T * sizeof(float));
    if (!xq || !xs) {
        free(xq); free(xs);
        return -1;
    }
    if (dtype == BD_I8)
        for (int t = 0; t < T; t++) bd_quantize_row_sym(x + (size_t)t * k, k, xq + (size_t)t * k, &xs[t]);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        int a, b;
        part((n + 3) / 4, tid, nth, &a, &b);
        int r1 = b * 4 < n ? b * 4 : n;
        bd_dense_rows(w, dtype, rscale, n, k, a * 4, r1, x, xq, xs, T, y);
    }
    free(xq); free(xs);
    return 0;
}
