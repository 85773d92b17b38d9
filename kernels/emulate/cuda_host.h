// A host emulation of the CUDA execution model, enough to run the kernels of kernels/src as
// plain C++: every thread of a block is an OS thread, `__syncthreads` a barrier of the block's
// threads, `__shfl_xor_sync` an exchange through a barrier of the warp's 32 threads; blocks
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
    std::vector<uint32_t> lanes;
    std::vector<unsigned char> dynamic;
};
inline EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->block->arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int off) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    emu_block->lanes[w * 32 + l] = bits;
    emu_block->warps[w]->arrive_and_wait();
    bits = emu_block->lanes[w * 32 + (l ^ (unsigned)off)];
    emu_block->warps[w]->arrive_and_wait();
    T r;
    std::memcpy(&r, &bits, 4);
    return r;
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
            b.lanes.assign(threads, 0u);
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
