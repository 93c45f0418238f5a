// pocketdet.deploy.postprocess.class_wise_nms and npops.class_wise_nms in C++: candidates above the score
// threshold (per class at most nms_top_k, the best), sorted by score (ties: row-major (prior, class)
// order), greedy NMS within each class with torchvision's float32 IoU, at most keep_top_k kept.
//
// Greedy NMS decides a pair from the better pairs only (its rank within its class, whether a kept box of
// its class overlaps it), so solving the m best pairs gives the final first detections (as
// npops.class_wise_nms). The first m = 2 * keep_top_k are picked while scanning the scores, with a bounded
// heap, so nothing is stored per pair: an undertrained YOLOv3 has ~500k (box, class) pairs over a 0.01
// threshold, and storing then partitioning them cost more than numpy's whole tail. Only when these leave
// fewer than keep_top_k boxes are all pairs stored, and a best-first prefix doubled until enough survive.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pocketdet/detector.h"

namespace pocketdet {
namespace {

struct Candidate {
    float score;
    uint32_t flat;  // prior * num_classes + class: ties broken in row-major order, as numpy's stable sort
};

bool better(const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.flat < b.flat);
}

// The score rows as class_wise_nms sees them: a row whose gate value is below gate_thresh (YOLOv3's low
// objectness) reads as zeros, without copying the scores.
struct ScoreRows {
    const float* scores;
    int num_priors, num_classes;
    const float* gate;
    float gate_thresh;
    std::vector<float> zeros;

    const float* row(int p) const {
        if (gate != nullptr && gate[p] < gate_thresh) return zeros.data();
        return scores + static_cast<size_t>(p) * num_classes;
    }
};

// The m best pairs above thresh, best first, into `best` by a bounded heap (its front: the worst kept, to
// beat) -> how many pairs are above thresh in all. A row is first only counted (a loop the compiler
// vectorises); its pairs are looked at one by one only when one of them could enter the heap.
size_t best_by_heap(const ScoreRows& s, float thresh, size_t m, std::vector<Candidate>& best) {
    best.clear();
    best.reserve(m);
    size_t n = 0;
    float bar = thresh;  // once the heap is full: its worst score, which a pair must at least equal
    bool full = false;
    for (int p = 0; p < s.num_priors; ++p) {
        if (s.gate != nullptr && s.gate[p] < s.gate_thresh && !(0.0f > thresh)) continue;  // zeros: none pass
        const float* row = s.row(p);
        int above = 0, at_bar = 0;
        for (int c = 0; c < s.num_classes; ++c) {
            above += row[c] > thresh;
            at_bar += row[c] >= bar;
        }
        n += static_cast<size_t>(above);
        if ((full ? at_bar : above) == 0) continue;
        const uint32_t base = static_cast<uint32_t>(p) * static_cast<uint32_t>(s.num_classes);
        for (int c = 0; c < s.num_classes; ++c) {
            const Candidate cand{row[c], base + static_cast<uint32_t>(c)};
            if (!(cand.score > thresh)) continue;
            if (!full) {
                best.push_back(cand);
                std::push_heap(best.begin(), best.end(), better);
                full = best.size() >= m;
            } else if (better(cand, best.front())) {
                std::pop_heap(best.begin(), best.end(), better);
                best.back() = cand;
                std::push_heap(best.begin(), best.end(), better);
            } else {
                continue;
            }
            if (full) bar = best.front().score;
        }
    }
    std::sort_heap(best.begin(), best.end(), better);  // ascending in `better`: best first
    return n;
}

// All n pairs above thresh, in row-major order, into `all`: when the heap's m best were not enough.
void all_pairs(const ScoreRows& s, float thresh, size_t n, std::vector<Candidate>& all) {
    all.clear();
    all.reserve(n);
    for (int p = 0; p < s.num_priors; ++p) {
        const float* row = s.row(p);
        int above = 0;
        for (int c = 0; c < s.num_classes; ++c) above += row[c] > thresh;
        if (above == 0) continue;
        const uint32_t base = static_cast<uint32_t>(p) * static_cast<uint32_t>(s.num_classes);
        for (int c = 0; c < s.num_classes; ++c)
            if (row[c] > thresh) all.push_back({row[c], base + static_cast<uint32_t>(c)});
    }
}

float area(const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

// torchvision's CPU nms kernel: inter / (area_a + area_b - inter) in float32
float iou(const float* a, float area_a, const float* b, float area_b) {
    const float iw = std::min(a[2], b[2]) - std::max(a[0], b[0]);
    const float ih = std::min(a[3], b[3]) - std::max(a[1], b[1]);
    const float inter = std::max(iw, 0.0f) * std::max(ih, 0.0f);
    return inter / (area_a + area_b - inter);
}

// Greedy class-wise NMS over pairs listed best first: a pair beyond its class's nms_top_k is no candidate;
// a candidate overlapping (IoU > nms_thresh) a kept box of its class is suppressed; stops at keep_top_k.
std::vector<Detection> greedy_nms(const Candidate* cand, size_t count, const float* boxes, int num_classes,
                                  const PostprocessConfig& cfg) {
    const size_t keep = static_cast<size_t>(std::max(cfg.keep_top_k, 0));
    std::vector<Detection> out;
    std::vector<int> seen(num_classes, 0);        // pairs of each class met so far: the next one's rank
    std::vector<int> last_kept(num_classes, -1);  // per class, a chain through the kept detections
    std::vector<int> prev_kept;                   // out[k]'s previous kept detection of its class
    std::vector<const float*> kept_box;
    std::vector<float> kept_area;
    for (size_t i = 0; i < count && out.size() < keep; ++i) {
        const int prior = static_cast<int>(cand[i].flat / static_cast<uint32_t>(num_classes));
        const int label = static_cast<int>(cand[i].flat % static_cast<uint32_t>(num_classes));
        if (cfg.nms_top_k >= 0 && seen[label]++ >= cfg.nms_top_k) continue;
        const float* b = boxes + static_cast<size_t>(prior) * 4;
        const float a = area(b);
        bool suppressed = false;
        for (int k = last_kept[label]; k >= 0 && !suppressed; k = prev_kept[k])
            suppressed = iou(kept_box[k], kept_area[k], b, a) > cfg.nms_thresh;
        if (suppressed) continue;
        prev_kept.push_back(last_kept[label]);
        last_kept[label] = static_cast<int>(out.size());
        kept_box.push_back(b);
        kept_area.push_back(a);
        out.push_back({b[0], b[1], b[2], b[3], cand[i].score, label});
    }
    return out;
}

}  // namespace

std::vector<Detection> class_wise_nms(const float* boxes, const float* scores, int num_priors, int num_classes,
                                      const PostprocessConfig& cfg, float scale_x, float scale_y,
                                      const float* objectness, float conf_thresh) {
    const ScoreRows rows{scores, num_priors, num_classes, objectness, conf_thresh,
                         std::vector<float>(objectness != nullptr ? num_classes : 0, 0.0f)};
    std::vector<Candidate> best;
    size_t m = static_cast<size_t>(std::max(2 * cfg.keep_top_k, 64));
    const size_t n = best_by_heap(rows, cfg.score_thresh, m, best);
    std::vector<Detection> out = greedy_nms(best.data(), best.size(), boxes, num_classes, cfg);
    if (static_cast<int>(out.size()) < cfg.keep_top_k && best.size() < n) {
        // too many suppressed or cut: all pairs, a best-first prefix doubled until enough survive
        all_pairs(rows, cfg.score_thresh, n, best);
        size_t sorted = 0;
        do {
            m = std::min(n, 2 * m);
            if (m < n) std::nth_element(best.begin() + sorted, best.begin() + m, best.end(), better);
            std::sort(best.begin() + sorted, best.begin() + m, better);
            sorted = m;
            out = greedy_nms(best.data(), m, boxes, num_classes, cfg);
        } while (static_cast<int>(out.size()) < cfg.keep_top_k && m < n);
    }
    for (Detection& d : out) {  // scaled at the end: IoU is computed on the boxes as given
        d.x1 *= scale_x;
        d.y1 *= scale_y;
        d.x2 *= scale_x;
        d.y2 *= scale_y;
    }
    return out;
}

}  // namespace pocketdet
