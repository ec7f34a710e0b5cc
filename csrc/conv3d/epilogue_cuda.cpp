// Torch glue of the CUDA epilogue kernels: checks, allocation, stream and device guard; the kernels
// themselves are in epilogue_kernels.cu (compiled without torch headers). Built only with WITH_CUDA
// (files named *_cuda.cpp are skipped otherwise, see video3d_fast/_extension.py:sources).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "conv3d/epilogue_kernels.h"
#include "epilogue.h"

namespace video3d_fast {
namespace cuda {
namespace {

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "video3d_fast CUDA ", what, " failed: ", cudaGetErrorString(err));
}
const void* ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mut_ptr(at::Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }
at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor workspace(const ChannelLayout& L, const at::Tensor& like) {
  return at::empty({cuda_kernels::reduce_partials(L) * 2 * L.channels}, like.options().dtype(at::kDouble));
}

}  // namespace

void affine_act(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& res,
                bool relu, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(c.device());
  const ChannelLayout L = channel_layout(c);
  check(cuda_kernels::affine_act(dtype_code(c.scalar_type()), c.const_data_ptr(), a.const_data_ptr(),
                                 b.const_data_ptr(), res.has_value() ? res->const_data_ptr() : nullptr, relu,
                                 out.mutable_data_ptr(), L, c10::cuda::getCurrentCUDAStream()),
        "affine_act");
}

std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& c) {
  const c10::cuda::CUDAGuard guard(c.device());
  const ChannelLayout L = channel_layout(c);
  at::Tensor mean = at::empty({L.channels}, c.options().dtype(acc_type(c)));
  at::Tensor var = at::empty_like(mean);
  at::Tensor ws = workspace(L, c);
  const auto dt = dtype_code(c.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  check(cuda_kernels::channel_reduce(dt, cuda_kernels::Reduction::kSum, c.const_data_ptr(), nullptr, nullptr, nullptr,
                                     false, L, ws.mutable_data_ptr<double>(), mean.mutable_data_ptr(), nullptr, stream),
        "channel mean");
  check(cuda_kernels::channel_reduce(dt, cuda_kernels::Reduction::kCentredSq, c.const_data_ptr(), nullptr, nullptr,
                                     mean.const_data_ptr(), false, L, ws.mutable_data_ptr<double>(),
                                     var.mutable_data_ptr(), nullptr, stream),
        "channel variance");
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> grad_reduce(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c,
                                               const at::Tensor& center, bool relu) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const ChannelLayout L = channel_layout(grad);
  at::Tensor sum_gz = at::empty({L.channels}, grad.options().dtype(acc_type(grad)));
  at::Tensor sum_gzc = c.defined() ? at::empty_like(sum_gz) : at::Tensor();
  at::Tensor ws = workspace(L, grad);
  check(cuda_kernels::channel_reduce(dtype_code(grad.scalar_type()), cuda_kernels::Reduction::kGrad, ptr(c),
                                     grad.const_data_ptr(), out.const_data_ptr(), ptr(center), relu, L,
                                     ws.mutable_data_ptr<double>(), sum_gz.mutable_data_ptr(), mut_ptr(sum_gzc),
                                     c10::cuda::getCurrentCUDAStream()),
        "grad_reduce");
  return {sum_gz, sum_gzc};
}

void grad_apply(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c, const at::Tensor& k,
                const at::Tensor& alpha, const at::Tensor& beta, bool relu, at::Tensor& gc, at::Tensor& gres) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const ChannelLayout L = channel_layout(grad);
  check(cuda_kernels::grad_apply(dtype_code(grad.scalar_type()), grad.const_data_ptr(), out.const_data_ptr(), ptr(c),
                                 k.const_data_ptr(), ptr(alpha), ptr(beta), relu, mut_ptr(gc), mut_ptr(gres), L,
                                 c10::cuda::getCurrentCUDAStream()),
        "grad_apply");
}

}  // namespace cuda
}  // namespace video3d_fast
