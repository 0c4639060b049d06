#include "anvil_dnnl.h"
#include <string.h>
#include <dlfcn.h>

static void copy_dims(dnnl_dims_t out, int n, const int64_t *in, int64_t minus) {
    memset(out, 0, sizeof(dnnl_dims_t));
    for (int i = 0; i < n && i < DNNL_MAX_NDIMS; i++) out[i] = in[i] - minus;
}

/* Strides, dilations (ONNX's 1 = dense becomes oneDNN's 0: it counts the gaps) and pads of a window. */
static void window_dims(int spatial, const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end,
                        dnnl_dims_t s, dnnl_dims_t d, dnnl_dims_t pl, dnnl_dims_t pr) {
    copy_dims(s, spatial, strides, 0);
    copy_dims(d, spatial, dilations, 1);
    copy_dims(pl, spatial, pad_begin, 0);
    copy_dims(pr, spatial, pad_end, 0);
}

dnnl_status_t anvil_dnnl_md(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_data_type_t type, dnnl_format_tag_t tag) {
    if (ndims < 0 || ndims > DNNL_MAX_NDIMS) return dnnl_invalid_arguments;
    dnnl_dims_t d;
    copy_dims(d, ndims, dims, 0);
    return dnnl_memory_desc_init_by_tag(md, ndims, d, type, tag);
}

dnnl_status_t anvil_dnnl_conv_desc(dnnl_convolution_desc_t *desc, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *weights,
                                   const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst, int spatial,
                                   const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end,
                                   int winograd) {
    if (spatial < 1 || spatial > 3) return dnnl_invalid_arguments;
    dnnl_dims_t s, d, pl, pr;
    window_dims(spatial, strides, dilations, pad_begin, pad_end, s, d, pl, pr);
    return dnnl_dilated_convolution_forward_desc_init(desc, dnnl_forward_inference, winograd ? dnnl_convolution_winograd : dnnl_convolution_direct,
                                                      src, weights, bias, dst, s, d, pl, pr);
}

dnnl_status_t anvil_dnnl_deconv_desc(dnnl_deconvolution_desc_t *desc, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *weights,
                                     const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst, int spatial,
                                     const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end) {
    if (spatial < 1 || spatial > 3) return dnnl_invalid_arguments;
    dnnl_dims_t s, d, pl, pr;
    window_dims(spatial, strides, dilations, pad_begin, pad_end, s, d, pl, pr);
    return dnnl_dilated_deconvolution_forward_desc_init(desc, dnnl_forward_inference, dnnl_deconvolution_direct,
                                                        src, weights, bias, dst, s, d, pl, pr);
}

size_t anvil_dnnl_md_size(const dnnl_memory_desc_t *md) { return dnnl_memory_desc_get_size(md); }

int anvil_dnnl_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b) { return dnnl_memory_desc_equal(a, b); }

const char *anvil_dnnl_impl_name(const_dnnl_primitive_desc_t pd) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) != dnnl_success) return "unknown";
    return name;
}

dnnl_status_t anvil_dnnl_md_strided(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_data_type_t type, const int64_t *strides) {
    if (ndims < 0 || ndims > DNNL_MAX_NDIMS) return dnnl_invalid_arguments;
    dnnl_dims_t d, s;
    copy_dims(d, ndims, dims, 0);
    copy_dims(s, ndims, strides, 0);
    return dnnl_memory_desc_init_by_strides(md, ndims, d, type, s);
}

dnnl_status_t anvil_dnnl_pool_desc(dnnl_pooling_v2_desc_t *desc, dnnl_alg_kind_t alg, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst,
                                   int spatial, const int64_t *strides, const int64_t *kernel, const int64_t *dilations,
                                   const int64_t *pad_begin, const int64_t *pad_end) {
    if (spatial < 1 || spatial > 3) return dnnl_invalid_arguments;
    dnnl_dims_t s, k, d, pl, pr;
    copy_dims(k, spatial, kernel, 0);
    window_dims(spatial, strides, dilations, pad_begin, pad_end, s, d, pl, pr);
    return dnnl_pooling_v2_forward_desc_init(desc, dnnl_forward_inference, alg, src, dst, s, k, d, pl, pr);
}

size_t anvil_dnnl_scratchpad_size(const_dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return md ? dnnl_memory_desc_get_size(md) : 0;
}

dnnl_memory_desc_t anvil_dnnl_query_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, what, index);
    dnnl_memory_desc_t zero;
    memset(&zero, 0, sizeof zero);
    return md ? *md : zero;
}

/* Encoding of a blocked layout: ndims, data_type, dims[n], padded_dims[n], strides[n],
   inner_nblks, inner_blks[k], inner_idxs[k] (at most 3 + 3 * 6 + 1 + 2 * 6 = 34 values).
   Winograd weights start with -1 instead (at most 3 + 6 + 11 values); the decoder
   refuses them: they are only ever compared with a primitive's own layout. */
int anvil_dnnl_md_encode(const dnnl_memory_desc_t *md, int64_t *out) {
    int n = md->ndims, k;
    if (n < 1 || n > 6 || md->offset0 != 0 || md->extra.flags != 0) return -1;
    if (md->format_kind == dnnl_format_kind_wino) {
        /* Winograd weights: -1, data_type, ndims, dims[n], then the transform's parameters. */
        const dnnl_wino_desc_t *w = &md->format_desc.wino_desc;
        int c = 0;
        uint32_t scale;
        memcpy(&scale, &w->adj_scale, sizeof scale);
        out[c++] = -1;
        out[c++] = md->data_type;
        out[c++] = n;
        for (int d = 0; d < n; d++) out[c++] = md->dims[d];
        out[c++] = w->wino_format; out[c++] = w->r; out[c++] = w->alpha; out[c++] = w->ic; out[c++] = w->oc;
        out[c++] = w->ic_block; out[c++] = w->oc_block; out[c++] = w->ic2_block; out[c++] = w->oc2_block;
        out[c++] = scale; out[c++] = (int64_t)w->size;
        return c;
    }
    if (md->format_kind != dnnl_blocked) return -1;
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    k = b->inner_nblks;
    if (k < 0 || k > 6) return -1;
    int c = 0;
    out[c++] = n;
    out[c++] = md->data_type;
    for (int d = 0; d < n; d++) { if (md->padded_offsets[d] != 0) return -1; out[c++] = md->dims[d]; }
    for (int d = 0; d < n; d++) out[c++] = md->padded_dims[d];
    for (int d = 0; d < n; d++) out[c++] = b->strides[d];
    out[c++] = k;
    for (int i = 0; i < k; i++) out[c++] = b->inner_blks[i];
    for (int i = 0; i < k; i++) out[c++] = b->inner_idxs[i];
    return c;
}

int anvil_dnnl_md_decode(const int64_t *in, int count, dnnl_memory_desc_t *md, size_t *extent) {
    const int64_t limit = (int64_t)1 << 40;
    if (count < 3) return -1;
    int64_t n = in[0], type = in[1];
    if (n < 1 || n > 6 || count < 3 + 3 * n) return -1;
    size_t size;
    switch (type) {
    case dnnl_f32: case dnnl_s32: size = 4; break;
    case dnnl_f16: case dnnl_bf16: size = 2; break;
    case dnnl_s8: case dnnl_u8: size = 1; break;
    default: return -1;
    }
    int64_t k = in[2 + 3 * n];
    if (k < 0 || k > 6 || count != 3 + 3 * n + 2 * k) return -1;
    memset(md, 0, sizeof *md);
    md->ndims = (int)n;
    md->data_type = (dnnl_data_type_t)type;
    md->format_kind = dnnl_blocked;
    dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    b->inner_nblks = (int)k;
    int64_t block[6] = {1, 1, 1, 1, 1, 1}, inner = 1;
    for (int i = 0; i < k; i++) {
        int64_t blk = in[3 + 3 * n + i], idx = in[3 + 3 * n + k + i];
        if (blk < 1 || blk > 1024 || idx < 0 || idx >= n) return -1;
        b->inner_blks[i] = blk;
        b->inner_idxs[i] = idx;
        block[idx] *= blk;
        inner *= blk;
        if (inner > 1 << 20) return -1;
    }
    /* The farthest element: the last block along every dimension, plus one dense inner block. */
    int64_t last = inner;
    for (int d = 0; d < n; d++) {
        int64_t dim = in[2 + d], padded = in[2 + n + d], stride = in[2 + 2 * n + d];
        if (dim < 1 || dim > limit || padded < dim || padded > limit || padded % block[d] != 0 || stride < 0 || stride > limit) return -1;
        md->dims[d] = dim;
        md->padded_dims[d] = padded;
        b->strides[d] = stride;
        last += (padded / block[d] - 1) * stride;
        if (last > limit) return -1;
    }
    *extent = (size_t)last * size;
    return 0;
}


/* The team run of anvil_parallel: each OpenMP thread takes every n-th part. */
struct anvil_parallel_job {
    anvil_part_fn fn;
    void *context;
    int parts;
    int (*thread_num)(void);
    int (*num_threads)(void);
};

/* ThreadSanitizer does not see libgomp's fork and join (libgomp is not instrumented): the
   team's start and end are told to it as happens-before edges (tools/sanitize thread). */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ANVIL_TSAN 1
#endif
#endif
#ifdef ANVIL_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define ANVIL_HAPPENS_BEFORE(p) __tsan_release(p)
#define ANVIL_HAPPENS_AFTER(p) __tsan_acquire(p)
#else
#define ANVIL_HAPPENS_BEFORE(p) ((void)(p))
#define ANVIL_HAPPENS_AFTER(p) ((void)(p))
#endif

static void anvil_parallel_team(void *data) {
    struct anvil_parallel_job *job = data;
    ANVIL_HAPPENS_AFTER(job);
    int t = job->thread_num(), n = job->num_threads();
    for (int part = t; part < job->parts; part += n) job->fn(job->context, part);
    ANVIL_HAPPENS_BEFORE(&job->parts);
}

/* libgomp's entry points: libdnnl links OpenMP (libgomp on Debian), so they are looked up
   once where it loaded them (a race between two first calls writes the same values). */
static void (*gomp_start)(void (*)(void *), void *, unsigned, unsigned);
static int (*gomp_thread_num)(void), (*gomp_num_threads)(void), (*gomp_max_threads)(void), (*gomp_in_parallel)(void);
static void (*gomp_set_threads)(int);
static int gomp_resolved;

static int anvil_gomp_loaded(void) {
    if (!__atomic_load_n(&gomp_resolved, __ATOMIC_ACQUIRE)) {
        gomp_start = (void (*)(void (*)(void *), void *, unsigned, unsigned))dlsym(RTLD_DEFAULT, "GOMP_parallel");
        gomp_thread_num = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_thread_num");
        gomp_num_threads = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_num_threads");
        gomp_max_threads = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
        gomp_in_parallel = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_in_parallel");
        gomp_set_threads = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
        __atomic_store_n(&gomp_resolved, 1, __ATOMIC_RELEASE);
    }
    return gomp_start && gomp_thread_num && gomp_num_threads && gomp_max_threads && gomp_in_parallel && gomp_set_threads;
}

int anvil_set_threads(int n) {
    if (!anvil_gomp_loaded() || n < 1) return 0;
    gomp_set_threads(n);
    return 1;
}

int anvil_parallel_threads(void) {
    return anvil_gomp_loaded() ? gomp_max_threads() : 1;
}

void anvil_parallel(int parts, anvil_part_fn fn, void *context) {
    int team = (anvil_gomp_loaded() && !gomp_in_parallel()) ? gomp_max_threads() : 1;
    if (team > parts) team = parts;
    if (team <= 1) {
        for (int part = 0; part < parts; part++) fn(context, part);
        return;
    }
    struct anvil_parallel_job job = {fn, context, parts, gomp_thread_num, gomp_num_threads};
    ANVIL_HAPPENS_BEFORE(&job);
    gomp_start(anvil_parallel_team, &job, (unsigned)team, 0);
    ANVIL_HAPPENS_AFTER(&job.parts);
}

/* QuantizeLinear with one scale and zero point: round(x / scale) to nearest even plus the
   zero point, saturated to the 8-bit range; NaN gives 0. Rounding adds and subtracts
   1.5 * 2^23 (exact round-to-nearest-even for |q| < 2^22, after clamping), so that the
   loop vectorizes without SSE4.1's round instruction. */
static inline float quantize_one(float x, float scale, float zero_point, float lo, float hi) {
    float q = x / scale;
    if (q != q) return 0.0f;
    q = q < -65536.0f ? -65536.0f : (q > 65536.0f ? 65536.0f : q);
    q = (q + 12582912.0f) - 12582912.0f;
    q += zero_point;
    return q < lo ? lo : (q > hi ? hi : q);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void anvil_quantize_linear(const float *x, int64_t count, float scale, float zero_point, int is_signed, void *out) {
    if (is_signed) {
        int8_t *y = (int8_t *)out;
        for (int64_t i = 0; i < count; i++) y[i] = (int8_t)(int32_t)quantize_one(x[i], scale, zero_point, -128.0f, 127.0f);
    } else {
        uint8_t *y = (uint8_t *)out;
        for (int64_t i = 0; i < count; i++) y[i] = (uint8_t)(int32_t)quantize_one(x[i], scale, zero_point, 0.0f, 255.0f);
    }
}

/* QuantizeLinear with a scale and zero point per channel (axis 1; one QuantizeLinear scale
   repeated for a per-tensor one) into a channels-last [n, spatial, channels] tensor, for the
   positions [p0, p1): from a channels-last one (channels_last_input 1: a vector loop along
   the channels) or from a row-major [n, channels, spatial] tensor, positions in tiles of 64:
   a tile's output bytes are one contiguous block that stays in L1 while each channel's 64
   inputs are quantized in a vector loop and placed a channel apart (parts split positions,
   never channels, so no two threads write the same cache line). */
__attribute__((target_clones("avx512f", "avx2", "default")))
void anvil_quantize_linear_per_channel(const float *x, int64_t n, int64_t channels, int64_t spatial, int64_t p0, int64_t p1,
                                       const float *scales, const float *zero_points, int channels_last_input, int is_signed, void *out) {
    const float lo = is_signed ? -128.0f : 0.0f, hi = is_signed ? 127.0f : 255.0f;
    for (int64_t b = 0; b < n; b++) {
        uint8_t *base = (uint8_t *)out + b * spatial * channels;
        if (channels_last_input) {
            for (int64_t p = p0; p < p1; p++) {
                const float *from = x + (b * spatial + p) * channels;
                int32_t q[256];
                for (int64_t c0 = 0; c0 < channels; c0 += 256) {
                    int64_t m = channels - c0 < 256 ? channels - c0 : 256;
                    for (int64_t i = 0; i < m; i++) q[i] = (int32_t)quantize_one(from[c0 + i], scales[c0 + i], zero_points[c0 + i], lo, hi);
                    for (int64_t i = 0; i < m; i++) base[p * channels + c0 + i] = (uint8_t)q[i];
                }
            }
            continue;
        }
        for (int64_t t = p0; t < p1; t += 64) {
            int64_t end = t + 64 < p1 ? t + 64 : p1, m = end - t;
            for (int64_t c = 0; c < channels; c++) {
                const float *from = x + (b * channels + c) * spatial + t;
                const float scale = scales[c], zero_point = zero_points[c];
                int32_t q[64];
                for (int64_t i = 0; i < m; i++) q[i] = (int32_t)quantize_one(from[i], scale, zero_point, lo, hi);
                for (int64_t i = 0; i < m; i++) base[(t + i) * channels + c] = (uint8_t)q[i];
            }
        }
    }
}

/* IEEE half precision <-> single, rounding to nearest even (F16C instructions where the CPU has them). */
__attribute__((target_clones("avx512f", "avx2", "default")))
void anvil_f16_to_f32(const uint16_t *x, int64_t count, float *out) {
    const _Float16 *h = (const _Float16 *)x;
    for (int64_t i = 0; i < count; i++) out[i] = (float)h[i];
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void anvil_f32_to_f16(const float *x, int64_t count, uint16_t *out) {
    _Float16 *h = (_Float16 *)out;
    for (int64_t i = 0; i < count; i++) h[i] = (_Float16)x[i];
}
