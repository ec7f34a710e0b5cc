// Tensor-level epilogue primitives shared by the fused ops (conv3d_bn_act.cpp). Each has a CPU
// implementation (cpu/epilogue_cpu.cpp) and a CUDA one (conv3d/epilogue_cuda.cpp + .cu).
//
// Tensors are activations of shape (N, C, D, H, W), dense in NCDHW or NDHWC; per-channel vectors are
// contiguous, in the opmath dtype (float32, float64 for float64 data). Notation: gz = grad * (out > 0)
// when relu, else grad.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "conv3d/conv3d_params.h"

namespace video3d_fast {

// [outer][C][inner] view of a dense NCDHW or NDHWC tensor (TORCH_CHECKs that it is one of them).
ChannelLayout channel_layout(const at::Tensor& t);
DType dtype_code(at::ScalarType t);

namespace cpu {
// out = act(c * a[ch] + b[ch] (+ res)); out may be c itself.
void affine_act(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
                const c10::optional<at::Tensor>& res, bool relu, at::Tensor& out);
// Per-channel mean and biased variance of c (two passes: mean, then centred squares).
std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& c);
// (sum gz, sum gz * (c - center)) per channel; the second is skipped (undefined) when c is undefined.
std::tuple<at::Tensor, at::Tensor> grad_reduce(const at::Tensor& grad, const at::Tensor& out,
                                               const at::Tensor& c, const at::Tensor& center, bool relu);
// gc = gz * k[ch] + c * alpha[ch] + beta[ch] (the c term only when c is defined); gres = gz if defined.
void grad_apply(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c, const at::Tensor& k,
                const at::Tensor& alpha, const at::Tensor& beta, bool relu, at::Tensor& gc, at::Tensor& gres);
}  // namespace cpu

#ifdef WITH_CUDA
namespace cuda {
void affine_act(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
                const c10::optional<at::Tensor>& res, bool relu, at::Tensor& out);
std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& c);
std::tuple<at::Tensor, at::Tensor> grad_reduce(const at::Tensor& grad, const at::Tensor& out,
                                               const at::Tensor& c, const at::Tensor& center, bool relu);
void grad_apply(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c, const at::Tensor& k,
                const at::Tensor& alpha, const at::Tensor& beta, bool relu, at::Tensor& gc, at::Tensor& gres);
}  // namespace cuda
#endif

}  // namespace video3d_fast
