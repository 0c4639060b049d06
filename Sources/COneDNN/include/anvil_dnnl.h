// Thin helpers over oneDNN's C API (Debian libdnnl-dev 2.6). They take plain
// arrays instead of oneDNN's fixed-size dims arrays, which Swift imports as tuples.
#ifndef ANVIL_DNNL_H
#define ANVIL_DNNL_H

#include <stdint.h>
#include <oneapi/dnnl/dnnl.h>

/// A memory descriptor of `ndims` dims with the given format tag (dnnl_format_tag_any allowed).
dnnl_status_t anvil_dnnl_md(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_data_type_t type, dnnl_format_tag_t tag);

/// Forward-inference convolution descriptor; dilations use ONNX's convention (1 = dense).
dnnl_status_t anvil_dnnl_conv_desc(dnnl_convolution_desc_t *desc, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *weights,
                                   const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst, int spatial,
                                   const int64_t *strides, const int64_t *dilations, const int64_t *pad_begin, const int64_t *pad_end);

/// Size in bytes of the memory a descriptor describes.
size_t anvil_dnnl_md_size(const dnnl_memory_desc_t *md);

/// Whether two descriptors describe the same layout.
int anvil_dnnl_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b);

/// The implementation name a primitive descriptor chose ("brg:avx512_core", "jit:avx2" ...).
const char *anvil_dnnl_impl_name(const_dnnl_primitive_desc_t pd);

#endif
