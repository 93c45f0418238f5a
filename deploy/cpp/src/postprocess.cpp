// pocketdet.deploy.postprocess.class_wise_nms and npops.batched_nms in C++: candidates above the score
// threshold (per class at most nms_top_k, the best), sorted by score (ties: row-major (prior, class)
// order), greedy NMS within each class with torchvision's float32 IoU, at most keep_top_k kept.
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

std::vector<Detection> greedy_nms(const std::vector<Candidate>& cand, size_t m, const float* boxes, int num_classes,
                                  const PostprocessConfig& cfg, float scale_x, float scale_y) {
    std::vector<float> areas(m);
    std::vector<std::vector<int>> by_label(num_classes);  // candidate positions per class, best first
    std::vector<int> rank_in_label(m);
    for (size_t i = 0; i < m; ++i) {
        areas[i] = area(boxes + static_cast<size_t>(cand[i].prior) * 4);
        rank_in_label[i] = static_cast<int>(by_label[cand[i].label].size());
        by_label[cand[i].label].push_back(static_cast<int>(i));
    }
    std::vector<char> suppressed(m, 0);
    std::vector<Detection> out;
    for (size_t i = 0; i < m && static_cast<int>(out.size()) < cfg.keep_top_k; ++i) {
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

}  // namespace

std::vector<Detection> class_wise_nms(const float* boxes, const float* scores, int num_priors, int num_classes,
                                      const PostprocessConfig& cfg, float scale_x, float scale_y) {
    // per class, in prior order; a class with more than nms_top_k candidates keeps its nms_top_k best
    // (npops.per_class_candidates; ties at the k-th score: the lower prior index)
    std::vector<std::vector<Candidate>> per_class(num_classes);
    for (int p = 0; p < num_priors; ++p) {
        const float* row = scores + static_cast<size_t>(p) * num_classes;
        for (int c = 0; c < num_classes; ++c)
            if (row[c] > cfg.score_thresh) per_class[c].push_back({p, c, row[c]});
    }
    const auto better = [](const Candidate& a, const Candidate& b) {
        return a.score > b.score || (a.score == b.score && (a.prior < b.prior || (a.prior == b.prior && a.label < b.label)));
    };
    std::vector<Candidate> cand;
    for (std::vector<Candidate>& k : per_class) {
        if (static_cast<int>(k.size()) > cfg.nms_top_k && cfg.nms_top_k >= 0) {
            std::nth_element(k.begin(), k.begin() + cfg.nms_top_k, k.end(), better);
            k.resize(static_cast<size_t>(cfg.nms_top_k));
        }
        cand.insert(cand.end(), k.begin(), k.end());
    }
    // Greedy NMS decides a candidate from the better ones only, so the kept boxes among the best m are final:
    // sort and solve a prefix of 2 * keep_top_k, doubled until it yields keep_top_k boxes (npops.batched_nms;
    // a crowded, undertrained YOLOv3 has ~80k candidates of which ~200 are ever looked at).
    const size_t n = cand.size();
    size_t m = std::min(n, static_cast<size_t>(std::max(2 * cfg.keep_top_k, 64)));
    std::vector<Detection> out;
    while (true) {
        std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(m), cand.end(), better);
        out = greedy_nms(cand, m, boxes, num_classes, cfg, scale_x, scale_y);
        if (static_cast<int>(out.size()) >= cfg.keep_top_k || m == n) break;
        m = std::min(n, 2 * m);
    }
    return out;
}

}  // namespace pocketdet
