// CPU epilogue kernels of the fused ops: vectorised with ATen's Vectorized<> (AVX2/AVX-512 as the
// build machine allows, see video3d_fast/_extension.py:cpu_flags) and parallel with at::parallel_for
// (torch's OpenMP pool).
//
// Every kernel walks the [outer][C][inner] view of its activations (conv3d_params.h: ChannelLayout):
// * inner == 1 (NDHWC): a row is the C channels of one voxel; vectors run along channels and the
//   per-channel vectors (scale, shift, ...) are loaded as vectors too;
// * inner > 1 (NCDHW): a plane is one channel's D*H*W voxels; vectors run along the plane and the
//   per-channel values are broadcast scalars.
// Arithmetic is in opmath (float, double for double data); reductions add per-thread float partials
// into double so that sums over millions of voxels keep ~1e-7 relative accuracy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "epilogue.h"

namespace video3d_fast {
namespace cpu {
namespace {

using at::vec::Vectorized;

// Elementwise passes split into tasks of at least this many elements: below it, waking the thread
// pool costs more than the pass itself (a 100K-element epilogue takes ~20 us on one core).
constexpr int64_t kGrainElements = 65536;

template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Load/store kStep elements of T as a vector of opmath_t<T>.
template <typename T>
struct VecIO {
  using Acc = opmath_t<T>;
  using V = Vectorized<Acc>;
  static constexpr int64_t kStep = V::size();
  static V load(const T* p) {
    if constexpr (std::is_same_v<T, Acc>) {
      return V::loadu(p);
    } else {
      V out;
      at::vec::load_to_float(p, out);
      return out;
    }
  }
  static void store(T* p, const V& v) {
    if constexpr (std::is_same_v<T, Acc>) {
      v.store(p);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, kStep);
    }
  }
};

template <typename V>
inline V relu_v(const V& x) {
  return at::vec::maximum(x, V(0));  // propagates NaN like torch.relu
}
template <typename A>
inline A relu_s(A x) {
  return std::isnan(x) ? x : (x > A(0) ? x : A(0));
}
template <typename V>
inline V mask_v(const V& g, const V& out) {
  return V::blendv(V(0), g, out > V(0));
}
template <typename A>
inline A mask_s(A g, A out) {
  return out > A(0) ? g : A(0);
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// ------------------------------------------------------------------------------------------------
// out = act(c * a + b (+ res))
// ------------------------------------------------------------------------------------------------
template <typename T>
void affine_act_kernel(const T* c, const opmath_t<T>* a, const opmath_t<T>* b, const T* res, bool relu,
                       T* out, ChannelLayout L) {
  using IO = VecIO<T>;
  using Acc = typename IO::Acc;
  using V = typename IO::V;
  constexpr int64_t kStep = IO::kStep;
  if (L.inner == 1) {
    const int64_t C = L.channels;
    at::parallel_for(0, L.outer, std::max<int64_t>(1, kGrainElements / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * C;
        int64_t j = 0;
        for (; j + kStep <= C; j += kStep) {
          V z = IO::load(c + base + j) * V::loadu(a + j) + V::loadu(b + j);
          if (res) z = z + IO::load(res + base + j);
          if (relu) z = relu_v(z);
          IO::store(out + base + j, z);
        }
        for (; j < C; ++j) {
          Acc z = Acc(c[base + j]) * a[j] + b[j];
          if (res) z += Acc(res[base + j]);
          out[base + j] = T(relu ? relu_s(z) : z);
        }
      }
    });
  } else {
    const int64_t S = L.inner, C = L.channels;
    at::parallel_for(0, L.outer * C, std::max<int64_t>(1, kGrainElements / S), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t ch = p % C, base = p * S;
        const V av(a[ch]), bv(b[ch]);
        int64_t i = 0;
        for (; i + kStep <= S; i += kStep) {
          V z = IO::load(c + base + i) * av + bv;
          if (res) z = z + IO::load(res + base + i);
          if (relu) z = relu_v(z);
          IO::store(out + base + i, z);
        }
        for (; i < S; ++i) {
          Acc z = Acc(c[base + i]) * a[ch] + b[ch];
          if (res) z += Acc(res[base + i]);
          out[base + i] = T(relu ? relu_s(z) : z);
        }
      }
    });
  }
}

// ------------------------------------------------------------------------------------------------
// Per-channel reductions of up to two quantities. `elem_v(offset, ch_vec_or_scalar...)`: the functor
// returns the pair of per-element terms. The driver owns the traversal and the double combine.
// ------------------------------------------------------------------------------------------------
template <typename T, int R, typename VecFn, typename ScalarFn>
void channel_reduce(ChannelLayout L, VecFn vec_fn, ScalarFn scalar_fn, double* out /* [R][C] */) {
  using IO = VecIO<T>;
  using Acc = typename IO::Acc;
  using V = typename IO::V;
  constexpr int64_t kStep = IO::kStep;
  const int64_t C = L.channels;
  for (int64_t k = 0; k < R * C; ++k) out[k] = 0.0;
  if (L.inner == 1) {
    // Rows of C channels: per-thread float partials along channels, flushed to double every block.
    const int nthreads = at::get_num_threads();
    std::vector<double> partial(static_cast<size_t>(nthreads) * R * C, 0.0);
    constexpr int64_t kFlushRows = 64;
    at::parallel_for(0, L.outer, std::max<int64_t>(kFlushRows, 32768 / C), [&](int64_t r0, int64_t r1) {
      double* mine = partial.data() + static_cast<size_t>(at::get_thread_num()) * R * C;
      std::vector<Acc> acc(static_cast<size_t>(R) * C);
      for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
        std::fill(acc.begin(), acc.end(), Acc(0));
        const int64_t re = std::min(r1, rb + kFlushRows);
        for (int64_t r = rb; r < re; ++r) {
          const int64_t base = r * C;
          int64_t j = 0;
          for (; j + kStep <= C; j += kStep) {
            V t0, t1;
            vec_fn(base + j, j, t0, t1);
            (V::loadu(acc.data() + j) + t0).store(acc.data() + j);
            if (R > 1) (V::loadu(acc.data() + C + j) + t1).store(acc.data() + C + j);
          }
          for (; j < C; ++j) {
            Acc t0, t1;
            scalar_fn(base + j, j, t0, t1);
            acc[j] += t0;
            if (R > 1) acc[C + j] += t1;
          }
        }
        for (int64_t k = 0; k < R * C; ++k) mine[k] += double(acc[k]);
      }
    });
    for (int t = 0; t < nthreads; ++t)
      for (int64_t k = 0; k < R * C; ++k) out[k] += partial[static_cast<size_t>(t) * R * C + k];
  } else {
    // Planes: one channel per task, vectors along the plane, one double add per plane.
    const int64_t S = L.inner;
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        double s0 = 0.0, s1 = 0.0;
        for (int64_t o = 0; o < L.outer; ++o) {
          const int64_t base = (o * C + ch) * S;
          V v0(0), v1(0);
          int64_t i = 0;
          for (; i + kStep <= S; i += kStep) {
            V t0, t1;
            vec_fn(base + i, -ch - 1, t0, t1);  // negative index: per-channel value is a scalar
            v0 = v0 + t0;
            if (R > 1) v1 = v1 + t1;
          }
          Acc a0 = at::vec::vec_reduce_all<Acc>([](V& x, V& y) { return x + y; }, v0);
          Acc a1 = R > 1 ? at::vec::vec_reduce_all<Acc>([](V& x, V& y) { return x + y; }, v1) : Acc(0);
          for (; i < S; ++i) {
            Acc t0, t1;
            scalar_fn(base + i, ch, t0, t1);
            a0 += t0;
            if (R > 1) a1 += t1;
          }
          s0 += double(a0);
          s1 += double(a1);
        }
        out[ch] = s0;
        if (R > 1) out[C + ch] = s1;
      }
    });
  }
}

// Per-channel value at `j` (vector slot, j >= 0) or broadcast for channel -j-1 (j < 0).
template <typename V, typename A>
inline V chan_vec(const A* v, int64_t j) {
  return j >= 0 ? V::loadu(v + j) : V(v[-j - 1]);
}

template <typename T>
void channel_stats_kernel(const T* c, ChannelLayout L, opmath_t<T>* mean, opmath_t<T>* var) {
  using IO = VecIO<T>;
  using Acc = typename IO::Acc;
  using V = typename IO::V;
  const int64_t C = L.channels;
  const double count = double(L.per_channel());
  std::vector<double> sums(C);
  channel_reduce<T, 1>(
      L, [&](int64_t off, int64_t, V& t0, V&) { t0 = IO::load(c + off); },
      [&](int64_t off, int64_t, Acc& t0, Acc&) { t0 = Acc(c[off]); }, sums.data());
  for (int64_t ch = 0; ch < C; ++ch) mean[ch] = Acc(sums[ch] / count);
  channel_reduce<T, 1>(
      L,
      [&](int64_t off, int64_t j, V& t0, V&) {
        V d = IO::load(c + off) - chan_vec<V>(mean, j);
        t0 = d * d;
      },
      [&](int64_t off, int64_t ch, Acc& t0, Acc&) {
        Acc d = Acc(c[off]) - mean[ch];
        t0 = d * d;
      },
      sums.data());
  for (int64_t ch = 0; ch < C; ++ch) var[ch] = Acc(sums[ch] / count);
}

template <typename T>
void grad_reduce_kernel(const T* g, const T* out, const T* c, const opmath_t<T>* center, bool relu,
                        ChannelLayout L, opmath_t<T>* sum_gz, opmath_t<T>* sum_gzc) {
  using IO = VecIO<T>;
  using Acc = typename IO::Acc;
  using V = typename IO::V;
  const int64_t C = L.channels;
  auto gz_v = [&](int64_t off) {
    V gv = IO::load(g + off);
    return relu ? mask_v(gv, IO::load(out + off)) : gv;
  };
  auto gz_s = [&](int64_t off) {
    Acc gv = Acc(g[off]);
    return relu ? mask_s(gv, Acc(out[off])) : gv;
  };
  std::vector<double> sums(2 * C);
  if (c == nullptr) {
    channel_reduce<T, 1>(
        L, [&](int64_t off, int64_t, V& t0, V&) { t0 = gz_v(off); },
        [&](int64_t off, int64_t, Acc& t0, Acc&) { t0 = gz_s(off); }, sums.data());
  } else {
    channel_reduce<T, 2>(
        L,
        [&](int64_t off, int64_t j, V& t0, V& t1) {
          t0 = gz_v(off);
          V x = IO::load(c + off);
          if (center) x = x - chan_vec<V>(center, j);
          t1 = t0 * x;
        },
        [&](int64_t off, int64_t ch, Acc& t0, Acc& t1) {
          t0 = gz_s(off);
          Acc x = Acc(c[off]);
          if (center) x -= center[ch];
          t1 = t0 * x;
        },
        sums.data());
  }
  for (int64_t ch = 0; ch < C; ++ch) sum_gz[ch] = Acc(sums[ch]);
  if (c != nullptr)
    for (int64_t ch = 0; ch < C; ++ch) sum_gzc[ch] = Acc(sums[C + ch]);
}

// gc = gz * k + c * alpha + beta ; gres = gz
template <typename T>
void grad_apply_kernel(const T* g, const T* out, const T* c, const opmath_t<T>* k, const opmath_t<T>* alpha,
                       const opmath_t<T>* beta, bool relu, T* gc, T* gres, ChannelLayout L) {
  using IO = VecIO<T>;
  using Acc = typename IO::Acc;
  using V = typename IO::V;
  constexpr int64_t kStep = IO::kStep;
  const int64_t C = L.channels;
  // One segment = a row (NDHWC, j runs over channels) or a plane (NCDHW, fixed channel).
  auto segment = [&](int64_t base, int64_t len, int64_t fixed_ch) {
    int64_t i = 0;
    for (; i + kStep <= len; i += kStep) {
      const int64_t off = base + i;
      const int64_t jv = fixed_ch >= 0 ? -fixed_ch - 1 : i;
      V gz = IO::load(g + off);
      if (relu) gz = mask_v(gz, IO::load(out + off));
      if (gres) IO::store(gres + off, gz);
      if (gc) {
        V r = gz * chan_vec<V>(k, jv);
        if (c) r = r + IO::load(c + off) * chan_vec<V>(alpha, jv);
        if (beta) r = r + chan_vec<V>(beta, jv);
        IO::store(gc + off, r);
      }
    }
    for (; i < len; ++i) {
      const int64_t off = base + i;
      const int64_t ch = fixed_ch >= 0 ? fixed_ch : i;
      Acc gz = Acc(g[off]);
      if (relu) gz = mask_s(gz, Acc(out[off]));
      if (gres) gres[off] = T(gz);
      if (gc) {
        Acc r = gz * k[ch];
        if (c) r += Acc(c[off]) * alpha[ch];
        if (beta) r += beta[ch];
        gc[off] = T(r);
      }
    }
  };
  if (L.inner == 1) {
    at::parallel_for(0, L.outer, std::max<int64_t>(1, kGrainElements / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) segment(r * C, C, -1);
    });
  } else {
    const int64_t S = L.inner;
    at::parallel_for(0, L.outer * C, std::max<int64_t>(1, kGrainElements / S), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) segment(p * S, S, p % C);
    });
  }
}

template <typename T>
const opmath_t<T>* vec_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<opmath_t<T>>() : nullptr;
}

#define V3D_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

}  // namespace

void affine_act(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
                const c10::optional<at::Tensor>& res, bool relu, at::Tensor& out) {
  const ChannelLayout L = channel_layout(c);
  V3D_DISPATCH_FLOATING(c.scalar_type(), "affine_act_cpu", [&] {
    affine_act_kernel<scalar_t>(c.const_data_ptr<scalar_t>(), vec_ptr<scalar_t>(a), vec_ptr<scalar_t>(b),
                                res.has_value() ? res->const_data_ptr<scalar_t>() : nullptr, relu,
                                out.mutable_data_ptr<scalar_t>(), L);
  });
}

std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& c) {
  const ChannelLayout L = channel_layout(c);
  const auto acc = c.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({L.channels}, c.options().dtype(acc));
  at::Tensor var = at::empty({L.channels}, c.options().dtype(acc));
  V3D_DISPATCH_FLOATING(c.scalar_type(), "channel_stats_cpu", [&] {
    channel_stats_kernel<scalar_t>(c.const_data_ptr<scalar_t>(), L, mean.mutable_data_ptr<opmath_t<scalar_t>>(),
                                   var.mutable_data_ptr<opmath_t<scalar_t>>());
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> grad_reduce(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c,
                                               const at::Tensor& center, bool relu) {
  const ChannelLayout L = channel_layout(grad);
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sum_gz = at::empty({L.channels}, grad.options().dtype(acc));
  at::Tensor sum_gzc = c.defined() ? at::empty({L.channels}, grad.options().dtype(acc)) : at::Tensor();
  V3D_DISPATCH_FLOATING(grad.scalar_type(), "grad_reduce_cpu", [&] {
    grad_reduce_kernel<scalar_t>(grad.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                 ptr_or_null<scalar_t>(c), vec_ptr<scalar_t>(center), relu, L,
                                 sum_gz.mutable_data_ptr<opmath_t<scalar_t>>(),
                                 c.defined() ? sum_gzc.mutable_data_ptr<opmath_t<scalar_t>>() : nullptr);
  });
  return {sum_gz, sum_gzc};
}

void grad_apply(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& c, const at::Tensor& k,
                const at::Tensor& alpha, const at::Tensor& beta, bool relu, at::Tensor& gc, at::Tensor& gres) {
  const ChannelLayout L = channel_layout(grad);
  V3D_DISPATCH_FLOATING(grad.scalar_type(), "grad_apply_cpu", [&] {
    grad_apply_kernel<scalar_t>(
        grad.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(c),
        vec_ptr<scalar_t>(k), vec_ptr<scalar_t>(alpha), vec_ptr<scalar_t>(beta), relu,
        gc.defined() ? gc.mutable_data_ptr<scalar_t>() : nullptr,
        gres.defined() ? gres.mutable_data_ptr<scalar_t>() : nullptr, L);
  });
}

}  // namespace cpu
}  // namespace video3d_fast
