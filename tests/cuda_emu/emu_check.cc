// Runs the CUDA kernels and launchers of cc/qdq_cuda_kernels.cuh through the
// host emulation (cuda_emu.h) on random cases and compares every output bit
// with the CPU path (cc/qdq_cpu.cc). Exit status 0 and "OK <cases>" on success;
// the first mismatch is printed otherwise. Built and run by tests/test_cuda_emu.py.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda_emu/cuda_emu.h"
// The kernels must come after the emulation layer.
#include "cc/qdq_cpu.h"
#include "cc/qdq_cuda_kernels.cuh"

namespace {

using qdq::bf16_t;
using qdq::half_t;
using qdq::Layout;

template <typename T>
T from_float(double v) {
  return qdq::Compute<T>::store(static_cast<qdq::compute_t<T>>(v));
}
template <>
double from_float<double>(double v) {
  return v;
}

template <typename T>
const char* name();
template <>
const char* name<float>() {
  return "float32";
}
template <>
const char* name<double>() {
  return "float64";
}
template <>
const char* name<half_t>() {
  return "float16";
}
template <>
const char* name<bf16_t>() {
  return "bfloat16";
}

struct Case {
  Layout layout;
  bool given, signed_input, narrow, half_up, gradient;
  int bits;
  int64_t offset;  // elements; misaligns the buffers
  bool in_place;
  int special;  // 0 none, 1 NaNs, 2 a zero channel, 3 an all-NaN channel, 4 an inf, 5/6 row extremes
};

std::mt19937_64 rng(12345);

int64_t pick(std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); }

template <typename T>
bool run_case(const Case& k, std::string* why) {
  const Layout& l = k.layout;
  const int64_t n = l.size();
  const int64_t pad = 16;
  std::vector<T> x(n + pad), g(n + pad), cpu(n + pad), emu(n + pad);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const double mag = std::pow(10.0, static_cast<double>(static_cast<int64_t>(rng() % 9) - 4));
  T* xp = x.data() + k.offset;
  T* gp = g.data() + (k.offset + (k.gradient && rng() % 2 ? 1 : 0)) % pad;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = (i / l.inner) % l.depth;
    double v = u(rng) * mag * (1.0 + static_cast<double>(c % 3));
    if (k.special == 1 && rng() % 7 == 0) v = NAN;
    if (k.special == 2 && c == l.depth / 2) v = 0.0;
    if (k.special == 3 && c == 0) v = NAN;
    if (k.special == 4 && rng() % 50 == 0) v = INFINITY;
    // The extremes of each row at its first or last element (head and tail of the vector loops).
    if (k.special == 5 && i % l.inner == l.inner - 1) v = (i % 2 ? 4.0 : -4.0) * mag;
    if (k.special == 6 && i % l.inner == 0) v = (i % 2 ? 4.0 : -4.0) * mag;
    xp[i] = from_float<T>(v);
    gp[i] = from_float<T>(u(rng) * 3.0);
  }
  std::vector<T> lo(l.depth), hi(l.depth);
  for (int64_t c = 0; c < l.depth; ++c) {
    const double a = u(rng) * mag, b = u(rng) * mag;
    lo[c] = from_float<T>(std::fmin(a, b) * (k.signed_input ? 1.0 : 0.0));
    hi[c] = from_float<T>(std::fmax(a, b));
    if (!(qdq::Compute<T>::load(lo[c]) <= qdq::Compute<T>::load(hi[c]))) hi[c] = lo[c];
  }
  // Poison both outputs with different patterns so every element must be written.
  std::memset(cpu.data(), 0x7b, cpu.size() * sizeof(T));
  std::memset(emu.data(), 0x5c, emu.size() * sizeof(T));
  T* cpu_out = cpu.data() + k.offset;
  T* emu_out = k.in_place ? xp : emu.data() + k.offset;
  std::vector<char> ws;
  const qdq::SerialPool pool;
  qdq::port::emu_launches = 0;
  if (k.gradient) {
    qdq::masked_gradient_cpu(pool, gp, xp, cpu_out, l, lo.data(), hi.data());
    ws.resize(qdq::cuda_impl::gradient_workspace<T>(l) + 16);
    void* w = ws.data() + ((16 - (reinterpret_cast<uintptr_t>(ws.data()) & 15)) & 15);
    if (qdq::cuda_impl::masked_gradient<T>(nullptr, gp, xp, emu_out, l, lo.data(), hi.data(), w)) return false;
  } else {
    const qdq::QuantizeAttrs attrs{qdq::int_range(k.signed_input, k.bits, k.narrow), k.given,
                                   k.half_up ? qdq::RoundMode::kHalfUp : qdq::RoundMode::kHalfToEven};
    qdq::quantize_cpu(pool, xp, cpu_out, l, lo.data(), hi.data(), attrs);
    ws.resize(qdq::cuda_impl::quantize_workspace<T>(l, k.given) + 16);
    void* w = ws.data() + ((16 - (reinterpret_cast<uintptr_t>(ws.data()) & 15)) & 15);
    if (qdq::cuda_impl::quantize<T>(nullptr, xp, emu_out, l, lo.data(), hi.data(), attrs, w)) return false;
  }
  if (qdq::port::emu_launches > 4) {
    *why = "more than 4 stream operations: " + std::to_string(qdq::port::emu_launches);
    return false;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&cpu_out[i], &emu_out[i], sizeof(T)) != 0) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "element %" PRId64 " of %" PRId64 ": cpu %.9g emu %.9g", i, n,
                    static_cast<double>(qdq::Compute<T>::load(cpu_out[i])),
                    static_cast<double>(qdq::Compute<T>::load(emu_out[i])));
      *why = buf;
      return false;
    }
  }
  // Nothing outside [offset, offset + n) of a separate output is touched.
  if (!k.in_place) {
    for (int64_t i = 0; i < static_cast<int64_t>(emu.size()); ++i) {
      if ((i < k.offset || i >= k.offset + n) && reinterpret_cast<unsigned char*>(&emu[i])[0] != 0x5c) {
        *why = "wrote outside the output at " + std::to_string(i);
        return false;
      }
    }
  }
  return true;
}

Layout random_layout() {
  // Shapes that reach both reduction paths, packed rows, partial tiles and many channels.
  switch (rng() % 6) {
    case 0:
      return Layout{1, 1, pick({0, 1, 2, 3, 7, 31, 100, 1000, 4099, 70001})};
    case 1:  // last axis
      return Layout{pick({1, 2, 5, 300, 1001}), pick({2, 3, 4, 17, 256, 300}), 1};
    case 2:  // first axis, long rows
      return Layout{1, pick({2, 3, 5}), pick({2048, 2049, 5000, 9000})};
    case 3:  // middle axis
      return Layout{pick({2, 3, 7}), pick({2, 3, 6}), pick({1, 5, 31, 64, 257, 2050})};
    case 4:  // many small channels
      return Layout{pick({1, 2}), pick({600, 1500}), pick({1, 3})};
    default:  // a size-1 channel axis folds to per-tensor
      return Layout{pick({3, 40}), 1, pick({7, 3000})};
  }
}

template <typename T>
bool run_many(int count, int64_t* done) {
  for (int i = 0; i < count; ++i) {
    Case k;
    k.layout = random_layout();
    k.gradient = rng() % 4 == 0;
    k.given = rng() % 2 == 0;
    k.signed_input = rng() % 3 != 0;
    k.narrow = rng() % 2 == 0;
    k.half_up = rng() % 2 == 0;
    k.bits = static_cast<int>(pick({1, 2, 4, 8, 8, 8, 13, 16, 23, 32, 52, 61}));
    k.offset = pick({0, 0, 1, 3, 5});
    k.in_place = rng() % 4 == 0;
    k.special = static_cast<int>(rng() % 7);
    std::string why;
    if (!run_case<T>(k, &why)) {
      std::printf("MISMATCH %s layout=[%" PRId64 ",%" PRId64 ",%" PRId64
                  "] %s given=%d signed=%d narrow=%d half_up=%d "
                  "bits=%d offset=%" PRId64 " in_place=%d special=%d: %s\n",
                  name<T>(), k.layout.outer, k.layout.depth, k.layout.inner, k.gradient ? "V4Grad" : "forward", k.given,
                  k.signed_input, k.narrow, k.half_up, k.bits, k.offset, k.in_place, k.special, why.c_str());
      return false;
    }
    ++*done;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int count = argc > 1 ? std::atoi(argv[1]) : 100;
  int64_t done = 0;
  const bool ok = run_many<float>(count, &done) && run_many<double>(count, &done) && run_many<half_t>(count, &done) &&
                  run_many<bf16_t>(count, &done);
  if (!ok) return 1;
  std::printf("OK %" PRId64 "\n", done);
  return 0;
}
