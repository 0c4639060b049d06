// Thin helpers over oneDNN's C API (Debian libdnnl-dev 2.6). They take plain
// arrays instead of oneDNN's fixed-size dims arrays, which Swift imports as tuples.
#ifndef ANVIL_DNNL_H
#define ANVIL_DNNL_H

#include <stdint.h>
#include <oneapi/dnnl/dnnl.h>

/// A memory descriptor of `ndims` dims with the given format tag (dnnl_format_tag_any allowed).
dnnl_status_t anvil_dnnl_md(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_data_type_t type, dnnl_format_tag_t tag);

/// Forward-inference convolution descriptor; dilations use ONNX's convention (1 = dense); direct or Winograd algorithm.
dnnl_status_t anvil_dnnl_conv_desc(dnnl_convolution_desc_t *desc, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *weights,
                                   const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst, int spatial,
                                   const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end,
                                   int winograd);

/// Forward-inference deconvolution (ONNX ConvTranspose) descriptor; dilations use ONNX's convention.
dnnl_status_t anvil_dnnl_deconv_desc(dnnl_deconvolution_desc_t *desc, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *weights,
                                     const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst, int spatial,
                                     const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end);

/// Size in bytes of the memory a descriptor describes.
size_t anvil_dnnl_md_size(const dnnl_memory_desc_t *md);

/// Whether two descriptors describe the same layout.
int anvil_dnnl_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b);

/// The implementation name a primitive descriptor chose ("brg:avx512_core", "jit:avx2" ...).
const char *anvil_dnnl_impl_name(const_dnnl_primitive_desc_t pd);

/// A memory descriptor of `ndims` dims with explicit element strides (views of plain tensors).
dnnl_status_t anvil_dnnl_md_strided(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_data_type_t type, const int64_t *strides);

/// Forward-inference pooling descriptor; dilations use ONNX's convention (1 = dense).
dnnl_status_t anvil_dnnl_pool_desc(dnnl_pooling_v2_desc_t *desc, dnnl_alg_kind_t alg, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst,
                                   int spatial, const int64_t *strides, const int64_t *kernel, const int64_t *dilations,
                                   const int64_t *pad_begin, const int64_t *pad_end);

/// Bytes of scratchpad a primitive needs (user scratchpad mode).
size_t anvil_dnnl_scratchpad_size(const_dnnl_primitive_desc_t pd);

/// The memory descriptor a primitive descriptor reports for `what` (index 0).
dnnl_memory_desc_t anvil_dnnl_query_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index);

/// Most int64 values an encoded memory descriptor takes.
#define ANVIL_MD_CODE_MAX 96

/// Writes a canonical encoding of a plain, blocked or Winograd-weights memory
/// descriptor (for engine files) into `out`; returns the number of values, or -1
/// when the descriptor is not representable (RNN-packed formats, offsets, extra
/// flags such as int8 compensation).
int anvil_dnnl_md_encode(const dnnl_memory_desc_t *md, int64_t *out);

/// Rebuilds a descriptor from `anvil_dnnl_md_encode`'s values after checking every
/// field (rank, types, dimensions, blocks, strides); returns 0 and the number of
/// bytes the described memory can touch in `extent`, or -1 for an invalid encoding.
int anvil_dnnl_md_decode(const int64_t *in, int count, dnnl_memory_desc_t *md, size_t *extent);

/// Sets the number of threads oneDNN's OpenMP runtime uses; 0 when it cannot (no OpenMP).
int anvil_set_threads(int n);

/// One part of a parallel job: `fn(context, part)`.
typedef void (*anvil_part_fn)(void *context, int part);

/// Calls `fn(context, part)` for every part in 0..<parts on oneDNN's OpenMP team (the
/// threads oneDNN's kernels use, already awake between layers), each part exactly once;
/// serially when OpenMP is not loaded, from inside a parallel region, or for one part.
void anvil_parallel(int parts, anvil_part_fn fn, void *context);

/// The number of threads `anvil_parallel` would use (OpenMP's maximum; 1 without OpenMP).
int anvil_parallel_threads(void);

/// QuantizeLinear's arithmetic on `count` floats: round(x / scale) to nearest even plus the zero
/// point, saturated to int8 (is_signed) or uint8; NaN gives 0.
void anvil_quantize_linear(const float *x, int64_t count, float scale, float zero_point, int is_signed, void *out);

/// QuantizeLinear with a scale and zero point per channel (axis 1), into a channels-last
/// [n, spatial, channels] tensor, for the positions [p0, p1): from a row-major [n, channels,
/// spatial] tensor, or from a channels-last one (channels_last_input 1).
void anvil_quantize_linear_per_channel(const float *x, int64_t n, int64_t channels, int64_t spatial, int64_t p0, int64_t p1,
                                       const float *scales, const float *zero_points, int channels_last_input, int is_signed, void *out);

/// IEEE half-precision values widened to single precision (exact).
void anvil_f16_to_f32(const uint16_t *x, int64_t count, float *out);

/// Single-precision values rounded to half precision (nearest even; overflow gives infinity, NaN stays NaN).
void anvil_f32_to_f16(const float *x, int64_t count, uint16_t *out);

#endif
