// pocketdet.deploy.postprocess.class_wise_nms and npops.batched_nms in C++: candidates above the score
// threshold (per class at most nms_top_k, the best), sorted by score (ties: row-major (prior, class)
// order, as numpy's stable sort over np.flatnonzero), greedy NMS within each class with torchvision's
// float32 IoU, at most keep_top_k kept.
#include <algorithm>
#include <numeric>
#include <vector>

#include "pocketdet/detector.h"

namespace pocketdet {
namespace {

struct Candidate {
    int prior;
    int label;
    float score;
};

float area(const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

// torchvision's CPU nms kernel: inter / (area_a + area_b - inter) in float32
float iou(const float* a, float area_a, const float* b, float area_b) {
    const float iw = std::min(a[2], b[2]) - std::max(a[0], b[0]);
    const float ih = std::min(a[3], b[3]) - std::max(a[1], b[1]);
    const float inter = std::max(iw, 0.0f) * std::max(ih, 0.0f);
    return inter / (area_a + area_b - inter);
}

}  // namespace

std::vector<Detection> class_wise_nms(const float* boxes, const float* scores, int num_priors, int num_classes,
                                      const PostprocessConfig& cfg, float scale_x, float scale_y) {
    std::vector<Candidate> cand;
    std::vector<int> per_class(num_classes, 0);
    for (int p = 0; p < num_priors; ++p) {
        const float* row = scores + static_cast<size_t>(p) * num_classes;
        for (int c = 0; c < num_classes; ++c) {
            if (row[c] > cfg.score_thresh) {
                cand.push_back({p, c, row[c]});
                ++per_class[c];
            }
        }
    }
    // a class with more than nms_top_k candidates keeps its nms_top_k best (npops.per_class_candidates)
    for (int c = 0; c < num_classes; ++c) {
        if (per_class[c] <= cfg.nms_top_k) continue;
        std::vector<float> s;
        for (const Candidate& k : cand)
            if (k.label == c) s.push_back(k.score);
        std::nth_element(s.begin(), s.begin() + (cfg.nms_top_k - 1), s.end(), std::greater<float>());
        const float kth = s[cfg.nms_top_k - 1];
        int above = 0;  // scores strictly above the k-th best all stay; ties at it fill the rest in order
        for (float v : s) above += v > kth;
        int ties_left = cfg.nms_top_k - above;
        std::vector<Candidate> kept;
        kept.reserve(cand.size());
        for (const Candidate& k : cand) {
            if (k.label != c || k.score > kth || (k.score == kth && ties_left-- > 0)) kept.push_back(k);
        }
        cand.swap(kept);
    }
    std::stable_sort(cand.begin(), cand.end(), [](const Candidate& a, const Candidate& b) { return a.score > b.score; });

    std::vector<float> areas(cand.size());
    std::vector<std::vector<int>> by_label(num_classes);  // candidate positions per class, best first
    std::vector<int> rank_in_label(cand.size());
    for (size_t i = 0; i < cand.size(); ++i) {
        areas[i] = area(boxes + static_cast<size_t>(cand[i].prior) * 4);
        rank_in_label[i] = static_cast<int>(by_label[cand[i].label].size());
        by_label[cand[i].label].push_back(static_cast<int>(i));
    }
    std::vector<char> suppressed(cand.size(), 0);
    std::vector<Detection> out;
    for (size_t i = 0; i < cand.size() && static_cast<int>(out.size()) < cfg.keep_top_k; ++i) {
        if (suppressed[i]) continue;
        const float* b = boxes + static_cast<size_t>(cand[i].prior) * 4;
        out.push_back({b[0] * scale_x, b[1] * scale_y, b[2] * scale_x, b[3] * scale_y, cand[i].score, cand[i].label});
        const std::vector<int>& same = by_label[cand[i].label];
        for (size_t r = static_cast<size_t>(rank_in_label[i]) + 1; r < same.size(); ++r) {
            const int j = same[r];
            if (suppressed[j]) continue;
            const float* o = boxes + static_cast<size_t>(cand[j].prior) * 4;
            if (iou(b, areas[i], o, areas[j]) > cfg.nms_thresh) suppressed[j] = 1;
        }
    }
    return out;
}

}  // namespace pocketdet
