// CUDA sum/max/min over the middle axis of a contiguous (O, R, I) tensor. Rows (I == 1) take one
// block per row (split into chunks when there are few rows) with 16-byte loads; columns take one
// thread per (o, i). Split work writes f32/f64 partials that a second launch combines.
#include <cfloat>
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "ops/elementwise_kernels.h"
#include "ops/reduce_kernels.h"

namespace df::cudak {
namespace {

template <class Acc, ReduceKind K>
struct Combine {
  static __device__ __forceinline__ Acc init() {
    return K == ReduceKind::Max ? Acc(-INFINITY) : K == ReduceKind::Min ? Acc(INFINITY) : Acc(0);
  }
  static __device__ __forceinline__ Acc op(Acc a, Acc b) {
    if constexpr (K == ReduceKind::Max) return (b > a || b != b) ? b : (a);  // NaN wins, like the CPU loop
    else if constexpr (K == ReduceKind::Min) return (b < a || b != b) ? b : (a);
    else return a + b;
  }
};

template <class Acc, ReduceKind K>
__device__ Acc block_reduce(Acc v, Acc* smem) {
  using Cb = Combine<Acc, K>;
  for (int o = 16; o > 0; o >>= 1) v = Cb::op(v, __shfl_xor_sync(0xffffffffu, v, o));
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nw ? smem[lane] : Cb::init();
    for (int o = 16; o > 0; o >>= 1) v = Cb::op(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

// Block (o, s) reduces x[o, s*chunk : (s+1)*chunk) to out[o] (S == 1) or out[o*S + s].
template <class Tin, class Tout, class Acc, ReduceKind K>
__global__ void reduce_rows_kernel(const Tin* __restrict__ x, Tout* __restrict__ out, int64_t R, int64_t chunk) {
  using Cb = Combine<Acc, K>;
  using V = Vec16<Tin>;
  __shared__ Acc smem[32];
  int64_t o = blockIdx.x, s = blockIdx.y, S = gridDim.y;
  int64_t r0 = s * chunk, r1 = min(R, r0 + chunk);
  const Tin* p = x + o * R + r0;
  int64_t len = r1 > r0 ? r1 - r0 : 0;
  int64_t head = int64_t((16 - (reinterpret_cast<uintptr_t>(p) & 15)) & 15) / int64_t(sizeof(Tin));
  if (head > len) head = len;
  Acc acc = Cb::init();
  for (int64_t i = threadIdx.x; i < head; i += blockDim.x) acc = Cb::op(acc, load_as<Acc>(p[i]));
  const V* pv = reinterpret_cast<const V*>(p + head);
  int64_t nv = (len - head) / V::N;
  constexpr int U = 4;
  for (int64_t base = threadIdx.x; base < nv; base += int64_t(blockDim.x) * U) {
    V a[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (base + u * int64_t(blockDim.x) < nv) a[u] = pv[base + u * int64_t(blockDim.x)];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (base + u * int64_t(blockDim.x) < nv) {
#pragma unroll
        for (int j = 0; j < V::N; ++j) acc = Cb::op(acc, load_as<Acc>(a[u].v[j]));
      }
  }
  for (int64_t i = head + nv * V::N + threadIdx.x; i < len; i += blockDim.x) acc = Cb::op(acc, load_as<Acc>(p[i]));
  acc = block_reduce<Acc, K>(acc, smem);
  if (threadIdx.x == 0) out[S == 1 ? o : o * S + s] = store_as<Tout, Acc>(acc);
}

// Thread (o*I + i, s) reduces x[o, s*chunk : (s+1)*chunk, i] to out[o*I+i] or out[s*O*I + o*I+i].
template <class Tin, class Tout, class Acc, ReduceKind K>
__global__ void reduce_cols_kernel(const Tin* __restrict__ x, Tout* __restrict__ out, int64_t O, int64_t R,
                                   int64_t I, int64_t chunk) {
  using Cb = Combine<Acc, K>;
  int64_t OI = O * I, S = gridDim.y, s = blockIdx.y;
  int64_t r0 = s * chunk, r1 = min(R, r0 + chunk);
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < OI; t += int64_t(gridDim.x) * blockDim.x) {
    int64_t o = t / I, i = t - o * I;
    const Tin* p = x + o * R * I + i;
    Acc a0 = Cb::init(), a1 = Cb::init(), a2 = Cb::init(), a3 = Cb::init();
    int64_t r = r0;
    for (; r + 3 < r1; r += 4) {  // four loads in flight per thread
      a0 = Cb::op(a0, load_as<Acc>(p[r * I]));
      a1 = Cb::op(a1, load_as<Acc>(p[(r + 1) * I]));
      a2 = Cb::op(a2, load_as<Acc>(p[(r + 2) * I]));
      a3 = Cb::op(a3, load_as<Acc>(p[(r + 3) * I]));
    }
    for (; r < r1; ++r) a0 = Cb::op(a0, load_as<Acc>(p[r * I]));
    out[S == 1 ? t : s * OI + t] = store_as<Tout, Acc>(Cb::op(Cb::op(a0, a1), Cb::op(a2, a3)));
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T, ReduceKind K>
void reduce_typed(const Tensor& x, Tensor& out, int64_t O, int64_t R, int64_t I) {
  using Acc = compute_t<T>;
  const T* xp = x.data_as<T>();
  T* op = out.data_as<T>();
  int64_t target = int64_t(sm_count()) * 2048;  // threads that keep every SM busy
  if (I == 1) {
    int threads = 512;
    while (threads > 32 && threads * 8 > R) threads >>= 1;
    int64_t S = 1;
    if (O < int64_t(sm_count()) * 4 && R > 8192)
      S = std::min(std::min(ceil_div(int64_t(sm_count()) * 4, O), ceil_div(R, 8192)), int64_t(1024));
    int64_t chunk = ceil_div(R, S);
    S = ceil_div(R, chunk);
    if (S == 1) {
      reduce_rows_kernel<T, T, Acc, K><<<dim3(unsigned(O), 1), threads, 0, stream()>>>(xp, op, R, chunk);
    } else {
      Tensor part = empty({O, S}, sizeof(Acc) == 8 ? DType::F64 : DType::F32, Device::CUDA);
      Acc* pp = part.data_as<Acc>();
      reduce_rows_kernel<T, Acc, Acc, K><<<dim3(unsigned(O), unsigned(S)), threads, 0, stream()>>>(xp, pp, R, chunk);
      int t2 = 32;
      while (t2 < 512 && t2 * 8 < S) t2 <<= 1;
      reduce_rows_kernel<Acc, T, Acc, K><<<dim3(unsigned(O), 1), t2, 0, stream()>>>(pp, op, S, S);
    }
  } else {
    int64_t OI = O * I;
    int64_t S = 1;
    if (OI < target && R > 64) S = std::min(std::min(ceil_div(target, OI), ceil_div(R, 32)), int64_t(1024));
    int64_t chunk = ceil_div(R, S);
    S = ceil_div(R, chunk);
    unsigned gx = unsigned(std::min<int64_t>(ceil_div(OI, 256), int64_t(sm_count()) * 64));
    if (S == 1) {
      reduce_cols_kernel<T, T, Acc, K><<<dim3(gx, 1), 256, 0, stream()>>>(xp, op, O, R, I, chunk);
    } else {
      Tensor part = empty({S, OI}, sizeof(Acc) == 8 ? DType::F64 : DType::F32, Device::CUDA);
      Acc* pp = part.data_as<Acc>();
      reduce_cols_kernel<T, Acc, Acc, K><<<dim3(gx, unsigned(S)), 256, 0, stream()>>>(xp, pp, O, R, I, chunk);
      reduce_cols_kernel<Acc, T, Acc, K><<<dim3(gx, 1), 256, 0, stream()>>>(pp, op, 1, S, OI, S);
    }
  }
  DF_CUDA_LAUNCHED(reduce_name(K));
}

template <ReduceKind K>
void reduce_dispatch(const Tensor& x, Tensor& out, int64_t O, int64_t R, int64_t I) {
  switch (x.dtype()) {
    case DType::F32: reduce_typed<float, K>(x, out, O, R, I); break;
    case DType::F64: reduce_typed<double, K>(x, out, O, R, I); break;
    case DType::BF16: reduce_typed<bf16, K>(x, out, O, R, I); break;
    default: DF_FAIL(reduce_name(K), " (CUDA): expected a floating dtype, got ", x.desc());
  }
}

Tensor reduce_cuda(ReduceKind kind, const Tensor& x0, int64_t O, int64_t R, int64_t I) {
  const char* name = reduce_name(kind);
  DF_CHECK(R > 0 || kind == ReduceKind::Sum, name, ": cannot reduce over an empty axis of ", x0.desc());
  Tensor x = x0.is_contiguous() ? x0 : elementwise_cuda_hooks().copy(x0, x0.dtype());
  Tensor out = empty({O, I}, x.dtype(), Device::CUDA);
  if (O * I == 0) return out;
  if (R == 0) {
    DF_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, O * I * dtype_size(x.dtype()), stream()), name);
    return out;
  }
  // Narrow columns load poorly (a warp touches few bytes per row): move R last, then reduce rows.
  if (I > 1 && I < 16) {
    Tensor v = make_view(x, {O, I, R}, {R * I, 1, I}, x.offset());
    x = elementwise_cuda_hooks().copy(v, x.dtype());
    O *= I;
    I = 1;
  }
  switch (kind) {
    case ReduceKind::Sum: reduce_dispatch<ReduceKind::Sum>(x, out, O, R, I); break;
    case ReduceKind::Max: reduce_dispatch<ReduceKind::Max>(x, out, O, R, I); break;
    case ReduceKind::Min: reduce_dispatch<ReduceKind::Min>(x, out, O, R, I); break;
  }
  return out;
}

}  // namespace

void register_reduce() { reduce_cuda_hooks().reduce = reduce_cuda; }

}  // namespace df::cudak
