// y = x @ w for a few float32 rows against a weight stored in column panels, on the CPU.
//
// A decode step multiplies a handful of rows (two per image with guidance) by every weight of
// the model, so its products are bound by how fast the weights stream from memory. XLA:CPU's
// dots pack the weight into panels on every call and run these products at a third of the
// streaming rate or less (bench/README.md); this kernel reads a weight packed once, at load,
// as P contiguous panels of K x kColumns (the last panel zero-padded), each exactly once per
// call, with the outputs of up to kRows rows held in registers. Built on the machine that runs
// it (-march=native) by janus_jax/kernels/cpu.py, which registers it as an XLA FFI
// target.
//
// Arguments: x (M, K), w (P, K, kColumns); result y (M, N) with N <= P * kColumns. Panels are
// shared out between the calling thread and XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Each row's outputs for one panel are kVecs SIMD registers (GCC / Clang vector extensions, so
// the accumulators stay in registers whatever the target; plain loops left it to the
// auto-vectoriser, which kept them in memory without AVX-512 and ran ~20x slower).
// Tried on the AVX2 build: 3 x 4, 4 x 3, 3 x 5 and 1 x 8 (vectors x rows) tiles, none faster
// than 2 x 6 at 8 rows (bench/probes/decode_floor.py: 10.8-11.7 ms against 10.3-10.8).
constexpr int kVecs = 2;
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRows = 8;  // 16 accumulators of the 32 registers
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kRows = 6;  // 12 accumulators of the 16 registers
#else
constexpr int kLanes = 4;  // SSE, NEON and the rest
constexpr int kRows = 6;
#endif
constexpr int kColumns = kVecs * kLanes;
// How a tile reads its rows of x: in place (row r, step k at x[r * K + k]) or from a copy with
// each tile's rows interleaved (at x[k * R + r]), which the narrower builds need. Measured with
// bench/probes/decode_floor.py on an AVX-512 EPYC, one thread, ms per 8-row step: AVX-512 in place
// 6.2, interleaved 7.0; the AVX2 build (-mno-avx512f) interleaved 10.3, in place 14.2.
constexpr bool kInterleave = kLanes < 16;
// How far ahead in the weights a tile asks for its cache lines to be brought into L2 (0: not
// at all), in tiles of three rows or more. The AVX2 build's 6-row tile runs a 64-byte line
// (one k step of a panel) in ~6 cycles, and the hardware prefetcher alone fed it at ~14 GB/s
// of the ~25 one core of the EPYC streams: bench/probes/decode_floor.py took 8.9-9.4 ms per 8-row
// step without, 6.2-6.4 with (bench/README.md). 1- and 2-row tiles already stream near the
// memory's rate; asking there too measured no clear gain either way, so they do not. Tiles
// that read panels still in cache (the rows after a full tile, the later row blocks of a
// prefill) ask too: a 32-row step gained (AVX2 build: 24.5 -> 21.4 ms). On x86 with AVX2 and
// AVX-512 only was this measured, so only those builds ask (not AVX-only chips, not NEON).
// -DJANUS_JAX_PREFETCH_BYTES=N (through CXX) sets it for a measurement.
#ifdef JANUS_JAX_PREFETCH_BYTES
constexpr int64_t kPrefetchBytes = JANUS_JAX_PREFETCH_BYTES;
#elif defined(__x86_64__) && defined(__AVX2__)
constexpr int64_t kPrefetchBytes = 16 << 10;
#else
constexpr int64_t kPrefetchBytes = 0;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

// R rows of x (laid out as kInterleave says) times NP consecutive panels, written to y: all
// columns of the first NP - 1 panels, the first `cols` of the last. Few rows take two panels
// at once, so that they still keep enough accumulators in flight to hide the FMA latency.
template <int R, int NP = 1>
inline void Tile(const float* __restrict x, int64_t k_size, const float* __restrict panel,
                 float* __restrict y, int64_t n, int64_t cols) {
  constexpr int kAcc = NP * kVecs;
  Vec acc[R][kAcc];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kAcc; ++v) acc[r][v] = Vec{};
  for (int64_t k = 0; k < k_size; ++k) {
    if (kPrefetchBytes > 0 && R > 2)
      for (int j = 0; j < NP; ++j) {
        // An address, not an access: lines past the end of w are harmless to ask for.
        const uintptr_t at = reinterpret_cast<uintptr_t>(panel + (j * k_size + k) * kColumns);
        for (uintptr_t b = 0; b < kColumns * sizeof(float); b += 64)
          __builtin_prefetch(reinterpret_cast<const void*>(at + kPrefetchBytes + b), 0, 2);
      }
    Vec w[kAcc];
    for (int j = 0; j < NP; ++j)
      for (int v = 0; v < kVecs; ++v)
        w[j * kVecs + v] = Load(panel + (j * k_size + k) * kColumns + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const float xv = kInterleave ? x[k * R + r] : x[r * k_size + k];
      for (int v = 0; v < kAcc; ++v) acc[r][v] += xv * w[v];  // scalar * vector: a broadcast
    }
  }
  for (int r = 0; r < R; ++r) {
    if (cols == kColumns) {
      std::memcpy(y + r * n, acc[r], sizeof(acc[r]));
    } else {
      float out[NP * kColumns];
      std::memcpy(out, acc[r], sizeof(out));
      std::copy(out, out + (NP - 1) * kColumns + cols, y + r * n);
    }
  }
}

// The R < kRows rows left over times np (1 or 2) consecutive panels, both at once if `pair`.
template <int R>
inline void Leftover(const float* x, int64_t k_size, const float* panel, float* y, int64_t n,
                     int64_t np, int64_t cols, bool pair) {
  if (pair && np == 2 && 2 * R <= kRows) {
    Tile<R, 2>(x, k_size, panel, y, n, cols);
  } else {
    for (int64_t j = 0; j < np; ++j)
      Tile<R>(x, k_size, panel + j * k_size * kColumns, y + j * kColumns, n,
              j + 1 < np ? kColumns : cols);
  }
}

// x (M, K) with each block of kRows rows (and the block of the rows left over) interleaved,
// so a tile's step over k reads its rows' values from one cache line, not one line per row.
void Interleave(const float* x, int64_t m_size, int64_t k_size, float* xt) {
  for (int64_t m = 0; m < m_size; m += kRows) {
    const int64_t rows = std::min<int64_t>(kRows, m_size - m);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < k_size; ++k) xt[m * k_size + k * rows + r] = x[(m + r) * k_size + k];
  }
}

// All M rows times panels [p0, p1), two panels at a time. The rows left over after full tiles
// take both panels at once, from the cache the full tiles just filled: AVX2 build, 8-row step
// (bench/probes/decode_floor.py) 9.1 ms against 10.2 one panel at a time. With no full tile before
// them (fewer than kRows rows) two panels streamed at once from memory were slower (2 rows 5.7
// ms against 4.8), so those go one panel at a time.
void Panels(const float* x, int64_t m_size, int64_t k_size, const float* w, float* y,
            int64_t n, int64_t p0, int64_t p1) {
  const int64_t full = m_size - m_size % kRows;
  const float* xr = x + full * k_size;
  const bool pair = full > 0;  // the leftover rows find the panels in cache
  for (int64_t p = p0; p < p1; p += 2) {
    const int64_t np = std::min<int64_t>(2, p1 - p);
    const float* panel = w + p * k_size * kColumns;
    const int64_t cols = std::min<int64_t>(kColumns, n - (p + np - 1) * kColumns);
    for (int64_t j = 0; j < np; ++j)
      for (int64_t m = 0; m < full; m += kRows)
        Tile<kRows>(x + m * k_size, k_size, panel + j * k_size * kColumns,
                    y + m * n + (p + j) * kColumns, n, j + 1 < np ? kColumns : cols);
    float* yr = y + full * n + p * kColumns;
    switch (m_size - full) {
      case 1: Leftover<1>(xr, k_size, panel, yr, n, np, cols, pair); break;
      case 2: Leftover<2>(xr, k_size, panel, yr, n, np, cols, pair); break;
      case 3: Leftover<3>(xr, k_size, panel, yr, n, np, cols, pair); break;
      case 4: Leftover<4>(xr, k_size, panel, yr, n, np, cols, pair); break;
      case 5: Leftover<5>(xr, k_size, panel, yr, n, np, cols, pair); break;
      case 6: Leftover<6>(xr, k_size, panel, yr, n, np, cols, pair); break;  // when kRows is 8
      case 7: Leftover<7>(xr, k_size, panel, yr, n, np, cols, pair); break;
      default: break;
    }
  }
}

// Work shared between the caller and pool threads; held by every task, so a task the pool
// starts after the product is done finds no panels left and touches nothing freed.
struct Shared {
  std::unique_ptr<float[]> interleaved;  // x's copy, when kInterleave
  const float* x;
  const float* w;
  float* y;
  int64_t m, k, n, p, chunk;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Work() {
    for (;;) {
      const int64_t p0 = next.fetch_add(chunk);
      if (p0 >= p) return;
      const int64_t p1 = std::min(p, p0 + chunk);
      Panels(x, m, k, w, y, n, p0, p1);
      done.fetch_add(p1 - p0, std::memory_order_release);
    }
  }
};

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2)
    return ffi::Error::InvalidArgument("panel_matmul: x must be (M, K), w (P, K, C), y (M, N)");
  const int64_t m = xd[0], k = xd[1], p = wd[0], n = yd[1];
  if (wd[1] != k || wd[2] != kColumns || yd[0] != m || n > p * kColumns ||
      n <= (p - 1) * kColumns)
    return ffi::Error::InvalidArgument(
        "panel_matmul: x (" + std::to_string(m) + ", " + std::to_string(k) + "), w (" +
        std::to_string(p) + ", " + std::to_string(wd[1]) + ", " + std::to_string(wd[2]) +
        "), y (" + std::to_string(yd[0]) + ", " + std::to_string(n) + ") do not match: expected "
        "x (M, K), w (P, K, " + std::to_string(kColumns) + "), y (M, N) with N in the last panel");
  auto shared = std::make_shared<Shared>();
  if (kInterleave) shared->interleaved.reset(new float[m * k]);
  shared->x = x.typed_data();
  if (kInterleave) {
    Interleave(shared->x, m, k, shared->interleaved.get());
    shared->x = shared->interleaved.get();
  }
  shared->w = w.typed_data();
  shared->y = y->typed_data();
  shared->m = m;
  shared->k = k;
  shared->n = n;
  shared->p = p;
  // At least ~256 KiB of weights per task, so small products stay on the calling thread.
  const int64_t panel_bytes = k * kColumns * 4;
  const int64_t min_chunk = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, panel_bytes));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t tasks = std::max<int64_t>(1, std::min(threads, p / min_chunk));
  shared->chunk = std::max<int64_t>(1, (p + 4 * tasks - 1) / (4 * tasks));
  for (int64_t t = 1; t < tasks; ++t) {
    try {
      pool.Schedule([shared] { shared->Work(); });
    } catch (...) {  // fewer helpers: the calling thread takes the panels left
      break;
    }
  }
  shared->Work();
  while (shared->done.load(std::memory_order_acquire) < p) std::this_thread::yield();
  return ffi::Error::Success();
}

// The handler XLA calls through a C entry point, which no exception may cross: an allocation
// that fails (all of them happen before any task is handed out) becomes an error.
ffi::Error PanelMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  try {
    return PanelMatmul(pool, x, w, y);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("panel_matmul: ") + e.what());
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusPanelMatmul, PanelMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

extern "C" int janus_panel_columns() { return kColumns; }
