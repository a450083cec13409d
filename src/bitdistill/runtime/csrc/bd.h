/* bitdistill native runtime: shared declarations.
 *
 * Ternary weights use the 2-bit interleaved layout documented in bitdistill/quant/bit_layout.py:
 * uint8 [Np/4][Kp], Np = rows rounded up to 4, Kp = columns rounded up to 128; inside a row group,
 * block b of row r is the 32 bytes at b*128 + r*32, byte j holding columns b*128 + j + 32*i in bits 2i.
 * Codes are weight + 1 (0, 1, 2), so a dot product is sum(code * x) - sum(x).
 *
 * Every SIMD routine has a scalar twin computing the same integers; bd_set_simd(0) forces the scalar path,
 * bd_set_simd(1) caps at AVX2 (levels: 0 scalar, 1 AVX2/FMA, 2 AVX-512 VNNI; -1 = the CPU's best, the default).
 * The structs below are mirrored field by field by ctypes in bitdistill/runtime/native.py.
 */
#ifndef BD_H
#define BD_H

#include <stdint.h>
#include <stddef.h>

#define BD_BLOCK 128
#define BD_ROWS 4
#define BD_PANEL_ROWS 16 /* rows the prefill GEMM unpacks at once (4 row groups); its scratch is this x kp bytes */
#define BD_EPS 1e-5f

enum { BD_F32 = 0, BD_F16 = 1, BD_BF16 = 2, BD_I8 = 3, BD_Q4 = 4 };
/* BD_Q4 (embedding / LM head only): per row, ceil(k/64) groups of 64 columns; group g is 32 bytes whose
 * byte j holds code c (0..15) of column 64g+j in bits 0-3 and of column 64g+32+j in bits 4-7;
 * w = d[row][g] * (c - 8), d fp32 (rscale points to d [n][ceil(k/64)]). Like llama.cpp's Q4_0, 64 wide. */
#define BD_Q4_GROUP 64
enum { BD_SCALE_TENSOR = 0, BD_SCALE_CHANNEL = 1, BD_SCALE_GROUP = 2 };
enum { BD_ACT_SILU = 0, BD_ACT_GELU_TANH = 1, BD_ACT_GELU = 2 };

typedef struct {
    const uint8_t *w;      /* packed 2-bit weight [Np/4][Kp] */
    int32_t n, k, np, kp;
    int32_t scale_kind;    /* BD_SCALE_* */
    int32_t group_blocks;  /* group size / 128 when scale_kind == BD_SCALE_GROUP */
    const float *scale;    /* [1], [n] or [n][k/group] */
    const float *bias;     /* [n] or NULL */
    const float *sub_norm; /* SubLN weight [k] applied to the input, or NULL */
} bd_linear;

typedef struct {
    bd_linear q, k, v, o, gate, up, down;
    const float *in_norm;        /* [hidden] */
    const float *post_attn_norm; /* sandwich norm on the attention output (Gemma3) or NULL */
    const float *pre_ffn_norm;   /* [hidden] */
    const float *post_ffn_norm;  /* sandwich norm on the FFN output (Gemma3) or NULL */
    const float *q_norm, *k_norm;/* [head_dim] (Qwen3, Gemma3) or NULL */
    const float *inv_freq;       /* [head_dim/2] */
    float rope_scale;            /* attention scaling multiplied into cos/sin */
    int32_t window;              /* sliding window (keys with pos > q - window), 0 = full causal */
} bd_layer;

typedef struct {
    int32_t n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, act;
    float eps, attn_scale, embed_scale, final_softcap, attn_softcap;
    int32_t embed_dtype, head_dtype;
    const void *embed; const float *embed_rscale; /* rscale: per-row scale (int8) or group scales (q4) */
    const void *head; const float *head_rscale;
    const float *final_norm;
    const bd_layer *layers;
} bd_model;

/* engine.c: phase profiling (off unless set) and huge-page advice (on unless unset); the library reads no
 * environment variables */
void bd_set_profile(int on);
void bd_set_huge_pages(int on); /* 0: the state's big buffers get no MADV_HUGEPAGE advice */
void bd_profile_reset(void);
void bd_profile_dump(void);
int bd_profile_phases(void);
const char *bd_profile_phase_name(int p);
void bd_profile_read(unsigned long long *out, int n_threads); /* out [n_threads][bd_profile_phases()] */

/* kernels.c */
int bd_simd_level(void);
void bd_set_simd(int level);
void bd_set_prefetch_ahead(int bytes); /* decode GEMVs' prefetch distance; -1: the CPU's default */
int bd_prefetch_ahead(void);
int bd_has_openmp(void);
int bd_max_threads(void);
void bd_quantize_row(const float *x, int k, int kp, int8_t *xq, float *s, int32_t *sum);
void bd_quantize_row_amax(const float *x, int k, int kp, float amax, int8_t *xq, float *s, int32_t *sum);
float bd_rmsnorm(const float *x, const float *w, int n, float eps, float *y); /* returns max |y| */
void bd_quantize_row_sym(const float *x, int k, int8_t *xq, float *s);
double bd_sumsq(const float *x, int n);
void bd_to_f16(const float *x, uint16_t *h, int n); /* round to nearest even */
void bd_silu_mul(float *g, const float *u, int n);  /* g = silu(g) * u */
void bd_silu_mul_to(float *y, const float *g, const float *u, int n); /* y = silu(g) * u (y may be g) */
/* attention over a KV cache of float (half = 0) or IEEE half rows of hd values */
/* nq query heads of one kv head: out[h * os + j] = q[h].k[j] * scale; o[h] = sum_j p[h * ps + j] v[j] */
void bd_scores(const float *q, int nq, const void *k, int half, int n, int hd, float scale, float *out, size_t os);
void bd_wsum(float *o, int nq, const float *p, size_t ps, const void *v, int half, int n, int hd, int cold);
void bd_softmax(float *s, int n); /* s = exp(s - max s) / sum, in place */
/* Dot-product kernels are named <shape>_<activation>_<weight>: dot4 = 4 weight rows against one token, dot = one
 * row, gemm4 = 4 rows against several tokens, gemm_panel = up to 16 rows against several tokens. Types: i8 int8, f32 float, t2 packed 2-bit ternary codes (the layout
 * above), u8 unpacked codes one per byte, q4 the BD_Q4 groups, fp float weights (fp32/fp16/bf16 by dtype). */
void bd_dot4_i8_t2(const uint8_t *w, const int8_t *x, int nb, int32_t out[4]);
void bd_unpack4_t2(const uint8_t *w, int nb, uint8_t *u);
void bd_dot4_i8_u8(const uint8_t *u, int kp, const int8_t *x, int32_t out[4]);
void bd_gemm4_i8_u8(const uint8_t *u, int kp, const int8_t *x, int nt, int32_t *out); /* out [nt][4] */
/* raw code sums of the 4*ngr rows of ngr <= 4 row groups at w (kp apart), k columns (activations zero from k
 * to kp), x nt tokens: out [nt][BD_PANEL_ROWS]; ubuf: BD_PANEL_ROWS * kp bytes */
void bd_gemm_panel_i8_t2(const uint8_t *w, int ngr, int k, int kp, const int8_t *x, int nt, int32_t *out,
                         uint8_t *ubuf);
void bd_dot4_i8_i8(const int8_t *w, int k, const int8_t *x, int32_t out[4]);
void bd_dot4_f32_fp(const void *w, int dtype, int k, const float *x, float out[4]);
void bd_row_to_f32(const void *w, int dtype, const float *rscale, int row, int k, float *out);

/* Row-group range [g0, g1) of a ternary linear, T tokens; out float [T][n] (scaled, biased). */
void bd_linear_rows(const bd_linear *L, int g0, int g1, const int8_t *xq, const float *xs, const int32_t *xsum,
                    int T, float *y, uint8_t *ubuf);
int bd_silu_pair_ok(const bd_linear *G, const bd_linear *U, int T);
/* gate and up of the FFN, yg = gate, ya = silu(gate) * up, as bd_linear_rows twice and bd_silu_mul_to would */
void bd_linear_rows_silu(const bd_linear *G, const bd_linear *U, int g0, int g1, const int8_t *xq, const float *xs,
                         const int32_t *xsum, int T, float *yg, float *ya, uint8_t *ubuf);
/* Rows [r0, r1) of a dense (head) matrix, T tokens. xq/xs used for int8, x for float dtypes. */
/* q4: xq rows zero padded to ceil(k/64)*64 with group sums xg [T][ceil(k/64)] (bd_q4_group_sums). */
void bd_dense_rows(const void *w, int dtype, const float *rscale, int n, int k, int r0, int r1, const float *x,
                   const int8_t *xq, const float *xs, const int32_t *xg, int T, float *y);
float bd_dot_i8_q4(const uint8_t *w, const float *d, int ng, const int8_t *x, const int32_t *xg);
void bd_q4_group_sums(const int8_t *x, int ng, int32_t *xg);

#endif
