// CPU loop of the learned-range (LSQ) gradient: one pass that writes the masked
// input gradient and sums each channel's step gradient. Portable scalar code: the
// pass runs once per training step per quantizer, next to a convolution's backward.
#include <algorithm>
#include <cassert>
#include <vector>

#include "qdq_cpu.h"

namespace qdq {
namespace {

// Elements per shard of the flat buffer (each shard keeps its own channel sums).
constexpr int64_t kShardElements = int64_t{1} << 15;
// Shards * channels stays under this many partial sums.
constexpr int64_t kMaxPartials = int64_t{1} << 22;

template <RoundMode kMode, typename T>
void lsq_piece(const T* grad, const T* x, T* input_out, int64_t b, int64_t e, Layout l,
               const std::vector<SliceParams<compute_t<T>>>& params, const std::vector<compute_t<T>>& lo,
               const std::vector<compute_t<T>>& hi, IntRange r, double* sums) {
  using C = compute_t<T>;
  int64_t c = (b / l.inner) % l.depth;
  int64_t rem = b % l.inner;
  double sum = 0.0;
  for (int64_t i = b; i < e; ++i) {
    const C g = Compute<T>::load(grad[i]);
    const C v = Compute<T>::load(x[i]);
    input_out[i] = Compute<T>::store(masked_gradient(g, v, lo[c], hi[c]));
    sum += static_cast<double>(g) * static_cast<double>(lsq_step_derivative<kMode>(v, lo[c], hi[c], params[c], r));
    if (++rem == l.inner) {  // the next element starts the next channel
      rem = 0;
      sums[c] += sum;
      sum = 0.0;
      if (++c == l.depth) c = 0;
    }
  }
  sums[c] += sum;
}

}  // namespace

template <typename T>
void lsq_gradient_cpu(const ThreadPool& pool, const T* grad, const T* x, T* input_out, T* step_out, Layout layout,
                      const T* lo, const T* hi, IntRange range, RoundMode round_mode) {
  using C = compute_t<T>;
  const Layout l = layout.depth == 1 ? Layout{1, 1, layout.size()} : layout;
  const int64_t n = l.size();
  if (l.depth == 0) return;
  if (n == 0) {  // empty slices: no step gradient (and no channel to find for element 0)
    std::fill(step_out, step_out + l.depth, Compute<T>::store(C(0)));
    return;
  }
  std::vector<C> clo(static_cast<size_t>(l.depth)), chi(static_cast<size_t>(l.depth));
  std::vector<SliceParams<C>> params(static_cast<size_t>(l.depth));
  for (int64_t c = 0; c < l.depth; ++c) {
    clo[c] = Compute<T>::load(lo[c]);
    chi[c] = Compute<T>::load(hi[c]);
    params[c] = compute_params(clo[c], chi[c], range);
  }
  decltype(&lsq_piece<static_cast<RoundMode>(0), T>) piece = nullptr;  // one function type for every mode
  const bool known = with_round_mode(round_mode, [&](auto mode) { piece = lsq_piece<decltype(mode)::value, T>; });
  assert(known && "round_mode comes from a validated attribute");
  if (!known) return;
  const int64_t by_size = std::max<int64_t>(1, n / kShardElements);
  const int64_t by_memory = std::max<int64_t>(1, kMaxPartials / l.depth);
  const int64_t shards = std::min({by_size, by_memory, 4 * static_cast<int64_t>(pool.num_threads())});
  std::vector<double> partial(static_cast<size_t>(shards * l.depth), 0.0);
  pool.parallel_for(shards, (n / shards + 1) * 8, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      const int64_t b = n * s / shards, e = n * (s + 1) / shards;
      double* sums = partial.data() + s * l.depth;
      piece(grad, x, input_out, b, e, l, params, clo, chi, range, sums);
    }
  });
  const double scale = lsq_gradient_scale(l.outer * l.inner, range);
  for (int64_t c = 0; c < l.depth; ++c) {
    double total = 0.0;
    for (int64_t s = 0; s < shards; ++s) total += partial[s * l.depth + c];
    step_out[c] = Compute<T>::store(static_cast<C>(total * scale));
  }
}

#define QDQ_INSTANTIATE(T)                                                                                     \
  template void lsq_gradient_cpu<T>(const ThreadPool&, const T*, const T*, T*, T*, Layout, const T*, const T*, \
                                    IntRange, RoundMode);
QDQ_FOR_EACH_TYPE(QDQ_INSTANTIATE)
#undef QDQ_INSTANTIATE

}  // namespace qdq
