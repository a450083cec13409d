/* The decode engine: one call runs a whole forward step (all layers, attention with the KV cache, the LM
 * head) for T tokens of one or several sequences (bd_forward_seqs), inside a single OpenMP parallel region.
 * Work is split by hand (static ranges per thread) with explicit barriers, so a step costs one fork/join.
 *
 * Numerics follow the Hugging Face eager forward in fp32 and BitLinear's eval path exactly (int8 per-token
 * activations, integer sums, acc * (delta / s)); the only differences are float summation orders. */
#define _GNU_SOURCE
#include "bd.h"

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

/* this thread's index and the team size inside a parallel region (0 and 1 without OpenMP) */
#ifdef _OPENMP
#define THREAD_IDS(tid, nth) int tid = omp_get_thread_num(), nth = omp_get_num_threads()
#else
#define THREAD_IDS(tid, nth) int tid = 0, nth = 1
#endif

/* A sense-reversing barrier that spins briefly and then sleeps in the kernel (a futex on Linux). OpenMP's
 * own barrier spins for a long time before sleeping, which is fast on an idle machine but collapses when
 * the cores are shared with other processes (a waiting thread burns the time slice its partner needs); a
 * sched_yield loop still competes for the core. Spin-then-sleep keeps the quick hand-off when the partner
 * is running and gives the core away when it is not; the last thread in wakes sleepers only if there are
 * any. Together with the work dispenser (grab) a late thread costs little. */
typedef struct {
    atomic_int count;
    atomic_int sense;
    atomic_int sleepers;
} bd_barrier;

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static void futex_wait(atomic_int *addr, int val) {
    syscall(SYS_futex, (int *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static void futex_wake_all(atomic_int *addr) { syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, 1 << 30, NULL, NULL, 0); }
#else
static void futex_wait(atomic_int *addr, int val) { (void)addr; (void)val; sched_yield(); }
static void futex_wake_all(atomic_int *addr) { (void)addr; }
#endif

static void barrier_wait(bd_barrier *b, int n, int *local_sense) {
    if (n == 1) return;
    int s = !*local_sense;
    *local_sense = s;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->sense, s, memory_order_seq_cst);
        if (atomic_load_explicit(&b->sleepers, memory_order_seq_cst) > 0) futex_wake_all(&b->sense);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->sense, memory_order_acquire) != s;) {
        if (++spins < 2000) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            continue;
        }
        /* announce the sleep before re-checking, so the waker (which flips sense, then reads sleepers)
         * either sees us or we see its flip: FUTEX_WAIT returns at once if sense already changed */
        atomic_fetch_add_explicit(&b->sleepers, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&b->sense, memory_order_seq_cst) != s) futex_wait(&b->sense, !s);
        atomic_fetch_sub_explicit(&b->sleepers, 1, memory_order_seq_cst);
    }
}

/* bd_set_profile(1) (native.py passes BITDISTILL_PROFILE): per-thread time per phase (rdtsc), printed to
 * stderr by bd_profile_dump(). Off by default. */
enum { P_PREP, P_QKV, P_ATTN, P_O, P_FFN, P_DOWN, P_RESID, P_BAR, P_HEADPREP, P_HEAD, P_EMB, P_N };
static const char *P_NAMES[P_N] = {"norm+quant", "q/k/v", "attention", "o_proj", "gate/up+act", "down",
                                   "residual", "barrier wait", "final norm", "lm head", "embed"};
static unsigned long long g_prof[8][P_N];
static int g_prof_on = 0;
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define TICK() (g_prof_on ? __rdtsc() : 0ULL)
#else
#define TICK() 0ULL
#endif
#define PROF(ph) do { if (g_prof_on && tid < 8) { unsigned long long _t = TICK(); g_prof[tid][ph] += _t - *pt; *pt = _t; } } while (0)

void bd_set_profile(int on) { g_prof_on = on != 0; }

int bd_profile_phases(void) { return P_N; }

const char *bd_profile_phase_name(int p) { return p >= 0 && p < P_N ? P_NAMES[p] : NULL; }

/* the counters as data: out[t][p] = rdtsc ticks of phase p on thread t, for threads t < min(n_threads, 8) */
void bd_profile_read(unsigned long long *out, int n_threads) {
    for (int t = 0; t < n_threads && t < 8; t++) memcpy(out + (size_t)t * P_N, g_prof[t], sizeof g_prof[t]);
}

void bd_profile_reset(void) { memset(g_prof, 0, sizeof g_prof); }

void bd_profile_dump(void) {
    if (!g_prof_on) return;
    for (int t = 0; t < 8; t++) {
        unsigned long long tot = 0;
        for (int p = 0; p < P_N; p++) tot += g_prof[t][p];
        if (!tot) continue;
        fprintf(stderr, "thread %d: %.1f Mcycles\n", t, tot / 1e6);
        for (int p = 0; p < P_N; p++)
            fprintf(stderr, "  %-14s %8.2f Mcyc %5.1f%%\n", P_NAMES[p], g_prof[t][p] / 1e6, 100.0 * g_prof[t][p] / tot);
    }
    memset(g_prof, 0, sizeof g_prof);
}

#define BARRIER { barrier_wait(&st->barrier, nth, &st->tls[tid].sense); PROF(P_BAR); }

/* Per-thread private scratch. In a short batch (decode) every thread keeps its own copy of the residual stream
 * and computes the cheap per-token steps (norms, activation quantization, residual adds) redundantly, so the
 * only synchronisation points are the five places where a thread needs rows another thread produced. A long
 * batch on several threads splits those steps by rows instead (see bd_rows). */
typedef struct {
    float *x, *h, *o, *xs, *scores, *rope;
    float *act;         /* one row of the FFN gate output, silu(g) * u (width floats) */
    int8_t *xq;
    int32_t *xsum, *xg; /* xg: q4 head group sums [T][ceil(hidden/64)] */
    uint8_t *ubuf;
    int sense;
    long base, pending; /* work tickets: this call's first ticket, one grabbed for a later call (-1: none) */
    unsigned long long tick; /* profiling: time of the last phase boundary */
    char pad[64]; /* keep each thread's hot fields off its neighbours' cache lines */
} bd_tls;

typedef struct {
    int max_seq, max_t, nthreads, kp_max, width;
    void *kc, *vc; /* [layer][kv head][max_seq][head_dim], float or (kv16) IEEE half */
    int kv16;
    float *q, *k, *v, *att, *g, *u, *tmp; /* shared: rows written by their owner thread */
    /* long batches on several threads (bd_rows.split): the residual stream [max_t][hidden] and the quantized
     * input slots of the next linear(s), nslots x ([max_t][kp_max] int8, [max_t] scales, [max_t] sums);
     * NULL when nthreads is 1 */
    float *x, *ss;
    int8_t *sq;
    int32_t *ssum;
    int nslots;
    int32_t *pos, *seq0, *rows;           /* bd_forward's single-sequence arguments to bd_forward_seqs */
    int nrope;                            /* distinct RoPE tables (inv_freq, scale) among the layers */
    int32_t *rope_of;                     /* [n_layers]: the layer's table, 0..nrope-1 */
    bd_tls *tls;
    bd_barrier barrier;
    char pad[64];
    atomic_long next_ticket; /* the work dispenser (see grab), on its own cache line */
    char pad2[56];
} bd_state;

static int ceil_to(int n, int m) { return (n + m - 1) / m * m; }
static int imax(int a, int b) { return a > b ? a : b; }

void bd_state_free(bd_state *st) {
    if (!st) return;
    if (st->tls)
        for (int i = 0; i < st->nthreads; i++) {
            bd_tls *t = &st->tls[i];
            free(t->x); free(t->h); free(t->o); free(t->xs); free(t->scores); free(t->xq); free(t->xsum);
            free(t->ubuf); free(t->rope); free(t->xg); free(t->act);
        }
    free(st->tls);
    free(st->kc); free(st->vc); free(st->q); free(st->k); free(st->v); free(st->att); free(st->g); free(st->u);
    free(st->tmp); free(st->pos); free(st->seq0); free(st->rows); free(st->rope_of);
    free(st->x); free(st->sq); free(st->ss); free(st->ssum); free(st);
}

/* Every buffer of the state starts on a cache line and fills whole lines, so one thread's private scratch
 * never shares a line with another's (the per-thread rows are written many times per step). Buffers of
 * 2 MiB and more (the KV cache, a long batch's activations) start on a 2 MiB boundary and are advised
 * MADV_HUGEPAGE: decode reads every layer's and head's cache rows, scattered over many 4 KiB pages, each
 * token (the weights get the same from runtime/arena.py). Zero filled; released with free().
 * bd_set_huge_pages(0) (native.py passes BITDISTILL_HUGEPAGES=0) leaves them in ordinary pages. */
static int g_huge_pages = 1;
void bd_set_huge_pages(int on) { g_huge_pages = on != 0; }

static void *state_alloc(size_t n, size_t size) {
    const size_t line = 64, huge = (size_t)2 << 20;
    size_t bytes = (n * size + line - 1) / line * line;
    if (!bytes) bytes = line;
    void *p = NULL;
#ifdef __linux__
    if (g_huge_pages && bytes >= huge) {
        if (posix_memalign(&p, huge, bytes)) return NULL;
        madvise(p, bytes, MADV_HUGEPAGE); /* advice only: a kernel without THP ignores it */
        return memset(p, 0, bytes);
    }
#endif
#ifdef _WIN32
    return calloc(1, bytes); /* MSVC has no aligned_alloc that free() releases */
#else
    p = aligned_alloc(line, bytes);
    return p ? memset(p, 0, bytes) : NULL;
#endif
}

bd_state *bd_state_new(const bd_model *m, int max_seq, int max_t, int nthreads, int kv16) {
    if (max_seq < 1 || max_t < 1 || nthreads < 1) return NULL;
    bd_state *st = calloc(1, sizeof(bd_state));
    if (!st) return NULL;
    st->max_seq = max_seq;
    st->max_t = max_t;
    st->nthreads = nthreads;
    int qd = m->n_heads * m->head_dim, kvd = m->n_kv * m->head_dim;
    st->width = imax(imax(m->hidden, qd), m->inter);
    st->kp_max = ceil_to(st->width, BD_BLOCK);
    size_t cache = (size_t)m->n_layers * kvd * max_seq, T = max_t, F = sizeof(float);
    st->kv16 = kv16 != 0;
    st->kc = state_alloc(cache, kv16 ? 2 : F);
    st->vc = state_alloc(cache, kv16 ? 2 : F);
    st->q = state_alloc(T * qd, F);
    st->k = state_alloc(T * kvd, F);
    st->v = state_alloc(T * kvd, F);
    st->att = state_alloc(T * qd, F);
    st->g = state_alloc(T * m->inter, F);
    st->u = state_alloc(T * m->inter, F);
    st->tmp = state_alloc(T * m->hidden, F);
    st->pos = state_alloc(T, sizeof(int32_t));
    st->seq0 = state_alloc(T, sizeof(int32_t));
    st->rows = state_alloc(T, sizeof(int32_t));
    st->tls = calloc(nthreads, sizeof(bd_tls));
    st->rope_of = state_alloc(imax(m->n_layers, 1), sizeof(int32_t));
    int ok = st->kc && st->vc && st->q && st->k && st->v && st->att && st->g && st->u && st->tmp && st->tls && st->pos &&
             st->seq0 && st->rows && st->rope_of;
    for (int li = 0; ok && li < m->n_layers; li++) { /* layers share a table when they share its inputs */
        const bd_layer *L = &m->layers[li];
        int r = 0;
        while (r < li && !(m->layers[r].inv_freq == L->inv_freq && m->layers[r].rope_scale == L->rope_scale)) r++;
        st->rope_of[li] = r < li ? st->rope_of[r] : st->nrope++;
    }
    if (ok && nthreads > 1) {
        /* one slot, or one per linear of a group when the linears have their own SubLN (allnorm) */
        st->nslots = 1;
        for (int li = 0; li < m->n_layers; li++)
            if (m->layers[li].q.sub_norm || m->layers[li].gate.sub_norm) st->nslots = 3;
        st->x = state_alloc(T * m->hidden, F);
        st->sq = state_alloc(st->nslots * T, st->kp_max);
        st->ss = state_alloc(st->nslots * T, F);
        st->ssum = state_alloc(st->nslots * T, sizeof(int32_t));
        ok = st->x && st->sq && st->ss && st->ssum;
    }
    for (int i = 0; ok && i < nthreads; i++) {
        bd_tls *t = &st->tls[i];
        t->x = state_alloc(T * m->hidden, F);
        t->h = state_alloc(T * st->width, F);
        t->o = state_alloc(T * m->hidden, F);
        t->xs = state_alloc(T, F);
        t->scores = state_alloc((size_t)max_seq * (m->n_heads / m->n_kv), F); /* a kv head's query heads */
        t->xq = state_alloc(T, imax(st->kp_max, m->hidden));
        t->xsum = state_alloc(T, sizeof(int32_t));
        t->ubuf = state_alloc(BD_PANEL_ROWS, st->kp_max);
        t->rope = state_alloc(T * m->head_dim * imax(st->nrope, 1), F);
        t->xg = state_alloc(T * ((m->hidden + BD_Q4_GROUP - 1) / BD_Q4_GROUP), sizeof(int32_t));
        t->act = state_alloc(st->width, F);
        ok = t->x && t->h && t->o && t->xs && t->scores && t->xq && t->xsum && t->ubuf && t->rope && t->xg && t->act;
    }
    if (!ok) {
        bd_state_free(st);
        return NULL;
    }
    return st;
}

size_t bd_state_bytes(const bd_model *m, int max_seq, int kv16) {
    return (size_t)2 * m->n_layers * m->n_kv * m->head_dim * max_seq * (kv16 ? 2 : sizeof(float));
}

static inline void part(int n, int tid, int nth, int *a, int *b) {
    int q = n / nth, r = n % nth;
    *a = tid * q + (tid < r ? tid : r);
    *b = *a + q + (tid < r);
}

/* Work is handed out in chunks by one shared ticket counter instead of fixed per-thread ranges, so a thread
 * that lost its core to another process does less of the work rather than making every other thread wait
 * for its share at the next barrier. Every thread walks the same sequence of parallel loops (same n each),
 * so each knows the loop's first ticket (tl->base) without synchronising; a ticket taken past the end of a
 * loop belongs to a later loop and is kept for it (tl->pending), so no ticket is lost or run twice. Which
 * thread computes a chunk never changes its values: results are identical for any thread count. */
static int grab(bd_state *st, bd_tls *tl, int n) {
    long t = tl->pending >= 0 ? tl->pending : atomic_fetch_add_explicit(&st->next_ticket, 1, memory_order_relaxed);
    tl->pending = -1;
    if (t < tl->base + n) return (int)(t - tl->base);
    tl->pending = t;
    tl->base += n;
    return -1;
}

/* chunks of a loop over n items: one per thread, at least `min` items each. A thread that never started takes
 * the other's chunk; 4 per thread (the first design, so that a late thread also leaves little of a started loop
 * behind) cost ~0.3 us per extra chunk on a Zen 5 VM (the shared counter's cache line and the weight stream
 * restarting): SmolLM2 decode 2 threads 751 -> 898 tok/s, prefill 5828 -> 6162, Qwen3 shape 198 -> 214, and
 * with one core busy forced 2-thread decode collapsed alike (148 vs 139 tok/s: a descheduled thread holds
 * the barrier for its time slice however little it holds; ThreadPicker runs such calls on one thread) */
static inline int n_chunks(int n, int nth, int min) {
    int c = nth;
    if (c > (n + min - 1) / min) c = (n + min - 1) / min;
    return c < 1 ? 1 : c;
}

/* The per-token steps of a long batch on several threads (embedding, residual adds, norms, activation
 * quantization: ~10 % of a 128-token prefill on 2 threads, done by every thread in full) are split by rows:
 * chunks of rows from the dispenser (so a thread that lost its core takes fewer instead of holding everyone at
 * the next barrier), in the shared residual stream st->x, the quantized rows into shared input slots that a
 * barrier publishes before the matmul. A short batch (decode) keeps every thread computing all rows into its
 * own buffers: the extra barriers (5 per layer) would cost more than the rows. A row's values do not depend on
 * which thread computes it, so both ways give identical results. */
#define SPLIT_MIN_ROWS 8 /* rows per thread from which splitting pays */

typedef struct {
    int t0, t1, split; /* rows [t0, t1) (see next_rows); split: shared buffers, else private (all rows) */
    float *x;          /* the residual stream [T][hidden]: st->x when split, else this thread's own copy */
    int T, nth;
} bd_rows;

static bd_rows row_plan(bd_state *st, bd_tls *tl, int T, int nth) {
    const int split = nth > 1 && st->x && T >= SPLIT_MIN_ROWS * nth;
    return (bd_rows){0, T, split, split ? st->x : tl->x, T, nth};
}

/* the rows this thread works on next, into C: a private batch all of them, once; a split one a chunk (about 4
 * per thread) from the dispenser. Every thread walks the same loops, as grab() needs. */
static int next_rows(bd_state *st, bd_tls *tl, const bd_rows *R, int *done, bd_rows *C) {
    *C = *R;
    if (!R->split) return (*done)++ == 0;
    const int nc = n_chunks(R->T, R->nth, 2), c = grab(st, tl, nc);
    if (c < 0) return 0;
    part(R->T, c, nc, &C->t0, &C->t1);
    return 1;
}
#define FOR_ROWS(C) for (int done_ = 0; next_rows(st, tl, R, &done_, &(C));)

/* quantized input rows of a linear: xq [T][kp], scales [T], code sums [T] */
typedef struct {
    int8_t *q;
    float *s;
    int32_t *sum;
} bd_qin;

/* input slot j: this thread's buffers, or shared slot j of a split batch */
static bd_qin qin(const bd_state *st, bd_tls *tl, const bd_rows *R, int j) {
    if (!R->split) return (bd_qin){tl->xq, tl->xs, tl->xsum};
    const size_t T = st->max_t;
    return (bd_qin){st->sq + j * T * st->kp_max, st->ss + j * T, st->ssum + j * T};
}

/* this thread's rows of src[T][n], normed by `norm` if given (through the one-row scratch tmp), quantized
 * into `in` */
static void prep_input(const float *src, const float *norm, const bd_rows *R, int n, int kp, float eps, float *tmp,
                       bd_qin in) {
    for (int t = R->t0; t < R->t1; t++) {
        const float *row = src + (size_t)t * n;
        if (norm) /* the norm hands over max |row| for the quantization */
            bd_quantize_row_amax(tmp, n, kp, bd_rmsnorm(row, norm, n, eps, tmp), in.q + (size_t)t * kp, &in.s[t],
                                 &in.sum[t]);
        else
            bd_quantize_row(row, n, kp, in.q + (size_t)t * kp, &in.s[t], &in.sum[t]);
    }
}

/* this thread's rows of src[T][n] normed by `norm` into dst[T][n] */
static void norm_rows(const float *src, const float *norm, const bd_rows *R, int n, float eps, float *dst) {
    for (int t = R->t0; t < R->t1; t++) bd_rmsnorm(src + (size_t)t * n, norm, n, eps, dst + (size_t)t * n);
}

/* the row groups of a linear, in chunks taken from the dispenser (at least 8 groups = 32 rows each) */
static void linear(const bd_linear *L, int T, bd_qin in, float *y, bd_state *st, bd_tls *tl, int nth) {
    const int ng = L->np / BD_ROWS, nc = n_chunks(ng, nth, 8);
    for (int c; (c = grab(st, tl, nc)) >= 0;) {
        int a, b;
        part(ng, c, nc, &a, &b);
        bd_linear_rows(L, a, b, in.q, in.s, in.sum, T, y, tl->ubuf);
    }
}

/* q/k/v (and gate/up) read the same input, the block's normed residual stream. Without their own SubLN they
 * share one quantized copy of it (one prep_input for the group). With the authors' allnorm each of them has a
 * sub_norm: the normed rows are kept in this thread's tl->o ([T][H], free outside residual()) and each linear
 * re-norms and quantizes them with its own weights, right before its matmul (or, split, all of them at once
 * into their own slots, published by the one barrier); that is 2-3 extra O(T*H) passes per group, against
 * O(T*H*n) for the matmuls. */
static int own_norms(const bd_linear *const *Ls, int nl) {
    for (int j = 0; j < nl; j++)
        if (Ls[j]->sub_norm) return 1;
    return 0;
}

static void prep_group(const bd_linear *const *Ls, int nl, const float *norm, const bd_rows *R, int H, float eps,
                       bd_state *st, bd_tls *tl) {
    if (!own_norms(Ls, nl)) {
        prep_input(R->x, norm, R, H, Ls[0]->kp, eps, tl->h, qin(st, tl, R, 0));
        return;
    }
    norm_rows(R->x, norm, R, H, eps, tl->o);
    if (R->split)
        for (int j = 0; j < nl; j++) prep_input(tl->o, Ls[j]->sub_norm, R, H, Ls[j]->kp, eps, tl->h, qin(st, tl, R, j));
}

/* run linear j of a group prepared by prep_group (quantizing its own normed input first under allnorm) */
static void group_linear(const bd_linear *const *Ls, int nl, int j, int T, int H, float eps, float *y, const bd_rows *R,
                         bd_state *st, bd_tls *tl, int nth) {
    const int own = own_norms(Ls, nl);
    if (own && !R->split) prep_input(tl->o, Ls[j]->sub_norm, R, H, Ls[j]->kp, eps, tl->h, qin(st, tl, R, 0));
    linear(Ls[j], T, qin(st, tl, R, own && R->split ? j : 0), y, st, tl, nth);
}

/* the GELU variants (SiLU, the common case, is vectorized: bd_silu_mul) */
static inline float act(int kind, float x) {
    if (kind == BD_ACT_GELU_TANH) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

/* cos/sin of one position (as HF: (pos * inv_freq).cos() * attention_scaling). Every thread computes them
 * once per token and forward call (rope_tables) for all layers and heads that share inv_freq and scale: per
 * layer, the 2 x head_dim/2 libm calls per token were ~4 % of a one-thread SmolLM2 prefill. */
static void rope_table(const float *inv_freq, float scale, int hd, int pos, float *cs) {
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float f = (float)pos * inv_freq[i];
        cs[i] = cosf(f) * scale;
        cs[i + half] = sinf(f) * scale;
    }
}

static void rope(float *v, const float *cs, int hd) {
    int half = hd / 2;
    const float *sn = cs + half;
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs[i] - x2 * sn[i];
        v[i + half] = x2 * cs[i] + x1 * sn[i];
    }
}

/* this thread's tl->rope: one [T][head_dim] table (cos | sin per token) per distinct (inv_freq, scale) */
static void rope_tables(const bd_model *m, const bd_state *st, const int32_t *pos, int T, float *rope) {
    const int hd = m->head_dim;
    for (int li = 0, done = 0; li < m->n_layers && done < st->nrope; li++) {
        const int r = st->rope_of[li];
        if (r != done) continue; /* tables are numbered in order of their first layer */
        for (int t = 0; t < T; t++)
            rope_table(m->layers[li].inv_freq, m->layers[li].rope_scale, hd, pos[t], rope + ((size_t)r * T + t) * hd);
        done++;
    }
}

/* this thread's rows of the residual stream += (optionally normed) shared rows src[T][H] */
static void residual(const float *src, const float *norm, const bd_rows *R, int H, float eps, bd_tls *tl) {
    for (int t = R->t0; t < R->t1; t++) {
        const float *o = src + (size_t)t * H;
        if (norm) {
            bd_rmsnorm(o, norm, H, eps, tl->o);
            o = tl->o;
        }
        float *xt = R->x + (size_t)t * H;
        for (int i = 0; i < H; i++) xt[i] += o[i];
    }
}

/* The last layer keeps only the rows that get logits (keep[0..nkeep-1] of the T tokens): after every token's
 * keys and values are cached, the rest of the layer (queries' attention, o_proj, the FFN) runs on those rows
 * alone, gathered to rows 0..nkeep-1 of a new row plan (*R). Each row is computed as before, so its values
 * do not change; a 128-token prompt scored on its last token skips ~3 % of its multiply-adds (llama.cpp
 * does the same). keep is increasing (bd_forward_seqs checks); the residual rows go through a staging buffer
 * (tl->o, or st->tmp when shared: free until o_proj writes it). */
static void keep_rows(const int32_t *keep, int nkeep, int H, bd_rows *R, bd_state *st, int tid, int nth) {
    bd_tls *tl = &st->tls[tid];
    unsigned long long *pt = &tl->tick;
    const bd_rows K = row_plan(st, tl, nkeep, nth);
    const size_t row = (size_t)H * sizeof(float);
    bd_rows C;
    if (!K.split) { /* this thread's own copy of the kept rows, from its own or the shared stream */
        for (int i = 0; i < nkeep; i++) memcpy(tl->o + (size_t)i * H, R->x + (size_t)keep[i] * H, row);
        memcpy(K.x, tl->o, nkeep * row);
    } else { /* shared both ways (R was split too): through st->tmp, a barrier between the two copies */
        for (int done = 0; next_rows(st, tl, &K, &done, &C);)
            for (int i = C.t0; i < C.t1; i++) memcpy(st->tmp + (size_t)i * H, R->x + (size_t)keep[i] * H, row);
        BARRIER
        for (int done = 0; next_rows(st, tl, &K, &done, &C);)
            memcpy(K.x + (size_t)C.t0 * H, st->tmp + (size_t)C.t0 * H, (size_t)(C.t1 - C.t0) * row);
    }
    *R = K;
}

/* kv head kh's keys and values of every token: its norm (Qwen3, Gemma3), RoPE (cos|sin rows cs), into the
 * cache slot of the token's position in its sequence */
static void cache_kv(const bd_model *m, const bd_layer *L, int li, int kh, int T, const int32_t *pos,
                     const int32_t *seq0, const float *cs, bd_state *st) {
    const int hd = m->head_dim, kvd = m->n_kv * hd, half = st->kv16;
    const size_t es = half ? 2 : sizeof(float), base = ((size_t)li * m->n_kv + kh) * st->max_seq * hd;
    char *kb = (char *)st->kc + base * es, *vb = (char *)st->vc + base * es;
    for (int t = 0; t < T; t++) {
        float *kv = st->k + (size_t)t * kvd + (size_t)kh * hd, *vv = st->v + (size_t)t * kvd + (size_t)kh * hd;
        if (L->k_norm) bd_rmsnorm(kv, L->k_norm, hd, m->eps, kv);
        rope(kv, cs + (size_t)t * hd, hd);
        size_t at = (size_t)(seq0[t] + pos[t]) * hd;
        if (half) {
            bd_to_f16(kv, (uint16_t *)kb + at, hd);
            bd_to_f16(vv, (uint16_t *)vb + at, hd);
        } else {
            memcpy((float *)kb + at, kv, hd * sizeof(float));
            memcpy((float *)vb + at, vv, hd * sizeof(float));
        }
    }
}

/* The attention of kv head kh's query heads for output rows [i0, i1) (row i is token keep[i], or i), into
 * st->att row i: the rep query heads together (bd_scores/bd_wsum read each key and value once for all of
 * them); their scores are rows of tl->scores, max_seq apart. */
static void attend_rows(const bd_model *m, const bd_layer *L, int li, int kh, int i0, int i1, const int32_t *keep,
                        const int32_t *pos, const int32_t *seq0, const float *cs, int cold, bd_state *st,
                        bd_tls *tl) {
    const int hd = m->head_dim, rep = m->n_heads / m->n_kv, qd = m->n_heads * hd, half = st->kv16;
    const size_t es = half ? 2 : sizeof(float), base = ((size_t)li * m->n_kv + kh) * st->max_seq * hd;
    const char *kb = (const char *)st->kc + base * es, *vb = (const char *)st->vc + base * es;
    float *sc = tl->scores;
    const size_t ss = st->max_seq;
    for (int i = i0; i < i1; i++) {
        const int t = keep ? keep[i] : i;
        /* slots [lo, hi] of this token's sequence: keys with position > pos - window */
        int p = pos[t], hi = seq0[t] + p;
        int lo = seq0[t] + ((L->window > 0 && p - L->window + 1 > 0) ? p - L->window + 1 : 0), n = hi - lo + 1;
        float *qh = st->q + (size_t)t * qd + (size_t)kh * rep * hd;
        if (cold) { /* decode: the first 16 key and value rows of this kv head and the next, which the kernels'
                     * own prefetches (16 rows on) never cover; Qwen3-0.6B shape, fp16 KV, 1 thread, Zen 5: decode
                     * attention 1.061 -> 0.929 ms a token (this head alone: 1.019), SmolLM2 0.315 -> 0.274 */
            const size_t row = (size_t)hd * es, head = st->max_seq * row, span = (size_t)(n < 16 ? n : 16) * row;
            for (int o = 0; o <= 1 && kh + o < m->n_kv; o++)
                for (size_t b = 0; b < span; b += 64) {
                    __builtin_prefetch(kb + o * head + (size_t)lo * row + b, 0, 3);
                    __builtin_prefetch(vb + o * head + (size_t)lo * row + b, 0, 3);
                }
        }
        for (int h = 0; h < rep; h++) {
            if (L->q_norm) bd_rmsnorm(qh + (size_t)h * hd, L->q_norm, hd, m->eps, qh + (size_t)h * hd);
            rope(qh + (size_t)h * hd, cs + (size_t)t * hd, hd);
        }
        bd_scores(qh, rep, kb + (size_t)lo * hd * es, half, n, hd, m->attn_scale, sc + lo, ss);
        for (int h = 0; h < rep; h++) {
            float *sh = sc + h * ss + lo;
            if (m->attn_softcap > 0.0f)
                for (int j = 0; j < n; j++) sh[j] = tanhf(sh[j] / m->attn_softcap) * m->attn_softcap;
            bd_softmax(sh, n);
        }
        bd_wsum(st->att + (size_t)i * qd + (size_t)kh * rep * hd, rep, sc + lo, ss, vb + (size_t)lo * hd * es, half,
                n, hd, cold);
    }
}

#define ATT_ROWS 16 /* rows per attention unit of a long batch split by (kv head, rows) */

/* Token t sits at position pos[t] of a sequence whose first token's KV row is cache slot seq0[t]; its own row
 * is slot seq0[t] + pos[t] and it attends to the slots of its sequence only (padding-free batching). With keep
 * (the last layer), see keep_rows: *R becomes the plan of the kept rows. */
static void layer_forward(const bd_model *m, const bd_layer *L, int li, int T, const int32_t *pos,
                          const int32_t *seq0, const int32_t *keep, int nkeep, bd_rows *R, bd_state *st, int tid,
                          int nth) {
    const int H = m->hidden, hd = m->head_dim, nh = m->n_heads, nkv = m->n_kv;
    const int qd = nh * hd, I = m->inter;
    bd_tls *tl = &st->tls[tid];
    unsigned long long *pt = &tl->tick;

    /* attention block: q/k/v rows by row group */
    const bd_linear *qkv[3] = {&L->q, &L->k, &L->v}, *gu[2] = {&L->gate, &L->up};
    float *qkv_out[3] = {st->q, st->k, st->v};
    bd_rows C;
    FOR_ROWS(C) prep_group(qkv, 3, L->in_norm, &C, H, m->eps, st, tl);
    PROF(P_PREP);
    if (R->split) BARRIER
    for (int j = 0; j < 3; j++) group_linear(qkv, 3, j, T, H, m->eps, qkv_out[j], R, st, tl, nth);
    PROF(P_QKV);
    BARRIER
    /* by kv head: its keys/values for every token (norm, RoPE, cache), then its query heads' attention; a
     * long batch whose kv heads do not divide among the threads caches every head's keys first, then hands
     * out (kv head, 16 rows) units, so SmolLM2's 3 kv heads do not leave one of 2 threads waiting for the
     * other's second head at the barrier below */
    const float *cs = tl->rope + (size_t)st->rope_of[li] * T * hd; /* see rope_tables */
    const int nrows = keep ? nkeep : T, chunked = nth > 1 && nkv % nth != 0 && nrows >= 2 * ATT_ROWS;
    /* a one-token call (decode) reads values cached calls ago, from memory: bd_wsum prefetches them. A longer
     * one (prefill, a classification batch) mostly reads the values it has just cached. */
    const int cold = T == 1;
    if (!chunked) {
        for (int kh; (kh = grab(st, tl, nkv)) >= 0;) {
            cache_kv(m, L, li, kh, T, pos, seq0, cs, st);
            attend_rows(m, L, li, kh, 0, nrows, keep, pos, seq0, cs, cold, st, tl);
        }
    } else {
        for (int kh; (kh = grab(st, tl, nkv)) >= 0;) cache_kv(m, L, li, kh, T, pos, seq0, cs, st);
        BARRIER
        /* the last rows first (they attend to the most keys): the dispenser then ends on short units */
        const int nc = (nrows + ATT_ROWS - 1) / ATT_ROWS;
        for (int u; (u = grab(st, tl, nc * nkv)) >= 0;) {
            const int c = nc - 1 - u / nkv, i0 = c * ATT_ROWS, i1 = i0 + ATT_ROWS < nrows ? i0 + ATT_ROWS : nrows;
            attend_rows(m, L, li, u % nkv, i0, i1, keep, pos, seq0, cs, cold, st, tl);
        }
    }
    PROF(P_ATTN);
    BARRIER
    if (keep && nkeep == 0) return; /* a cache-only call (bd_forward_seqs, nout = 0): its keys/values are in */
    if (keep) {
        keep_rows(keep, nkeep, H, R, st, tid, nth);
        T = nkeep;
        PROF(P_RESID);
    }
    const bd_qin in = qin(st, tl, R, 0);
    FOR_ROWS(C) prep_input(st->att, L->o.sub_norm, &C, qd, L->o.kp, m->eps, tl->h, in);
    PROF(P_PREP);
    if (R->split) BARRIER
    linear(&L->o, T, in, st->tmp, st, tl, nth);
    PROF(P_O);
    BARRIER
    /* feed-forward block: gate/up rows by row group, activation on the rows this thread owns */
    FOR_ROWS(C) {
        residual(st->tmp, L->post_attn_norm, &C, H, m->eps, tl);
        PROF(P_RESID);
        prep_group(gu, 2, L->pre_ffn_norm, &C, H, m->eps, st, tl);
        PROF(P_PREP);
    }
    if (R->split) BARRIER
    /* SiLU in the up projection's epilogue where the kernels have one (bd_linear_rows_silu: VNNI prefill,
     * one shared input); st->u then holds silu(gate) * up, the same floats as the two passes below */
    const int fused = m->act == BD_ACT_SILU && !own_norms(gu, 2) && bd_silu_pair_ok(&L->gate, &L->up, T);
    if (fused) {
        const int ng = L->gate.np / BD_ROWS, nc = n_chunks(ng, nth, 8);
        const bd_qin gin = qin(st, tl, R, 0);
        for (int c, a, b; (c = grab(st, tl, nc)) >= 0;) {
            part(ng, c, nc, &a, &b);
            bd_linear_rows_silu(&L->gate, &L->up, a, b, gin.q, gin.s, gin.sum, T, st->g, st->u, tl->ubuf);
        }
    } else {
        group_linear(gu, 2, 0, T, H, m->eps, st->g, R, st, tl, nth);
        group_linear(gu, 2, 1, T, H, m->eps, st->u, R, st, tl, nth);
    }
    PROF(P_FFN);
    BARRIER
    /* each thread forms act(gate) * up itself, row by row, as it quantizes down's input: the gate and up rows
     * of a token come from whichever threads took them, and this needs no extra barrier */
    FOR_ROWS(C) for (int t = C.t0; t < C.t1; t++) {
        const float *g = st->g + (size_t)t * I, *u = st->u + (size_t)t * I, *a = tl->act;
        if (fused)
            a = u;
        else if (m->act == BD_ACT_SILU)
            bd_silu_mul_to(tl->act, g, u, I);
        else
            for (int i = 0; i < I; i++) tl->act[i] = act(m->act, g[i]) * u[i];
        int8_t *q = in.q + (size_t)t * L->down.kp;
        if (L->down.sub_norm) /* SubLN: the norm hands over max |row| */
            bd_quantize_row_amax(tl->h, I, L->down.kp, bd_rmsnorm(a, L->down.sub_norm, I, m->eps, tl->h), q,
                                 &in.s[t], &in.sum[t]);
        else
            bd_quantize_row(a, I, L->down.kp, q, &in.s[t], &in.sum[t]);
    }
    PROF(P_PREP);
    if (R->split) BARRIER
    linear(&L->down, T, in, st->tmp, st, tl, nth);
    PROF(P_DOWN);
    BARRIER
    FOR_ROWS(C) residual(st->tmp, L->post_ffn_norm, &C, H, m->eps, tl);
    PROF(P_RESID);
    if (R->split) BARRIER /* the next layer's (or the head's) chunks of rows may be other threads' */
}

/* Tokens of several sequences in one call (padding-free batching): token t is at position pos[t] of the
 * sequence whose KV rows start at cache slot seq0[t] (see layer_forward). Logits are computed for the nout
 * tokens listed in out_rows, into logits[nout][vocab]; nout = 0 only fills the cache (a shared prompt prefix:
 * the last layer then stops after caching its keys and values, and there is no head). Returns 0 on success,
 * a negative code when the arguments do not fit the state (checked before any work). */
int bd_forward_seqs(const bd_model *m, bd_state *st, const int32_t *tokens, int T, const int32_t *pos,
                    const int32_t *seq0, const int32_t *out_rows, int nout, float *logits, int nthreads) {
    if (!m || !st || T < 1 || T > st->max_t || nout < 0 || nout > T) return -1;
    if (nthreads < 1 || nthreads > st->nthreads) return -2;
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return -3;
        if (pos[t] < 0 || seq0[t] < 0 || (long)seq0[t] + pos[t] >= st->max_seq) return -1;
    }
    for (int i = 0; i < nout; i++)
        if (out_rows[i] < 0 || out_rows[i] >= T) return -4;
    const int H = m->hidden, V = m->vocab;
    atomic_store(&st->next_ticket, 0);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        THREAD_IDS(tid, nth);
        bd_tls *tl = &st->tls[tid];
        unsigned long long *pt = &tl->tick;
        *pt = TICK();
        /* the global sense cannot flip before every thread reached the first barrier, so this read is safe */
        tl->sense = atomic_load(&st->barrier.sense);
        tl->base = 0; /* the counter was reset before the region: every thread starts at ticket 0 */
        tl->pending = -1;
        bd_rows rows = row_plan(st, tl, T, nth), *R = &rows;
        bd_rows C;
        FOR_ROWS(C) for (int t = C.t0; t < C.t1; t++) {
            float *x = R->x + (size_t)t * H;
            bd_row_to_f32(m->embed, m->embed_dtype, m->embed_rscale, tokens[t], H, x);
            if (m->embed_scale != 1.0f)
                for (int i = 0; i < H; i++) x[i] *= m->embed_scale;
        }
        rope_tables(m, st, pos, T, tl->rope);
        PROF(P_EMB);
        if (R->split) BARRIER
        /* the last layer keeps only the output rows (see keep_rows), which then are rows 0..nout-1: when they
         * are listed in increasing order (a row listed twice would have its query rotated twice in place) */
        int keep = nout < T && m->n_layers > 0;
        for (int i = 1; keep && i < nout; i++) keep = out_rows[i] > out_rows[i - 1];
        for (int li = 0; li < m->n_layers; li++) {
            const int last = keep && li == m->n_layers - 1;
            layer_forward(m, &m->layers[li], li, T, pos, seq0, last ? out_rows : NULL, nout, &rows, st, tid, nth);
        }
        /* final norm (+ symmetric int8 quantization for an int8 head) of the rows that need logits */
        for (int t = 0; t < nout; t++) {
            float *h = tl->h + (size_t)t * H;
            bd_rmsnorm(R->x + (size_t)(keep ? t : out_rows[t]) * H, m->final_norm, H, m->eps, h);
            if (m->head_dtype == BD_I8) bd_quantize_row_sym(h, H, tl->xq + (size_t)t * H, &tl->xs[t]);
            if (m->head_dtype == BD_Q4) {
                int ng = (H + BD_Q4_GROUP - 1) / BD_Q4_GROUP;
                int8_t *xq = tl->xq + (size_t)t * ng * BD_Q4_GROUP;
                bd_quantize_row_sym(h, H, xq, &tl->xs[t]);
                memset(xq + H, 0, (size_t)ng * BD_Q4_GROUP - H);
                bd_q4_group_sums(xq, ng, tl->xg + (size_t)t * ng);
            }
        }
        PROF(P_HEADPREP);
        const int nq = (V + 3) / 4, nc = n_chunks(nq, nth, 64);
        for (int c; nout > 0 && (c = grab(st, tl, nc)) >= 0;) {
            int a, b;
            part(nq, c, nc, &a, &b);
            int r1 = b * 4 < V ? b * 4 : V;
            bd_dense_rows(m->head, m->head_dtype, m->head_rscale, V, H, a * 4, r1, tl->h, tl->xq, tl->xs, tl->xg,
                          nout, logits);
            if (m->final_softcap > 0.0f)
                for (int t = 0; t < nout; t++)
                    for (int i = a * 4; i < r1; i++) {
                        float *l = logits + (size_t)t * V + i;
                        *l = tanhf(*l / m->final_softcap) * m->final_softcap;
                    }
        }
        PROF(P_HEAD);
    }
    return 0;
}

/* One sequence: T tokens at positions pos0..pos0+T-1 (cache slots the same); logits of every token
 * (all_logits) or of the last one. */
int bd_forward(const bd_model *m, bd_state *st, const int32_t *tokens, int T, int pos0, float *logits,
               int all_logits, int nthreads) {
    if (!m || !st || T < 1 || T > st->max_t || pos0 < 0 || pos0 + T > st->max_seq) return -1;
    for (int t = 0; t < T; t++) {
        st->pos[t] = pos0 + t;
        st->seq0[t] = 0;
        st->rows[t] = t;
    }
    return bd_forward_seqs(m, st, tokens, T, st->pos, st->seq0, all_logits ? st->rows : st->rows + T - 1,
                           all_logits ? T : 1, logits, nthreads);
}

/* Copy n cached key/value rows from slot src to slot dst in every layer and kv head: a prompt prefix that many
 * sequences of a batch share is computed once and copied to the start of each (runtime/scoring.py). A row's
 * keys and values depend only on its token and the rows before it, so the copies are the bits each sequence
 * would have computed. 0, or -1 when a range leaves the cache (nothing copied). */
int bd_copy_kv(const bd_model *m, bd_state *st, int src, int dst, int n) {
    if (!m || !st || n < 0 || src < 0 || dst < 0 || (long)src + n > st->max_seq || (long)dst + n > st->max_seq)
        return -1;
    const size_t row = (size_t)m->head_dim * (st->kv16 ? 2 : sizeof(float)), len = (size_t)n * row;
    for (int li = 0; li < m->n_layers; li++)
        for (int kh = 0; kh < m->n_kv; kh++) {
            const size_t head = ((size_t)li * m->n_kv + kh) * st->max_seq * row;
            memmove((char *)st->kc + head + (size_t)dst * row, (char *)st->kc + head + (size_t)src * row, len);
            memmove((char *)st->vc + head + (size_t)dst * row, (char *)st->vc + head + (size_t)src * row, len);
        }
    return 0;
}

/* ---- entry points for tests and micro-benchmarks of single kernels ---- */

/* attention of nq query heads (one kv head's) over n cached keys/values (float or half), for tests:
 * o[h] = softmax(q[h].k * scale) v, with the scores sc[nq][n] */
void bd_attend_test(const float *q, int nq, const void *k, const void *v, int n, int hd, float scale, int kv16,
                    float *sc, float *o) {
    bd_scores(q, nq, k, kv16, n, hd, scale, sc, (size_t)n);
    for (int h = 0; h < nq; h++) bd_softmax(sc + (size_t)h * n, n);
    bd_wsum(o, nq, sc, (size_t)n, v, kv16, n, hd, 1);
}

void bd_quantize(const float *x, int T, int k, int kp, int8_t *xq, float *s, int32_t *sum) {
    for (int t = 0; t < T; t++) bd_quantize_row(x + (size_t)t * k, k, kp, xq + (size_t)t * kp, &s[t], &sum[t]);
}

/* int32 sums sum_k W_q[row,k] * xq[t,k]; gemm=1 takes the prefill path (bd_gemm_panel_i8_t2 over all T). */
void bd_ternary_acc(const uint8_t *w, int n, int kp, const int8_t *xq, int T, int32_t *acc, int gemm) {
    const int nb = kp / BD_BLOCK, ng = (n + 3) / 4, pg = BD_PANEL_ROWS / 4;
    uint8_t *u = gemm ? malloc((size_t)BD_PANEL_ROWS * kp) : NULL;
    int32_t *pa = gemm ? malloc((size_t)T * BD_PANEL_ROWS * sizeof(int32_t)) : NULL;
    int32_t *xsum = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) {
        xsum[t] = 0;
        for (int i = 0; i < kp; i++) xsum[t] += xq[(size_t)t * kp + i];
    }
    for (int g = 0; g < ng; g += pg) {
        const int ngr = ng - g < pg ? ng - g : pg;
        if (u) bd_gemm_panel_i8_t2(w + (size_t)g * kp, ngr, kp, kp, xq, T, pa, u);
        for (int t = 0; t < T; t++)
            for (int j = 0; j < ngr; j++) {
                int32_t a[4];
                if (u)
                    memcpy(a, pa + (size_t)t * BD_PANEL_ROWS + 4 * j, sizeof a);
                else
                    bd_dot4_i8_t2(w + (size_t)(g + j) * kp, xq + (size_t)t * kp, nb, a);
                for (int r = 0; r < 4 && (g + j) * 4 + r < n; r++) acc[(size_t)t * n + (g + j) * 4 + r] = a[r] - xsum[t];
            }
    }
    free(u);
    free(pa);
    free(xsum);
}

/* A BitLinear forward (quantize + ternary matmul + scale + bias) for x[T][k] -> y[T][n]. */
int bd_linear_forward(const bd_linear *L, const float *x, int T, float *y, int nthreads, int gemm) {
    int8_t *xq = malloc((size_t)T * L->kp);
    float *xs = malloc((size_t)T * sizeof(float));
    int32_t *xsum = malloc((size_t)T * sizeof(int32_t));
    uint8_t *ub = gemm ? malloc((size_t)nthreads * BD_PANEL_ROWS * L->kp) : NULL;
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
        THREAD_IDS(tid, nth);
        int a, b;
        part(ng, tid, nth, &a, &b);
        bd_linear_rows(L, a, b, xq, xs, xsum, T, y, ub ? ub + (size_t)tid * BD_PANEL_ROWS * L->kp : NULL);
    }
    free(xq); free(xs); free(xsum); free(ub);
    return 0;
}

/* A dense (LM head) matmul x[T][k] -> y[T][n]; int8 weights quantize x symmetrically per row first. */
int bd_dense_forward(const void *w, int dtype, const float *rscale, int n, int k, const float *x, int T, float *y,
                     int nthreads) {
    const int ng = (k + BD_Q4_GROUP - 1) / BD_Q4_GROUP;
    const size_t kq = dtype == BD_Q4 ? (size_t)ng * BD_Q4_GROUP : (size_t)k;
    int8_t *xq = calloc((size_t)T * kq + 1, 1);
    float *xs = malloc((size_t)T * sizeof(float));
    int32_t *xg = malloc((size_t)T * ng * sizeof(int32_t));
    if (!xq || !xs || !xg) {
        free(xq); free(xs); free(xg);
        return -1;
    }
    if (dtype == BD_I8 || dtype == BD_Q4)
        for (int t = 0; t < T; t++) bd_quantize_row_sym(x + (size_t)t * k, k, xq + t * kq, &xs[t]);
    if (dtype == BD_Q4)
        for (int t = 0; t < T; t++) bd_q4_group_sums(xq + t * kq, ng, xg + (size_t)t * ng);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        THREAD_IDS(tid, nth);
        int a, b;
        part((n + 3) / 4, tid, nth, &a, &b);
        int r1 = b * 4 < n ? b * 4 : n;
        bd_dense_rows(w, dtype, rscale, n, k, a * 4, r1, x, xq, xs, xg, T, y);
    }
    free(xq); free(xs); free(xg);
    return 0;
}

/* The machine's read bandwidth, for the roofline (bench --roofline): XOR of a buffer's 64-bit words read by
 * nthreads threads, each its contiguous share, as a decode step streams its weights. The XOR is returned so
 * the reads cannot be optimized away. */
uint64_t bd_read_xor(const uint64_t *buf, size_t n, int nthreads) {
    uint64_t all = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(^ : all)
#endif
    {
        THREAD_IDS(tid, nth);
        size_t a = n / nth * tid, b = tid == nth - 1 ? n : n / nth * (tid + 1);
        uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        size_t i = a;
        for (; i + 4 <= b; i += 4) {
            x0 ^= buf[i];
            x1 ^= buf[i + 1];
            x2 ^= buf[i + 2];
            x3 ^= buf[i + 3];
        }
        for (; i < b; i++) x0 ^= buf[i];
        all ^= x0 ^ x1 ^ x2 ^ x3;
    }
    return all;
}
