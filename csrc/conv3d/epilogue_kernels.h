// Launchers of the CUDA epilogue kernels (epilogue_kernels.cu). Plain C++ + CUDA runtime types only:
// the torch glue lives in epilogue_cuda.cpp, so the .cu file compiles without torch headers.
// Per-channel vectors are in the accumulation type: double for kFloat64 data, float otherwise.
#pragma once

#include <cuda_runtime.h>

#include "conv3d_params.h"

namespace video3d_fast {
namespace cuda_kernels {

// out = act(c * a[ch] + b[ch] (+ res)); out may equal c.
cudaError_t affine_act(DType dt, const void* c, const void* a, const void* b, const void* res, bool relu, void* out,
                       ChannelLayout L, cudaStream_t stream);

// What channel_reduce sums per channel (acc = accumulation type):
//   kSum:        x
//   kCentredSq:  (x - center[ch])^2
//   kGrad:       gz                       and, when x != nullptr, gz * (x - center[ch]) (center may be null)
// with gz = grad * (out > 0) if relu else grad.
enum class Reduction : int { kSum = 0, kCentredSq = 1, kGrad = 2 };

// Number of partial rows channel_reduce needs in its double workspace ([partials][2][C]).
int64_t reduce_partials(ChannelLayout L);

// Deterministic two-level per-channel reduction: partial sums per block in double into workspace, then
// one thread per channel adds them in a fixed order and writes result0/result1 (acc type; result1 only
// for kGrad with x != nullptr).
cudaError_t channel_reduce(DType dt, Reduction what, const void* x, const void* grad, const void* out,
                           const void* center, bool relu, ChannelLayout L, double* workspace, void* result0,
                           void* result1, cudaStream_t stream);

// gc = gz * k[ch] + x * alpha[ch] + beta[ch] (x, alpha, beta optional); gres = gz (optional).
cudaError_t grad_apply(DType dt, const void* grad, const void* out, const void* x, const void* k, const void* alpha,
                       const void* beta, bool relu, void* gc, void* gres, ChannelLayout L, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace video3d_fast
