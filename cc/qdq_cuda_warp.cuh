// The warp-level merge of the reductions: lanes fold their (lo, hi) keys together before one
// atomic per channel. Device code over CUDA's warp intrinsics only (__shfl_sync,
// __shfl_xor_sync, __all_sync, __match_any_sync, __ffs) and port::atomic_min, so
// tests/cuda_emu/warp_check.cc can run this very text on a host with 32 threads in lock step.
// Included inside namespace qdq::port by qdq_cuda_port.cuh (and by the host check).

// Folds each lane's (lo, hi) keys into slot `c` of the accumulators with one
// atomic per distinct channel per warp. Every lane of the warp must call it
// together (the callers' conditions are block-uniform); lanes holding nothing
// pass `none` keys (and any c).
template <typename Key>
QDQ_DEV void merge_keys(Key* lo_acc, Key* hi_acc, int64_t c, Key lo, Key hi, Key none) {
  const unsigned full = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t c0 = __shfl_sync(full, c, 0);
  if (__all_sync(full, lo == none || c == c0)) {  // one channel (the common case): a tree
    for (int offset = 16; offset > 0; offset >>= 1) {
      const Key olo = __shfl_xor_sync(full, lo, offset);
      const Key ohi = __shfl_xor_sync(full, hi, offset);
      lo = olo < lo ? olo : lo;
      hi = ohi < hi ? ohi : hi;
    }
    if (lane == 0 && lo != none) {
      atomic_min(lo_acc + c0, lo);
      atomic_min(hi_acc + c0, hi);
    }
    return;
  }
  // Several channels: each lane folds in its peers (same channel), the first peer writes.
  const unsigned peers = __match_any_sync(full, static_cast<unsigned long long>(c));
  for (int i = 0; i < 32; ++i) {
    const Key olo = __shfl_sync(full, lo, i);
    const Key ohi = __shfl_sync(full, hi, i);
    if ((peers >> i) & 1u) {
      lo = olo < lo ? olo : lo;
      hi = ohi < hi ? ohi : hi;
    }
  }
  if (lane == __ffs(static_cast<int>(peers)) - 1 && lo != none) {
    atomic_min(lo_acc + c, lo);
    atomic_min(hi_acc + c, hi);
  }
}
