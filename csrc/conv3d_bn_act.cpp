// The fused ops of the extension, device-generic: the convolution itself runs through ATen (oneDNN on
// CPU, cuDNN on CUDA); everything after it (scale/shift, BatchNorm statistics, residual, ReLU, and
// their backward) runs in our epilogue kernels (epilogue.h), which exist for CPU and CUDA.
// Registered for the CPU and CUDA dispatch keys of the video3d_fast_kernels namespace (ops.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "epilogue.h"

namespace video3d_fast {

// Test hook: when on, every output buffer our kernels must fill is allocated pre-filled with NaN, so
// an element a kernel forgets to write cannot pass a comparison (video3d_fast.ops.debug.poison_outputs).
std::atomic<bool> g_poison_outputs{false};
void set_poison_outputs(bool enabled) { g_poison_outputs.store(enabled); }

namespace {

using at::Tensor;
using c10::optional;

Tensor new_output_like(const Tensor& t) {
  Tensor out = at::empty_like(t);
  if (g_poison_outputs.load()) out.fill_(NAN);
  return out;
}

at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// channels_last_3d when the input is (and is not also plain contiguous), else contiguous:
// the rule of video3d_fast/ops/params.py:memory_format_of.
at::MemoryFormat activation_format(const Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

void check_conv(const Tensor& input, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 5, "video3d_fast: input must be 5-D (N, C, D, H, W), got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 5, "video3d_fast: weight must be 5-D, got ", weight.dim(), "-D");
  TORCH_CHECK(input.device() == weight.device(), "video3d_fast: input on ", input.device(), ", weight on ",
              weight.device());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "video3d_fast: input dtype ", input.scalar_type(),
              " != weight dtype ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "video3d_fast: floating-point input expected");
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3,
              "video3d_fast: stride, padding and dilation need 3 values");
  TORCH_CHECK(groups >= 1 && input.size(1) % groups == 0 && weight.size(0) % groups == 0 &&
                  weight.size(1) * groups == input.size(1),
              "video3d_fast: channels do not match groups (input C=", input.size(1), ", weight ", weight.sizes(),
              ", groups=", groups, ")");
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0,
                "video3d_fast: need stride >= 1, dilation >= 1, padding >= 0");
    const int64_t out = (input.size(2 + i) + 2 * padding[i] - dilation[i] * (weight.size(2 + i) - 1) - 1) / stride[i] + 1;
    TORCH_CHECK(out >= 1, "video3d_fast: output size < 1 on spatial axis ", i);
  }
}

void check_vector(const Tensor& v, const Tensor& input, int64_t channels, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == channels, "video3d_fast: ", name, " must have shape (", channels, ")");
  TORCH_CHECK(v.device() == input.device(), "video3d_fast: ", name, " on ", v.device(), ", input on ", input.device());
}

void check_activation_like(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == like.sizes(), "video3d_fast: ", name, " has shape ", t.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "video3d_fast: ", name,
              " dtype/device mismatch");
}

Tensor conv(const Tensor& input, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
            at::IntArrayRef dilation, int64_t groups) {
  return at::convolution(input, weight, c10::nullopt, stride, padding, dilation, false, {0, 0, 0}, groups)
      .contiguous(activation_format(input));
}

// ---- device routing of the epilogue primitives -------------------------------------------------
#ifdef WITH_CUDA
#define V3D_ROUTE(tensor, fn, ...) \
  return (tensor).is_cuda() ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__)
#else
#define V3D_ROUTE(tensor, fn, ...)                                                           \
  TORCH_CHECK(!(tensor).is_cuda(), "video3d_fast: extension built without CUDA sources"); \
  return cpu::fn(__VA_ARGS__)
#endif

void run_affine_act(const Tensor& c, const Tensor& a, const Tensor& b, const optional<Tensor>& res, bool relu,
                    Tensor& out) {
  V3D_ROUTE(c, affine_act, c, a, b, res, relu, out);
}
std::tuple<Tensor, Tensor> run_channel_stats(const Tensor& c) { V3D_ROUTE(c, channel_stats, c); }
std::tuple<Tensor, Tensor> run_grad_reduce(const Tensor& g, const Tensor& out, const Tensor& c, const Tensor& center,
                                           bool relu) {
  V3D_ROUTE(g, grad_reduce, g, out, c, center, relu);
}
void run_grad_apply(const Tensor& g, const Tensor& out, const Tensor& c, const Tensor& k, const Tensor& alpha,
                    const Tensor& beta, bool relu, Tensor& gc, Tensor& gres) {
  V3D_ROUTE(g, grad_apply, g, out, c, k, alpha, beta, relu, gc, gres);
}

// ---- CPU weight gradient as one GEMM ---------------------------------------------------------------
// oneDNN's CPU weight gradient is slow when the reduction over output positions (M = N*Do*Ho*Wo) is
// short and the weight large, i.e. in the deep layers: >100 ms for a 512x512x3x3x3 weight at M = 32 on
// the 2-core dev VM, plus two weight-format copies. There the gradient is one GEMM, dy^T (K x M) times
// an explicit im2col of the input (M x C*T*R*S): ~10x faster, and the im2col is small exactly when M
// is. With long reductions (early layers) oneDNN is faster and the im2col would be large.
constexpr int64_t kGemmWgradMaxRows = 1024;
constexpr int64_t kGemmWgradMaxColsBytes = int64_t{64} << 20;

bool use_gemm_wgrad(const Tensor& gc, const Tensor& input, const Tensor& weight, int64_t groups) {
  if (!input.device().is_cpu() || groups != 1) return false;
  const int64_t rows = gc.numel() / gc.size(1);
  const int64_t cols = weight.numel() / weight.size(0);
  return rows <= kGemmWgradMaxRows && rows * cols * input.element_size() <= kGemmWgradMaxColsBytes;
}

Tensor gemm_wgrad(const Tensor& gc, const Tensor& input, const Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const int64_t N = input.size(0), C = input.size(1), K = weight.size(0);
  const int64_t T = weight.size(2), R = weight.size(3), S = weight.size(4);
  const int64_t Do = gc.size(2), Ho = gc.size(3), Wo = gc.size(4), M = N * Do * Ho * Wo;
  // NDHWC view of the input, with the zero padding materialised if there is any: every filter tap is
  // then a strided view of it (for a 1x1x1 conv of a channels_last input the im2col is the input).
  const Tensor x_ndhwc = input.permute({0, 2, 3, 4, 1});
  const bool padded = padding[0] || padding[1] || padding[2];
  const Tensor xp = padded ? at::constant_pad_nd(x_ndhwc, {0, 0, padding[2], padding[2], padding[1], padding[1],
                                                           padding[0], padding[0]}, 0)
                           : x_ndhwc;
  const auto s = xp.strides();  // N, D, H, W, C (as_strided below starts at xp's storage offset)
  // Columns ordered like the weight's memory (T,R,S,C for channels_last, C,T,R,S otherwise), so the
  // GEMM's result is the gradient in the weight's layout without a transposing copy.
  const bool weight_cl = activation_format(weight) == at::MemoryFormat::ChannelsLast3d;
  Tensor cols;
  if (weight_cl) {
    cols = xp.as_strided({N, Do, Ho, Wo, T, R, S, C}, {s[0], s[1] * stride[0], s[2] * stride[1], s[3] * stride[2],
                                                        s[1] * dilation[0], s[2] * dilation[1], s[3] * dilation[2], s[4]});
  } else {
    cols = xp.as_strided({N, Do, Ho, Wo, C, T, R, S}, {s[0], s[1] * stride[0], s[2] * stride[1], s[3] * stride[2], s[4],
                                                        s[1] * dilation[0], s[2] * dilation[1], s[3] * dilation[2]});
  }
  cols = cols.reshape({M, C * T * R * S});
  const Tensor dy = gc.permute({0, 2, 3, 4, 1}).reshape({M, K});
  const Tensor gw = at::mm(dy.t(), cols);  // (K, C*T*R*S)
  if (weight_cl) return gw.view({K, T, R, S, C}).permute({0, 4, 1, 2, 3});
  return gw.view({K, C, T, R, S});
}

// dgrad / wgrad of the convolution, in the layouts our ops promise.
std::tuple<Tensor, Tensor> conv_backward(const Tensor& gc, const Tensor& input, const Tensor& weight,
                                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                         int64_t groups, bool need_input, bool need_weight) {
  if (!need_input && !need_weight) return {Tensor(), Tensor()};
  const bool gemm_w = need_weight && use_gemm_wgrad(gc, input, weight, groups);
  Tensor gx, gw;
  if (need_input || (need_weight && !gemm_w)) {
    auto grads = at::convolution_backward(gc, input, weight, c10::nullopt, stride, padding, dilation, false,
                                          {0, 0, 0}, groups, {need_input, need_weight && !gemm_w, false});
    gx = std::get<0>(grads);
    gw = std::get<1>(grads);
  }
  if (gemm_w) gw = gemm_wgrad(gc, input, weight, stride, padding, dilation);
  if (need_input) gx = gx.contiguous(activation_format(input));
  if (need_weight) gw = gw.contiguous(activation_format(weight));
  return {gx, gw};
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// inference form
// ------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor> affine_act_forward(const Tensor& input, const Tensor& weight, const Tensor& scale,
                                              const Tensor& shift, const optional<Tensor>& residual,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, int64_t groups, bool relu,
                                              bool save_conv_out) {
  check_conv(input, weight, stride, padding, dilation, groups);
  const int64_t K = weight.size(0);
  check_vector(scale, input, K, "scale");
  check_vector(shift, input, K, "shift");
  const auto fmt = activation_format(input);
  Tensor c = conv(input, weight, stride, padding, dilation, groups);
  optional<Tensor> res;
  if (residual.has_value()) {
    check_activation_like(*residual, c, "residual");
    res = residual->contiguous(fmt);
  }
  const auto acc = opmath(input.scalar_type());
  Tensor out = save_conv_out ? new_output_like(c) : c;  // in place when nobody needs the conv output
  run_affine_act(c, scale.to(acc).contiguous(), shift.to(acc).contiguous(), res, relu, out);
  return {out, save_conv_out ? c : at::empty({0}, input.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> affine_act_backward(
    const Tensor& grad, const Tensor& out, const optional<Tensor>& conv_out, const Tensor& input,
    const Tensor& weight, const Tensor& scale, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, bool relu, at::IntArrayRef mask_ints) {
  check_conv(input, weight, stride, padding, dilation, groups);
  TORCH_CHECK(mask_ints.size() == 5, "video3d_fast: output_mask needs 5 entries");
  const bool need_x = mask_ints[0], need_w = mask_ints[1], need_scale = mask_ints[2], need_shift = mask_ints[3],
             need_res = mask_ints[4];
  check_activation_like(grad, out, "grad_output");
  const auto fmt = activation_format(input);
  const auto acc = opmath(input.scalar_type());
  Tensor g = grad.contiguous(fmt), o = out.contiguous(fmt);
  Tensor g_scale, g_shift, g_res, gx, gw;
  if (need_scale || need_shift) {
    Tensor c;
    if (need_scale) {
      TORCH_CHECK(conv_out.has_value() && conv_out->numel() == out.numel(),
                  "video3d_fast: grad of scale needs the saved conv output");
      c = conv_out->contiguous(fmt);
    }
    auto sums = run_grad_reduce(g, o, c, Tensor(), relu);
    if (need_shift) g_shift = std::get<0>(sums).to(scale.scalar_type());
    if (need_scale) g_scale = std::get<1>(sums).to(scale.scalar_type());
  }
  if (need_x || need_w || need_res) {
    Tensor gc = (need_x || need_w) ? new_output_like(g) : Tensor();
    g_res = need_res ? new_output_like(g) : Tensor();
    run_grad_apply(g, o, Tensor(), scale.to(acc).contiguous(), Tensor(), Tensor(), relu, gc, g_res);
    std::tie(gx, gw) = conv_backward(gc, input, weight, stride, padding, dilation, groups, need_x, need_w);
  }
  return {gx, gw, g_scale, g_shift, g_res};
}

// ------------------------------------------------------------------------------------------------
// training form
// ------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor, Tensor> batchnorm_act_forward(
    const Tensor& input, const Tensor& weight, const Tensor& gamma, const Tensor& beta,
    const optional<Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, double eps, bool relu) {
  check_conv(input, weight, stride, padding, dilation, groups);
  const int64_t K = weight.size(0);
  check_vector(gamma, input, K, "bn_weight");
  check_vector(beta, input, K, "bn_bias");
  const auto fmt = activation_format(input);
  Tensor c = conv(input, weight, stride, padding, dilation, groups);
  TORCH_CHECK(c.numel() / K > 1, "video3d_fast: expected more than 1 value per channel when training, got ",
              c.sizes());
  optional<Tensor> res;
  if (residual.has_value()) {
    check_activation_like(*residual, c, "residual");
    res = residual->contiguous(fmt);
  }
  const auto acc = opmath(input.scalar_type());
  auto stats = run_channel_stats(c);
  Tensor mean = std::get<0>(stats), var = std::get<1>(stats);
  Tensor a = gamma.to(acc) * at::rsqrt(var + eps);
  Tensor b = beta.to(acc) - mean * a;
  Tensor out = new_output_like(c);
  run_affine_act(c, a.contiguous(), b.contiguous(), res, relu, out);
  return {out, c, mean, var};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batchnorm_act_backward(
    const Tensor& grad, const Tensor& out, const Tensor& conv_out, const Tensor& mean, const Tensor& var,
    const Tensor& input, const Tensor& weight, const Tensor& gamma, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, bool relu, at::IntArrayRef mask_ints) {
  check_conv(input, weight, stride, padding, dilation, groups);
  TORCH_CHECK(mask_ints.size() == 5, "video3d_fast: output_mask needs 5 entries");
  const bool need_x = mask_ints[0], need_w = mask_ints[1], need_gamma = mask_ints[2], need_beta = mask_ints[3],
             need_res = mask_ints[4];
  check_activation_like(grad, out, "grad_output");
  check_activation_like(conv_out, out, "conv_out");
  const auto fmt = activation_format(input);
  const auto acc = opmath(input.scalar_type());
  Tensor g = grad.contiguous(fmt), o = out.contiguous(fmt), c = conv_out.contiguous(fmt);
  Tensor m = mean.to(acc).contiguous();
  Tensor invstd = at::rsqrt(var.to(acc) + eps);
  auto sums = run_grad_reduce(g, o, c, m, relu);
  Tensor sum_g = std::get<0>(sums), sum_gx = std::get<1>(sums) * invstd;
  Tensor g_gamma = need_gamma ? sum_gx.to(gamma.scalar_type()) : Tensor();
  Tensor g_beta = need_beta ? sum_g.to(gamma.scalar_type()) : Tensor();
  Tensor gx, gw, g_res;
  if (need_x || need_w || need_res) {
    const double count = double(c.numel() / c.size(1));
    Tensor k = gamma.to(acc) * invstd;
    Tensor alpha = -k * invstd * sum_gx / count;
    Tensor beta = -k * sum_g / count - m * alpha;
    Tensor gc = (need_x || need_w) ? new_output_like(g) : Tensor();
    g_res = need_res ? new_output_like(g) : Tensor();
    run_grad_apply(g, o, c, k.contiguous(), alpha.contiguous(), beta.contiguous(), relu, gc, g_res);
    std::tie(gx, gw) = conv_backward(gc, input, weight, stride, padding, dilation, groups, need_x, need_w);
  }
  return {gx, gw, g_gamma, g_beta, g_res};
}

ChannelLayout channel_layout(const Tensor& t) {
  TORCH_CHECK(t.dim() == 5, "video3d_fast: expected a 5-D activation, got ", t.dim(), "-D");
  const int64_t spatial = t.size(2) * t.size(3) * t.size(4);
  if (t.is_contiguous()) return {t.size(0), t.size(1), spatial};
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast3d),
              "video3d_fast: expected a dense NCDHW or NDHWC activation");
  return {t.size(0) * spatial, t.size(1), 1};
}

DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "video3d_fast: unsupported dtype ", t);
  }
}

TORCH_LIBRARY_IMPL(video3d_fast_kernels, CPU, m) {
  m.impl("affine_act_forward", &affine_act_forward);
  m.impl("affine_act_backward", &affine_act_backward);
  m.impl("batchnorm_act_forward", &batchnorm_act_forward);
  m.impl("batchnorm_act_backward", &batchnorm_act_backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(video3d_fast_kernels, CUDA, m) {
  m.impl("affine_act_forward", &affine_act_forward);
  m.impl("affine_act_backward", &affine_act_backward);
  m.impl("batchnorm_act_forward", &batchnorm_act_forward);
  m.impl("batchnorm_act_backward", &batchnorm_act_backward);
}
#endif

}  // namespace video3d_fast
