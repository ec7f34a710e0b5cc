// CUDA epilogue kernels of the fused conv + BatchNorm + residual + ReLU ops (no torch headers: see
// epilogue_kernels.h). Activations are the [outer][C][inner] view of ChannelLayout: NDHWC has inner == 1
// (channels fastest), NCDHW has outer == N and inner == D*H*W.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "epilogue_kernels.h"

namespace video3d_fast {
namespace cuda_kernels {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load_acc(const T* p, int64_t i) {
  return static_cast<typename Acc<T>::type>(p[i]);
}
template <> __device__ __forceinline__ float load_acc<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float load_acc<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <typename T, typename A> __device__ __forceinline__ void store_acc(T* p, int64_t i, A v) { p[i] = static_cast<T>(v); }
template <> __device__ __forceinline__ void store_acc<__half, float>(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <> __device__ __forceinline__ void store_acc<__nv_bfloat16, float>(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename A> __device__ __forceinline__ A relu_f(A x) { return x > A(0) ? x : (x != x ? x : A(0)); }

constexpr int kThreads = 256;

int64_t elementwise_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 8); }

// VEC consecutive elements moved as one 16-byte access (or VEC = 1 where alignment/shape forbid).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};
template <typename T> constexpr int vec_width() { return 16 / sizeof(T); }

// Elementwise kernels: each thread takes VEC consecutive elements at a time. The host guarantees that
// those share one channel (NCDHW: inner % VEC == 0) or are VEC consecutive channels (NDHWC: C % VEC
// == 0), so the channel index is computed once per pack, in 32-bit arithmetic when the tensor allows.
template <typename T, int VEC, typename IndexT>
__global__ void affine_act_kernel(const T* c, const typename Acc<T>::type* __restrict__ a,
                                  const typename Acc<T>::type* __restrict__ b, const T* __restrict__ res, bool relu,
                                  T* out, ChannelLayout L) {  // out may alias c: no __restrict__ on either
  using A = typename Acc<T>::type;
  using P = Pack<T, VEC>;
  const IndexT n_packs = IndexT(L.numel() / VEC), C = IndexT(L.channels), inner = IndexT(L.inner);
  for (IndexT v = IndexT(blockIdx.x) * blockDim.x + threadIdx.x; v < n_packs; v += IndexT(gridDim.x) * blockDim.x) {
    const IndexT base = v * VEC;
    const IndexT ch0 = (base / inner) % C;
    const P pc = reinterpret_cast<const P*>(c)[v];
    P pr;
    if (res) pr = reinterpret_cast<const P*>(res)[v];
    P po;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const IndexT ch = inner == 1 ? ch0 + j : ch0;
      A z = load_acc(pc.v, j) * a[ch] + b[ch];
      if (res) z += load_acc(pr.v, j);
      store_acc(po.v, j, relu ? relu_f(z) : z);
    }
    reinterpret_cast<P*>(out)[v] = po;
  }
}

template <typename T, int VEC, typename IndexT>
__global__ void grad_apply_kernel(const T* __restrict__ g, const T* __restrict__ out, const T* __restrict__ x,
                                  const typename Acc<T>::type* __restrict__ k,
                                  const typename Acc<T>::type* __restrict__ alpha,
                                  const typename Acc<T>::type* __restrict__ beta, bool relu, T* __restrict__ gc,
                                  T* __restrict__ gres, ChannelLayout L) {
  using A = typename Acc<T>::type;
  using P = Pack<T, VEC>;
  const IndexT n_packs = IndexT(L.numel() / VEC), C = IndexT(L.channels), inner = IndexT(L.inner);
  for (IndexT v = IndexT(blockIdx.x) * blockDim.x + threadIdx.x; v < n_packs; v += IndexT(gridDim.x) * blockDim.x) {
    const IndexT base = v * VEC;
    const IndexT ch0 = (base / inner) % C;
    const P pg = reinterpret_cast<const P*>(g)[v];
    P po, px, pgc, pres;
    if (relu) po = reinterpret_cast<const P*>(out)[v];
    if (x) px = reinterpret_cast<const P*>(x)[v];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A gz = load_acc(pg.v, j);
      if (relu && !(load_acc(po.v, j) > A(0))) gz = A(0);
      if (gres) store_acc(pres.v, j, gz);
      if (gc) {
        const IndexT ch = inner == 1 ? ch0 + j : ch0;
        A r = gz * k[ch];
        if (x) r += load_acc(px.v, j) * alpha[ch];
        if (beta) r += beta[ch];
        store_acc(pgc.v, j, r);
      }
    }
    if (gres) reinterpret_cast<P*>(gres)[v] = pres;
    if (gc) reinterpret_cast<P*>(gc)[v] = pgc;
  }
}

// Widest pack every pointer and the layout allow (see the kernels' comment), else 1.
template <typename T>
int pick_vec(const ChannelLayout& L, std::initializer_list<const void*> ptrs) {
  constexpr int V = vec_width<T>();
  const bool shape_ok = L.inner == 1 ? L.channels % V == 0 : L.inner % V == 0;
  if (!shape_ok) return 1;
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return V;
}

template <typename T, int VEC, typename IndexT>
void launch_affine_act(const void* c, const void* a, const void* b, const void* res, bool relu, void* out,
                       const ChannelLayout& L, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  affine_act_kernel<T, VEC, IndexT><<<unsigned(elementwise_blocks(L.numel() / VEC)), kThreads, 0, stream>>>(
      static_cast<const T*>(c), static_cast<const A*>(a), static_cast<const A*>(b), static_cast<const T*>(res), relu,
      static_cast<T*>(out), L);
}

template <typename T, int VEC, typename IndexT>
void launch_grad_apply(const void* grad, const void* out, const void* x, const void* k, const void* alpha,
                       const void* beta, bool relu, void* gc, void* gres, const ChannelLayout& L, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  grad_apply_kernel<T, VEC, IndexT><<<unsigned(elementwise_blocks(L.numel() / VEC)), kThreads, 0, stream>>>(
      static_cast<const T*>(grad), static_cast<const T*>(out), static_cast<const T*>(x), static_cast<const A*>(k),
      static_cast<const A*>(alpha), static_cast<const A*>(beta), relu, static_cast<T*>(gc), static_cast<T*>(gres), L);
}

// FN<T, VEC, IndexT>(args...) with VEC = the pack width `vec` chosen by pick_vec (or 1) and 32-bit
// indices when the tensor has fewer than 2^31 elements.
#define V3D_VEC_INDEX_DISPATCH(T, L, vec, FN, ...)                                   \
  do {                                                                               \
    constexpr int V_ = vec_width<T>();                                               \
    const bool small_ = (L).numel() < (int64_t(1) << 31);                            \
    if ((vec) == V_) {                                                               \
      if (small_) FN<T, V_, uint32_t>(__VA_ARGS__); else FN<T, V_, int64_t>(__VA_ARGS__); \
    } else {                                                                         \
      if (small_) FN<T, 1, uint32_t>(__VA_ARGS__); else FN<T, 1, int64_t>(__VA_ARGS__); \
    }                                                                                \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Reductions. The per-element terms of each Reduction kind:
template <typename T>
struct Terms {
  using A = typename Acc<T>::type;
  Reduction what;
  const T* x;
  const T* grad;
  const T* out;
  const A* center;
  bool relu;
  __device__ __forceinline__ void operator()(int64_t i, int64_t ch, double& t0, double& t1) const {
    if (what == Reduction::kSum) {
      t0 += double(load_acc(x, i));
    } else if (what == Reduction::kCentredSq) {
      const A d = load_acc(x, i) - center[ch];
      t0 += double(d * d);
    } else {
      A gz = load_acc(grad, i);
      if (relu && !(load_acc(out, i) > A(0))) gz = A(0);
      t0 += double(gz);
      if (x) {
        A v = load_acc(x, i);
        if (center) v -= center[ch];
        t1 += double(gz * v);
      }
    }
  }
};

constexpr int kClChannels = 32, kClRows = 8;  // channels-last block: 32 channels x 8 rows

// NDHWC: block (32 channels, 8 row lanes), grid (channel tiles, partials). Coalesced along channels.
template <typename T>
__global__ void reduce_cl_kernel(Terms<T> terms, ChannelLayout L, int64_t rows_per_partial, double* ws) {
  __shared__ double s0[kClRows][kClChannels], s1[kClRows][kClChannels];
  const int64_t ch = int64_t(blockIdx.x) * kClChannels + threadIdx.x;
  const int64_t r_begin = int64_t(blockIdx.y) * rows_per_partial;
  const int64_t r_end = imin(L.outer, r_begin + rows_per_partial);
  double t0 = 0.0, t1 = 0.0;
  if (ch < L.channels)
    for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kClRows) terms(r * L.channels + ch, ch, t0, t1);
  s0[threadIdx.y][threadIdx.x] = t0;
  s1[threadIdx.y][threadIdx.x] = t1;
  __syncthreads();
  if (threadIdx.y == 0 && ch < L.channels) {
    for (int y = 1; y < kClRows; ++y) {
      t0 += s0[y][threadIdx.x];
      t1 += s1[y][threadIdx.x];
    }
    ws[(int64_t(blockIdx.y) * 2 + 0) * L.channels + ch] = t0;
    ws[(int64_t(blockIdx.y) * 2 + 1) * L.channels + ch] = t1;
  }
}

// NCDHW: block of 256 threads per (channel, partial); threads run along the channel's planes.
template <typename T>
__global__ void reduce_nc_kernel(Terms<T> terms, ChannelLayout L, int64_t elems_per_partial, double* ws) {
  __shared__ double s0[kThreads], s1[kThreads];
  const int64_t ch = blockIdx.x;
  const int64_t m_begin = int64_t(blockIdx.y) * elems_per_partial;
  const int64_t m_end = imin(L.per_channel(), m_begin + elems_per_partial);
  double t0 = 0.0, t1 = 0.0;
  for (int64_t m = m_begin + threadIdx.x; m < m_end; m += kThreads) {
    const int64_t o = m / L.inner, i = m - o * L.inner;
    terms((o * L.channels + ch) * L.inner + i, ch, t0, t1);
  }
  s0[threadIdx.x] = t0;
  s1[threadIdx.x] = t1;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s0[threadIdx.x] += s0[threadIdx.x + stride];
      s1[threadIdx.x] += s1[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    ws[(int64_t(blockIdx.y) * 2 + 0) * L.channels + ch] = s0[0];
    ws[(int64_t(blockIdx.y) * 2 + 1) * L.channels + ch] = s1[0];
  }
}

template <typename A>
__global__ void reduce_finalize_kernel(const double* ws, int64_t partials, int64_t C, double scale, A* r0, A* r1) {
  const int64_t ch = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (ch >= C) return;
  double t0 = 0.0, t1 = 0.0;
  for (int64_t p = 0; p < partials; ++p) {
    t0 += ws[(p * 2 + 0) * C + ch];
    t1 += ws[(p * 2 + 1) * C + ch];
  }
  r0[ch] = A(t0 * scale);
  if (r1) r1[ch] = A(t1 * scale);
}

// Partition of the per-channel range into partial blocks (same formula in reduce_partials/launch).
struct Split {
  int64_t partials, per_partial;
};
Split split_for(const ChannelLayout& L) {
  if (L.inner == 1) {
    const int64_t tiles = (L.channels + kClChannels - 1) / kClChannels;
    const int64_t want = std::max<int64_t>(1, std::min<int64_t>((L.outer + 255) / 256, 2048 / tiles));
    const int64_t per = (L.outer + want - 1) / want;
    return {(L.outer + per - 1) / per, per};
  }
  const int64_t M = L.per_channel();
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>((M + 4095) / 4096, 2048 / std::max<int64_t>(1, L.channels)));
  const int64_t per = (M + want - 1) / want;
  return {(M + per - 1) / per, per};
}

template <typename T>
cudaError_t reduce_typed(Reduction what, const void* x, const void* grad, const void* out, const void* center,
                         bool relu, ChannelLayout L, double* ws, void* r0, void* r1, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  Terms<T> terms{what, static_cast<const T*>(x), static_cast<const T*>(grad), static_cast<const T*>(out),
                 static_cast<const A*>(center), relu};
  const Split s = split_for(L);
  if (L.inner == 1) {
    dim3 grid(unsigned((L.channels + kClChannels - 1) / kClChannels), unsigned(s.partials));
    reduce_cl_kernel<T><<<grid, dim3(kClChannels, kClRows), 0, stream>>>(terms, L, s.per_partial, ws);
  } else {
    dim3 grid(unsigned(L.channels), unsigned(s.partials));
    reduce_nc_kernel<T><<<grid, kThreads, 0, stream>>>(terms, L, s.per_partial, ws);
  }
  const double scale = what == Reduction::kGrad ? 1.0 : 1.0 / double(L.per_channel());  // stats are means
  reduce_finalize_kernel<A><<<unsigned((L.channels + 255) / 256), 256, 0, stream>>>(
      ws, s.partials, L.channels, scale, static_cast<A*>(r0), static_cast<A*>(r1));
  return cudaGetLastError();
}

}  // namespace

#define V3D_CUDA_DISPATCH(DT, ...)                        \
  switch (DT) {                                           \
    case DType::kFloat32: { using T = float; __VA_ARGS__ } \
    case DType::kFloat64: { using T = double; __VA_ARGS__ } \
    case DType::kFloat16: { using T = __half; __VA_ARGS__ } \
    case DType::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__ } \
  }                                                       \
  return cudaErrorInvalidValue;

cudaError_t affine_act(DType dt, const void* c, const void* a, const void* b, const void* res, bool relu, void* out,
                       ChannelLayout L, cudaStream_t stream) {
  if (L.numel() == 0) return cudaSuccess;
  V3D_CUDA_DISPATCH(dt, {
    const int vec = pick_vec<T>(L, {c, res, out});
    V3D_VEC_INDEX_DISPATCH(T, L, vec, launch_affine_act, c, a, b, res, relu, out, L, stream);
    return cudaGetLastError();
  })
}

int64_t reduce_partials(ChannelLayout L) { return split_for(L).partials; }

cudaError_t channel_reduce(DType dt, Reduction what, const void* x, const void* grad, const void* out,
                           const void* center, bool relu, ChannelLayout L, double* workspace, void* result0,
                           void* result1, cudaStream_t stream) {
  V3D_CUDA_DISPATCH(dt, { return reduce_typed<T>(what, x, grad, out, center, relu, L, workspace, result0, result1, stream); })
}

cudaError_t grad_apply(DType dt, const void* grad, const void* out, const void* x, const void* k, const void* alpha,
                       const void* beta, bool relu, void* gc, void* gres, ChannelLayout L, cudaStream_t stream) {
  if (L.numel() == 0) return cudaSuccess;
  V3D_CUDA_DISPATCH(dt, {
    const int vec = pick_vec<T>(L, {grad, out, x, gc, gres});
    V3D_VEC_INDEX_DISPATCH(T, L, vec, launch_grad_apply, grad, out, x, k, alpha, beta, relu, gc, gres, L, stream);
    return cudaGetLastError();
  })
}

}  // namespace cuda_kernels
}  // namespace video3d_fast
