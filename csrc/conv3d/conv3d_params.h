// Problem size of one 3D convolution and the channel layout of an activation tensor, shared by the
// C++ host code and the CUDA kernels. Free of torch headers so that .cu files compile in seconds.
// Mirrors video3d_fast/ops/params.py (Conv3dParams).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define V3D_HOST_DEVICE __host__ __device__
#else
#define V3D_HOST_DEVICE
#endif

namespace video3d_fast {

struct Conv3dParams {
  int64_t batch, in_channels, out_channels, groups;
  int64_t in_size[3];   // D, H, W
  int64_t kernel[3];    // T, R, S
  int64_t stride[3], padding[3], dilation[3];

  V3D_HOST_DEVICE int64_t out_dim(int i) const {
    return (in_size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) / stride[i] + 1;
  }
  // GEMM view of the forward conv: M = N*Do*Ho*Wo, K_gemm = (C/groups)*T*R*S.
  V3D_HOST_DEVICE int64_t gemm_m() const { return batch * out_dim(0) * out_dim(1) * out_dim(2); }
  V3D_HOST_DEVICE int64_t gemm_k() const { return (in_channels / groups) * kernel[0] * kernel[1] * kernel[2]; }
};

// An activation viewed as a dense [outer][channels][inner] array: NCDHW is [N][C][D*H*W] and NDHWC
// (channels_last_3d) is [N*D*H*W][C][1]. Every epilogue kernel works on this view, so both layouts
// share one code path per kernel.
struct ChannelLayout {
  int64_t outer, channels, inner;
  V3D_HOST_DEVICE int64_t numel() const { return outer * channels * inner; }
  V3D_HOST_DEVICE int64_t per_channel() const { return outer * inner; }
};

// Scalar types the kernels are instantiated for (host code maps at::ScalarType onto these).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace video3d_fast
