// Raw kernels behind conv2d, group_norm, the 2-D resampling ops and dropout (no autograd): CPU loops
// and GEMMs in ops/conv.cpp, ops/image.cpp and ops/random_ops.cpp; a CUDA backend plugs its launchers
// into ImageCudaHooks (a null hook means "not provided": the op falls back to a composite or errors).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace df {

// Convolution geometry; x (N, C, H, W), w (O, C/groups, kh, kw), out (N, O, Ho, Wo).
struct ConvGeom {
  int64_t N, C, H, W, O, kh, kw, stride, pad, groups, Ho, Wo;
  int64_t Cg() const { return C / groups; }
  int64_t Og() const { return O / groups; }
  int64_t K() const { return Cg() * kh * kw; }   // GEMM inner size per group
  int64_t L() const { return Ho * Wo; }          // output positions per image
};
ConvGeom conv_geom(const Shape& x_shape, const Shape& w_shape, int64_t stride, int64_t pad, int64_t groups);

// All hooks get contiguous inputs and return new contiguous outputs.
struct ImageCudaHooks {
  Tensor (*conv2d)(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvGeom& g) = nullptr;
  // gx (N, C, H, W) = conv2d's adjoint in x applied to gy (N, O, Ho, Wo).
  Tensor (*conv2d_input_grad)(const Tensor& gy, const Tensor& w, const ConvGeom& g) = nullptr;
  // gw (O, C/groups, kh, kw) = sum over n and positions of gy x-patches.
  Tensor (*conv2d_weight_grad)(const Tensor& x, const Tensor& gy, const ConvGeom& g) = nullptr;
  // x viewed as (N, C, S), normalised over each (n, group); weight/bias (C) or undefined.
  Tensor (*group_norm)(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t N, int64_t C, int64_t S,
                       int64_t groups, double eps) = nullptr;
  Tensor (*upsample_nearest2d)(const Tensor& x, int64_t factor) = nullptr;
  Tensor (*sum_pool2d)(const Tensor& x, int64_t factor) = nullptr;  // sum over factor x factor blocks
  Tensor (*avg_pool2d)(const Tensor& x, int64_t kernel, int64_t stride) = nullptr;
  // g (N, C, Ho, Wo) scattered back to x_shape, each window's share 1/kernel^2.
  Tensor (*avg_pool2d_backward)(const Tensor& g, const Shape& x_shape, int64_t kernel, int64_t stride) = nullptr;
  // out[i] = philox_uniform(seed, offset + i) < p ? 0 : x[i] / (1 - p), i the row-major index.
  Tensor (*dropout)(const Tensor& x, double p, uint64_t seed, uint64_t offset) = nullptr;
  // i64 (N, C, Ho, Wo): the flat h * W + w position of each window's first maximum (see below).
  Tensor (*max_pool2d_indices)(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) = nullptr;
};
ImageCudaHooks& image_cuda_hooks();

// Forwards (dispatch on device). bias may be undefined.
Tensor conv2d_kernel(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvGeom& g);
Tensor conv2d_input_grad_kernel(const Tensor& gy, const Tensor& w, const ConvGeom& g);
Tensor conv2d_weight_grad_kernel(const Tensor& x, const Tensor& gy, const ConvGeom& g);
Tensor group_norm_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps);
Tensor upsample_nearest2d_kernel(const Tensor& x, int64_t factor);
Tensor sum_pool2d_kernel(const Tensor& x, int64_t factor);
Tensor avg_pool2d_kernel(const Tensor& x, int64_t kernel, int64_t stride);
Tensor avg_pool2d_backward_kernel(const Tensor& g, const Shape& x_shape, int64_t kernel, int64_t stride);
Tensor dropout_kernel(const Tensor& x, double p, uint64_t seed, uint64_t offset);
// x (N, C, H, W) -> i64 (N, C, Ho, Wo): in each kernel x kernel window (stride, zero-based padding
// that reads -inf) the flat position h * W + w of the first maximum in row-major window order, or of
// the first NaN (a NaN is the maximum, so it propagates). Padding never holds a window's maximum:
// padding <= kernel / 2 leaves every window a real element.
Tensor max_pool2d_indices_kernel(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding);

}  // namespace df
