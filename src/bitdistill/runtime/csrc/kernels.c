/* Kernels: int8 activation quantization, int8 x 2-bit-ternary dot products (GEMV and GEMM forms),
 * int8 and fp32/fp16/bf16 dot products for the LM head, and row dequantization for embeddings.
 *
 * Each *_avx2 routine is compiled with a per-function target attribute and chosen at run time with
 * __builtin_cpu_supports, so one build runs everywhere; each has a *_scalar twin that computes the same
 * integer sums (tests compare the two). */
#include "bd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define BD_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define BD_AVX2 __attribute__((target("avx2,fma,f16c")))
#define BD_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#else
#define BD_X86 0
#endif

/* SIMD level in use: 0 scalar, 1 AVX2+FMA+F16C, 2 AVX2 + AVX-512 VNNI (256-bit vpdpbusd via AVX512VL).
 * -1: not decided yet. The product targets AVX2 machines; level 2 is a bonus where the CPU has it. */
static float f16_to_f32(uint16_t h);

static int g_simd = -1;
static int g_simd_cap = -1; /* upper bound requested by bd_set_simd (native.py passes BITDISTILL_SIMD), -1 = none */

static int cpu_level(void) {
#if BD_X86
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
        return 0;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f"))
        return 2;
    return 1;
#else
    return 0;
#endif
}

static int simd_decide(void);

/* called for every row group: the decided level is a plain load, the first call decides */
static inline int simd_on(void) { return g_simd >= 0 ? g_simd : simd_decide(); }

static int g_prefetch_req = -1; /* bytes asked by bd_set_prefetch_ahead, -1 = the CPU's default */
static int g_prefetch_ahead = 1024; /* bytes in use (see PREFETCH_AHEAD) */
static void prefetch_decide(void);

static int simd_decide(void) {
    int lvl = cpu_level();
    prefetch_decide();
    g_simd = g_simd_cap >= 0 && g_simd_cap < lvl ? g_simd_cap : lvl;
    return g_simd;
}

int bd_simd_level(void) { return simd_on(); }

/* level < 0: the best the CPU has; otherwise at most `level`. */
void bd_set_simd(int level) {
    g_simd_cap = level;
    g_simd = -1;
}

/* the decode GEMVs' software prefetch distance (see PREFETCH_AHEAD): bytes >= 0, or -1 for the CPU's default */
void bd_set_prefetch_ahead(int bytes) {
    g_prefetch_req = bytes;
    g_simd = -1; /* decided again, with the level, on the next call */
}

int bd_prefetch_ahead(void) {
    simd_on();
    return BD_X86 ? g_prefetch_ahead : 0;
}

int bd_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int bd_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#if BD_X86
BD_AVX2 static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

BD_AVX2 static inline float hsum_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}


/* the lane sums of 8 int32 vectors as one vector [sum(s[0]), ..., sum(s[7])] */
BD_AVX2 static inline __m256i group_sums8(const __m256i s[8]) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    __m256i c = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    /* a = [g0 g1 g2 g3 | g0 g1 g2 g3] (halves of each group's lanes), c likewise for g4..g7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, c, 0x20), _mm256_permute2x128_si256(a, c, 0x31));
}
#endif

/* ---- activation quantization: exactly bitdistill.quant.numerics.quantize_activation ---- */

static float absmax_scalar(const float *x, int k) {
    float amax = 0.0f;
    for (int i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/* q = clamp(round_half_even(x * sc), lo, 127); returns sum(q) */
static int32_t quant_scalar(const float *x, int k, float sc, float lo, int8_t *xq) {
    int32_t acc = 0;
    for (int i = 0; i < k; i++) {
        float v = nearbyintf(x[i] * sc);
        v = v > 127.0f ? 127.0f : (v < lo ? lo : v);
        xq[i] = (int8_t)v;
        acc += xq[i];
    }
    return acc;
}

#if BD_X86
BD_AVX2 static float absmax_avx2(const float *x, int k) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
        m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i + 8)));
    }
    float buf[8], amax = 0.0f;
    _mm256_storeu_ps(buf, _mm256_max_ps(m0, m1));
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, buf[j]);
    for (; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/* Same arithmetic as quant_scalar: one float multiply, round-to-nearest-even (the default MXCSR mode, as
 * nearbyintf), clamp, exact conversion. Bit-identical results (tests compare both paths with torch). */
BD_AVX2 static int32_t quant_avx2(const float *x, int k, float sc, float lo, int8_t *xq) {
    const __m256 vs = _mm256_set1_ps(sc), vhi = _mm256_set1_ps(127.0f), vlo = _mm256_set1_ps(lo);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sum = _mm256_setzero_si256();
    int i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, vlo), vhi));
            sum = _mm256_add_epi32(sum, q[j]);
        }
        /* packs work within 128-bit lanes: the permute restores column order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(xq + i), _mm256_permutevar8x32_epi32(p, perm));
    }
    return hsum_i32(sum) + quant_scalar(x + i, k - i, sc, lo, xq + i);
}
#endif

static float absmax(const float *x, int k) {
#if BD_X86
    if (simd_on()) return absmax_avx2(x, k);
#endif
    return absmax_scalar(x, k);
}

static int32_t quant(const float *x, int k, float sc, float lo, int8_t *xq) {
#if BD_X86
    if (simd_on()) return quant_avx2(x, k, sc, lo, xq);
#endif
    return quant_scalar(x, k, sc, lo, xq);
}

/* bd_quantize_row of a row whose max |x| the caller already has (bd_rmsnorm computed it as it wrote the row) */
void bd_quantize_row_amax(const float *x, int k, int kp, float amax, int8_t *xq, float *s, int32_t *sum) {
    /* torch: s = 127 / clamp(amax, min=eps); q = clamp(round_half_even(x * s), -128, 127) */
    float sc = 127.0f / (amax < BD_EPS ? BD_EPS : amax);
    *sum = quant(x, k, sc, -128.0f, xq);
    for (int i = k; i < kp; i++) xq[i] = 0;
    *s = sc;
}

void bd_quantize_row(const float *x, int k, int kp, int8_t *xq, float *s, int32_t *sum) {
    bd_quantize_row_amax(x, k, kp, absmax(x, k), xq, s, sum);
}

/* Symmetric [-127, 127] variant for the int8 LM head (keeps the AVX2 sign trick overflow free). */
void bd_quantize_row_sym(const float *x, int k, int8_t *xq, float *s) {
    float amax = absmax(x, k);
    float sc = 127.0f / (amax < BD_EPS ? BD_EPS : amax);
    quant(x, k, sc, -127.0f, xq);
    *s = sc;
}

/* ---- float helpers for norms and attention (summation order differs from the scalar path) ---- */

#if BD_X86
BD_AVX2 static double sumsq_avx2(const float *x, int n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    double buf[4];
    _mm256_storeu_pd(buf, _mm256_add_pd(a0, a1));
    double s = buf[0] + buf[1] + buf[2] + buf[3];
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}
#endif

double bd_sumsq(const float *x, int n) {
#if BD_X86
    if (simd_on()) return sumsq_avx2(x, n);
#endif
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* RMSNorm y = w * (x * inv), inv = 1 / sqrt(sum(x^2) / n + eps) (the sum in double, bd_sumsq), returning
 * max |y| with absmax's operations (the same value), so a quantization right after it skips a pass */
#if BD_X86
BD_AVX2 static float rmsnorm_avx2(const float *x, const float *w, int n, float inv, float *y) {
    const __m256 sign = _mm256_set1_ps(-0.0f), vi = _mm256_set1_ps(inv);
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
        const __m256 b = _mm256_mul_ps(_mm256_loadu_ps(w + i + 8), _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vi));
        _mm256_storeu_ps(y + i, a);
        _mm256_storeu_ps(y + i + 8, b);
        m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, a));
        m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, b));
    }
    float buf[8], amax = 0.0f;
    _mm256_storeu_ps(buf, _mm256_max_ps(m0, m1));
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, buf[j]);
    for (; i < n; i++) {
        y[i] = w[i] * (x[i] * inv);
        amax = fmaxf(amax, fabsf(y[i]));
    }
    return amax;
}
#endif

float bd_rmsnorm(const float *x, const float *w, int n, float eps, float *y) {
    const double ss = bd_sumsq(x, n);
    const float inv = 1.0f / sqrtf((float)(ss / n) + eps);
#if BD_X86
    if (simd_on()) return rmsnorm_avx2(x, w, n, inv, y);
#endif
    for (int i = 0; i < n; i++) y[i] = w[i] * (x[i] * inv);
    return absmax_scalar(y, n);
}

/* KV cache rows are float, or IEEE half (half != 0) for the fp16 cache */
static inline float kv_at(const void *v, int half, size_t i) {
    return half ? f16_to_f32(((const uint16_t *)v)[i]) : ((const float *)v)[i];
}

/* float -> half with round-to-nearest-even (as F16C and numpy's astype(float16)) */
static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0)); /* inf / nan */
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds past 65504: inf */
    if (ax < 0x38800000) { /* half subnormal (or zero): round ax / 2^-24 to an integer, half to even */
        if (ax < 0x33000000) return (uint16_t)sign; /* below half the smallest subnormal */
        uint32_t man = (ax & 0x7fffff) | 0x800000, e = ax >> 23; /* value = man * 2^(e - 150) */
        int shift = 126 - (int)e;                                   /* to units of 2^-24: >> (126 - e) */
        uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((ax - 0x38000000) >> 13), rem = ax & 0x1fff; /* rebias exponent 127 -> 15 */
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

#if BD_X86
BD_AVX2 static inline __m256 kv8(const void *v, int half, size_t i) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)v + i)))
                : _mm256_loadu_ps((const float *)v + i);
}

BD_AVX2 static void to_f16_avx2(const float *x, uint16_t *h, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = f32_to_f16(x[i]);
}

/* the lane sums of 8 float vectors as one vector [sum(s[0]), ..., sum(s[7])] (as group_sums8) */
BD_AVX2 static inline __m256 group_sums8_f32(const __m256 s[8]) {
    __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    __m256 c = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, c, 0x20), _mm256_permute2f128_ps(a, c, 0x31));
}

/* q . k for NK (4 or 8) consecutive keys side by side (rows hd apart from element r), into lanes of 8 per key:
 * one FMA chain per key over the columns in order, so 8 keys at once and two passes of 4 give the same bits */
BD_AVX2 static inline __attribute__((always_inline)) void keys_dot(const float *q, const void *k, int half, size_t r,
                                                                   int hd, const int NK, __m256 *a0, __m256 *a1,
                                                                   __m256 *a2, __m256 *a3, __m256 *a4, __m256 *a5,
                                                                   __m256 *a6, __m256 *a7) {
    __m256 b0 = *a0, b1 = *a1, b2 = *a2, b3 = *a3, b4 = b0, b5 = b0, b6 = b0, b7 = b0;
    if (NK > 4) b4 = *a4, b5 = *a5, b6 = *a6, b7 = *a7;
    for (int i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        b0 = _mm256_fmadd_ps(qv, kv8(k, half, r + i), b0);
        b1 = _mm256_fmadd_ps(qv, kv8(k, half, r + hd + i), b1);
        b2 = _mm256_fmadd_ps(qv, kv8(k, half, r + 2 * (size_t)hd + i), b2);
        b3 = _mm256_fmadd_ps(qv, kv8(k, half, r + 3 * (size_t)hd + i), b3);
        if (NK > 4) {
            b4 = _mm256_fmadd_ps(qv, kv8(k, half, r + 4 * (size_t)hd + i), b4);
            b5 = _mm256_fmadd_ps(qv, kv8(k, half, r + 5 * (size_t)hd + i), b5);
            b6 = _mm256_fmadd_ps(qv, kv8(k, half, r + 6 * (size_t)hd + i), b6);
            b7 = _mm256_fmadd_ps(qv, kv8(k, half, r + 7 * (size_t)hd + i), b7);
        }
    }
    *a0 = b0, *a1 = b1, *a2 = b2, *a3 = b3;
    if (NK > 4) *a4 = b4, *a5 = b5, *a6 = b6, *a7 = b7;
}

/* Eight keys at a time, their eight dot products reduced by one hadd tree and stored as one vector: with
 * head_dim 64 a lone key is only 8 FMAs, and reducing each with its own horizontal sum cost as much again.
 * The nq query heads of one kv head (grouped-query attention) take each block of keys in turn while it is in
 * L1, so the keys come from memory once, not once per head; each head's arithmetic is unchanged. */
BD_AVX2 static inline __attribute__((always_inline)) void scores_rows_avx2(const float *q, int nq, const void *k,
                                                                           int half, int rowwise, int n, int hd,
                                                                           float scale, float *out, size_t os) {
    int j = 0;
    if (hd % 8 == 0)
        for (; j + 8 <= n; j += 8) {
            /* the rows of the 8 keys two blocks on, which the hardware prefetchers fetch late from a cold cache
             * (Qwen3-shape decode attention 4.3 -> 3.3 ms a token on one Zen 4 thread with this; SmolLM2's within
             * noise). A prefetch past the cache's end never faults. */
            const size_t row = (size_t)hd << (half ? 1 : 2);
            for (size_t b = 0; b < 8 * row; b += 64) _mm_prefetch((const char *)k + (j + 16) * row + b, _MM_HINT_T0);
            for (int h = 0; h < nq; h++) {
                const float *qh = q + (size_t)h * hd;
                /* named sums: with an array indexed in two loop orders GCC kept it in memory */
                __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
                const size_t r = (size_t)j * hd;
                if (rowwise) { /* see scores_avx2 */
                    keys_dot(qh, k, half, r, hd, 4, &s0, &s1, &s2, &s3, NULL, NULL, NULL, NULL);
                    keys_dot(qh, k, half, r + 4 * (size_t)hd, hd, 4, &s4, &s5, &s6, &s7, NULL, NULL, NULL, NULL);
                } else
                    keys_dot(qh, k, half, r, hd, 8, &s0, &s1, &s2, &s3, &s4, &s5, &s6, &s7);
                const __m256 s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
                _mm256_storeu_ps(out + h * os + j, _mm256_mul_ps(group_sums8_f32(s), _mm256_set1_ps(scale)));
            }
        }
    for (; j < n; j++)
        for (int h = 0; h < nq; h++) {
            const float *qh = q + (size_t)h * hd;
            size_t r = (size_t)j * hd;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            int i = 0;
            for (; i + 32 <= hd; i += 32) {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), kv8(k, half, r + i), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i + 8), kv8(k, half, r + i + 8), s1);
                s2 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i + 16), kv8(k, half, r + i + 16), s2);
                s3 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i + 24), kv8(k, half, r + i + 24), s3);
            }
            for (; i + 8 <= hd; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), kv8(k, half, r + i), s0);
            float s = hsum_f32(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
            for (; i < hd; i++) s += qh[i] * kv_at(k, half, r + i);
            out[h * os + j] = s * scale;
        }
}

/* a literal half, so the inlined loops hold no per-load branch on the cache's element type (that branch
 * cost half the speed of these loops), and a literal order for an 8-key block: at head_dim 128 and more, 4 keys
 * at a time along their rows — 8 rows side by side, 512 B apart, read a cold cache at ~12 GB/s where rows
 * read in turn make ~25 (Zen 4 VM; Qwen3-shape decode attention ~20 % faster in a harness); at 64 that order
 * measured ~10 % slower than side by side. Each key's sum has the same FMAs in the same order either way. */
BD_AVX2 static void scores_avx2(const float *q, int nq, const void *k, int half, int n, int hd, float scale,
                                float *out, size_t os) {
    const int rowwise = hd >= 128;
    if (half && rowwise) scores_rows_avx2(q, nq, k, 1, 1, n, hd, scale, out, os);
    else if (half) scores_rows_avx2(q, nq, k, 1, 0, n, hd, scale, out, os);
    else if (rowwise) scores_rows_avx2(q, nq, k, 0, 1, n, hd, scale, out, os);
    else scores_rows_avx2(q, nq, k, 0, 0, n, hd, scale, out, os);
}

/* Decode's values come from memory (written tokens ago, tens of MB of weights since), and the hardware
 * prefetchers fetched them late: bd_wsum(cold = 1) prefetches value rows ahead, the VNNI level WSUM_AHEAD keys
 * on, AVX2 the next ~8 KiB chunk. Qwen3-0.6B shape, fp16 KV, 1 thread, Zen 5 VM: decode attention 1.33 ->
 * 1.10 ms a token, decode 149.9 -> 162.2 tok/s (8, 16, 32, 64 keys ahead all within 2 %). Prefill (cold = 0)
 * reads values it has just cached, where the prefetches cost ~4 % of its speed. */
#define WSUM_AHEAD 16

/* o = sum_j p[j] v[j] over keys j0..j1-1, added to o (acc) or from zero, with the output held in registers
 * across the keys (an axpy per key would load and store o every time), and each v row read front to back:
 * 128 columns per pass, then 64 (head_dim 64 in one pass of eight independent FMA chains: eight 8-column
 * passes of one chain each were bound by the FMA latency), then 8. The 64-column pass names its registers:
 * GCC kept a loop over an array of them in memory. */
BD_AVX2 static inline __attribute__((always_inline)) void wsum_rows_avx2(float *o, const float *p, const void *v,
                                                                         int half, int j0, int j1, int hd, int acc) {
#define WSUM_INIT(d) (acc ? _mm256_loadu_ps(o + (d)) : _mm256_setzero_ps())
    int d0 = 0;
    for (; d0 + 128 <= hd; d0 += 128) {
        __m256 a[16];
        for (int i = 0; i < 16; i++) a[i] = WSUM_INIT(d0 + 8 * i);
        for (int j = j0; j < j1; j++) {
            size_t r = (size_t)j * hd + d0;
            __m256 pj = _mm256_broadcast_ss(p + j);
            for (int i = 0; i < 16; i++) a[i] = _mm256_fmadd_ps(pj, kv8(v, half, r + 8 * i), a[i]);
        }
        for (int i = 0; i < 16; i++) _mm256_storeu_ps(o + d0 + 8 * i, a[i]);
    }
    if (d0 + 64 <= hd) {
        __m256 a0 = WSUM_INIT(d0), a1 = WSUM_INIT(d0 + 8), a2 = WSUM_INIT(d0 + 16), a3 = WSUM_INIT(d0 + 24),
               a4 = WSUM_INIT(d0 + 32), a5 = WSUM_INIT(d0 + 40), a6 = WSUM_INIT(d0 + 48), a7 = WSUM_INIT(d0 + 56);
        for (int j = j0; j < j1; j++) {
            size_t r = (size_t)j * hd + d0;
            __m256 pj = _mm256_broadcast_ss(p + j);
            a0 = _mm256_fmadd_ps(pj, kv8(v, half, r), a0);
            a1 = _mm256_fmadd_ps(pj, kv8(v, half, r + 8), a1);
            a2 = _mm256_fmadd_ps(pj, kv8(v, half, r + 16), a2);
            a3 = _mm256_fmadd_ps(pj, kv8(v, half, r + 24), a3);
            a4 = _mm256_fmadd_ps(pj, kv8(v, half, r + 32), a4);
            a5 = _mm256_fmadd_ps(pj, kv8(v, half, r + 40), a5);
            a6 = _mm256_fmadd_ps(pj, kv8(v, half, r + 48), a6);
            a7 = _mm256_fmadd_ps(pj, kv8(v, half, r + 56), a7);
        }
        const __m256 a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + d0 + 8 * i, a[i]);
        d0 += 64;
    }
    for (; d0 + 8 <= hd; d0 += 8) {
        __m256 a = WSUM_INIT(d0);
        for (int j = j0; j < j1; j++) a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), kv8(v, half, (size_t)j * hd + d0), a);
        _mm256_storeu_ps(o + d0, a);
    }
#undef WSUM_INIT
    for (; d0 < hd; d0++) {
        float a = acc ? o[d0] : 0.0f;
        for (int j = j0; j < j1; j++) a += p[j] * kv_at(v, half, (size_t)j * hd + d0);
        o[d0] = a;
    }
}

/* The nq query heads of one kv head take the values in chunks of ~8 KiB, each chunk while it is in L1: the
 * values come from memory once, not once per head. Carrying each head's sums from chunk to chunk keeps its
 * additions in the same order as one pass over all keys, so the result does not depend on the chunking. */
BD_AVX2 static void wsum_avx2(float *o, int nq, const float *p, size_t ps, const void *v, int half, int n, int hd,
                              int cold) {
    const size_t row = (size_t)hd * (half ? 2 : 4);
    int step = 8192 / (int)row;
    step = step < 8 ? 8 : step;
    for (int j0 = 0; j0 < n; j0 += step) {
        int j1 = j0 + step < n ? j0 + step : n;
        if (cold) /* the next chunk's rows while this one is computed (see WSUM_AHEAD) */
            for (size_t b = (size_t)j1 * row; b < (size_t)(j1 < n - step ? j1 + step : n) * row; b += 64)
                _mm_prefetch((const char *)v + b, _MM_HINT_T0);
        for (int h = 0; h < nq; h++) { /* a literal half, as in scores_avx2 */
            float *oh = o + (size_t)h * hd;
            if (half) wsum_rows_avx2(oh, p + h * ps, v, 1, j0, j1, hd, j0 > 0);
            else wsum_rows_avx2(oh, p + h * ps, v, 0, j0, j1, hd, j0 > 0);
        }
    }
}
#endif

void bd_to_f16(const float *x, uint16_t *h, int n) {
#if BD_X86
    if (simd_on()) {
        to_f16_avx2(x, h, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) h[i] = f32_to_f16(x[i]);
}

/* out[h * os + j] = dot(q[h], k[j]) * scale for nq query heads (rows of q, hd apart) sharing n keys of hd
 * values: one call per kv head, not per key */
void bd_scores(const float *q, int nq, const void *k, int half, int n, int hd, float scale, float *out, size_t os) {
#if BD_X86
    if (simd_on()) {
        scores_avx2(q, nq, k, half, n, hd, scale, out, os);
        return;
    }
#endif
    for (int h = 0; h < nq; h++)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int d = 0; d < hd; d++) s += q[(size_t)h * hd + d] * kv_at(k, half, (size_t)j * hd + d);
            out[h * os + j] = s * scale;
        }
}

/* o[h] = sum_j p[h * ps + j] v[j] for nq heads (rows of o, hd apart) sharing n values */
#if BD_X86
/* wsum at the VNNI level: up to 4 query heads x 64 columns in 16 zmm accumulators, so each value row is
 * loaded once per key for all the heads (the AVX2 loop loads it once per head, 9 loads per 8 FMAs). Every
 * lane adds its keys in order with one FMA each, as wsum_rows_avx2 does: the same floats. */
BD_VNNI static inline __m512 kv16_avx512(const void *v, int half, size_t i) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)v + i)))
                : _mm512_loadu_ps((const float *)v + i);
}

BD_VNNI static inline __attribute__((always_inline)) void wsum_cols_avx512(float *o, const float *p, size_t ps,
                                                                           const void *v, int half, int n, int hd,
                                                                           int d0, const int NH, const int NC,
                                                                           int cold) {
    __m512 a0[4], a1[4], a2[4], a3[4]; /* head h's NC column vectors; unrolled by the literal NH and NC */
    __m512 *a[4] = {a0, a1, a2, a3};
    for (int h = 0; h < NH; h++)
        for (int c = 0; c < NC; c++) a[h][c] = _mm512_setzero_ps();
    const size_t row = (size_t)hd << (half ? 1 : 2);
    for (int j = 0; j < n; j++) {
        const size_t r = (size_t)j * hd + d0;
        if (cold && d0 == 0) /* the whole row WSUM_AHEAD keys on (the later column passes find it cached) */
            for (size_t b = 0; b < row; b += 64) _mm_prefetch((const char *)v + (j + WSUM_AHEAD) * row + b, _MM_HINT_T0);
        __m512 vv[4];
        for (int c = 0; c < NC; c++) vv[c] = kv16_avx512(v, half, r + 16 * c);
        for (int h = 0; h < NH; h++) {
            const __m512 pj = _mm512_set1_ps(p[h * ps + j]);
            for (int c = 0; c < NC; c++) a[h][c] = _mm512_fmadd_ps(pj, vv[c], a[h][c]);
        }
    }
    for (int h = 0; h < NH; h++)
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(o + (size_t)h * hd + d0 + 16 * c, a[h][c]);
}

#define WSUM_HEADS(NC, half)                                                                             \
    switch (nh) {                                                                                         \
    case 1: wsum_cols_avx512(o, p, ps, v, half, n, hd, d0, 1, NC, cold); break;                            \
    case 2: wsum_cols_avx512(o, p, ps, v, half, n, hd, d0, 2, NC, cold); break;                            \
    case 3: wsum_cols_avx512(o, p, ps, v, half, n, hd, d0, 3, NC, cold); break;                            \
    default: wsum_cols_avx512(o, p, ps, v, half, n, hd, d0, 4, NC, cold); break;                           \
    }

BD_VNNI static void wsum_avx512(float *o, int nq, const float *p, size_t ps, const void *v, int half, int n, int hd,
                                int cold) {
    for (int h0 = 0; h0 < nq; h0 += 4, o += (size_t)4 * hd, p += 4 * ps) {
        const int nh = nq - h0 < 4 ? nq - h0 : 4;
        cold = cold && h0 == 0; /* more than 4 heads: the next group finds the rows cached */
        int d0 = 0;
        for (; d0 + 64 <= hd; d0 += 64)
            if (half) WSUM_HEADS(4, 1) else WSUM_HEADS(4, 0)
        for (; d0 < hd; d0 += 16)
            if (half) WSUM_HEADS(1, 1) else WSUM_HEADS(1, 0)
    }
}
#undef WSUM_HEADS
#endif

void bd_wsum(float *o, int nq, const float *p, size_t ps, const void *v, int half, int n, int hd, int cold) {
#if BD_X86
    if (simd_on() >= 2 && hd % 16 == 0) {
        wsum_avx512(o, nq, p, ps, v, half, n, hd, cold);
        return;
    }
    if (simd_on()) {
        wsum_avx2(o, nq, p, ps, v, half, n, hd, cold);
        return;
    }
#else
    (void)cold;
#endif
    for (int h = 0; h < nq; h++) {
        float *oh = o + (size_t)h * hd;
        for (int d = 0; d < hd; d++) oh[d] = 0.0f;
        for (int j = 0; j < n; j++)
            for (int d = 0; d < hd; d++) oh[d] += p[h * ps + j] * kv_at(v, half, (size_t)j * hd + d);
    }
}

/* ---- SiLU gate: g[i] = silu(g[i]) * u[i] ---- */

/* expf as Cephes computes it (range reduction by ln 2 in two parts, degree-5 polynomial, 2^n by exponent
 * bits; ~1 ulp). Written with separate multiplies and adds (-std=c11 does not contract them into FMAs), so
 * the AVX2 twin below, doing the same operations lane by lane, gives bit-identical results. */
#define EXP_HI 88.3762626647949f
#define EXP_LO -87.3365478515625f /* exp of it is the smallest normal float: the 2^n bits stay valid */
static const float EXP_P[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                               4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};

static float exp_scalar(float x) {
    if (x > EXP_HI) return INFINITY; /* as expf: silu's x / (1 + inf) is then -0, not a tiny number */
    x = x < EXP_LO ? EXP_LO : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    float z = x * x, y = EXP_P[0];
    for (int i = 1; i < 6; i++) y = y * x + EXP_P[i];
    y = y * z + x;
    y = y + 1.0f;
    int32_t bits = ((int32_t)fx + 127) << 23;
    float p2;
    memcpy(&p2, &bits, 4);
    return y * p2;
}

static void silu_mul_scalar(float *y, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) y[i] = g[i] / (1.0f + exp_scalar(-g[i])) * u[i];
}

#if BD_X86
/* exp's range reduction by ln 2 in two parts and its polynomial, y = 1 + x + z * poly(x), written once for both
 * widths (P: _mm256 or _mm512, T: its float vector type), so the two do the same operations lane by lane */
#define EXP_POLY(P, T, x, fx, y)                                                                   \
    do {                                                                                           \
        x = P##_sub_ps(x, P##_mul_ps(fx, P##_set1_ps(0.693359375f)));                              \
        x = P##_sub_ps(x, P##_mul_ps(fx, P##_set1_ps(-2.12194440e-4f)));                           \
        const T z_ = P##_mul_ps(x, x);                                                             \
        y = P##_set1_ps(EXP_P[0]);                                                                 \
        for (int i_ = 1; i_ < 6; i_++) y = P##_add_ps(P##_mul_ps(y, x), P##_set1_ps(EXP_P[i_]));    \
        y = P##_add_ps(P##_add_ps(P##_mul_ps(y, z_), x), P##_set1_ps(1.0f));                       \
    } while (0)

BD_AVX2 static __m256 exp_avx2(__m256 x) {
    const __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                              _mm256_set1_ps(0.5f)));
    __m256 y;
    EXP_POLY(_mm256, __m256, x, fx, y);
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_blendv_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(bits)), _mm256_set1_ps(INFINITY), over);
}

/* exp_avx2's operations on 16 lanes (roundscale toward -inf is its floor, a mask blend its blendv): lane by lane
 * the same floats, for the SiLU the VNNI prefill tile applies in its epilogue */
BD_VNNI static inline __m512 exp_avx512(__m512 x) {
    const __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_HI), _CMP_GT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    __m512 fx = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                                   _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 y;
    EXP_POLY(_mm512, __m512, x, fx, y);
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mask_blend_ps(over, _mm512_mul_ps(y, _mm512_castsi512_ps(bits)), _mm512_set1_ps(INFINITY));
}

BD_AVX2 static void silu_mul_avx2(float *y, const float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp_avx2(_mm256_xor_ps(x, sign));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    silu_mul_scalar(y + i, g + i, u + i, n - i);
}
#endif

void bd_silu_mul_to(float *y, const float *g, const float *u, int n) {
#if BD_X86
    if (simd_on()) {
        silu_mul_avx2(y, g, u, n);
        return;
    }
#endif
    silu_mul_scalar(y, g, u, n);
}

void bd_silu_mul(float *g, const float *u, int n) {
    bd_silu_mul_to(g, g, u, n);
}

/* ---- attention softmax over a head's scores, in place: exp(s - max) / sum ---- */

/* exp is the Cephes routine above (exp_avx2 lane by lane equals exp_scalar); the sum's order differs */
static void softmax_scalar(float *s, int n) {
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    for (int j = 0; j < n; j++) sum += (s[j] = exp_scalar(s[j] - mx));
    for (int j = 0; j < n; j++) s[j] = s[j] / sum;
}

#if BD_X86
BD_AVX2 static void softmax_avx2(float *s, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    float buf[8], mx = -INFINITY;
    _mm256_storeu_ps(buf, m);
    for (int i = 0; i < 8; i++) mx = buf[i] > mx ? buf[i] : mx;
    for (; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum_f32(acc);
    for (int i = j; i < n; i++) sum += (s[i] = exp_scalar(s[i] - mx));
    const __m256 vs = _mm256_set1_ps(sum);
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_div_ps(_mm256_loadu_ps(s + j), vs));
    for (; j < n; j++) s[j] = s[j] / sum;
}

/* 16 lanes and the tail under a mask register (Zen 4 VM: masked zmm loads and stores are cheap where AVX2's
 * vmaskmovps was not, see docs/runtime.md); exp lane by lane as exp_avx2, the sum in another order */
BD_VNNI static void softmax_avx512(float *s, int n) {
    const int nf = n & ~15;
    const __mmask16 tail = (__mmask16)((1u << (n - nf)) - 1);
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < nf; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
    m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_loadu_ps(tail, s + nf));
    const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < nf; j += 16) {
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmx));
        _mm512_storeu_ps(s + j, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (tail) {
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + nf), vmx));
        _mm512_mask_storeu_ps(s + nf, tail, e);
        acc = _mm512_mask_add_ps(acc, tail, acc, e);
    }
    const __m512 vs = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
    for (int j = 0; j < nf; j += 16) _mm512_storeu_ps(s + j, _mm512_div_ps(_mm512_loadu_ps(s + j), vs));
    if (tail) _mm512_mask_storeu_ps(s + nf, tail, _mm512_div_ps(_mm512_maskz_loadu_ps(tail, s + nf), vs));
}
#endif

void bd_softmax(float *s, int n) {
#if BD_X86
    if (simd_on() >= 2) {
        softmax_avx512(s, n);
        return;
    }
    if (simd_on()) {
        softmax_avx2(s, n);
        return;
    }
#endif
    softmax_scalar(s, n);
}

/* ---- ternary: 4 interleaved rows x nb blocks, raw code sums (caller subtracts sum(x)) ---- */

#if BD_X86
/* Decode streams tens of MB of weights from DRAM once per token, with a few hundred cycles of arithmetic per
 * KiB: the hardware prefetcher alone left the GEMVs at ~60-70 % of a plain read loop's bandwidth on a Zen 3 VM.
 * A software prefetch ahead of the stream fixes that; how far ahead depends on the core: 1 KiB was best on
 * Zen 3 (1, 2, 4 and 8 KiB compared in one A/B run: SmolLM2 decode ~20 % faster than none with one thread),
 * 8 KiB on Zen 5, whose core keeps more reads in flight (Qwen3-0.6B shape, 1 thread: 154.6 tok/s at 1 KiB,
 * 160.5 / 170.7 / 183.3 / 184.7 / 181.2 at 2 / 4 / 8 / 16 / 32 KiB; SmolLM2 572.6 -> 665.2, 2 threads
 * 871.1 -> 974.3). g_prefetch_ahead: bytes, decided with the SIMD level (AMD family 0x1A and later: 8 KiB,
 * else 1 KiB) unless bd_set_prefetch_ahead chose (native.py passes BITDISTILL_PREFETCH). */
#define PREFETCH_AHEAD(p) _mm_prefetch((const char *)(p) + g_prefetch_ahead, _MM_HINT_T0)
#endif

static void prefetch_decide(void) {
#if BD_X86
    int bytes = 1024;
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u /* "Auth"enticAMD */ && __get_cpuid(1, &a, &b, &c, &d)) {
        const unsigned fam = ((a >> 8) & 0xf) + (((a >> 8) & 0xf) == 0xf ? (a >> 20) & 0xff : 0);
        if (fam >= 0x1a) bytes = 8192;
    }
    g_prefetch_ahead = g_prefetch_req >= 0 ? g_prefetch_req : bytes;
#endif
}

static void dot4_i8_t2_scalar(const uint8_t *w, const int8_t *x, int nb, int32_t out[4]) {
    int32_t a[4] = {0, 0, 0, 0};
    for (int b = 0; b < nb; b++) {
        const int8_t *xb = x + (size_t)b * BD_BLOCK;
        for (int r = 0; r < 4; r++) {
            const uint8_t *wb = w + (size_t)b * BD_BLOCK + r * 32;
            int32_t s = 0;
            for (int j = 0; j < 32; j++) {
                uint8_t v = wb[j];
                s += (v & 3) * xb[j] + ((v >> 2) & 3) * xb[j + 32] + ((v >> 4) & 3) * xb[j + 64] +
                     (v >> 6) * xb[j + 96];
            }
            a[r] += s;
        }
    }
    for (int r = 0; r < 4; r++) out[r] = a[r];
}

#if BD_X86
/* the 128 activations of one block, as the four 32-byte slices the 2-bit layout's shifts line up with */
BD_AVX2 static inline void load_block(const int8_t *xb, __m256i *x0, __m256i *x1, __m256i *x2, __m256i *x3) {
    *x0 = _mm256_loadu_si256((const __m256i *)xb);
    *x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
    *x2 = _mm256_loadu_si256((const __m256i *)(xb + 64));
    *x3 = _mm256_loadu_si256((const __m256i *)(xb + 96));
}

/* acc[r]: row r's products in 8 int32 lanes (their sum is the row's dot product) */
BD_AVX2 static inline __attribute__((always_inline)) void dot4_lanes_i8_t2_avx2(const uint8_t *w, const int8_t *x, int nb,
                                                                                 __m256i acc[4]) {
    const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_si256();
    int b = 0;
    while (b < nb) {
        /* int16 partial sums stay below 2*2*128*4 = 2048 per block: 8 blocks fit before widening */
        int end = b + 8 < nb ? b + 8 : nb;
        __m256i p[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (; b < end; b++) {
            const uint8_t *wb = w + (size_t)b * BD_BLOCK;
            PREFETCH_AHEAD(wb);
            PREFETCH_AHEAD(wb + 64);
            __m256i x0, x1, x2, x3;
            load_block(x + (size_t)b * BD_BLOCK, &x0, &x1, &x2, &x3);
            for (int r = 0; r < 4; r++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(wb + r * 32));
                __m256i c0 = _mm256_and_si256(v, m3);
                __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
                __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
                __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
                __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(c0, x0), _mm256_maddubs_epi16(c1, x1));
                s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_maddubs_epi16(c2, x2),
                                                         _mm256_maddubs_epi16(c3, x3)));
                p[r] = _mm256_add_epi16(p[r], s);
            }
        }
        for (int r = 0; r < 4; r++) acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p[r], ones));
    }
}

/* 8 outputs of a per-tensor scale: (float)(acc - sum(x)) * f (+ bias), f = delta / s; finish() lane by lane,
 * shared by decode's 8-row GEMV and the prefill epilogue (scale_panel) */
BD_AVX2 static inline __m256 scale8_avx2(__m256i acc, __m256i sx, __m256 f, const float *bias) {
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, sx)), f);
    return bias ? _mm256_add_ps(v, _mm256_loadu_ps(bias)) : v;
}

/* Decode's GEMV, two row groups (8 rows) at a time: their 8 lane vectors are reduced by one hadd tree and
 * finished (minus sum(x), scales, bias) as one vector, instead of 8 horizontal sums and 8 scalar finishes
 * through an int32[4] round trip (perf: ~6 % of a decode token outside the kernel). The same float
 * operations as finish() in the same order, so the values are identical. */
BD_AVX2 static inline __attribute__((always_inline)) void gemv8_finish(const bd_linear *L, int g, const __m256i s[8],
                                                                       int32_t sx, float xs, float *y) {
    const int row = g * 4;
    const __m256i acc = group_sums8(s), sx8 = _mm256_set1_epi32(sx);
    const float *bias = L->bias ? L->bias + row : NULL;
    if (L->scale_kind == BD_SCALE_TENSOR) {
        _mm256_storeu_ps(y + row, scale8_avx2(acc, sx8, _mm256_set1_ps(L->scale[0] / xs), bias));
        return;
    }
    __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, sx8)); /* ((float)acc * scale[row]) / xs, as finish() */
    v = _mm256_div_ps(_mm256_mul_ps(v, _mm256_loadu_ps(L->scale + row)), _mm256_set1_ps(xs));
    _mm256_storeu_ps(y + row, bias ? _mm256_add_ps(v, _mm256_loadu_ps(bias)) : v);
}

/* A level's two uses of its lane kernel dot4_lanes_i8_t2_LEVEL: 4 rows' sums (bd_dot4_i8_t2) and decode's
 * 8-row GEMV, two row groups' lanes finished as one vector by gemv8_finish (the same floats at every level). */
#define T2_KERNELS(LEVEL, TARGET)                                                                              \
    TARGET static void dot4_i8_t2_##LEVEL(const uint8_t *w, const int8_t *x, int nb, int32_t out[4]) {       \
        __m256i acc[4];                                                                                       \
        dot4_lanes_i8_t2_##LEVEL(w, x, nb, acc);                                                              \
        for (int r = 0; r < 4; r++) out[r] = hsum_i32(acc[r]);                                                \
    }                                                                                                         \
    TARGET static void gemv8_t2_##LEVEL(const bd_linear *L, int g, const int8_t *x, int32_t sx, float xs,    \
                                        float *y) {                                                           \
        const int nb = L->kp / BD_BLOCK;                                                                      \
        __m256i s[8];                                                                                         \
        dot4_lanes_i8_t2_##LEVEL(L->w + (size_t)g * L->kp, x, nb, s);                                         \
        dot4_lanes_i8_t2_##LEVEL(L->w + (size_t)(g + 1) * L->kp, x, nb, s + 4);                               \
        gemv8_finish(L, g, s, sx, xs, y);                                                                     \
    }
T2_KERNELS(avx2, BD_AVX2)

/* vpdpbusd multiplies the unsigned codes by the signed activations and sums 4 products into int32 lanes in
 * one instruction (AVX2 needs maddubs + an int16 add + a periodic madd widening); two accumulators per row
 * cover its latency. Streams the row group sequentially, like dot4_lanes_i8_t2_avx2. */
BD_VNNI static inline __attribute__((always_inline)) void dot4_lanes_i8_t2_vnni(const uint8_t *w, const int8_t *x,
                                                                                  int nb, __m256i acc[4]) {
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i a[2], c[2]; /* rows 0-1 and 2-3: a row group's 128-byte block is two zmm loads */
    for (int p = 0; p < 2; p++) a[p] = c[p] = _mm512_setzero_si512();
    for (int b = 0; b < nb; b++) {
        const uint8_t *wb = w + (size_t)b * BD_BLOCK;
        PREFETCH_AHEAD(wb);
        PREFETCH_AHEAD(wb + 64);
        const int8_t *xb = x + (size_t)b * BD_BLOCK;
        const __m512i x0 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)xb));
        const __m512i x1 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 32)));
        const __m512i x2 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 64)));
        const __m512i x3 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 96)));
        for (int p = 0; p < 2; p++) {
            __m512i v = _mm512_loadu_si512(wb + p * 64);
            a[p] = _mm512_dpbusd_epi32(a[p], _mm512_and_si512(v, m3), x0);
            c[p] = _mm512_dpbusd_epi32(c[p], _mm512_and_si512(_mm512_srli_epi16(v, 2), m3), x1);
            a[p] = _mm512_dpbusd_epi32(a[p], _mm512_and_si512(_mm512_srli_epi16(v, 4), m3), x2);
            c[p] = _mm512_dpbusd_epi32(c[p], _mm512_and_si512(_mm512_srli_epi16(v, 6), m3), x3);
        }
    }
    for (int p = 0; p < 2; p++) {
        const __m512i s = _mm512_add_epi32(a[p], c[p]);
        acc[2 * p] = _mm512_castsi512_si256(s);
        acc[2 * p + 1] = _mm512_extracti64x4_epi64(s, 1);
    }
}

T2_KERNELS(vnni, BD_VNNI)
#undef T2_KERNELS
#endif

void bd_dot4_i8_t2(const uint8_t *w, const int8_t *x, int nb, int32_t out[4]) {
#if BD_X86
    int lvl = simd_on();
    if (lvl >= 2) {
        dot4_i8_t2_vnni(w, x, nb, out);
        return;
    }
    if (lvl) {
        dot4_i8_t2_avx2(w, x, nb, out);
        return;
    }
#endif
    dot4_i8_t2_scalar(w, x, nb, out);
}

/* Expand one row group to plain codes u[4][nb*128] (column order), reused across prefill tokens: the scalar
 * level's prefill (every SIMD level has its panel tile in bd_gemm_panel_i8_t2). */
void bd_unpack4_t2(const uint8_t *w, int nb, uint8_t *u) {
    int kp = nb * BD_BLOCK;
    for (int b = 0; b < nb; b++)
        for (int r = 0; r < 4; r++) {
            const uint8_t *wb = w + (size_t)b * BD_BLOCK + r * 32;
            uint8_t *ub = u + (size_t)r * kp + (size_t)b * BD_BLOCK;
            for (int j = 0; j < 32; j++) {
                uint8_t v = wb[j];
                ub[j] = v & 3;
                ub[j + 32] = (v >> 2) & 3;
                ub[j + 64] = (v >> 4) & 3;
                ub[j + 96] = v >> 6;
            }
        }
}

void bd_dot4_i8_u8(const uint8_t *u, int kp, const int8_t *x, int32_t out[4]) {
    for (int r = 0; r < 4; r++) {
        const uint8_t *ur = u + (size_t)r * kp;
        int32_t s = 0;
        for (int i = 0; i < kp; i++) s += ur[i] * x[i];
        out[r] = s;
    }
}

/* ---- prefill GEMM: a panel of up to 16 rows x blocks of tokens ---- */

/* out[t][r] = sum_i u[r][i] * x[t][i] for nt tokens (rows of x kp apart): 4 unpacked rows, one token at a time
 * (the scalar level's prefill; the SIMD levels have the panel tiles below). */
void bd_gemm4_i8_u8(const uint8_t *u, int kp, const int8_t *x, int nt, int32_t *out) {
    for (int t = 0; t < nt; t++) bd_dot4_i8_u8(u, kp, x + (size_t)t * kp, out + 4 * t);
}

#if BD_X86
/* The panel layout: for each quad of columns q and each 8-row vector v of the panel, the 4 codes of its rows
 * side by side, 32 bytes at u + (q * nv + v) * 32. A vpmaddubsw of such a vector with one token's 4
 * activations broadcast gives each row's two pair sums in its own 32-bit lane: the rows of a panel are summed
 * in the lanes themselves, with no horizontal sums per output as a row-major dot product needs (those, and the
 * widening per 4x2 tile, cost the old kernel about half its time at k = 576). Rows past ngr groups get code 0. */
/* the in-lane steps of an 8 x 8 transpose of 32-bit elements (P: _mm256 or _mm512, 128-bit lanes alike): s[j]
 * holds element j % 4 of rows 0..7, in the 128-bit lane that held rows' elements 0-3 (j < 4) or 4-7 */
#define TRANSPOSE_QUADS(P, p, t, s)                                                                   \
    do {                                                                                              \
        for (int r_ = 0; r_ < 8; r_ += 2) {                                                           \
            t[r_] = P##_unpacklo_epi32(p[r_], p[r_ + 1]);                                             \
            t[r_ + 1] = P##_unpackhi_epi32(p[r_], p[r_ + 1]);                                         \
        }                                                                                             \
        for (int r_ = 0; r_ < 8; r_ += 4) {                                                           \
            s[r_] = P##_unpacklo_epi64(t[r_], t[r_ + 2]);                                             \
            s[r_ + 1] = P##_unpackhi_epi64(t[r_], t[r_ + 2]);                                         \
            s[r_ + 2] = P##_unpacklo_epi64(t[r_ + 1], t[r_ + 3]);                                     \
            s[r_ + 3] = P##_unpackhi_epi64(t[r_ + 1], t[r_ + 3]);                                     \
        }                                                                                             \
    } while (0)

/* block b (128 columns) of 8-row vector v into the layout of nv vectors */
BD_AVX2 static inline void unpack_vector_t2_avx2(const uint8_t *w, int ngr, int kp, int nv, int v, int b, uint8_t *u) {
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i p[8], t[8], s[8];
    for (int r = 0; r < 8; r++) {
        const int g = 2 * v + r / 4;
        p[r] = g < ngr ? _mm256_loadu_si256((const __m256i *)(w + (size_t)g * kp + (size_t)b * BD_BLOCK + (r % 4) * 32))
                       : _mm256_setzero_si256();
    }
    /* 8 x 8 transpose of the packed 32-bit quads (row r's quad j -> vector j, lane r) once, then the four 2-bit
     * fields of each: byte j of a row holds columns j, j+32, j+64, j+96, so field i of packed quad j is column
     * quad 8i + j of the block (transposing each field's codes instead took four transposes) */
    TRANSPOSE_QUADS(_mm256, p, t, s);
    for (int j = 0; j < 4; j++) {
        const __m256i q[2] = {_mm256_permute2x128_si256(s[j], s[4 + j], 0x20),  /* packed quad j */
                              _mm256_permute2x128_si256(s[j], s[4 + j], 0x31)}; /* and j + 4 */
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 4; i++) /* column quad b*32 + 8i + j + 4h */
                _mm256_storeu_si256((__m256i *)(u + ((size_t)(b * 32 + 8 * i + j + 4 * h) * nv + v) * 32),
                                    _mm256_and_si256(_mm256_srli_epi16(q[h], 2 * i), m3));
    }
}

BD_AVX2 static void unpack_panel_t2_avx2(const uint8_t *w, int ngr, int kp, uint8_t *u) {
    const int nv = (ngr + 1) / 2, nb = kp / BD_BLOCK;
    for (int v = 0; v < nv; v++)
        for (int b = 0; b < nb; b++) unpack_vector_t2_avx2(w, ngr, kp, nv, v, b, u);
}

/* The same layout two 8-row vectors at a time (a 16-row panel's quad is then one 64-byte store): rows r and
 * 8 + r share a register, the AVX2 transpose runs on both halves, and one two-source permute per quad
 * joins the halves. A lone last vector takes the AVX2 loop. */
BD_VNNI static void unpack_panel_t2_avx512(const uint8_t *w, int ngr, int kp, uint8_t *u) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const int nv = (ngr + 1) / 2, nb = kp / BD_BLOCK;
    int v = 0;
    for (; v + 2 <= nv; v += 2)
        for (int b = 0; b < nb; b++) {
            __m512i p[8], t[8], s[8];
            for (int r = 0; r < 8; r++) {
                const int g = 2 * v + r / 4, g2 = g + 2;
                const __m256i a = _mm256_loadu_si256((const __m256i *)(w + (size_t)g * kp + (size_t)b * BD_BLOCK +
                                                                        (r % 4) * 32));
                const __m256i c = g2 < ngr ? _mm256_loadu_si256((const __m256i *)(w + (size_t)g2 * kp +
                                                                                   (size_t)b * BD_BLOCK + (r % 4) * 32))
                                           : _mm256_setzero_si256();
                p[r] = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
            }
            TRANSPOSE_QUADS(_mm512, p, t, s);
            for (int j = 0; j < 8; j++) {
                const __m512i q = _mm512_permutex2var_epi64(s[j % 4], j < 4 ? lo : hi, s[4 + j % 4]);
                for (int i = 0; i < 4; i++)
                    _mm512_storeu_si512((void *)(u + ((size_t)(b * 32 + 8 * i + j) * nv + v) * 32),
                                        _mm512_and_si512(_mm512_srli_epi16(q, 2 * i), m3));
            }
        }
    for (int b = 0; v < nv && b < nb; b++) unpack_vector_t2_avx2(w, ngr, kp, nv, v, b, u); /* a lone last one */
}

/* NV 8-row vectors x NT tokens of int16 accumulators in registers (2 x 5 = 10 of the 16 ymm, plus the codes and
 * the broadcast activations); widened to int32 every 32 quads (128 columns): a lane gains at most 2 * 2 * 128 = 512
 * per quad, so 32 quads stay within 2^14. out[t][v * 8 + r], BD_PANEL_ROWS apart per token. */
BD_AVX2 static inline __attribute__((always_inline)) void panel_tile(const uint8_t *u, const int NV, const int NT,
                                                                     int nq, int kp, const int8_t *x, int32_t *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i wide[2 * 5];
    for (int j = 0; j < NV * NT; j++) wide[j] = _mm256_setzero_si256();
    for (int q0 = 0; q0 < nq; q0 += 32) {
        const int q1 = q0 + 32 < nq ? q0 + 32 : nq;
        __m256i a[2 * 5];
        for (int j = 0; j < NV * NT; j++) a[j] = _mm256_setzero_si256();
        for (int q = q0; q < q1; q++) {
            const uint8_t *uq = u + (size_t)q * NV * 32;
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)uq);
            const __m256i w1 = NV > 1 ? _mm256_loadu_si256((const __m256i *)(uq + 32)) : w0;
            for (int t = 0; t < NT; t++) {
                /* broadcast, multiply, accumulate as one asm block per token: written as intrinsics, GCC issued
                 * every broadcast first and kept five accumulators in memory */
                const int32_t *x4 = (const int32_t *)(x + (size_t)t * kp + 4 * q);
                __m256i xb, m;
                if (NV > 1)
                    __asm__("vpbroadcastd %[x4], %[xb]\n\t"
                            "vpmaddubsw %[xb], %[w0], %[m]\n\t"
                            "vpaddw %[m], %[a0], %[a0]\n\t"
                            "vpmaddubsw %[xb], %[w1], %[m]\n\t"
                            "vpaddw %[m], %[a1], %[a1]"
                            : [a0] "+x"(a[t]), [a1] "+x"(a[NT + t]), [xb] "=&x"(xb), [m] "=&x"(m)
                            : [x4] "m"(*x4), [w0] "x"(w0), [w1] "x"(w1));
                else
                    __asm__("vpbroadcastd %[x4], %[xb]\n\t"
                            "vpmaddubsw %[xb], %[w0], %[m]\n\t"
                            "vpaddw %[m], %[a0], %[a0]"
                            : [a0] "+x"(a[t]), [xb] "=&x"(xb), [m] "=&x"(m)
                            : [x4] "m"(*x4), [w0] "x"(w0));
            }
        }
        for (int j = 0; j < NV * NT; j++) wide[j] = _mm256_add_epi32(wide[j], _mm256_madd_epi16(a[j], ones));
    }
    for (int v = 0; v < NV; v++)
        for (int t = 0; t < NT; t++)
            _mm256_storeu_si256((__m256i *)(out + (size_t)t * BD_PANEL_ROWS + v * 8), wide[v * NT + t]);
}

#define PANEL_TILE(NV, NT)                                                                                     \
    BD_AVX2 static void panel_tile_##NV##_##NT(const uint8_t *u, int nq, int kp, const int8_t *x, int32_t *out) { \
        panel_tile(u, NV, NT, nq, kp, x, out);                                                                     \
    }
PANEL_TILE(1, 1) PANEL_TILE(1, 2) PANEL_TILE(1, 3) PANEL_TILE(1, 4) PANEL_TILE(1, 5)
PANEL_TILE(2, 1) PANEL_TILE(2, 2) PANEL_TILE(2, 3) PANEL_TILE(2, 4) PANEL_TILE(2, 5)
#undef PANEL_TILE

typedef void (*panel_tile_fn)(const uint8_t *, int, int, const int8_t *, int32_t *);
static const panel_tile_fn PANEL_TILES[2][5] = {
    {panel_tile_1_1, panel_tile_1_2, panel_tile_1_3, panel_tile_1_4, panel_tile_1_5},
    {panel_tile_2_1, panel_tile_2_2, panel_tile_2_3, panel_tile_2_4, panel_tile_2_5}};

/* The VNNI level's tile over the same panel layout: a 16-row panel's codes for one quad are its two 8-row vectors
 * side by side, one zmm, and vpdpbusd with the token's 4 activations as an embedded {1to16} broadcast multiplies
 * and adds them into int32 lanes in one instruction (no int16 stage, no widening, no broadcast register). An
 * 8-row panel (nv = 1) leaves the upper half zero. Integer sums: the same values as the AVX2 and scalar levels. */
#define VNNI_TILE_MAX 16

/* Where a VNNI tile's sums go: with y, straight from its registers as the per-tensor-scale epilogue's floats,
 * y[t * n + r] = (float)(sum - xsum[t]) * f[t] (+ bias[r]) for rows r < rows — scale_panel's operations lane by
 * lane, so the same floats, without the int32 round trip through memory and a second pass; else the int32
 * sums into out. */
typedef struct {
    float *y;
    int n, rows;
    const int32_t *xsum;
    const float *f, *bias;
    const float *gate; /* with it, y = silu(gate) * (the scaled sum), silu_mul_avx2's operations: the FFN's act */
} vnni_epilogue;

BD_VNNI static inline __attribute__((always_inline)) void panel_tile_vnni(const uint8_t *u, int nv, const int NT, int nq,
                                                                         int kp, const int8_t *x, int32_t *out,
                                                                         const vnni_epilogue *e) {
    /* named accumulators, not an array: GCC kept an array of 8 or 16 zmm in memory (no scalar replacement at
     * that size), with a load and a store around every vpdpbusd */
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
            a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    /* the tokens' activations are addressed by one pointer stepped kp bytes per token inside the asm: left to
     * the compiler, the 16 addresses became 16 induction variables, more than the general registers, spilled
     * to xmm and moved back every quad (prefill 17 % slower in a build without -fwrapv, which CPython's flags
     * happen to pass) */
    const size_t stride = (size_t)kp;
#define VNNI_STEP(T, A)                                                                                          \
    if (NT > T)                                                                                                  \
        __asm__("vpdpbusd (%[p])%{1to16%}, %[w], %[a]\n\t"                                                    \
                "add %[s], %[p]"                                                                                 \
                : [a] "+v"(A), [p] "+r"(xp)                                                                      \
                : [w] "v"(w), [s] "r"(stride)                                                                    \
                : "memory"); /* it reads the activations through xp */
    for (int q = 0; q < nq; q++) {
        const __m256i *u8 = (const __m256i *)(u + (size_t)q * 32); /* nv = 1: an 8-row panel */
        const __m512i w = nv == 2 ? _mm512_loadu_si512(u + (size_t)q * 64)
                                  : _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_loadu_si256(u8), 0);
        const int8_t *xp = x + 4 * (size_t)q; /* token 0's 4 activations of quad q; token t's kp * t on */
        VNNI_STEP(0, a0) VNNI_STEP(1, a1) VNNI_STEP(2, a2) VNNI_STEP(3, a3)
        VNNI_STEP(4, a4) VNNI_STEP(5, a5) VNNI_STEP(6, a6) VNNI_STEP(7, a7)
        VNNI_STEP(8, a8) VNNI_STEP(9, a9) VNNI_STEP(10, a10) VNNI_STEP(11, a11)
        VNNI_STEP(12, a12) VNNI_STEP(13, a13) VNNI_STEP(14, a14) VNNI_STEP(15, a15)
    }
#undef VNNI_STEP
    const __m512i a[VNNI_TILE_MAX] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
    if (!e) {
        for (int t = 0; t < NT; t++) _mm512_storeu_si512(out + (size_t)t * BD_PANEL_ROWS, a[t]);
        return;
    }
    const __mmask16 rows = (__mmask16)((1u << e->rows) - 1);
    const __m512 bias = e->bias ? _mm512_maskz_loadu_ps(rows, e->bias) : _mm512_setzero_ps();
    for (int t = 0; t < NT; t++) {
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a[t], _mm512_set1_epi32(e->xsum[t]))),
                                 _mm512_set1_ps(e->f[t]));
        if (e->bias) v = _mm512_add_ps(v, bias);
        if (e->gate) {
            const __m512 g = _mm512_maskz_loadu_ps(rows, e->gate + (size_t)t * e->n);
            const __m512 neg = _mm512_castsi512_ps( /* -g: the sign bit flipped (xor_ps needs AVX512DQ) */
                _mm512_xor_si512(_mm512_castps_si512(g), _mm512_set1_epi32((int)0x80000000u)));
            const __m512 ex = exp_avx512(neg);
            v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), ex)), v);
        }
        _mm512_mask_storeu_ps(e->y + (size_t)t * e->n, rows, v);
    }
}

#define VNNI_TILE(NT)                                                                                     \
    BD_VNNI static void panel_tile_vnni_##NT(const uint8_t *u, int nv, int nq, int kp, const int8_t *x,      \
                                             int32_t *out, const vnni_epilogue *e) {                         \
        panel_tile_vnni(u, nv, NT, nq, kp, x, out, e);                                                        \
    }
VNNI_TILE(1) VNNI_TILE(2) VNNI_TILE(3) VNNI_TILE(4) VNNI_TILE(5) VNNI_TILE(6) VNNI_TILE(7) VNNI_TILE(8)
VNNI_TILE(9) VNNI_TILE(10) VNNI_TILE(11) VNNI_TILE(12) VNNI_TILE(13) VNNI_TILE(14) VNNI_TILE(15) VNNI_TILE(16)
#undef VNNI_TILE

typedef void (*vnni_tile_fn)(const uint8_t *, int, int, int, const int8_t *, int32_t *, const vnni_epilogue *);
static const vnni_tile_fn VNNI_TILES[VNNI_TILE_MAX] = {
    panel_tile_vnni_1, panel_tile_vnni_2, panel_tile_vnni_3, panel_tile_vnni_4,
    panel_tile_vnni_5, panel_tile_vnni_6, panel_tile_vnni_7, panel_tile_vnni_8,
    panel_tile_vnni_9, panel_tile_vnni_10, panel_tile_vnni_11, panel_tile_vnni_12,
    panel_tile_vnni_13, panel_tile_vnni_14, panel_tile_vnni_15, panel_tile_vnni_16,
};

/* An unpacked panel (ubuf: nv 8-row vectors, nq quads) against nt tokens, 16 at a time: int32 sums into out
 * (BD_PANEL_ROWS per token), or with e the epilogue's floats (e->y, e->xsum, e->f, e->gate for token 0, each
 * stepped per tile) */
BD_VNNI static void vnni_panel_tiles(const uint8_t *ubuf, int nv, int nq, int kp, const int8_t *x, int nt,
                                     int32_t *out, const vnni_epilogue *e) {
    for (int t = 0; t < nt; t += VNNI_TILE_MAX) {
        const int m = nt - t < VNNI_TILE_MAX ? nt - t : VNNI_TILE_MAX;
        if (!e) {
            VNNI_TILES[m - 1](ubuf, nv, nq, kp, x + (size_t)t * kp, out + (size_t)t * BD_PANEL_ROWS, NULL);
            continue;
        }
        const vnni_epilogue et = {e->y + (size_t)t * e->n, e->n, e->rows, e->xsum + t, e->f + t, e->bias,
                                  e->gate ? e->gate + (size_t)t * e->n : NULL};
        VNNI_TILES[m - 1](ubuf, nv, nq, kp, x + (size_t)t * kp, NULL, &et);
    }
}
#endif

void bd_gemm_panel_i8_t2(const uint8_t *w, int ngr, int k, int kp, const int8_t *x, int nt, int32_t *out,
                         uint8_t *ubuf) {
#if BD_X86
    const int lvl = simd_on();
    if (lvl) {
        /* columns past k are zero activations: the quads up to k are the whole sum (k = 576 packs to 640) */
        const int nv = (ngr + 1) / 2, nq = (k + 3) / 4;
        if (lvl >= 2) {
            unpack_panel_t2_avx512(w, ngr, kp, ubuf);
            vnni_panel_tiles(ubuf, nv, nq, kp, x, nt, out, NULL);
            return;
        }
        unpack_panel_t2_avx2(w, ngr, kp, ubuf);
        for (int t = 0; t < nt; t += 5) {
            const int m = nt - t < 5 ? nt - t : 5;
            PANEL_TILES[nv - 1][m - 1](ubuf, nq, kp, x + (size_t)t * kp, out + (size_t)t * BD_PANEL_ROWS);
        }
        return;
    }
#endif
    int32_t a[4 * 32];
    for (int g = 0; g < ngr; g++) {
        bd_unpack4_t2(w + (size_t)g * kp, kp / BD_BLOCK, ubuf);
        for (int t0 = 0; t0 < nt; t0 += 32) {
            const int m = nt - t0 < 32 ? nt - t0 : 32;
            bd_gemm4_i8_u8(ubuf, kp, x + (size_t)t0 * kp, m, a);
            for (int t = 0; t < m; t++) memcpy(out + (size_t)(t0 + t) * BD_PANEL_ROWS + 4 * g, a + 4 * t, 16);
        }
    }
}

/* The VNNI level's prefill panel with the per-tensor-scale epilogue in the tile (vnni_epilogue): y rows
 * [0, rows) of nt tokens, n apart, from xsum[t] and f[t] (and bias). 0 at the other levels: the caller then
 * takes bd_gemm_panel_i8_t2 and scale_panel. */
static int gemm_panel_scaled(const uint8_t *w, int ngr, int k, int kp, const int8_t *x, int nt, const int32_t *xsum,
                             const float *f, const float *bias, int rows, float *y, int n, uint8_t *ubuf,
                             const float *gate) {
#if BD_X86
    if (simd_on() >= 2) {
        unpack_panel_t2_avx512(w, ngr, kp, ubuf);
        const vnni_epilogue e = {y, n, rows, xsum, f, bias, gate};
        vnni_panel_tiles(ubuf, (ngr + 1) / 2, (k + 3) / 4, kp, x, nt, NULL, &e);
        return 1;
    }
#endif
    (void)w, (void)ngr, (void)k, (void)kp, (void)x, (void)nt, (void)xsum, (void)f, (void)bias, (void)rows, (void)y;
    (void)n, (void)ubuf, (void)gate;
    return 0;
}

/* ---- int8 x int8 (LM head): 4 consecutive rows of a row-major [n][k] matrix ---- */

static void dot4_i8_i8_scalar(const int8_t *w, int k, const int8_t *x, int32_t out[4]) {
    for (int r = 0; r < 4; r++) {
        const int8_t *wr = w + (size_t)r * k;
        int32_t s = 0;
        for (int i = 0; i < k; i++) s += wr[i] * x[i];
        out[r] = s;
    }
}

#if BD_X86
/* One row after the other, not the 4 rows side by side: the rows are contiguous, so this reads the matrix
 * as one sequential stream that the hardware prefetcher follows at full speed (4 interleaved 1 KiB streams
 * ran at a third of the bandwidth: each is too short for the prefetcher to lock on). */
BD_AVX2 static void dot4_i8_i8_avx2(const int8_t *w, int k, const int8_t *x, int32_t out[4]) {
    /* maddubs needs one unsigned operand: |x| times w carrying x's sign (x, w in [-127, 127]) */
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < 4; r++) {
        const int8_t *wr = w + (size_t)r * k;
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        int i = 0;
        for (; i + 64 <= k; i += 64) {
            PREFETCH_AHEAD(wr + i);
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + i));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + i + 32));
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(wr + i));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(wr + i + 32));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x0),
                                                                             _mm256_sign_epi8(w0, x0)), ones));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x1),
                                                                             _mm256_sign_epi8(w1, x1)), ones));
        }
        int32_t s = hsum_i32(_mm256_add_epi32(a0, a1));
        for (; i < k; i++) s += wr[i] * x[i];
        out[r] = s;
    }
}
#endif

void bd_dot4_i8_i8(const int8_t *w, int k, const int8_t *x, int32_t out[4]) {
#if BD_X86
    if (simd_on()) {
        dot4_i8_i8_avx2(w, k, x, out);
        return;
    }
#endif
    dot4_i8_i8_scalar(w, k, x, out);
}

/* ---- 4-bit grouped (q4) x int8 (LM head): one row, int32 per group, float across groups ---- */

/* xg: per-64-column sums of x (the codes are offset by 8: sum((c-8)x) = sum(cx) - 8 sum(x)) */
static float dot_i8_q4_scalar(const uint8_t *w, const float *d, int ng, const int8_t *x, const int32_t *xg) {
    float acc = 0.0f;
    for (int g = 0; g < ng; g++) {
        const uint8_t *wg = w + (size_t)g * 32;
        const int8_t *x0 = x + (size_t)g * BD_Q4_GROUP;
        int32_t s = 0;
        for (int j = 0; j < 32; j++) s += (wg[j] & 15) * x0[j] + (wg[j] >> 4) * x0[j + 32];
        acc += d[g] * (float)(s - 8 * xg[g]);
    }
    return acc;
}

#if BD_X86
/* Eight groups at a time: each group's products land in 8 int32 lanes; a hadd tree turns the 8 vectors into
 * one vector of 8 exact group sums, from which 8 sum(x) are subtracted and which meets the 8 contiguous
 * scales in one convert + FMA (per-group broadcasts and FMAs made the kernel compute bound at ~17 GB/s). */

BD_AVX2 static float dot_i8_q4_avx2(const uint8_t *w, const float *d, int ng, const int8_t *x, const int32_t *xg) {
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i s[8];
        for (int l = 0; l < 256; l += 64) PREFETCH_AHEAD(w + (size_t)g * 32 + l);
        for (int h = 0; h < 8; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)(g + h) * 32));
            const int8_t *xb = x + (size_t)(g + h) * BD_Q4_GROUP;
            __m256i p = _mm256_add_epi16( /* |pair sums| <= 2 * 15 * 127: int16 safe */
                _mm256_maddubs_epi16(_mm256_and_si256(v, m4), _mm256_loadu_si256((const __m256i *)xb)),
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                     _mm256_loadu_si256((const __m256i *)(xb + 32))));
            s[h] = _mm256_madd_epi16(p, ones);
        }
        __m256i t = _mm256_sub_epi32(group_sums8(s), _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(xg + g)), 3));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(d + g), acc);
    }
    float r = hsum_f32(acc);
    if (g < ng) r += dot_i8_q4_scalar(w + (size_t)g * 32, d + g, ng - g, x + (size_t)g * BD_Q4_GROUP, xg + g);
    return r;
}

#endif

/* sum(d_g * sum_j (c_j - 8) x_j) over the row's groups; x zero-padded to ng * 64 */
float bd_dot_i8_q4(const uint8_t *w, const float *d, int ng, const int8_t *x, const int32_t *xg) {
#if BD_X86
    /* AVX2 on VNNI machines too: a vpdpbusd variant measured no faster single-threaded and slower on 2 threads */
    if (simd_on()) return dot_i8_q4_avx2(w, d, ng, x, xg);
#endif
    return dot_i8_q4_scalar(w, d, ng, x, xg);
}

#if BD_X86
/* the scales of 8 rows (ng apart) for groups g0..g0+7 as 8 vectors, vector j holding group g0 + j of rows
 * 0..7: one 8 x 8 transpose instead of a gather per group (SmolLM2's head on one Zen 3 thread: 1.27 ms per
 * token with vgatherdps against 1.06 with no scale loads at all; with the transposes, 1.06-1.09 in A/B runs) */
BD_AVX2 static inline void scales_8x8(const float *d, int ng, int g0, __m256 col[8]) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(d + (size_t)i * ng + g0);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        col[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
        col[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
    }
}

/* y[r] for 8 consecutive rows at once (rows ng * 32 bytes apart, scales ng apart): per group, the 8 rows' int32
 * lanes go through one hadd tree into one vector of 8 row sums, which meets the 8 rows' scales in one FMA; the
 * float sums stay in lanes, so a row needs no horizontal sum of its own and no scalar loop for a last partial
 * chunk of groups (SmolLM2's k = 576 has 9). Summation order differs from dot_i8_q4_avx2's (float noise). */
BD_AVX2 static void dot8_i8_q4_avx2(const uint8_t *w, const float *d, int ng, const int8_t *x, const int32_t *xg,
                                    float out[8]) {
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i rows = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), stride = _mm256_set1_epi32(ng);
    const __m256i didx = _mm256_mullo_epi32(rows, stride);
    const size_t rb = (size_t)ng * 32;
    __m256 acc = _mm256_setzero_ps(), dg[8];
    const int full = ng & ~7; /* groups in whole 8s; the last ng % 8 come from the window of the last 8 groups */
    for (int g = 0; g < ng; g++) {
        if (g % 8 == 0 && ng >= 8) scales_8x8(d, ng, g < full ? g : ng - 8, dg);
        const __m256 dv = ng < 8 ? _mm256_i32gather_ps(d + g, didx, 4) : dg[g < full ? g % 8 : g - (ng - 8)];
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + (size_t)g * BD_Q4_GROUP));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + (size_t)g * BD_Q4_GROUP + 32));
        __m256i s[8];
        /* the next 8 rows (8 * rb bytes on) stream in while these are summed: 256 of their bytes per group */
        for (int l = 0; l < 256; l += 64) _mm_prefetch((const char *)(w + 8 * rb + (size_t)g * 256 + l), _MM_HINT_T0);
        for (int r = 0; r < 8; r++) {
            const uint8_t *wg = w + r * rb + (size_t)g * 32;
            const __m256i v = _mm256_loadu_si256((const __m256i *)wg);
            const __m256i p = _mm256_add_epi16( /* |pair sums| <= 2 * 15 * 127: int16 safe */
                _mm256_maddubs_epi16(_mm256_and_si256(v, m4), x0),
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), x1));
            s[r] = _mm256_madd_epi16(p, ones);
        }
        const __m256i t = _mm256_sub_epi32(group_sums8(s), _mm256_set1_epi32(8 * xg[g]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), dv, acc);
    }
    _mm256_storeu_ps(out, acc);
}
#endif

/* per-group sums of a zero-padded int8 row (ng groups of 64) */
void bd_q4_group_sums(const int8_t *x, int ng, int32_t *xg) {
    for (int g = 0; g < ng; g++) {
        int32_t s = 0;
        for (int j = 0; j < BD_Q4_GROUP; j++) s += x[(size_t)g * BD_Q4_GROUP + j];
        xg[g] = s;
    }
}

/* ---- float dtypes ---- */

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float load_f(const void *w, int dtype, size_t i) {
    if (dtype == BD_F32) return ((const float *)w)[i];
    if (dtype == BD_F16) return f16_to_f32(((const uint16_t *)w)[i]);
    return bf16_to_f32(((const uint16_t *)w)[i]);
}

static void dot4_f32_fp_scalar(const void *w, int dtype, int k, const float *x, float out[4]) {
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (int i = 0; i < k; i++) s += load_f(w, dtype, (size_t)r * k + i) * x[i];
        out[r] = s;
    }
}

#if BD_X86
BD_AVX2 static inline __m256 load8(const void *w, int dtype, size_t i) {
    if (dtype == BD_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dtype == BD_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

BD_AVX2 static void dot4_f32_fp_avx2(const void *w, int dtype, int k, const float *x, float out[4]) {
    /* row by row for a sequential stream (see dot4_i8_i8_avx2); two accumulators hide the FMA latency */
    for (int r = 0; r < 4; r++) {
        size_t base = (size_t)r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int i = 0;
        for (; i + 16 <= k; i += 16) {
            a0 = _mm256_fmadd_ps(load8(w, dtype, base + i), _mm256_loadu_ps(x + i), a0);
            a1 = _mm256_fmadd_ps(load8(w, dtype, base + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        }
        for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(load8(w, dtype, base + i), _mm256_loadu_ps(x + i), a0);
        float s = hsum_f32(_mm256_add_ps(a0, a1));
        for (int j = i; j < k; j++) s += load_f(w, dtype, base + j) * x[j];
        out[r] = s;
    }
}

/* The float head for 4 tokens at once (a batch's output rows: classification, label words): each row is read
 * once for all of them and their 8 FMA chains run side by side, where one token's 2 chains were bound by the
 * FMA latency (~15 GMAC/s on a Zen 4 core, ~7 % of a classification run). y[t * ys + r] for row r, token t
 * (rows of x xs apart); per row and token the same FMAs in the same order as dot4_f32_fp_avx2, so the same
 * bits as one token at a time. */
BD_AVX2 static inline __attribute__((always_inline)) void dot4x4_f32_fp(const void *w, const int dtype, int k,
                                                                        const float *x, size_t xs, float *y,
                                                                        size_t ys) {
    for (int r = 0; r < 4; r++) {
        size_t base = (size_t)r * k;
        __m256 a0[4], a1[4];
        for (int t = 0; t < 4; t++) a0[t] = a1[t] = _mm256_setzero_ps();
        int i = 0;
        for (; i + 16 <= k; i += 16) {
            const __m256 w0 = load8(w, dtype, base + i), w1 = load8(w, dtype, base + i + 8);
            for (int t = 0; t < 4; t++) {
                a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * xs + i), a0[t]);
                a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * xs + i + 8), a1[t]);
            }
        }
        for (; i + 8 <= k; i += 8) {
            const __m256 w0 = load8(w, dtype, base + i);
            for (int t = 0; t < 4; t++) a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * xs + i), a0[t]);
        }
        for (int t = 0; t < 4; t++) {
            float s = hsum_f32(_mm256_add_ps(a0[t], a1[t]));
            for (int j = i; j < k; j++) s += load_f(w, dtype, base + j) * x[t * xs + j];
            y[t * ys + r] = s;
        }
    }
}

/* a literal dtype, so the inlined loops hold no per-load branch on it */
BD_AVX2 static void dot4x4_f32_fp_avx2(const void *w, int dtype, int k, const float *x, size_t xs, float *y,
                                       size_t ys) {
    if (dtype == BD_F32) dot4x4_f32_fp(w, BD_F32, k, x, xs, y, ys);
    else if (dtype == BD_F16) dot4x4_f32_fp(w, BD_F16, k, x, xs, y, ys);
    else dot4x4_f32_fp(w, BD_BF16, k, x, xs, y, ys);
}
#endif

void bd_dot4_f32_fp(const void *w, int dtype, int k, const float *x, float out[4]) {
#if BD_X86
    if (simd_on()) {
        dot4_f32_fp_avx2(w, dtype, k, x, out);
        return;
    }
#endif
    dot4_f32_fp_scalar(w, dtype, k, x, out);
}

static size_t dtype_size(int dtype) { return dtype == BD_F32 ? 4 : dtype == BD_I8 ? 1 : 2; }

void bd_row_to_f32(const void *w, int dtype, const float *rscale, int row, int k, float *out) {
    size_t base = (size_t)row * k;
    if (dtype == BD_I8) {
        const int8_t *wr = (const int8_t *)w + base;
        for (int i = 0; i < k; i++) out[i] = (float)wr[i] * rscale[row];
    } else if (dtype == BD_Q4) {
        int ng = (k + BD_Q4_GROUP - 1) / BD_Q4_GROUP;
        const uint8_t *wr = (const uint8_t *)w + (size_t)row * ng * 32;
        const float *d = rscale + (size_t)row * ng;
        for (int i = 0; i < k; i++) {
            int g = i / BD_Q4_GROUP, j = i % BD_Q4_GROUP;
            uint8_t byte = wr[g * 32 + (j & 31)];
            out[i] = d[g] * (float)((j < 32 ? byte & 15 : byte >> 4) - 8);
        }
    } else {
        for (int i = 0; i < k; i++) out[i] = load_f(w, dtype, base + i);
    }
}

/* ---- whole-row-range drivers (called by each thread on its share of rows) ---- */

static inline float finish(const bd_linear *L, int row, int32_t acc, float xs) {
    float y;
    if (L->scale_kind == BD_SCALE_TENSOR)
        y = (float)acc * (L->scale[0] / xs); /* BitLinear eval: acc * (delta / s) */
    else
        y = ((float)acc * L->scale[row]) / xs;
    return L->bias ? y + L->bias[row] : y;
}

/* y[t][r] = (float)(acc[t][r] - xsum[t]) * f[t] (+ bias[r]) for nt tokens (y rows n apart, acc rows
 * BD_PANEL_ROWS apart) and r < rows: finish() of a per-tensor scale, f = delta / s, for one panel. The prefill's
 * epilogue: as a scalar loop per output it took ~10 % of a SmolLM2 prefill (perf), now ~7 %, most of it the
 * stores of a 128-token output block that does not fit in L2. Same
 * operations lane by lane, so the same floats. */
static inline float scale_one(int32_t acc, int32_t sx, float f, const float *bias, int r) {
    const float v = (float)(acc - sx) * f;
    return bias ? v + bias[r] : v;
}

#if BD_X86
BD_AVX2 static void scale_panel_avx2(float *y, int n, const int32_t *acc, const int32_t *xsum, const float *f,
                                     const float *bias, int rows, int nt) {
    for (int t = 0; t < nt; t++) {
        const int32_t *at = acc + (size_t)t * BD_PANEL_ROWS;
        float *yt = y + (size_t)t * n;
        const __m256i s8 = _mm256_set1_epi32(xsum[t]);
        const __m256 f8 = _mm256_set1_ps(f[t]);
        int r = 0;
        for (; r + 8 <= rows; r += 8)
            _mm256_storeu_ps(yt + r, scale8_avx2(_mm256_loadu_si256((const __m256i *)(at + r)), s8, f8, bias ? bias + r : NULL));
        for (; r < rows; r++) yt[r] = scale_one(at[r], xsum[t], f[t], bias, r);
    }
}
#endif

static void scale_panel(float *y, int n, const int32_t *acc, const int32_t *xsum, const float *f, const float *bias,
                        int rows, int nt) {
#if BD_X86
    if (simd_on()) {
        scale_panel_avx2(y, n, acc, xsum, f, bias, rows, nt);
        return;
    }
#endif
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < rows; r++) y[(size_t)t * n + r] = scale_one(acc[(size_t)t * BD_PANEL_ROWS + r], xsum[t], f[t], bias, r);
}

/* prefill's token block: activations that stay in L2 (~192 KiB), 8 to PREFILL_TB_MAX tokens */
enum { PREFILL_TB_MAX = 128 };
static int prefill_block(int kp) {
    const int tb = 196608 / kp;
    return tb < 8 ? 8 : tb > PREFILL_TB_MAX ? PREFILL_TB_MAX : tb;
}

/* The packed rows of the panel after the one at row group g (groups below g1), into L2 while this one
 * multiplies: its unpack otherwise waited on DRAM, where prefill first reads each weight (perf, SmolLM2
 * prefill: unpack 6.3 -> 2.8 % of the time) */
static void prefetch_next_panel(const uint8_t *w, int g, int g1, int kp) {
#if BD_X86
    const int gn = g + BD_PANEL_ROWS / 4;
    if (gn >= g1) return;
    const size_t bytes = (size_t)(g1 - gn < BD_PANEL_ROWS / 4 ? g1 - gn : BD_PANEL_ROWS / 4) * kp;
    for (size_t b = 0; b < bytes; b += 64) _mm_prefetch((const char *)(w + (size_t)gn * kp) + b, _MM_HINT_T1);
#else
    (void)w, (void)g, (void)g1, (void)kp;
#endif
}

void bd_linear_rows(const bd_linear *L, int g0, int g1, const int8_t *xq, const float *xs, const int32_t *xsum,
                    int T, float *y, uint8_t *ubuf) {
    const int nb = L->kp / BD_BLOCK, kp = L->kp, n = L->n;
    int32_t a[4];
    if (L->scale_kind == BD_SCALE_GROUP) {
        const int gb = L->group_blocks, ng = nb / gb;
        for (int g = g0; g < g1; g++) {
            const uint8_t *wg = L->w + (size_t)g * kp;
            for (int t = 0; t < T; t++) {
                const int8_t *xt = xq + (size_t)t * kp;
                float accf[4] = {0, 0, 0, 0};
                for (int G = 0; G < ng; G++) {
                    const int8_t *xg = xt + (size_t)G * gb * BD_BLOCK;
                    int32_t gs = 0;
                    for (int i = 0; i < gb * BD_BLOCK; i++) gs += xg[i];
                    bd_dot4_i8_t2(wg + (size_t)G * gb * BD_BLOCK, xg, gb, a);
                    for (int r = 0; r < 4; r++) {
                        int row = g * 4 + r;
                        if (row < n) accf[r] += (float)(a[r] - gs) * L->scale[(size_t)row * ng + G];
                    }
                }
                for (int r = 0; r < 4; r++) {
                    int row = g * 4 + r;
                    if (row >= n) break;
                    float v = accf[r] / xs[t];
                    y[(size_t)t * n + row] = L->bias ? v + L->bias[row] : v;
                }
            }
        }
        return;
    }
    if (T == 1 || !ubuf) { /* decode: stream the packed rows once (GEMV) */
        int g = g0;
#if BD_X86
        const int lvl = simd_on();
        void (*gemv8)(const bd_linear *, int, const int8_t *, int32_t, float, float *) =
            lvl >= 2 ? gemv8_t2_vnni : gemv8_t2_avx2;
        if (lvl)
            for (; g + 2 <= g1 && g * 4 + 8 <= n; g += 2)
                for (int t = 0; t < T; t++) gemv8(L, g, xq + (size_t)t * kp, xsum[t], xs[t], y + (size_t)t * n);
#endif
        for (; g < g1; g++)
            for (int t = 0; t < T; t++) {
                bd_dot4_i8_t2(L->w + (size_t)g * kp, xq + (size_t)t * kp, nb, a);
                for (int r = 0; r < 4 && g * 4 + r < n; r++)
                    y[(size_t)t * n + g * 4 + r] = finish(L, g * 4 + r, a[r] - xsum[t], xs[t]);
            }
        return;
    }
    /* prefill as GEMM: blocks of tokens whose activations stay in L2 (prefill_block), and inside a block each
     * panel of up to 16 rows is unpacked once and multiplied with every token of the block (bd_gemm_panel_i8_t2) */
    const int tb = prefill_block(kp);
    int32_t acc[PREFILL_TB_MAX * BD_PANEL_ROWS];
    float f[PREFILL_TB_MAX]; /* per-tensor scale: finish's delta / s once per token, not per output */
    for (int t0 = 0; t0 < T; t0 += tb) {
        const int nt = T - t0 < tb ? T - t0 : tb;
        if (L->scale_kind == BD_SCALE_TENSOR)
            for (int t = 0; t < nt; t++) f[t] = L->scale[0] / xs[t0 + t];
        for (int g = g0; g < g1; g += BD_PANEL_ROWS / 4) {
            const int ngr = g1 - g < BD_PANEL_ROWS / 4 ? g1 - g : BD_PANEL_ROWS / 4;
            prefetch_next_panel(L->w, g, g1, kp);
#if BD_X86
            /* and the next panel's output lines, which the epilogue's stores otherwise waited on, a line per
             * token (perf, SmolLM2 prefill: epilogue 8.7 -> 4.8 % of the time) */
            if (g + BD_PANEL_ROWS / 4 < g1)
                for (int t = 0; t < nt; t++)
                    _mm_prefetch((const char *)(y + (size_t)(t0 + t) * n + (g + BD_PANEL_ROWS / 4) * 4), _MM_HINT_T1);
#endif
            const int rows = n - g * 4 < ngr * 4 ? n - g * 4 : ngr * 4;
            if (L->scale_kind == BD_SCALE_TENSOR &&
                gemm_panel_scaled(L->w + (size_t)g * kp, ngr, L->k, kp, xq + (size_t)t0 * kp, nt, xsum + t0, f,
                                  L->bias ? L->bias + g * 4 : NULL, rows, y + (size_t)t0 * n + g * 4, n, ubuf, NULL))
                continue;
            bd_gemm_panel_i8_t2(L->w + (size_t)g * kp, ngr, L->k, kp, xq + (size_t)t0 * kp, nt, acc, ubuf);
            if (L->scale_kind == BD_SCALE_TENSOR) { /* = finish(), with the division hoisted */
                scale_panel(y + (size_t)t0 * n + g * 4, n, acc, xsum + t0, f, L->bias ? L->bias + g * 4 : NULL, rows, nt);
                continue;
            }
            for (int t = 0; t < nt; t++) {
                float *yt = y + (size_t)(t0 + t) * n + g * 4;
                const int32_t *at = acc + (size_t)BD_PANEL_ROWS * t, sx = xsum[t0 + t];
                for (int r = 0; r < rows; r++) yt[r] = finish(L, g * 4 + r, at[r] - sx, xs[t0 + t]);
            }
        }
    }
}

/* Whether bd_linear_rows_silu runs the FFN's gate and up of a T-token batch: the VNNI level's prefill path
 * (T > 1), per-tensor scales, the same shapes. */
int bd_silu_pair_ok(const bd_linear *G, const bd_linear *U, int T) {
    return simd_on() >= 2 && T > 1 && G->scale_kind == BD_SCALE_TENSOR && U->scale_kind == BD_SCALE_TENSOR &&
           G->n == U->n && G->k == U->k && G->kp == U->kp && G->np == U->np;
}

/* The FFN's gate and up over row groups [g0, g1), panel by panel: the gate panel's floats into yg, then the up
 * panel's tile multiplies its own floats by silu of those (still in L1) and writes act = silu(gate) * up into
 * ya — the values bd_linear_rows and bd_silu_mul_to make in two passes over yg and the up output, without the
 * second pass (~4 % of a SmolLM2 prefill, half of it waiting on memory). Only where bd_silu_pair_ok. */
void bd_linear_rows_silu(const bd_linear *G, const bd_linear *U, int g0, int g1, const int8_t *xq, const float *xs,
                         const int32_t *xsum, int T, float *yg, float *ya, uint8_t *ubuf) {
    const int kp = G->kp, n = G->n, tb = prefill_block(kp);
    float fg[PREFILL_TB_MAX], fu[PREFILL_TB_MAX];
    for (int t0 = 0; t0 < T; t0 += tb) {
        const int nt = T - t0 < tb ? T - t0 : tb;
        for (int t = 0; t < nt; t++) {
            fg[t] = G->scale[0] / xs[t0 + t];
            fu[t] = U->scale[0] / xs[t0 + t];
        }
        for (int g = g0; g < g1; g += BD_PANEL_ROWS / 4) {
            const int ngr = g1 - g < BD_PANEL_ROWS / 4 ? g1 - g : BD_PANEL_ROWS / 4;
            const int rows = n - g * 4 < ngr * 4 ? n - g * 4 : ngr * 4;
            const size_t at = (size_t)t0 * n + g * 4;
            prefetch_next_panel(G->w, g, g1, kp);
            prefetch_next_panel(U->w, g, g1, kp);
            gemm_panel_scaled(G->w + (size_t)g * kp, ngr, G->k, kp, xq + (size_t)t0 * kp, nt, xsum + t0, fg,
                              G->bias ? G->bias + g * 4 : NULL, rows, yg + at, n, ubuf, NULL);
            gemm_panel_scaled(U->w + (size_t)g * kp, ngr, U->k, kp, xq + (size_t)t0 * kp, nt, xsum + t0, fu,
                              U->bias ? U->bias + g * 4 : NULL, rows, ya + at, n, ubuf, yg + at);
        }
    }
}

void bd_dense_rows(const void *w, int dtype, const float *rscale, int n, int k, int r0, int r1, const float *x,
                   const int8_t *xq, const float *xs, const int32_t *xg, int T, float *y) {
    if (dtype == BD_Q4) { /* xq rows have stride ng*64 (zero padded); xg [T][ng] */
        const int ng = (k + BD_Q4_GROUP - 1) / BD_Q4_GROUP;
        const size_t kq = (size_t)ng * BD_Q4_GROUP;
        int r = r0;
#if BD_X86
        if (simd_on())
            for (; r + 8 <= r1; r += 8) /* 8 rows at a time (dot8_i8_q4_avx2); the rest row by row */
                for (int t = 0; t < T; t++) {
                    float o[8];
                    dot8_i8_q4_avx2((const uint8_t *)w + (size_t)r * ng * 32, rscale + (size_t)r * ng, ng,
                                    xq + t * kq, xg + (size_t)t * ng, o);
                    for (int i = 0; i < 8; i++) y[(size_t)t * n + r + i] = o[i] / xs[t];
                }
#endif
        for (; r < r1; r++) {
            const uint8_t *wr = (const uint8_t *)w + (size_t)r * ng * 32;
            for (int t = 0; t < T; t++)
                y[(size_t)t * n + r] = bd_dot_i8_q4(wr, rscale + (size_t)r * ng, ng, xq + t * kq, xg + (size_t)t * ng) / xs[t];
        }
        return;
    }
    const size_t es = dtype_size(dtype);
    for (int r = r0; r < r1; r += 4) {
        int m = r1 - r < 4 ? r1 - r : 4;
        const char *wr = (const char *)w + (size_t)r * k * es;
        int t = 0;
#if BD_X86
        if (m == 4 && dtype != BD_I8 && simd_on()) /* 4 tokens at a time; the rest one by one */
            for (; t + 4 <= T; t += 4) dot4x4_f32_fp_avx2(wr, dtype, k, x + (size_t)t * k, k, y + (size_t)t * n + r, n);
#endif
        for (; t < T; t++) {
            if (m == 4) {
                if (dtype == BD_I8) {
                    int32_t a[4];
                    bd_dot4_i8_i8((const int8_t *)wr, k, xq + (size_t)t * k, a);
                    for (int i = 0; i < 4; i++) y[(size_t)t * n + r + i] = (float)a[i] * (rscale[r + i] / xs[t]);
                } else {
                    float f[4];
                    bd_dot4_f32_fp(wr, dtype, k, x + (size_t)t * k, f);
                    for (int i = 0; i < 4; i++) y[(size_t)t * n + r + i] = f[i];
                }
            } else { /* ragged tail rows: plain loops */
                for (int i = 0; i < m; i++) {
                    size_t base = (size_t)i * k;
                    if (dtype == BD_I8) {
                        int32_t s = 0;
                        for (int j = 0; j < k; j++) s += ((const int8_t *)wr)[base + j] * xq[(size_t)t * k + j];
                        y[(size_t)t * n + r + i] = (float)s * (rscale[r + i] / xs[t]);
                    } else {
                        float s = 0.0f;
                        for (int j = 0; j < k; j++) s += load_f(wr, dtype, base + j) * x[(size_t)t * k + j];
                        y[(size_t)t * n + r + i] = s;
                    }
                }
            }
        }
    }
}

/* ---- the int8 multiply-add peak (bench --roofline): what the prefill GEMM's instructions allow ---- */

#if BD_X86
/* Independent vpmaddubsw + vpaddw pairs into 8 int16 accumulators: the prefill tile's inner step without its
 * loads, i.e. the fastest this instruction pair runs on the core (32 int8 multiply-adds per vpmaddubsw). */
BD_AVX2 static int32_t int8_peak_avx2(long iters) {
    __m256i a0 = _mm256_set1_epi16(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, t;
    const __m256i v = _mm256_set1_epi8(1), x = _mm256_set1_epi8(1);
    for (long i = 0; i < iters; i++)
        __asm__ volatile("vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a0], %[a0]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a1], %[a1]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a2], %[a2]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a3], %[a3]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a4], %[a4]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a5], %[a5]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a6], %[a6]\n\t"
                         "vpmaddubsw %[x], %[v], %[t]\n\t vpaddw %[t], %[a7], %[a7]"
                         : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4),
                           [a5] "+x"(a5), [a6] "+x"(a6), [a7] "+x"(a7), [t] "=&x"(t)
                         : [v] "x"(v), [x] "x"(x));
    __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                                 _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
    return _mm256_extract_epi16(s, 0);
}

/* The VNNI level's tile step: independent zmm vpdpbusd into 16 int32 accumulators (64 multiply-adds each), as
 * many as the tile keeps: Zen 5 runs two zmm vpdpbusd per cycle, and 8 chains left it ~10 % under its peak
 * (503 vs 553 GMAC/s on one core), which overstated every "of int8 peak" figure measured there. */
BD_VNNI static int32_t int8_peak_vnni(long iters) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    const __m512i v = _mm512_set1_epi8(1), x = _mm512_set1_epi8(1);
#define PEAK8(A, B, C, D, E, F, G, H)                                                                      \
    __asm__ volatile("vpdpbusd %[x], %[v], %[a]\n\t vpdpbusd %[x], %[v], %[b]\n\t"                          \
                     "vpdpbusd %[x], %[v], %[c]\n\t vpdpbusd %[x], %[v], %[d]\n\t"                          \
                     "vpdpbusd %[x], %[v], %[e]\n\t vpdpbusd %[x], %[v], %[f]\n\t"                          \
                     "vpdpbusd %[x], %[v], %[g]\n\t vpdpbusd %[x], %[v], %[h]"                                \
                     : [a] "+v"(A), [b] "+v"(B), [c] "+v"(C), [d] "+v"(D), [e] "+v"(E), [f] "+v"(F),        \
                       [g] "+v"(G), [h] "+v"(H)                                                               \
                     : [v] "v"(v), [x] "v"(x)); /* one asm holds at most 30 operands, an in-out counts twice */
    for (long i = 0; i < iters; i += 2) {
        PEAK8(a0, a1, a2, a3, a4, a5, a6, a7)
        PEAK8(a8, a9, a10, a11, a12, a13, a14, a15)
    }
#undef PEAK8
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                                             _mm512_add_epi32(_mm512_add_epi32(a12, a13), _mm512_add_epi32(a14, a15))));
    return _mm512_reduce_add_epi32(s);
}
#endif

/* int8 multiply-adds done by nthreads threads running `iters` rounds of 8 of the level's tile instruction
 * (vpmaddubsw: 32 each; VNNI's zmm vpdpbusd: 64) (time the call to get the rate); 0 below the AVX2 level.
 * *sink gets the accumulators' value so the loop cannot be dropped. */
double bd_int8_peak_macs(long iters, int nthreads, int32_t *sink) {
    int32_t all = 0;
    int ran = 0; /* threads that ran it (1 in a build without OpenMP) */
    const int lvl = simd_on(), vnni = lvl >= 2;
    if (!BD_X86 || lvl < 1) return 0.0;
#if BD_X86
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : all, ran)
#endif
    {
        all += vnni ? int8_peak_vnni(iters) : int8_peak_avx2(iters);
        ran += 1;
    }
#endif
    *sink = all;
    return (double)(vnni ? (iters + 1) / 2 * 2 : iters) * 8 * (vnni ? 64 : 32) * ran; /* VNNI: 16 per round */
}
