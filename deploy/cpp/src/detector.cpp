// Loading a pocketdet ncnn export and running it: the C++ twin of pocketdet.deploy.mobile.NcnnDetector for
// the single-graph archs (ssdlite, yolov3, picodet). See include/pocketdet/detector.h.
#include "pocketdet/detector.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "json.h"
#include "net.h"  // ncnn

namespace pocketdet {
namespace {

const char* const kParam = ".ncnn.param";
const char* const kBin = ".ncnn.bin";
const char* const kMeta = ".ncnn.json";
const int kFormatVersion = 1;  // pocketdet.deploy.runtime.FORMAT_VERSION this reader understands

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// NAME, NAME.ncnn, NAME.ncnn.param, .bin or .json -> NAME (pocketdet.deploy.mobile.ncnn_paths)
std::string model_stem(const std::string& path) {
    for (const char* suffix : {kParam, kBin, kMeta, ".ncnn"})
        if (ends_with(path, suffix)) return path.substr(0, path.size() - std::string(suffix).size());
    return path;
}

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": ncnn model file not found or unreadable");
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Detector::Detector(const std::string& path, int threads) : net_(new ncnn::Net) {
    const std::string stem = model_stem(path);
    const std::string param = stem + kParam, bin = stem + kBin, meta_path = stem + kMeta;
    source_ = param;
    Json meta;
    try {
        meta = Json::parse(read_text(meta_path));
        if (!meta.is_object()) throw std::runtime_error("pocketdet metadata must be a JSON object");
        if (static_cast<int>(meta.at("format_version").number()) > kFormatVersion)
            throw std::runtime_error("metadata format " + std::to_string(static_cast<int>(meta.at("format_version").number()))
                                     + " is newer than this runner understands (" + std::to_string(kFormatVersion) + ")");
        arch_ = meta.at("arch").str();
        if (arch_ != "ssdlite" && arch_ != "yolov3" && arch_ != "picodet")
            throw std::runtime_error("arch '" + arch_
                                     + "' is not supported by the C++ runner (ssdlite, yolov3, picodet)"
                                     + (meta.has("ncnn_heads") ? "; Cascade R-CNN runs in Python (NcnnDetector)" : ""));
        class_names_ = meta.at("class_names").strings();
        input_size_ = static_cast<int>(meta.at("input_size").number());
        const Json& am = meta.at("arch_meta");
        if (!am.at("decoded_in_graph").boolean())
            throw std::runtime_error("export without in-graph decoding (--no-decode) is not supported by the C++ runner");
        const Json& pc = meta.at("postprocess_cfg");
        cfg_.score_thresh = static_cast<float>(pc.at("score_thresh").number());
        cfg_.nms_thresh = static_cast<float>(pc.at("nms_thresh").number());
        cfg_.nms_top_k = static_cast<int>(pc.at("nms_top_k").number());
        cfg_.keep_top_k = static_cast<int>(pc.at("keep_top_k").number());
        if (arch_ == "yolov3" || arch_ == "picodet") {  // boxes in the graph input's pixels
            input_hw_[0] = static_cast<int>(am.at("input_hw").at(0).number());
            input_hw_[1] = static_cast<int>(am.at("input_hw").at(1).number());
            if (input_hw_[0] <= 0 || input_hw_[1] <= 0) throw std::runtime_error("arch_meta.input_hw must be positive");
        }
        if (arch_ == "yolov3") {
            cfg_.conf_thresh = static_cast<float>(pc.at("conf_thresh").number());
            clip_bbox_ = am.at("clip_bbox").boolean();
        }
        const Json& nc = meta.at("ncnn");
        input_blob_ = nc.at("input_blob").str();
        output_blobs_ = nc.at("output_blobs").strings();
        const size_t want = arch_ == "yolov3" ? 3 : 2;
        if (output_blobs_.size() != want)
            throw std::runtime_error("expected " + std::to_string(want) + " output blobs for " + arch_);
    } catch (const std::runtime_error& e) {
        if (std::string(e.what()).rfind(meta_path, 0) == 0) throw;
        throw std::runtime_error(meta_path + ": " + e.what());
    }
    // as NcnnDetector: fp32 storage and arithmetic (ncnn would pick fp16/bf16 on CPUs that have them)
    ncnn::Option& opt = net_->opt;
    opt.use_vulkan_compute = false;
    opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = false;
    opt.use_bf16_storage = false;
    opt.num_threads = std::max(1, threads);
    if (net_->load_param(param.c_str()) != 0)
        throw std::runtime_error(param + ": ncnn cannot parse this param file (missing or not an ncnn model)");
    if (net_->load_model(bin.c_str()) != 0)
        throw std::runtime_error(bin + ": ncnn cannot load these weights (missing, truncated or not matching the param file)");
}

Detector::~Detector() = default;

std::vector<Detection> Detector::detect(const uint8_t* rgb, int width, int height) {
    if (rgb == nullptr || width <= 0 || height <= 0) throw std::invalid_argument("detect: empty image");
    auto t0 = std::chrono::steady_clock::now();
    ncnn::Mat in(input_size_, input_size_, 3);
    std::vector<float> chw(static_cast<size_t>(3) * input_size_ * input_size_);
    resize_chw(rgb, width, height, input_size_, chw.data());
    const size_t plane = static_cast<size_t>(input_size_) * input_size_;
    for (int c = 0; c < 3; ++c) std::copy(chw.begin() + c * plane, chw.begin() + (c + 1) * plane, static_cast<float*>(in.channel(c)));
    times_.preprocess_ms = ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    ncnn::Extractor ex = net_->create_extractor();
    ex.input(input_blob_.c_str(), in);
    std::vector<ncnn::Mat> outs(output_blobs_.size());
    for (size_t i = 0; i < outs.size(); ++i) {
        if (ex.extract(output_blobs_[i].c_str(), outs[i]) != 0)
            throw std::runtime_error(source_ + ": ncnn failed to compute blob " + output_blobs_[i]);
    }
    times_.network_ms = ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    // boxes [P,4] and scores [P,C] come back as 2-D mats (w = 4 / C, h = P), rows contiguous
    const ncnn::Mat& boxes = outs[0];
    const ncnn::Mat& scores = outs[1];
    const int priors = boxes.h, classes = scores.w;
    if (boxes.dims != 2 || boxes.w != 4 || scores.dims != 2 || scores.h != priors
        || classes != static_cast<int>(class_names_.size()))
        throw std::runtime_error(source_ + ": unexpected output shapes (boxes " + std::to_string(boxes.h) + "x"
                                 + std::to_string(boxes.w) + ", scores " + std::to_string(scores.h) + "x"
                                 + std::to_string(scores.w) + ")");
    std::vector<Detection> found;
    if (arch_ == "ssdlite") {
        found = class_wise_nms(boxes, scores, priors, classes, cfg_, static_cast<float>(width), static_cast<float>(height));
    } else if (arch_ == "yolov3") {
        // YOLOv3Postprocess: boxes in input pixels -> original pixels, clipped; low objectness zeroes scores
        const ncnn::Mat& obj = outs[2];
        if (static_cast<int>(obj.total()) != priors)
            throw std::runtime_error(source_ + ": objectness has " + std::to_string(obj.total()) + " values for "
                                     + std::to_string(priors) + " boxes");
        const float sx = static_cast<float>(static_cast<double>(width) / input_hw_[1]);
        const float sy = static_cast<float>(static_cast<double>(height) / input_hw_[0]);
        const float hi_x = static_cast<float>(width - 1), hi_y = static_cast<float>(height - 1);
        std::vector<float> b(static_cast<size_t>(priors) * 4);
        const float* src = boxes;
        const float* objectness = obj;
        for (int p = 0; p < priors; ++p) {
            for (int k = 0; k < 4; ++k) {
                float v = src[p * 4 + k] * (k % 2 == 0 ? sx : sy);
                if (clip_bbox_) v = std::min(std::max(v, 0.0f), k % 2 == 0 ? hi_x : hi_y);
                b[static_cast<size_t>(p) * 4 + k] = v;
            }
        }
        // low objectness zeroes a box's scores: class_wise_nms skips those rows instead of a zeroed copy
        found = class_wise_nms(b.data(), scores, priors, classes, cfg_, 1.0f, 1.0f, objectness, cfg_.conf_thresh);
    } else {
        // PicoDetPostprocess: boxes in input pixels divided by the float32 resize factor (input / original),
        // a division as numpy's (a multiply by the inverse rounds differently); no clipping, as ppdet
        const float fx = static_cast<float>(static_cast<double>(input_hw_[1]) / width);
        const float fy = static_cast<float>(static_cast<double>(input_hw_[0]) / height);
        std::vector<float> b(static_cast<size_t>(priors) * 4);
        const float* src = boxes;
        for (size_t i = 0; i < b.size(); ++i) b[i] = src[i] / (i % 2 == 0 ? fx : fy);
        found = class_wise_nms(b.data(), scores, priors, classes, cfg_, 1.0f, 1.0f);
    }
    times_.postprocess_ms = ms_since(t0);
    return found;
}

}  // namespace pocketdet
