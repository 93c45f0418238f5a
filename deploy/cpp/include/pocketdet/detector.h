// pocketdet's ncnn runtime in C++: load a `pocketdet export --format ncnn` model (NAME.ncnn.param,
// NAME.ncnn.bin and the NAME.ncnn.json metadata beside them) and detect objects in an RGB image with the
// same pre-processing, decoding and NMS as the Python `pocketdet.deploy.mobile.NcnnDetector`.
//
//     pocketdet::Detector det("ssdlite.ncnn.param", /*threads=*/1);
//     std::vector<pocketdet::Detection> found = det.detect(rgb, width, height);  // HxWx3 uint8 RGB
//
// Supported archs: ssdlite, yolov3 (pruned or not) and picodet. Cascade R-CNN's two-part export is refused with
// a clear error (its RPN proposals and multi-scale RoIAlign run on the host in Python).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ncnn {
class Mat;
class Net;
}  // namespace ncnn

namespace pocketdet {

struct Detection {
    float x1, y1, x2, y2;  // pixels of the original image
    float score;
    int label;             // 0-based class index into Detector::class_names()
};

struct PostprocessConfig {
    float score_thresh = 0.01f;
    float nms_thresh = 0.45f;
    int nms_top_k = 400;   // candidates per class before NMS
    int keep_top_k = 200;  // detections per image
    float conf_thresh = 0.01f;  // yolov3: objectness below it zeroes the box's class scores
};

// Millisecond timings of the last detect() call, per stage.
struct StageTimes {
    double preprocess_ms = 0, network_ms = 0, postprocess_ms = 0;
};

class Detector {
public:
    // `path`: NAME, NAME.ncnn, NAME.ncnn.param or NAME.ncnn.bin. `threads`: ncnn worker threads.
    // Throws std::runtime_error with a one-line message naming the file and the problem.
    explicit Detector(const std::string& path, int threads = 1);
    ~Detector();
    Detector(const Detector&) = delete;
    Detector& operator=(const Detector&) = delete;

    // Detections sorted by score, best first. `rgb`: height x width x 3 uint8, rows packed.
    std::vector<Detection> detect(const uint8_t* rgb, int width, int height);

    const std::string& arch() const { return arch_; }
    const std::vector<std::string>& class_names() const { return class_names_; }
    int input_size() const { return input_size_; }
    PostprocessConfig& config() { return cfg_; }  // thresholds from the metadata; may be changed
    const StageTimes& last_times() const { return times_; }

private:
    std::unique_ptr<ncnn::Net> net_;
    std::string source_;
    std::string arch_;
    std::vector<std::string> class_names_;
    int input_size_ = 0;
    int input_hw_[2] = {0, 0};  // yolov3, picodet: the graph's input (height, width) its boxes refer to
    bool clip_bbox_ = true;
    PostprocessConfig cfg_;
    std::string input_blob_;
    std::vector<std::string> output_blobs_;
    StageTimes times_;
};

// Antialiased bilinear resize of an HxWx3 uint8 RGB image to [3, size, size] float32 in 0..1, with the
// same filter taps, weights and float32 operation order as pocketdet.deploy.npops.resize_chw(exact=True)
// (and so torch's F.interpolate(bilinear, antialias=True)). `out` must hold 3*size*size floats (CHW).
void resize_chw(const uint8_t* rgb, int width, int height, int size, float* out);

// pocketdet.deploy.postprocess.class_wise_nms: boxes [P,4] xyxy, scores [P,C] row-major -> per class the
// nms_top_k best above score_thresh, greedy class-wise NMS (torchvision IoU), the keep_top_k best;
// boxes multiplied by (scale_x, scale_y). `objectness` [P] (optional, YOLOv3): a prior whose value is below
// conf_thresh has all its scores taken as 0, without the caller copying and zeroing the score rows.
std::vector<Detection> class_wise_nms(const float* boxes, const float* scores, int num_priors, int num_classes,
                                      const PostprocessConfig& cfg, float scale_x, float scale_y,
                                      const float* objectness = nullptr, float conf_thresh = 0.0f);

}  // namespace pocketdet
