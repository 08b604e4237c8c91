/*
 * edgecomp.MoEFeedForward: a mixture-of-experts feed-forward layer with a dynamic expert count per token,
 * as an ONNX Runtime custom operator (CPU). Built by edgecomp/kernels/__init__.py into
 * libedgecomp_ops.so for x86_64 (system cc) and aarch64 (aarch64-linux-gnu-gcc -march=armv8.2-a+dotprod).
 *
 * Contract (domain "edgecomp", opset 1; the same as edgecomp.kernels.moe_function_proto's body):
 *   inputs   0 X [..., H] float; 1 scores [..., E] float (>= 0); 2 W1 [E, D, H] float|int8; 3 S1 [E, D];
 *            4 B1 [E, D]; 5 W2 [E, H, D] float|int8; 6 S2 [E, H]; 7 B2 [H]
 *   attrs    threshold (float, tau, default 0), activation ("gelu" exact erf | "gelu_tanh" | "relu"; default gelu)
 *   output   Y [..., H] = B2 + sum_{e in sel(t)} act(X_t (W1_e*S1_e)^T + B1_e) (W2_e*S2_e)^T,
 *            sel(t) = {e : scores[t,e] >= tau * max_e' scores[t,e']}: the top expert always runs, tau = 0 is dense.
 *
 * How it computes: the tokens that selected expert e are gathered (by row pointer, no copy) and run through
 * two small GEMMs with the expert's weights reused across 4 tokens at a time.
 *   float weights: fp32 dot products (the reference path).
 *   int8 weights (symmetric, zero point 0): X_t is quantized once per token (symmetric int8, scale
 *     max|X_t|/127) and the hidden activations once per (token, expert) the same way; the products are
 *     int8 x int8 -> int32 dot products over weights repacked once (cached across runs) into the tiles' order:
 *     aarch64: SDOT by lane (vdotq_laneq_s32), which needs ARMv8.2 dotprod (Cortex-A55/A76 and later; the
 *     library is built with -march=armv8.2-a+dotprod); x86_64: AVX-512 VNNI (vpdpbusd on x + 128, corrected
 *     by 128 * the weight row sums) when cpuid has it, else a portable loop the compiler vectorizes (with an
 *     AVX2 clone); EDGECOMP_KERNEL_PORTABLE=1 forces the portable loop (tests compare the two).
 *     The result is then dequantized with sx_t * S1[e,d] (first layer) and sh_t * S2[e,o] (second layer).
 *
 * No ONNX Runtime header ships with the pip wheel, so the few ABI pieces used are declared here from
 * onnxruntime_c_api.h, as in edgecomp/bench/native/probe.c: OrtApi entries by index (the table only
 * grows at its end) and OrtCustomOp's fields in their order up to version 16 (KernelComputeV2, so a
 * bad input is an ORT error instead of a crash). ORT reads only the fields its `version` promises.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define EDGECOMP_SDOT 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* AVX-512 VNNI (vpdpbusd) tiles, compiled for that ISA only and chosen at run time (cpuid) */
#include <immintrin.h>
#define EDGECOMP_VNNI 1
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* the portable int8 dot loops also get an AVX2 build; glibc's ifunc picks one when the library loads */
#define EDGECOMP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EDGECOMP_CLONES
#endif

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------------------------------------ */
/* ONNX Runtime ABI                                                                                  */

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtShapeInferContext OrtShapeInferContext;

typedef struct {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { ONNX_UNDEFINED = 0, ONNX_FLOAT = 1, ONNX_INT8 = 3 };
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };

/* Index of each OrtApi entry used, in onnxruntime_c_api.h's order (0 = CreateStatus). */
enum {
    ORT_CreateStatus = 0, ORT_CreateCustomOpDomain = 26, ORT_CustomOpDomain_Add = 27, ORT_AddCustomOpDomain = 28,
    ORT_GetTensorMutableData = 51, ORT_GetTensorElementType = 60, ORT_GetDimensionsCount = 61,
    ORT_GetDimensions = 62, ORT_GetTensorTypeAndShape = 65, ORT_KernelInfoGetAttribute_float = 85,
    ORT_KernelInfoGetAttribute_string = 87, ORT_KernelContext_GetInputCount = 88, ORT_KernelContext_GetInput = 90,
    ORT_KernelContext_GetOutput = 91, ORT_ReleaseStatus = 93, ORT_ReleaseTensorTypeAndShapeInfo = 99,
};
/* API 16 (ORT 1.16) has every entry above and KernelComputeV2; GetApi(16) on a newer ORT returns the table. */
#define ORT_API_VERSION_USED 16

typedef int OrtCharacteristic; /* INPUT_OUTPUT_REQUIRED = 0 */

/* OrtCustomOp up to the version-16 fields, in ABI order */
typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const struct OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *op);
    int (*GetInputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *op);
    int (*GetOutputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *op);
    void (*KernelCompute)(void *op_kernel, OrtKernelContext *context);
    void (*KernelDestroy)(void *op_kernel);
    OrtCharacteristic (*GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);   /* v8 */
    OrtCharacteristic (*GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);  /* v8 */
    int (*GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);                     /* v13 */
    int (*GetVariadicInputMinArity)(const struct OrtCustomOp *op);                             /* v14 */
    int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);                                               /* v16 */
    OrtStatus *(*KernelComputeV2)(void *op_kernel, OrtKernelContext *context);
    OrtStatus *(*InferOutputShapeFn)(const struct OrtCustomOp *op, OrtShapeInferContext *ctx); /* read from v17 */
} OrtCustomOp;

static void *const *g_api; /* the OrtApi table as an array of function pointers */
#define API(type, idx) ((type)g_api[idx])
typedef OrtStatus *(*status_fn)();
#define TRY(name, ...)                                                         \
    do {                                                                       \
        OrtStatus *s_ = ((status_fn)g_api[ORT_##name])(__VA_ARGS__);          \
        if (s_) return s_;                                                     \
    } while (0)

static OrtStatus *fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static OrtStatus *fail(int code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(msg, sizeof msg, "edgecomp.MoEFeedForward: ");
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    return API(OrtStatus * (*)(int, const char *), ORT_CreateStatus)(code, msg);
}

/* ------------------------------------------------------------------------------------------------ */
/* activations: branch-free polynomials so the loops vectorize (libm's erff is a call per element)    */

/* exp(z) for z <= 0: 2^n * p(r), r = z - n ln2, |r| <= ln2/2; rel. error <= 2.5e-6. z is clamped at -80
 * (exp = 1.8e-35): results stay normal floats (denormals cost ~100 cycles each on x86), and every caller
 * adds the result to 1 or multiplies it by < 1, where it is already below float resolution. The clamp is
 * what each compiler vectorizes: fmaxf on aarch64 (fmaxnm), a select on x86 (where fmaxf is a libm call). */
static inline float exp_neg(float z) {
#ifdef __aarch64__
    z = fmaxf(z, -80.0f);
#else
    z = z < -80.0f ? -80.0f : z;
#endif
    float n = (float)(int32_t)(z * 1.44269504f - 0.5f); /* round to nearest for z <= 0 (cvttps2dq/fcvtzs) */
    float r = z - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 8.33333333e-3f; /* Taylor to r^5: remainder r^6/720 <= 2.4e-6 relative for |r| <= ln2/2 */
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } u = {.f = p};
    u.i += (int32_t)n << 23;
    return u.f;
}

/* erf(x): Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7) */
static inline float erf_approx(float x) {
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float y = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
    return copysignf(1.0f - y * exp_neg(-a * a), x);
}

enum { ACT_GELU, ACT_GELU_TANH, ACT_RELU };

static void activate(float *h, size_t n, int act) {
    if (act == ACT_RELU) {
        for (size_t i = 0; i < n; i++) h[i] = h[i] > 0 ? h[i] : 0;
    } else if (act == ACT_GELU) {
        for (size_t i = 0; i < n; i++) h[i] = 0.5f * h[i] * (1.0f + erf_approx(h[i] * 0.70710678f));
    } else {
        /* 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3); exp of -|2u| only */
        for (size_t i = 0; i < n; i++) {
            float x = h[i];
            float u2 = 1.59576912f * (x + 0.044715f * x * x * x);
            float e = exp_neg(-fabsf(u2));
            float num = u2 < 0 ? e : 1.0f; /* sigmoid(u2) = 1/(1+e) for u2 >= 0, e/(1+e) below */
            h[i] = x * num / (1.0f + e);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* dot-product tiles: C[i][j] = sum_k A_i[k] * B_j[k] for 4 rows A (token rows, by pointer) and      */
/* rows B (weight rows, contiguous with stride ldb); the weight row is read once per 4 tokens.         */

static void tile_f32(const float *const a[4], const float *b, size_t ldb, size_t n, size_t k, float *c, size_t ldc) {
    size_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const float *b0 = b + j * ldb, *b1 = b0 + ldb;
        float acc[8][8] = {{0}};
        size_t p = 0;
        for (; p + 8 <= k; p += 8)
            for (int l = 0; l < 8; l++) {
                acc[0][l] += a[0][p + l] * b0[p + l];
                acc[1][l] += a[1][p + l] * b0[p + l];
                acc[2][l] += a[2][p + l] * b0[p + l];
                acc[3][l] += a[3][p + l] * b0[p + l];
                acc[4][l] += a[0][p + l] * b1[p + l];
                acc[5][l] += a[1][p + l] * b1[p + l];
                acc[6][l] += a[2][p + l] * b1[p + l];
                acc[7][l] += a[3][p + l] * b1[p + l];
            }
        float s[8];
        for (int r = 0; r < 8; r++) {
            s[r] = 0;
            for (int l = 0; l < 8; l++) s[r] += acc[r][l];
        }
        for (; p < k; p++)
            for (int i = 0; i < 4; i++) {
                s[i] += a[i][p] * b0[p];
                s[4 + i] += a[i][p] * b1[p];
            }
        for (int i = 0; i < 4; i++) {
            c[i * ldc + j] = s[i];
            c[i * ldc + j + 1] = s[4 + i];
        }
    }
    for (; j < n; j++) {
        const float *b0 = b + j * ldb;
        for (int i = 0; i < 4; i++) {
            float s = 0;
            for (size_t p = 0; p < k; p++) s += a[i][p] * b0[p];
            c[i * ldc + j] = s;
        }
    }
}

#ifndef EDGECOMP_SDOT
/* portable: int8 x int8 -> int32 lanes the compiler vectorizes (pmaddwd on x86) */
EDGECOMP_CLONES
static void tile_i8(const int8_t *const a[4], const int8_t *b, size_t ldb, size_t n, size_t k, int32_t *c, size_t ldc) {
    const int8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    for (size_t j = 0; j < n; j++) {
        const int8_t *b0 = b + j * ldb;
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t p = 0; p < k; p++) {
            int32_t w = b0[p];
            s0 += a0[p] * w;
            s1 += a1[p] * w;
            s2 += a2[p] * w;
            s3 += a3[p] * w;
        }
        c[j] = s0;
        c[ldc + j] = s1;
        c[2 * ldc + j] = s2;
        c[3 * ldc + j] = s3;
    }
}
#endif

/* symmetric per-row int8: q = round_half_even(x / s), s = max|x| / 127 (0 for an all-zero row) */
static float quantize_row(const float *x, size_t n, int8_t *q) {
    float amax = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (amax == 0) {
        memset(q, 0, n);
        return 0;
    }
    float inv = 127.0f / amax;
    size_t i = 0;
#ifdef __aarch64__
    float32x4_t vinv = vdupq_n_f32(inv);
    for (; i + 8 <= n; i += 8) {
        int32x4_t l = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i), vinv));
        int32x4_t h = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 4), vinv));
        int16x8_t s = vcombine_s16(vqmovn_s32(l), vqmovn_s32(h));
        vst1_s8(q + i, vqmovn_s16(s));
    }
#endif
    for (; i < n; i++) {
        float v = nearbyintf(x[i] * inv);
        q[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
    return amax / 127.0f;
}

/* ------------------------------------------------------------------------------------------------ */
/* the operator                                                                                      */

/* The int8 weights repacked for the SDOT lane kernel, kept across runs: the weights are the graph's
 * initializers, so their buffers do not change between runs. The cache is keyed by the buffers' addresses,
 * shapes and a fingerprint of 1024 sampled bytes each, so a graph that feeds different weights through the
 * same buffer (weights as graph inputs) is repacked instead of computed with stale weights, at a cost of
 * ~0.1% of a run; a change that touches none of the sampled bytes would go unseen, which is why the
 * fingerprint is a guard for initializer-like inputs, not a content hash. */
typedef struct {
    const void *w1, *w2;
    size_t E, D, H;
    uint64_t f1, f2;
    int8_t *p1, *p2;   /* packed W1 [E][D rows][H], W2 [E][H rows][D] in the tiles' order (pack_rows) */
    int32_t *rs1, *rs2; /* their row sums (x86: the unsigned-activation correction) */
} packed_t;

typedef struct {
    float threshold;
    int activation;
    packed_t packed;
    pthread_mutex_t lock; /* one session may run on several threads at once */
} kernel_t;

typedef struct {
    const OrtValue *v;
    int type;
    size_t rank;
    int64_t dims[8];
    void *data;
} input_t;

static OrtStatus *get_input(OrtKernelContext *ctx, size_t i, input_t *in) {
    void *info = NULL;
    TRY(KernelContext_GetInput, ctx, i, &in->v);
    if (!in->v) return fail(ORT_INVALID_ARGUMENT, "input %zu is missing", i);
    TRY(GetTensorTypeAndShape, in->v, &info);
    OrtStatus *s = ((status_fn)g_api[ORT_GetTensorElementType])(info, &in->type);
    if (!s) s = ((status_fn)g_api[ORT_GetDimensionsCount])(info, &in->rank);
    if (!s && in->rank > 8) s = fail(ORT_INVALID_ARGUMENT, "input %zu has rank %zu (at most 8)", i, in->rank);
    if (!s) s = ((status_fn)g_api[ORT_GetDimensions])(info, in->dims, in->rank);
    API(void (*)(void *), ORT_ReleaseTensorTypeAndShapeInfo)(info);
    if (s) return s;
    TRY(GetTensorMutableData, (OrtValue *)in->v, &in->data);
    return NULL;
}

static const char *INPUT_NAMES[8] = {"X", "scores", "W1", "S1", "B1", "W2", "S2", "B2"};

static OrtStatus *check_shape(const input_t *in, int idx, size_t rank, const int64_t *want) {
    int ok = in->rank == rank;
    for (size_t d = 0; ok && d < rank; d++) ok = in->dims[d] == want[d];
    if (ok) return NULL;
    char got[128] = "", exp[128] = "";
    for (size_t d = 0; d < in->rank; d++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)in->dims[d]);
    for (size_t d = 0; d < rank; d++) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", d ? "," : "", (long long)want[d]);
    return fail(ORT_INVALID_ARGUMENT, "input %s has shape [%s], expected [%s]", INPUT_NAMES[idx], got, exp);
}

/* per-expert token lists: sel[off[e] .. off[e+1]) are the tokens that run expert e */
static void select_experts(const float *scores, size_t T, size_t E, float tau, size_t *off, int32_t *sel) {
    memset(off, 0, (E + 1) * sizeof *off);
    for (size_t t = 0; t < T; t++) {
        const float *s = scores + t * E;
        float m = s[0];
        for (size_t e = 1; e < E; e++) m = s[e] > m ? s[e] : m;
        float cut = tau * m;
        for (size_t e = 0; e < E; e++) off[e + 1] += s[e] >= cut;
    }
    for (size_t e = 0; e < E; e++) off[e + 1] += off[e];
    size_t *fill = malloc(E * sizeof *fill);
    memcpy(fill, off, E * sizeof *fill);
    for (size_t t = 0; t < T; t++) {
        const float *s = scores + t * E;
        float m = s[0];
        for (size_t e = 1; e < E; e++) m = s[e] > m ? s[e] : m;
        float cut = tau * m;
        for (size_t e = 0; e < E; e++)
            if (s[e] >= cut) sel[fill[e]++] = (int32_t)t;
    }
    free(fill);
}

static void run_float(const kernel_t *k, const float *X, size_t T, size_t H, size_t E, size_t D, const size_t *off,
                      const int32_t *sel, const float *W1, const float *S1, const float *B1, const float *W2,
                      const float *S2, float *Y) {
    size_t maxn = 0;
    for (size_t e = 0; e < E; e++) maxn = off[e + 1] - off[e] > maxn ? off[e + 1] - off[e] : maxn;
    size_t cap = (maxn + 3) & ~(size_t)3;
    float *zero = calloc(H > D ? H : D, sizeof(float));
    float *hid = malloc(cap * D * sizeof(float) + 16);
    float *out = malloc(4 * H * sizeof(float) + 16);
    for (size_t e = 0; e < E; e++) {
        size_t n = off[e + 1] - off[e];
        if (!n) continue;
        const int32_t *tok = sel + off[e];
        const float *w1 = W1 + e * D * H, *w2 = W2 + e * H * D, *s1 = S1 + e * D, *b1 = B1 + e * D, *s2 = S2 + e * H;
        for (size_t i = 0; i < n; i += 4) {
            const float *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? X + (size_t)tok[i + r] * H : zero;
            tile_f32(rows, w1, H, D, H, hid + i * D, D);
        }
        for (size_t i = 0; i < n; i++) {
            float *h = hid + i * D;
            for (size_t d = 0; d < D; d++) h[d] = h[d] * s1[d] + b1[d];
            activate(h, D, k->activation);
        }
        for (size_t i = 0; i < n; i += 4) {
            const float *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? hid + (i + r) * D : zero;
            tile_f32(rows, w2, D, H, D, out, H);
            for (int r = 0; r < 4 && i + r < n; r++) {
                float *y = Y + (size_t)tok[i + r] * H;
                const float *o = out + r * H;
                for (size_t j = 0; j < H; j++) y[j] += o[j] * s2[j];
            }
        }
    }
    free(zero);
    free(hid);
    free(out);
}

#ifndef EDGECOMP_SDOT /* the portable int8 path (x86_64, or aarch64 without dotprod) */
static void run_int8(const kernel_t *k, const float *X, size_t T, size_t H, size_t E, size_t D, const size_t *off,
                     const int32_t *sel, const int8_t *W1, const float *S1, const float *B1, const int8_t *W2,
                     const float *S2, float *Y) {
    size_t maxn = 0;
    for (size_t e = 0; e < E; e++) maxn = off[e + 1] - off[e] > maxn ? off[e + 1] - off[e] : maxn;
    size_t cap = (maxn + 3) & ~(size_t)3;
    int8_t *xq = malloc(T * H + 16);
    float *sx = malloc(T * sizeof(float) + 16);
    for (size_t t = 0; t < T; t++) sx[t] = quantize_row(X + t * H, H, xq + t * H);
    int8_t *zero = calloc(H > D ? H : D, 1);
    int32_t *acc = malloc(cap * (D > H ? D : H) * sizeof(int32_t) + 16);
    float *hid = malloc(D * sizeof(float) + 16);
    int8_t *hq = malloc(cap * D + 16);
    float *sh = malloc(cap * sizeof(float) + 16);
    for (size_t e = 0; e < E; e++) {
        size_t n = off[e + 1] - off[e];
        if (!n) continue;
        const int32_t *tok = sel + off[e];
        const int8_t *w1 = W1 + e * D * H, *w2 = W2 + e * H * D;
        const float *s1 = S1 + e * D, *b1 = B1 + e * D, *s2 = S2 + e * H;
        for (size_t i = 0; i < n; i += 4) {
            const int8_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? xq + (size_t)tok[i + r] * H : zero;
            tile_i8(rows, w1, H, D, H, acc + i * D, D);
        }
        /* dequantize, bias, activation, requantize per (token, expert) */
        for (size_t i = 0; i < n; i++) {
            const int32_t *a = acc + i * D;
            float s = sx[tok[i]];
            for (size_t d = 0; d < D; d++) hid[d] = (float)a[d] * (s * s1[d]) + b1[d];
            activate(hid, D, k->activation);
            sh[i] = quantize_row(hid, D, hq + i * D);
        }
        for (size_t i = n; i < ((n + 3) & ~(size_t)3); i++) memset(hq + i * D, 0, D);
        for (size_t i = 0; i < n; i += 4) {
            const int8_t *rows[4] = {hq + i * D, hq + (i + 1) * D, hq + (i + 2) * D, hq + (i + 3) * D};
            tile_i8(rows, w2, D, H, D, acc, H);
            for (int r = 0; r < 4 && i + r < n; r++) {
                float *y = Y + (size_t)tok[i + r] * H;
                const int32_t *a = acc + r * H;
                float s = sh[i + r];
                for (size_t j = 0; j < H; j++) y[j] += (float)a[j] * (s * s2[j]);
            }
        }
    }
    free(xq);
    free(sx);
    free(zero);
    free(acc);
    free(hid);
    free(hq);
    free(sh);
}
#endif

#if defined(EDGECOMP_SDOT) || defined(EDGECOMP_VNNI)
/* packed weights for the SIMD tiles: rows padded to a tile's outputs, k to 16, zeros in the padding */
static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }
#ifdef EDGECOMP_SDOT
static size_t round_rows(size_t n) { return (n + 15) & ~(size_t)15; }
/* B [N, K] -> [Np/16][Kp/16][group 4][lane 4][row 4][k 4], zero padded to multiples of 16 */
static void pack_rows(const int8_t *B, size_t N, size_t K, int8_t *out, int32_t *rowsum) {
    (void)rowsum; /* SDOT takes signed activations: no correction term */
    size_t Np = round_rows(N), Kp = round16(K);
    for (size_t nb = 0; nb < Np; nb += 16)
        for (size_t kb = 0; kb < Kp; kb += 16)
            for (size_t g = 0; g < 4; g++)
                for (size_t l = 0; l < 4; l++)
                    for (size_t r = 0; r < 4; r++)
                        for (size_t q = 0; q < 4; q++) {
                            size_t n = nb + g * 4 + r, kk = kb + l * 4 + q;
                            *out++ = n < N && kk < K ? B[n * K + kk] : 0;
                        }
}

#else
static size_t round_rows(size_t n) { return (n + 31) & ~(size_t)31; }
/* VNNI: B [N, K] -> [Np/32][Kp/4][2 x 16 rows][4 k] (one 64-byte vector = 16 rows x 4 k per half) and the
 * row sums, because vpdpbusd multiplies UNSIGNED activations: x + 128 in place of x, minus 128 * rowsum */
static void pack_rows(const int8_t *B, size_t N, size_t K, int8_t *out, int32_t *rowsum) {
    size_t Np = round_rows(N), Kp = round16(K);
    for (size_t n = 0; n < Np; n++) {
        int32_t sum = 0;
        for (size_t kk = 0; n < N && kk < K; kk++) sum += B[n * K + kk];
        rowsum[n] = sum;
    }
    for (size_t nb = 0; nb < Np; nb += 32)
        for (size_t kb = 0; kb < Kp; kb += 4)
            for (size_t r = 0; r < 32; r++)
                for (size_t q = 0; q < 4; q++) {
                    size_t n = nb + r, kk = kb + q;
                    *out++ = n < N && kk < K ? B[n * K + kk] : 0;
                }
}
#endif

static uint64_t fingerprint(const int8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull ^ n;
    size_t step = n / 1024 ? n / 1024 : 1;
    for (size_t i = 0; i < n; i += step) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h ^ (uint8_t)p[n - 1];
}

static int packed_for(kernel_t *k, const int8_t *W1, const int8_t *W2, size_t E, size_t D, size_t H) {
    size_t D1 = round_rows(D), H1 = round16(H), H2 = round_rows(H), D2 = round16(D); /* W1: D rows of H; W2: H rows of D */
    packed_t *c = &k->packed;
    size_t n = E * D * H;
    uint64_t f1 = fingerprint(W1, n), f2 = fingerprint(W2, n);
    if (c->p1 && c->w1 == W1 && c->w2 == W2 && c->E == E && c->D == D && c->H == H && c->f1 == f1 && c->f2 == f2)
        return 1;
    free(c->p1), free(c->p2), free(c->rs1), free(c->rs2);
    c->p1 = malloc(E * D1 * H1);
    c->p2 = malloc(E * H2 * D2);
    c->rs1 = malloc(E * D1 * sizeof(int32_t));
    c->rs2 = malloc(E * H2 * sizeof(int32_t));
    if (!c->p1 || !c->p2 || !c->rs1 || !c->rs2) {
        free(c->p1), free(c->p2), free(c->rs1), free(c->rs2);
        c->p1 = c->p2 = NULL;
        c->rs1 = c->rs2 = NULL;
        return 0;
    }
    for (size_t e = 0; e < E; e++) {
        pack_rows(W1 + e * D * H, D, H, c->p1 + e * D1 * H1, c->rs1 + e * D1);
        pack_rows(W2 + e * H * D, H, D, c->p2 + e * H2 * D2, c->rs2 + e * H2);
    }
    c->w1 = W1, c->w2 = W2, c->E = E, c->D = D, c->H = H, c->f1 = f1, c->f2 = f2;
    return 1;
}

#endif

#ifdef EDGECOMP_SDOT
/* SDOT by lane: one 16-byte weight vector holds 4 output rows x 4 consecutive k, so
 * vdotq_laneq_s32(acc, w, x, l) adds 4 rows' dot products over k-chunk l of the token's 16 k values and the
 * accumulator holds 4 finished outputs (no horizontal reduction). A tile is 4 tokens x 16 outputs: per 16 k
 * it loads 4 token vectors and 16 weight vectors (streamed in packed order) for 64 SDOTs. */
/* acc[t][g] = 4 outputs (rows 4g..4g+3 of the 16-row block) of token t, over kp/16 steps */
static inline void tile_lanes(const int8_t *const x[4], const int8_t *w, size_t kp, int32x4_t acc[4][4]) {
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) acc[t][g] = vdupq_n_s32(0);
    for (size_t p = 0; p < kp; p += 16) {
        int8x16_t x0 = vld1q_s8(x[0] + p), x1 = vld1q_s8(x[1] + p), x2 = vld1q_s8(x[2] + p), x3 = vld1q_s8(x[3] + p);
#define STEP(l)                                                                                      \
        {                                                                                            \
            int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 64), w2 = vld1q_s8(w + 128), w3 = vld1q_s8(w + 192); \
            for (int t = 0; t < 4; t++) {                                                            \
                int8x16_t xt = t == 0 ? x0 : t == 1 ? x1 : t == 2 ? x2 : x3;                         \
                acc[t][0] = vdotq_laneq_s32(acc[t][0], w0, xt, l);                                  \
                acc[t][1] = vdotq_laneq_s32(acc[t][1], w1, xt, l);                                  \
                acc[t][2] = vdotq_laneq_s32(acc[t][2], w2, xt, l);                                  \
                acc[t][3] = vdotq_laneq_s32(acc[t][3], w3, xt, l);                                  \
            }                                                                                        \
            w += 16;                                                                                 \
        }
        STEP(0) STEP(1) STEP(2) STEP(3)
#undef STEP
        w += 192;
    }
}

static void run_int8_sdot(kernel_t *k, const float *X, size_t T, size_t H, size_t E, size_t D, const size_t *off,
                          const int32_t *sel, const float *S1, const float *B1, const float *S2, float *Y) {
    size_t Dp = round16(D), Hp = round16(H);
    size_t maxn = 0;
    for (size_t e = 0; e < E; e++) maxn = off[e + 1] - off[e] > maxn ? off[e + 1] - off[e] : maxn;
    int8_t *xq = calloc(T * Hp + 16, 1);
    float *sx = malloc(T * sizeof(float) + 16);
    for (size_t t = 0; t < T; t++) sx[t] = quantize_row(X + t * H, H, xq + t * Hp);
    int8_t *zero = calloc(Hp > Dp ? Hp : Dp, 1);
    float *hid = malloc(maxn * Dp * sizeof(float) + 64);
    int8_t *hq = calloc(maxn * Dp + 16, 1);
    float *sh = malloc(maxn * sizeof(float) + 16);
    float *s1p = calloc(Dp, sizeof(float)), *b1p = calloc(Dp, sizeof(float)), *s2p = calloc(Hp, sizeof(float));
    for (size_t e = 0; e < E; e++) {
        size_t n = off[e + 1] - off[e];
        if (!n) continue;
        const int32_t *tok = sel + off[e];
        const int8_t *w1 = k->packed.p1 + e * Dp * Hp, *w2 = k->packed.p2 + e * Dp * Hp;
        memcpy(s1p, S1 + e * D, D * sizeof(float));
        memcpy(b1p, B1 + e * D, D * sizeof(float));
        memcpy(s2p, S2 + e * H, H * sizeof(float));
        int32x4_t acc[4][4];
        /* layer 1: hid = dequant(xq W1^T) + B1, 16 hidden units x 4 tokens per tile */
        for (size_t i = 0; i < n; i += 4) {
            const int8_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? xq + (size_t)tok[i + r] * Hp : zero;
            for (size_t nb = 0; nb < Dp; nb += 16) {
                tile_lanes(rows, w1 + nb * Hp, Hp, acc);
                /* the scales loaded once per block (the stores below could alias them for the compiler) */
                float32x4_t s1v[4], b1v[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) s1v[g] = vld1q_f32(s1p + nb + 4 * g), b1v[g] = vld1q_f32(b1p + nb + 4 * g);
                /* constant trip counts, unrolled: acc stays in registers (a runtime bound spilled it) */
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    if (i + r >= n) break;
                    float s = sx[tok[i + r]];
                    float *h = hid + (i + r) * Dp + nb;
#pragma GCC unroll 4
                    for (int g = 0; g < 4; g++)
                        vst1q_f32(h + 4 * g, vfmaq_f32(b1v[g], vcvtq_f32_s32(acc[r][g]), vmulq_n_f32(s1v[g], s)));
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            activate(hid + i * Dp, D, k->activation);
            sh[i] = quantize_row(hid + i * Dp, D, hq + i * Dp);
        }
        /* layer 2: Y += dequant(hq W2^T), 16 outputs x 4 tokens per tile */
        for (size_t i = 0; i < n; i += 4) {
            const int8_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? hq + (i + r) * Dp : zero;
            for (size_t nb = 0; nb < Hp; nb += 16) {
                tile_lanes(rows, w2 + nb * Dp, Dp, acc);
                float32x4_t s2v[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) s2v[g] = vld1q_f32(s2p + nb + 4 * g);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    if (i + r >= n) break;
                    float s = sh[i + r];
                    float *y = Y + (size_t)tok[i + r] * H + nb;
                    if (nb + 16 <= H) {
#pragma GCC unroll 4
                        for (int g = 0; g < 4; g++)
                            vst1q_f32(y + 4 * g, vfmaq_f32(vld1q_f32(y + 4 * g), vcvtq_f32_s32(acc[r][g]), vmulq_n_f32(s2v[g], s)));
                    } else { /* the last, partial block of outputs */
                        int32_t a[16];
#pragma GCC unroll 4
                        for (int g = 0; g < 4; g++) vst1q_s32(a + 4 * g, acc[r][g]);
                        for (size_t j = 0; nb + j < H; j++) y[j] += (float)a[j] * (s * s2p[nb + j]);
                    }
                }
            }
        }
    }
    free(xq), free(sx), free(zero), free(hid), free(hq), free(sh), free(s1p), free(b1p), free(s2p);
}
#endif

#ifdef EDGECOMP_VNNI
/* acc[t][h] = outputs 16h..16h+15 of the 32-row block for token t (x as uint8 = x + 128): per 4 k one
 * 64-byte weight load per half and one vpdpbusd per token with the token's 4 bytes broadcast */
VNNI_TARGET static inline void tile_vnni(const uint8_t *const x[4], const int8_t *w, size_t kp, __m512i acc[4][2]) {
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) acc[t][0] = acc[t][1] = _mm512_setzero_si512();
    for (size_t p = 0; p < kp; p += 4) {
        __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            int32_t xb;
            memcpy(&xb, x[t] + p, 4);
            __m512i xv = _mm512_set1_epi32(xb);
            acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], xv, w0);
            acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], xv, w1);
        }
        w += 128;
    }
}

static void to_unsigned(int8_t *q, size_t n) { /* x + 128 as uint8 = x ^ 0x80 */
    for (size_t i = 0; i < n; i++) q[i] ^= (int8_t)0x80;
}

VNNI_TARGET static void run_int8_vnni(kernel_t *k, const float *X, size_t T, size_t H, size_t E, size_t D, const size_t *off,
                                      const int32_t *sel, const float *S1, const float *B1, const float *S2, float *Y) {
    size_t D1 = round_rows(D), H1 = round16(H), H2 = round_rows(H), D2 = round16(D);
    size_t maxn = 0;
    for (size_t e = 0; e < E; e++) maxn = off[e + 1] - off[e] > maxn ? off[e + 1] - off[e] : maxn;
    uint8_t *xq = malloc(T * H1 + 64);
    float *sx = malloc(T * sizeof(float) + 16);
    for (size_t t = 0; t < T; t++) {
        int8_t *row = (int8_t *)xq + t * H1;
        memset(row, 0, H1);
        sx[t] = quantize_row(X + t * H, H, row);
        to_unsigned(row, H1); /* the padding becomes 128; its weights are 0 */
    }
    uint8_t *pad = malloc(H1 > D2 ? H1 : D2);
    memset(pad, 0x80, H1 > D2 ? H1 : D2);
    float *hid = malloc(maxn * D1 * sizeof(float) + 64);
    uint8_t *hq = malloc(maxn * D2 + 64);
    float *sh = malloc(maxn * sizeof(float) + 16);
    float *s1p = calloc(D1, sizeof(float)), *b1p = calloc(D1, sizeof(float)), *s2p = calloc(H2, sizeof(float));
    for (size_t e = 0; e < E; e++) {
        size_t n = off[e + 1] - off[e];
        if (!n) continue;
        const int32_t *tok = sel + off[e];
        const int8_t *w1 = k->packed.p1 + e * D1 * H1, *w2 = k->packed.p2 + e * H2 * D2;
        const int32_t *rs1 = k->packed.rs1 + e * D1, *rs2 = k->packed.rs2 + e * H2;
        memcpy(s1p, S1 + e * D, D * sizeof(float));
        memcpy(b1p, B1 + e * D, D * sizeof(float));
        memcpy(s2p, S2 + e * H, H * sizeof(float));
        __m512i acc[4][2];
        for (size_t i = 0; i < n; i += 4) {
            const uint8_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? xq + (size_t)tok[i + r] * H1 : pad;
            for (size_t nb = 0; nb < D1; nb += 32) {
                tile_vnni(rows, w1 + nb * H1, H1, acc);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    if (i + r >= n) break;
                    __m512 s = _mm512_set1_ps(sx[tok[i + r]]);
                    float *h = hid + (i + r) * D1 + nb;
                    for (int g = 0; g < 2; g++) {
                        __m512i c = _mm512_sub_epi32(acc[r][g], _mm512_slli_epi32(_mm512_loadu_si512((const void *)(rs1 + nb + 16 * g)), 7));
                        __m512 sc = _mm512_mul_ps(_mm512_loadu_ps(s1p + nb + 16 * g), s);
                        _mm512_storeu_ps(h + 16 * g, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), sc, _mm512_loadu_ps(b1p + nb + 16 * g)));
                    }
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            int8_t *row = (int8_t *)hq + i * D2;
            activate(hid + i * D1, D, k->activation);
            memset(row, 0, D2);
            sh[i] = quantize_row(hid + i * D1, D, row);
            to_unsigned(row, D2);
        }
        for (size_t i = 0; i < n; i += 4) {
            const uint8_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = i + r < n ? hq + (i + r) * D2 : pad;
            for (size_t nb = 0; nb < H2; nb += 32) {
                tile_vnni(rows, w2 + nb * D2, D2, acc);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    if (i + r >= n) break;
                    __m512 s = _mm512_set1_ps(sh[i + r]);
                    float *y = Y + (size_t)tok[i + r] * H + nb;
                    for (int g = 0; g < 2; g++) {
                        size_t o = nb + 16 * (size_t)g;
                        if (o >= H) break;
                        __mmask16 m = H - o >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (H - o)) - 1);
                        __m512i c = _mm512_sub_epi32(acc[r][g], _mm512_slli_epi32(_mm512_loadu_si512((const void *)(rs2 + o)), 7));
                        __m512 sc = _mm512_mul_ps(_mm512_loadu_ps(s2p + o), s);
                        __m512 yv = _mm512_maskz_loadu_ps(m, y + 16 * g);
                        _mm512_mask_storeu_ps(y + 16 * g, m, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), sc, yv));
                    }
                }
            }
        }
    }
    free(xq), free(sx), free(pad), free(hid), free(hq), free(sh), free(s1p), free(b1p), free(s2p);
}

static int has_vnni(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
    }
    return known;
}
#endif

static OrtStatus *compute(void *op_kernel, OrtKernelContext *ctx) {
    kernel_t *k = op_kernel;
    input_t in[8];
    size_t count = 0;
    TRY(KernelContext_GetInputCount, ctx, &count);
    if (count != 8) return fail(ORT_INVALID_ARGUMENT, "expects 8 inputs, got %zu", count);
    for (size_t i = 0; i < 8; i++) {
        OrtStatus *s = get_input(ctx, i, &in[i]);
        if (s) return s;
        int int8_ok = i == 2 || i == 5;
        if (in[i].type != ONNX_FLOAT && !(int8_ok && in[i].type == ONNX_INT8))
            return fail(ORT_INVALID_ARGUMENT, "input %s has element type %d (float%s expected)", INPUT_NAMES[i],
                        in[i].type, int8_ok ? " or int8" : "");
    }
    if (in[2].type != in[5].type) return fail(ORT_INVALID_ARGUMENT, "W1 and W2 must have the same element type");
    if (in[0].rank < 1 || in[2].rank != 3)
        return fail(ORT_INVALID_ARGUMENT, "X must have rank >= 1 and W1 rank 3 ([E, D, H])");
    size_t E = (size_t)in[2].dims[0], D = (size_t)in[2].dims[1], H = (size_t)in[2].dims[2];
    size_t rank = in[0].rank, T = 1;
    for (size_t d = 0; d + 1 < rank; d++) T *= (size_t)in[0].dims[d];
    int64_t want[8];
    memcpy(want, in[0].dims, sizeof want);
    want[rank - 1] = (int64_t)H;
    OrtStatus *s = check_shape(&in[0], 0, rank, want);
    want[rank - 1] = (int64_t)E;
    if (!s) s = check_shape(&in[1], 1, rank, want);
    int64_t ed[2] = {(int64_t)E, (int64_t)D}, ehd[3] = {(int64_t)E, (int64_t)H, (int64_t)D}, eh[2] = {(int64_t)E, (int64_t)H},
            h[1] = {(int64_t)H};
    if (!s) s = check_shape(&in[3], 3, 2, ed);
    if (!s) s = check_shape(&in[4], 4, 2, ed);
    if (!s) s = check_shape(&in[5], 5, 3, ehd);
    if (!s) s = check_shape(&in[6], 6, 2, eh);
    if (!s) s = check_shape(&in[7], 7, 1, h);
    if (s) return s;
    if (E == 0) return fail(ORT_INVALID_ARGUMENT, "W1 has no experts (E = 0)");

    OrtValue *out = NULL;
    int64_t odims[8];
    memcpy(odims, in[0].dims, sizeof odims);
    TRY(KernelContext_GetOutput, ctx, 0, odims, rank, &out);
    float *Y = NULL;
    TRY(GetTensorMutableData, out, (void **)&Y);
    const float *B2 = in[7].data;
    for (size_t t = 0; t < T; t++) memcpy(Y + t * H, B2, H * sizeof(float));
    if (T == 0 || H == 0 || D == 0) return NULL;

    size_t *off = malloc((E + 1) * sizeof *off);
    int32_t *sel = malloc(T * E * sizeof *sel + 16);
    select_experts(in[1].data, T, E, k->threshold, off, sel);
    if (in[2].type == ONNX_FLOAT)
        run_float(k, in[0].data, T, H, E, D, off, sel, in[2].data, in[3].data, in[4].data, in[5].data, in[6].data, Y);
    else {
#ifdef EDGECOMP_SDOT
        pthread_mutex_lock(&k->lock);
        int ok = packed_for(k, in[2].data, in[5].data, E, D, H);
        if (ok) run_int8_sdot(k, in[0].data, T, H, E, D, off, sel, in[3].data, in[4].data, in[6].data, Y);
        pthread_mutex_unlock(&k->lock);
        if (!ok) {
            free(off), free(sel);
            return fail(ORT_FAIL, "out of memory packing the int8 weights");
        }
#else
#ifdef EDGECOMP_VNNI
        if (has_vnni() && !getenv("EDGECOMP_KERNEL_PORTABLE")) {
            pthread_mutex_lock(&k->lock);
            int ok = packed_for(k, in[2].data, in[5].data, E, D, H);
            if (ok) run_int8_vnni(k, in[0].data, T, H, E, D, off, sel, in[3].data, in[4].data, in[6].data, Y);
            pthread_mutex_unlock(&k->lock);
            free(off), free(sel);
            return ok ? NULL : fail(ORT_FAIL, "out of memory packing the int8 weights");
        }
#endif
        run_int8(k, in[0].data, T, H, E, D, off, sel, in[2].data, in[3].data, in[4].data, in[5].data, in[6].data, Y);
#endif
    }
    free(off);
    free(sel);
    return NULL;
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    (void)api;
    kernel_t *k = calloc(1, sizeof *k);
    float tau = 0;
    OrtStatus *s = ((status_fn)g_api[ORT_KernelInfoGetAttribute_float])(info, "threshold", &tau);
    if (s) { /* absent: the default */
        API(void (*)(OrtStatus *), ORT_ReleaseStatus)(s);
        tau = 0;
    }
    char act[32] = "gelu";
    size_t size = sizeof act;
    s = ((status_fn)g_api[ORT_KernelInfoGetAttribute_string])(info, "activation", act, &size);
    if (s) {
        API(void (*)(OrtStatus *), ORT_ReleaseStatus)(s);
        if (size > sizeof act) { /* present but longer than any known name */
            free(k);
            return fail(ORT_INVALID_ARGUMENT, "activation attribute is too long (use gelu, gelu_tanh or relu)");
        }
        snprintf(act, sizeof act, "gelu");
    }
    if (!strcmp(act, "gelu")) k->activation = ACT_GELU;
    else if (!strcmp(act, "gelu_tanh")) k->activation = ACT_GELU_TANH;
    else if (!strcmp(act, "relu")) k->activation = ACT_RELU;
    else {
        free(k);
        return fail(ORT_INVALID_ARGUMENT, "activation \"%s\" is not one of gelu, gelu_tanh, relu", act);
    }
    if (!(tau >= 0 && tau <= 1)) {
        free(k);
        return fail(ORT_INVALID_ARGUMENT, "threshold %g is outside [0, 1]", (double)tau);
    }
    k->threshold = tau;
    pthread_mutex_init(&k->lock, NULL);
    *out = k;
    return NULL;
}

static void destroy_kernel(void *p) {
    kernel_t *k = p;
    free(k->packed.p1), free(k->packed.p2), free(k->packed.rs1), free(k->packed.rs2);
    pthread_mutex_destroy(&k->lock);
    free(k);
}
static const char *op_name(const OrtCustomOp *op) { (void)op; return "MoEFeedForward"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return NULL; /* CPU */ }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 2 || i == 5 ? ONNX_UNDEFINED : ONNX_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 8; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return ONNX_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static OrtCharacteristic required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int default_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; /* OrtMemTypeDefault */ }
static int one(const OrtCustomOp *op) { (void)op; return 1; }

static OrtCustomOp g_op = {
    .version = ORT_API_VERSION_USED,
    .CreateKernel = NULL, /* CreateKernelV2 is used from version 16 */
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelCompute = NULL,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = required,
    .GetOutputCharacteristic = required,
    .GetInputMemoryType = default_memory,
    .GetVariadicInputMinArity = one,
    .GetVariadicInputHomogeneity = one,
    .GetVariadicOutputMinArity = one,
    .GetVariadicOutputHomogeneity = one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
    .InferOutputShapeFn = NULL,
};

/* The entry point SessionOptions.register_custom_ops_library (RegisterCustomOpsLibrary*) calls. */
EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    g_api = (void *const *)base->GetApi(ORT_API_VERSION_USED);
    if (!g_api) return NULL; /* an ONNX Runtime older than 1.16: no status can be made; it fails on the first node */
    OrtCustomOpDomain *domain = NULL;
    TRY(CreateCustomOpDomain, "edgecomp", &domain);
    TRY(CustomOpDomain_Add, domain, &g_op);
    TRY(AddCustomOpDomain, options, domain);
    return NULL;
}

/* For tests and the benchmark: the kernel's compiled paths ("sdot" | "portable", plus the x86 clones). */
EXPORT const char *EdgecompKernelInfo(void) {
#ifdef EDGECOMP_SDOT
    return "int8: aarch64 sdot by lane (vdotq_laneq_s32, packed weights); float: portable";
#elif defined(EDGECOMP_VNNI)
    return has_vnni() ? "int8: x86 avx512-vnni (vpdpbusd, packed weights); float: portable"
                      : "int8: portable (this CPU has no avx512-vnni; avx2 clone when it has avx2); float: portable";
#else
    return "int8: portable; float: portable";
#endif
}
