// pocketdet_detect: run a pocketdet ncnn export on images and print one JSON line of detections per image.
//
//   pocketdet_detect MODEL.ncnn.param IMAGE... [--threads N] [--score-thresh X] [--runs N] [--warmup N]
//                    [--dump-input FILE]
//
// IMAGE: JPEG, PNG, BMP or binary PPM (decoded by the vendored stb_image). --runs N: time N detect() calls
// on the decoded image and add their median (ms) to the output (decoding excluded). --dump-input FILE: write
// the network input of the last image (float32 [3,S,S] CHW, raw) for comparison with the Python resize. Errors: one line on
// stderr naming the file and the problem, exit 1 (2 for usage errors).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "pocketdet/detector.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include "stb_image.h"

namespace {

const char* const kUsage =
    "usage: pocketdet_detect MODEL.ncnn.param IMAGE... [--threads N] [--score-thresh X] [--runs N] [--warmup N]\n"
    "                        [--dump-input FILE]\n";

void print_json_string(const std::string& s) {
    std::putchar('"');
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') std::printf("\\%c", c);
        else if (c < 0x20) std::printf("\\u%04x", c);
        else std::putchar(c);
    }
    std::putchar('"');
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int parse_int(const char* flag, const char* value) {
    char* end = nullptr;
    long v = std::strtol(value, &end, 10);
    if (*value == '\0' || *end != '\0' || v < 0 || v > 1000000) throw std::invalid_argument(std::string(flag) + ": not a count: " + value);
    return static_cast<int>(v);
}

void write_input(const std::string& path, const unsigned char* rgb, int w, int h, int size) {
    std::vector<float> chw(static_cast<size_t>(3) * size * size);
    pocketdet::resize_chw(rgb, w, h, size, chw.data());  // the function Detector::detect uses
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) throw std::runtime_error(path + ": cannot write");
    const size_t n = std::fwrite(chw.data(), sizeof(float), chw.size(), f);
    std::fclose(f);
    if (n != chw.size()) throw std::runtime_error(path + ": short write");
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> positional;
    int threads = 1, runs = 0, warmup = 3;
    float score_thresh = -1.0f;
    std::string dump_input;
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            const bool has_value = i + 1 < argc;
            if (a == "-h" || a == "--help") { std::fputs(kUsage, stdout); return 0; }
            if ((a == "--threads" || a == "--runs" || a == "--warmup" || a == "--score-thresh" || a == "--dump-input")
                && !has_value)
                throw std::invalid_argument(a + " needs a value");
            if (a == "--threads") threads = std::max(1, parse_int("--threads", argv[++i]));
            else if (a == "--runs") runs = parse_int("--runs", argv[++i]);
            else if (a == "--warmup") warmup = parse_int("--warmup", argv[++i]);
            else if (a == "--score-thresh") score_thresh = std::strtof(argv[++i], nullptr);
            else if (a == "--dump-input") dump_input = argv[++i];
            else if (a.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + a);
            else positional.push_back(a);
        }
        if (positional.size() < 2) throw std::invalid_argument("need a model and at least one image");
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "pocketdet_detect: %s\n%s", e.what(), kUsage);
        return 2;
    }
    try {
        pocketdet::Detector det(positional[0], threads);
        for (size_t n = 1; n < positional.size(); ++n) {
            const std::string& path = positional[n];
            int w = 0, h = 0, channels = 0;
            const auto t0 = std::chrono::steady_clock::now();
            unsigned char* rgb = stbi_load(path.c_str(), &w, &h, &channels, 3);
            const double decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            if (rgb == nullptr) throw std::runtime_error(path + ": cannot read image (" + stbi_failure_reason() + ")");
            std::vector<pocketdet::Detection> found;
            std::vector<double> times, pre, net, post;
            try {
                found = det.detect(rgb, w, h);
                for (int r = 0; r < warmup && runs > 0; ++r) det.detect(rgb, w, h);
                for (int r = 0; r < runs; ++r) {
                    const auto t = std::chrono::steady_clock::now();
                    det.detect(rgb, w, h);
                    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
                    pre.push_back(det.last_times().preprocess_ms);
                    net.push_back(det.last_times().network_ms);
                    post.push_back(det.last_times().postprocess_ms);
                }
                if (!dump_input.empty()) write_input(dump_input, rgb, w, h, det.input_size());
            } catch (...) {
                stbi_image_free(rgb);
                throw;
            }
            stbi_image_free(rgb);
            const pocketdet::StageTimes& st = det.last_times();
            std::printf("{\"image\": ");
            print_json_string(path);
            std::printf(", \"width\": %d, \"height\": %d, \"detections\": [", w, h);
            bool first = true;
            for (const pocketdet::Detection& d : found) {
                if (score_thresh >= 0.0f && d.score < score_thresh) continue;
                std::printf("%s{\"box\": [%.9g, %.9g, %.9g, %.9g], \"score\": %.9g, \"label\": %d, \"name\": ", first ? "" : ", ",
                            d.x1, d.y1, d.x2, d.y2, d.score, d.label);
                print_json_string(det.class_names()[d.label]);
                std::putchar('}');
                first = false;
            }
            std::printf("], \"ms\": {\"decode\": %.3f, \"preprocess\": %.3f, \"network\": %.3f, \"postprocess\": %.3f",
                        decode_ms, st.preprocess_ms, st.network_ms, st.postprocess_ms);
            if (!times.empty())
                std::printf(", \"detect_median\": %.3f, \"preprocess_median\": %.3f, \"network_median\": %.3f, "
                            "\"postprocess_median\": %.3f, \"runs\": %zu",
                            median(times), median(pre), median(net), median(post), times.size());
            std::printf("}}\n");
            std::fflush(stdout);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pocketdet_detect: %s\n", e.what());
        return 1;
    }
    return 0;
}
