// Runs the SGMV / BGMV kernels of kernels/src under the host emulation (cuda_host.h) and checks
// them against a double-precision reference, with the inputs laid out as openledger-sgmv lays
// them out for the GPU: each slot's A as [rank, lda] and B transposed as [rank, ldb], rows
// zero-padded to the 16-byte vector, Bᵀ 256 bytes aligned after A (SlotLayout); the slot table
// (A's address, B's address, rank, the scale's bits) and the tile table (first row, rows, slot,
// intermediate offset) of SgmvPlan::launch_tiles. Tolerances are those of the Rust backends
// test. Exit status 0 when every case passes.
//
//   g++ -std=c++20 -O2 -pthread -I kernels/src kernels/emulate/check.cpp -o check && ./check
#include "cuda_host.h"

// The kernels, as NVRTC compiles them (common part first).
#include "common.cuh"
#include "shrink.cu"
#include "expand.cu"

#include <algorithm>
#include <array>
#include <cstdio>
#include <optional>
#include <random>
#include <string>

namespace {

constexpr int kThreads = 128;
constexpr int kShrinkWarps = 4;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

struct Case {
    std::string name;
    int d, out, rows;
    std::vector<int> ranks;
    // (start, end, slot) segments; empty with `per_row` for a random slot (or none) per row.
    std::vector<std::array<int, 3>> segments;
    bool per_row;
    int before, after;  // columns of y around the layer's outputs (a fused row)
};

struct Group {
    int start, end, slot, rank;
    long long v_off;
};

template <typename E>
struct Host {
    using T = typename E::T;
    static T put(float f) { return E::store(f); }
    static float get(T t) { return E::load(t); }
};

std::pair<double, double> tolerance(const std::string& dtype) {
    if (dtype == "f16") return {std::ldexp(1.0, -10), 1e-3};
    if (dtype == "bf16") return {std::ldexp(1.0, -7), 1e-2};
    return {1e-5, 1e-4};
}

template <typename E>
bool run_case(const Case& c, const char* dtype, std::mt19937_64& rng,
              void (*shrink_sgmv)(float*, const typename E::T*, i64, const i64*, const i64*, int,
                                  int),
              void (*shrink_bgmv)(float*, const typename E::T*, i64, const i64*, const i64*, int,
                                  int),
              void (*expand_sgmv)(typename E::T*, i64, i64, const float*, const i64*, const i64*,
                                  int, int),
              void (*expand_bgmv)(typename E::T*, i64, i64, const float*, const i64*, const i64*,
                                  int, int)) {
    using T = typename E::T;
    std::uniform_real_distribution<float> uni(-0.5f, 0.5f);
    auto rand = [&](size_t n) {
        std::vector<T> v(n);
        for (auto& e : v) e = Host<E>::put(uni(rng));
        return v;
    };
    const int d = c.d, out = c.out, rows = c.rows;
    const int ld = c.before + out + c.after;
    const size_t size = sizeof(T), vec = 16 / size;
    const size_t lda = round_up(d, vec), ldb = round_up(out, vec);
    std::vector<T> x = rand((size_t)rows * d), y0 = rand((size_t)rows * ld);
    std::vector<std::vector<T>> a, b;
    for (int r : c.ranks) {
        a.push_back(rand((size_t)r * d));
        b.push_back(rand((size_t)out * r));  // PEFT's [out, rank]
    }
    // The slab: each slot's run, A then Bᵀ.
    std::vector<size_t> a_at, b_at;
    size_t at = 0;
    for (int r : c.ranks) {
        const size_t b_off = round_up(r * lda * size, 256) / size;
        a_at.push_back(at);
        b_at.push_back(at + b_off);
        at = round_up(at + b_off + r * ldb, 256 / size);
    }
    std::vector<T> slab(at + 16, Host<E>::put(0.0f));
    std::vector<float> scales;
    std::vector<i64> table;
    for (size_t s = 0; s < c.ranks.size(); ++s) {
        const int r = c.ranks[s];
        for (int j = 0; j < r; ++j) {
            for (int k = 0; k < d; ++k) slab[a_at[s] + j * lda + k] = a[s][(size_t)j * d + k];
            for (int o = 0; o < out; ++o) slab[b_at[s] + j * ldb + o] = b[s][(size_t)o * r + j];
        }
        scales.push_back(0.25f * (float)(s + 1));
        unsigned bits;
        std::memcpy(&bits, &scales.back(), 4);
        table.push_back((i64)(uintptr_t)&slab[a_at[s]]);
        table.push_back((i64)(uintptr_t)&slab[b_at[s]]);
        table.push_back(r);
        table.push_back((i64)bits);
    }
    std::vector<std::optional<int>> row_slot(rows);
    if (c.per_row) {
        std::uniform_int_distribution<int> pick(0, (int)c.ranks.size() - 1);
        std::bernoulli_distribution some(0.8);
        for (auto& s : row_slot)
            if (some(rng)) s = pick(rng);
    } else {
        for (auto& seg : c.segments)
            for (int r = seg[0]; r < seg[1]; ++r) row_slot[r] = seg[2];
    }
    // Groups as SgmvPlan makes them: runs of one slot, packed in row order.
    std::vector<Group> groups;
    long long v_len = 0;
    for (int i = 0; i < rows;) {
        int j = i + 1;
        while (j < rows && row_slot[j] == row_slot[i]) ++j;
        if (row_slot[i]) {
            const int s = *row_slot[i], r = c.ranks[s];
            groups.push_back({i, j, s, r, v_len});
            v_len += (long long)(j - i) * r;
        }
        i = j;
    }
    // The reference in double.
    auto f = [](T t) { return (double)Host<E>::get(t); };
    std::vector<double> want(y0.size());
    for (size_t i = 0; i < y0.size(); ++i) want[i] = f(y0[i]);
    int max_rank = 0;
    for (auto& g : groups) {
        max_rank = std::max(max_rank, g.rank);
        for (int row = g.start; row < g.end; ++row) {
            std::vector<double> v(g.rank, 0.0);
            for (int j = 0; j < g.rank; ++j)
                for (int k = 0; k < d; ++k)
                    v[j] += f(x[(size_t)row * d + k]) * f(a[g.slot][(size_t)j * d + k]);
            for (int o = 0; o < out; ++o) {
                double add = 0.0;
                for (int j = 0; j < g.rank; ++j) add += v[j] * f(b[g.slot][(size_t)o * g.rank + j]);
                want[(size_t)row * ld + c.before + o] += scales[g.slot] * add;
            }
        }
    }
    const auto [rel, abs_tol] = tolerance(dtype);
    bool ok = true;
    for (int tile_rows : {8, 1}) {
        std::vector<i64> tiles;
        for (auto& g : groups)
            for (int row = g.start; row < g.end; row += tile_rows) {
                const int n = std::min(tile_rows, g.end - row);
                tiles.insert(tiles.end(), {row, n, g.slot, g.v_off + (long long)(row - g.start) * g.rank});
            }
        std::vector<T> y = y0;
        std::vector<float> v(v_len + 1, std::nanf(""));
        const unsigned n_tiles = tiles.size() / 4;
        if (n_tiles > 0) {
            auto shrink = tile_rows == 8 ? shrink_sgmv : shrink_bgmv;
            auto expand = tile_rows == 8 ? expand_sgmv : expand_bgmv;
            emu_launch(n_tiles, (max_rank + kShrinkWarps - 1) / kShrinkWarps, kThreads, 0, [&] {
                shrink(v.data(), x.data(), d, table.data(), tiles.data(), d, (int)lda);
            });
            const unsigned per_block = kThreads * vec;
            emu_launch(n_tiles, (out + per_block - 1) / per_block, kThreads,
                       (size_t)tile_rows * max_rank * 4, [&] {
                           expand(y.data(), ld, c.before, v.data(), table.data(), tiles.data(),
                                  out, (int)ldb);
                       });
        }
        double worst = -1e30;
        size_t bad = 0, changed_outside = 0;
        for (size_t i = 0; i < y.size(); ++i) {
            const size_t col = i % ld;
            const bool inside = col >= (size_t)c.before && col < (size_t)(c.before + out);
            if (!inside) {
                if (std::memcmp(&y[i], &y0[i], sizeof(T)) != 0) ++changed_outside;
                continue;
            }
            const double excess = std::fabs(f(y[i]) - want[i]) - (rel * std::fabs(want[i]) + abs_tol);
            if (!(excess <= 0)) ++bad;
            if (excess > worst || std::isnan(excess)) worst = excess;
        }
        const bool pass = bad == 0 && changed_outside == 0;
        ok &= pass;
        std::printf("%-40s %-4s %s: %s (worst excess over tolerance %.3g, %zu bad, %zu changed "
                    "outside the window)\n",
                    c.name.c_str(), dtype, tile_rows == 8 ? "sgmv" : "bgmv",
                    pass ? "ok" : "FAILED", worst, bad, changed_outside);
    }
    return ok;
}

}  // namespace

int main() {
    std::vector<Case> cases = {
        {"segments with gaps and an empty one", 1030, 301, 21, {1, 7, 16, 64},
         {{0, 10, 3}, {10, 10, 0}, {12, 13, 0}, {13, 19, 2}}, false, 0, 0},
        {"one row, inside a fused row", 257, 129, 1, {3, 16}, {{0, 1, 1}}, false, 3, 5},
        {"one slot per row", 131, 67, 13, {5, 16, 33}, {}, true, 0, 0},
        {"rank 128, k inside a fused q|k|v row", 96, 40, 12, {128, 2}, {{0, 9, 0}, {9, 12, 1}},
         false, 64, 40},
        {"a row wider than a shrink chunk", 4500, 24, 3, {4}, {{0, 3, 0}}, false, 0, 0},
    };
    std::mt19937_64 rng(7);
    bool ok = true;
    for (const auto& c : cases) {
        ok &= run_case<F32>(c, "f32", rng, sgmv_shrink_f32, bgmv_shrink_f32, sgmv_expand_f32,
                            bgmv_expand_f32);
        ok &= run_case<F16>(c, "f16", rng, sgmv_shrink_f16, bgmv_shrink_f16, sgmv_expand_f16,
                            bgmv_expand_f16);
        ok &= run_case<BF16>(c, "bf16", rng, sgmv_shrink_bf16, bgmv_shrink_bf16,
                             sgmv_expand_bf16, bgmv_expand_bf16);
    }
    std::printf("%s\n", ok ? "all kernels match the reference" : "SOME KERNELS FAILED");
    return ok ? 0 : 1;
}
