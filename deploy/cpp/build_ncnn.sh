#!/usr/bin/env bash
# Build ncnn's static library from its source distribution on PyPI, cached under $CACHE (default
# .cache/ncnn-<version>): the same ncnn version as the `ncnn` wheel pocketdet's Python runtime uses.
# Usage: deploy/cpp/build_ncnn.sh [PYTHON]   (PYTHON: the interpreter whose pip downloads the sdist)
# Idempotent: a finished build leaves $CACHE/install/.done and the script returns at once.
set -euo pipefail

NCNN_VERSION=1.0.20261020
# pip cannot resolve `ncnn==1.0.20261020 --no-binary :all:` because this sdist's setup.py stamps the
# build date into its version; so the file is named by its registry URL and checked by its hash.
SDIST_URL=https://files.pythonhosted.org/packages/b7/50/32b5172afe7d3e0dce410b7d8f4a5b7b84b942a0d69affbaedf669de52bc/ncnn-${NCNN_VERSION}.tar.gz
SDIST_SHA256=ad8cdd63e9755cfa8e23b9b6d9ce46156077d80298a89e7c3ba325ffccfca200

PYTHON=${1:-python3}
CACHE=${NCNN_CACHE:-.cache/ncnn-${NCNN_VERSION}}
JOBS=${JOBS:-2}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
if [ -f "$CACHE/install/.done" ]; then
    echo "ncnn ${NCNN_VERSION}: cached in $CACHE/install"
    exit 0
fi
for tool in cmake c++ make; do
    command -v $tool >/dev/null || { echo "build_ncnn: '$tool' not found (Debian: apt-get install cmake g++ make)" >&2; exit 2; }
done

tarball="$CACHE/ncnn-${NCNN_VERSION}.tar.gz"
if [ ! -f "$tarball" ]; then
    # pip prepares the sdist's metadata: with the interpreter's setuptools if it has one, else isolated
    "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation -d "$CACHE" "$SDIST_URL" \
        || "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps -d "$CACHE" "$SDIST_URL"
fi
echo "$SDIST_SHA256  $tarball" | sha256sum -c --quiet - || { echo "build_ncnn: $tarball: sha256 mismatch" >&2; exit 1; }
if [ ! -f "$CACHE/src/.extracted" ]; then  # re-extracting would make make rebuild every object
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
    tar xzf "$tarball" -C "$CACHE/src" --strip-components=1
    touch "$CACHE/src/.extracted"
fi

# Layers no pocketdet export uses (recurrent, attention, normalisation, 1-D/3-D and transposed convs, ...)
# are left out: with runtime CPU dispatch every x86 layer compiles 4-8 times, and these are ~60 % of the
# build time. pnnx's conversion of the five zoo archs (and its int8 form) needs only the rest.
SKIP_LAYERS="rnn lstm gru multiheadattention sdpa rotaryembed rmsnorm layernorm groupnorm instancenorm mvn
    deconvolution deconvolutiondepthwise deconvolution1d deconvolutiondepthwise1d deconvolution3d
    deconvolutiondepthwise3d convolution1d convolutiondepthwise1d convolution3d convolutiondepthwise3d pooling1d
    pooling3d deformableconv2d einsum gridsample fold unfold lrn mish selu elu celu gelu erf bnll prelu
    cumulativesum pixelshuffle shufflechannel statisticspooling spectrogram inversespectrogram embed glu shrink
    diag copyto reorg yolodetectionoutput yolov3detectionoutput detectionoutput priorbox proposal psroipooling
    roipooling spp tanh swish softplus threshold"
skip_args=()
for layer in $SKIP_LAYERS; do skip_args+=("-DWITH_LAYER_${layer}=OFF"); done

# Only the static library: no Vulkan, no Python module, tools, examples or benchmark. x86: one AVX2+FMA
# build of each layer (runs on any x86-64 CPU since Haswell / Zen 1) instead of the wheel's runtime dispatch
# over SSE2/AVX/FMA/AVX-512/VNNI variants, which compiles every layer 4-8 times (measured: >1 h against ~20
# min on 2 loaded cores). Results agree with the wheel to float rounding (tests/test_cpp_runner.py); for the
# wheel's exact kernels set NCNN_CMAKE_ARGS="-DNCNN_RUNTIME_CPU=ON -DNCNN_AVX512=ON -DNCNN_AVXVNNI=ON".
nice -n 15 cmake -S "$CACHE/src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$CACHE/install" \
    -DNCNN_VULKAN=OFF -DNCNN_PYTHON=OFF -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF \
    -DNCNN_BUILD_BENCHMARK=OFF -DNCNN_BUILD_TESTS=OFF -DNCNN_SHARED_LIB=OFF -DNCNN_OPENMP=ON \
    -DNCNN_PIXEL_ROTATE=OFF -DNCNN_PIXEL_AFFINE=OFF -DNCNN_PIXEL_DRAWING=OFF -DNCNN_C_API=OFF \
    -DNCNN_RUNTIME_CPU=OFF -DNCNN_AVX=ON -DNCNN_FMA=ON -DNCNN_F16C=ON -DNCNN_AVX2=ON -DNCNN_XOP=OFF -DNCNN_FMA4=OFF \
    -DNCNN_AVX512=OFF -DNCNN_AVXVNNI=OFF -DNCNN_AVXVNNIINT8=OFF -DNCNN_AVXVNNIINT16=OFF -DNCNN_AVXNECONVERT=OFF \
    "${skip_args[@]}" ${NCNN_CMAKE_ARGS:-} >"$CACHE/cmake.log"
nice -n 15 cmake --build "$CACHE/build" -j"$JOBS" >"$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; exit 1; }
cmake --install "$CACHE/build" >/dev/null
touch "$CACHE/install/.done"
echo "ncnn ${NCNN_VERSION}: built into $CACHE/install"
