// The exact resize of pocketdet.deploy.npops.resize_chw: per axis, torch's antialiased triangle filter as
// tap lists computed in double and rounded to float32 (npops._aa_taps), then a horizontal pass and a
// vertical pass that each accumulate `value * weight` in float32 in tap order, as numpy does. Compiled
// with -ffp-contract=off so that no fused multiply-add changes the rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "pocketdet/detector.h"

namespace pocketdet {
namespace {

struct Taps {
    int count = 0;             // taps per output
    std::vector<int> index;    // [n_out * count] input index of tap k of output i
    std::vector<float> weight; // [n_out * count]
};

Taps aa_taps(int n_in, int n_out, double scale) {
    const double f = static_cast<double>(n_in) / n_out;
    const double support = f >= 1.0 ? f : 1.0;
    const double inv = f >= 1.0 ? 1.0 / f : 1.0;
    std::vector<double> center(n_out);
    std::vector<int64_t> lo(n_out), hi(n_out);
    int64_t width = 0;
    for (int i = 0; i < n_out; ++i) {
        center[i] = f * (i + 0.5);
        // numpy's astype(int64) truncates toward zero, then the clamp to the image
        lo[i] = std::max<int64_t>(static_cast<int64_t>(center[i] - support + 0.5), 0);
        hi[i] = std::min<int64_t>(static_cast<int64_t>(center[i] + support + 0.5), n_in);
        width = std::max(width, hi[i] - lo[i]);
    }
    Taps t;
    t.count = static_cast<int>(width);
    t.index.resize(static_cast<size_t>(n_out) * t.count);
    t.weight.resize(t.index.size());
    std::vector<double> w(t.count);
    for (int i = 0; i < n_out; ++i) {
        double sum = 0.0;
        for (int k = 0; k < t.count; ++k) {
            const int64_t idx = lo[i] + k;
            double v = std::max(1.0 - std::fabs((static_cast<double>(idx) - center[i] + 0.5) * inv), 0.0);
            if (idx >= hi[i]) v = 0.0;
            w[k] = v;
            sum += v;  // numpy sums 8+ taps in another order: at most 1 ulp of double, lost in the float cast
        }
        for (int k = 0; k < t.count; ++k) {
            const int64_t idx = std::min<int64_t>(lo[i] + k, n_in - 1);
            t.index[static_cast<size_t>(i) * t.count + k] = static_cast<int>(idx);
            t.weight[static_cast<size_t>(i) * t.count + k] = static_cast<float>(w[k] / sum * scale);
        }
    }
    return t;
}

}  // namespace

void resize_chw(const uint8_t* rgb, int width, int height, int size, float* out) {
    const Taps tx = aa_taps(width, size, 1.0);
    const Taps ty = aa_taps(height, size, 1.0 / 255.0);
    // horizontal pass: [height, size, 3] float32
    std::vector<float> acc(static_cast<size_t>(height) * size * 3);
    for (int y = 0; y < height; ++y) {
        const uint8_t* row = rgb + static_cast<size_t>(y) * width * 3;
        float* dst = acc.data() + static_cast<size_t>(y) * size * 3;
        for (int j = 0; j < size; ++j) {
            const int* idx = &tx.index[static_cast<size_t>(j) * tx.count];
            const float* wt = &tx.weight[static_cast<size_t>(j) * tx.count];
            for (int c = 0; c < 3; ++c) {
                float s = static_cast<float>(row[idx[0] * 3 + c]) * wt[0];
                for (int k = 1; k < tx.count; ++k) s += static_cast<float>(row[idx[k] * 3 + c]) * wt[k];
                dst[j * 3 + c] = s;
            }
        }
    }
    // vertical pass, written as CHW
    const size_t plane = static_cast<size_t>(size) * size;
    for (int i = 0; i < size; ++i) {
        const int* idx = &ty.index[static_cast<size_t>(i) * ty.count];
        const float* wt = &ty.weight[static_cast<size_t>(i) * ty.count];
        for (int j = 0; j < size; ++j) {
            for (int c = 0; c < 3; ++c) {
                float s = acc[(static_cast<size_t>(idx[0]) * size + j) * 3 + c] * wt[0];
                for (int k = 1; k < ty.count; ++k) s += acc[(static_cast<size_t>(idx[k]) * size + j) * 3 + c] * wt[k];
                out[c * plane + static_cast<size_t>(i) * size + j] = s;
            }
        }
    }
}

}  // namespace pocketdet
