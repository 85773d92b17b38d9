// A host emulation of the CUDA execution model, enough to run the kernels of kernels/src as
// plain C++: every thread of a block is an OS thread, `__syncthreads` a barrier of the block's
// threads, `__shfl_xor_sync` an exchange through a barrier of the warp's 32 threads (and
// `mma.sync`'s m16n8k16 tensor-core product likewise, `emu_mma_m16n8k16`); blocks
// run one after another, so `__shared__` variables are function statics. A thread that
// returns leaves its barriers (as a CUDA thread that exits no longer holds a barrier back).
//
// It checks the kernels' indexing, tables, reductions and conversions before any GPU runs
// them; it says nothing of their speed, and data races between threads of a block show up
// only as wrong results, not as errors.
#pragma once

#define OPENLEDGER_HOST_EMULATION 1

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim3 {
    unsigned x = 0, y = 0, z = 0;
};

inline thread_local EmuDim3 threadIdx;
inline thread_local EmuDim3 blockIdx;
inline EmuDim3 blockDim;
inline EmuDim3 gridDim;

struct uint4 {
    unsigned int x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// The block being run: its barrier, one barrier and one exchange row per warp, and its
// dynamic shared memory.
struct EmuBlock {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    // Two rows (see `emu_exchange`) of each thread's shuffled word, and of its mma.sync
    // operand registers (4 of A, 2 of B).
    std::vector<uint32_t> lanes;
    std::vector<uint32_t> fragments;
    std::vector<unsigned char> dynamic;
};
inline EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->block->arrive_and_wait(); }

// The warp exchanges (shuffles, mma) a thread has made in the block it runs, mod 2: each one
// writes to the half of the exchange rows this picks, so that one barrier per exchange is
// enough (a thread may be one exchange ahead of a slower one of its warp, never two: the next
// barrier holds it until every thread has left the previous exchange).
inline thread_local unsigned emu_exchange = 0;

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int off) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint32_t* row = &emu_block->lanes[(emu_exchange++ & 1) * blockDim.x + w * 32];
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    row[l] = bits;
    emu_block->warps[w]->arrive_and_wait();
    bits = row[l ^ (unsigned)off];
    T r;
    std::memcpy(&r, &bits, 4);
    return r;
}

// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32` with D = C = `d`: the warp's
// 32 threads each give their fragment registers, and each takes its four elements of
// D = A·B + C, summed in f32 (k in order; the device's order of summation is unspecified).
// Fragments as the PTX ISA lays them out, with g = lane / 4 and t = lane % 4, every register
// holding two 16-bit elements, the lower-indexed one in its low half:
//   A (16×16, row-major): a[0] row g, cols 2t..2t+1; a[1] row g+8, same cols; a[2] row g,
//     cols 2t+8..2t+9; a[3] row g+8, cols 2t+8..2t+9;
//   B (16×8, "col": k down, n across): b0 rows (k) 2t..2t+1, col (n) g; b1 rows 2t+8..2t+9;
//   C / D (16×8 f32): d[0], d[1] row g, cols 2t, 2t+1; d[2], d[3] row g+8, same cols.
// `load` widens one 16-bit element (the f16 or bf16 decoding).
inline void emu_mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                             float (*load)(uint16_t)) {
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint32_t* warp = &emu_block->fragments[((emu_exchange++ & 1) * blockDim.x + w * 32) * 6];
    uint32_t* mine = warp + l * 6;
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b0;
    mine[5] = b1;
    emu_block->warps[w]->arrive_and_wait();
    // Element (row, col) of A and (k, n) of B, read from the lane that holds it.
    auto half_of = [&](unsigned lane, int reg, int hi) -> float {
        const uint32_t r = warp[lane * 6 + reg];
        return load((uint16_t)(hi ? r >> 16 : r & 0xffffu));
    };
    auto a_at = [&](int row, int col) {
        const int c = col & 7;
        const unsigned lane = (unsigned)((row & 7) * 4 + c / 2);
        const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
        return half_of(lane, reg, c & 1);
    };
    auto b_at = [&](int k, int n) {
        const int kk = k & 7;
        const unsigned lane = (unsigned)(n * 4 + kk / 2);
        return half_of(lane, 4 + (k >= 8 ? 1 : 0), kk & 1);
    };
    const int g = (int)(l >> 2), t = (int)(l & 3);
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = 0.0f;
        for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
        out[i] = d[i] + acc;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

inline int atomicMin(int* at, int v) {
    std::atomic_ref<int> a(*at);
    int old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu_block->dynamic.data())

// One grid's shared state: the kernel, the block being run, and the barriers every worker of
// the grid and the launching thread meet at before and after each block, and once more when
// the grid ends. Shared with the workers: a barrier must outlive every thread still returning
// from its last wait, so the last one out frees it.
struct EmuGrid {
    const std::function<void()>* kernel;
    unsigned threads;
    EmuDim3 current;
    bool finished = false;
    std::barrier<> start, done, left;
    explicit EmuGrid(unsigned n) : start(n + 1), done(n + 1), left(n + 1) {}
};

// The OS threads that run CUDA threads, started once and kept for every later grid (starting
// hundreds of threads per launch cost more than the kernels). Worker t runs CUDA thread t of
// each grid that has more than t threads; the others wait for the next grid. Never destroyed:
// the workers wait for work until the process ends.
struct EmuPool {
    std::mutex m;
    std::condition_variable cv;
    unsigned long long generation = 0;
    std::shared_ptr<EmuGrid> grid;
    std::vector<std::thread> workers;

    void grow(unsigned n) {
        while (workers.size() < n) {
            const unsigned t = (unsigned)workers.size();
            workers.emplace_back([this, t] { work(t); });
            workers.back().detach();
        }
    }

    void work(unsigned t) {
        threadIdx = {t, 0, 0};
        unsigned long long seen = 0;
        for (;;) {
            std::shared_ptr<EmuGrid> g;
            {
                std::unique_lock<std::mutex> lk(m);
                cv.wait(lk, [&] { return generation != seen; });
                seen = generation;
                // Decided under the lock: a grid this worker is not part of may end (and its
                // state go) as soon as the lock is released.
                if (grid != nullptr && t < grid->threads) g = grid;
            }
            if (g == nullptr) continue;
            for (;;) {
                g->start.arrive_and_wait();
                if (g->finished) break;
                blockIdx = g->current;
                emu_exchange = 0;
                (*g->kernel)();
                emu_block->warps[t >> 5]->arrive_and_drop();
                emu_block->block->arrive_and_drop();
                g->done.arrive_and_wait();
            }
            g->left.arrive_and_wait();
        }
    }
};

inline EmuPool& emu_pool() {
    static EmuPool* pool = new EmuPool();
    return *pool;
}

// Runs `kernel` over a grid of (gx, gy, gz) blocks of `threads` threads (a multiple of 32): one
// OS thread per CUDA thread (from a pool kept across launches), the blocks one after another;
// launches from several host threads run one after another.
inline void emu_launch3(unsigned gx, unsigned gy, unsigned gz, unsigned threads,
                        size_t shared_bytes, const std::function<void()>& kernel) {
    // One grid at a time in the process: the block state and `__shared__` statics are global.
    static std::mutex one_grid;
    const std::lock_guard<std::mutex> held(one_grid);
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, gz};
    EmuBlock b;
    const auto shared = std::make_shared<EmuGrid>(threads);
    EmuGrid& g = *shared;
    g.kernel = &kernel;
    g.threads = threads;
    emu_block = &b;
    EmuPool& pool = emu_pool();
    pool.grow(threads);
    {
        const std::lock_guard<std::mutex> lk(pool.m);
        pool.grid = shared;
        ++pool.generation;
    }
    pool.cv.notify_all();
    for (unsigned bz = 0; bz < gz; ++bz)
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned bx = 0; bx < gx; ++bx) {
            b.block = std::make_unique<std::barrier<>>(threads);
            b.warps.clear();
            for (unsigned w = 0; w < threads / 32; ++w) {
                b.warps.push_back(std::make_unique<std::barrier<>>(32));
            }
            b.lanes.assign((size_t)threads * 2, 0u);
            b.fragments.assign((size_t)threads * 2 * 6, 0u);
            // Garbage, not zeros: a kernel must write its shared memory before reading it.
            b.dynamic.assign(shared_bytes + 16, 0xA5);
            g.current = {bx, by, bz};
            g.start.arrive_and_wait();
            g.done.arrive_and_wait();
        }
    }
    g.finished = true;
    g.start.arrive_and_wait();
    g.left.arrive_and_wait();
    {
        const std::lock_guard<std::mutex> lk(pool.m);
        pool.grid = nullptr;
    }
    emu_block = nullptr;
}

// A grid of (gx, gy) blocks.
inline void emu_launch(unsigned gx, unsigned gy, unsigned threads, size_t shared_bytes,
                       const std::function<void()>& kernel) {
    emu_launch3(gx, gy, 1, threads, shared_bytes, kernel);
}
