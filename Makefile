# Two entry points: `make demo` and `make test`. Both create .venv if missing and install pocketdet
# with its pinned dependencies (torch/torchvision come from pip, from the wheels on this disk).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pocketdet-installed

.PHONY: install demo test bench clean paddle-env ncnn-lib cpp-runner
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev,mobile,bench,video]'
	@touch $(STAMP)

# `make demo WEIGHTS=coco`: the official COCO-trained model on the held-out photos (downloads once);
# `make demo MODEL=picodet_xs_320`: the same job with another zoo model (default ssdlite_mnv3_small_320)
demo: install
	$(PY) -m pocketdet.demo $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(MODEL),--model $(MODEL))

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/pocketdet bench --runs 50 --threads 1 --threads 2 --merge --md BENCHMARKS.md --png docs/latency_vs_ap.png
	$(PY) benchmarks/peers.py --threads 1 --runs 50

clean:
	rm -rf runs .pytest_cache

# Optional: PaddlePaddle + paddledet as a numerical reference for the weight converters
# (tests/test_convert_paddle.py skips its live-parity part without it). About 1.5 GB, CPU only.
PADDLE_VENV ?= .venv-paddle
PADDLE_DEPS := tqdm typeguard PyYAML shapely scipy terminaltables pycocotools opencv-python-headless \
	requests six matplotlib scikit-learn pyclipper Cython pandas motmetrics lap numpy pillow
paddle-env: $(PADDLE_VENV)/.paddle-installed

$(PADDLE_VENV)/.paddle-installed:
	@test -x $(PADDLE_VENV)/bin/python || $(PYTHON) -m venv $(PADDLE_VENV)
	$(PADDLE_VENV)/bin/python -m pip install --disable-pip-version-check -q paddlepaddle==3.3.1 $(PADDLE_DEPS)
	# paddledet's own pins (numpy<1.24, ...) are stale: install it without them
	$(PADDLE_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps paddledet==2.6.0
	@touch $@

# Issue 20 / 15: ncnn's static library built from its source distribution on PyPI (the version of the ncnn
# wheel), cached in .cache/ncnn-<version>/ (20 min on 2 loaded cores the first time, then instant), and the C++
# runner deploy/cpp built against it into .cache/cpp-runner/. Needs cmake >= 3.16 and a C++17 compiler
# (Debian: apt-get install cmake g++). Not part of `make test`: tests/test_cpp_runner.py skips without it.
CPP_BUILD ?= .cache/cpp-runner
ncnn-lib:  # pip of $(PYTHON) only downloads the sdist: no venv needed
	nice -n 15 deploy/cpp/build_ncnn.sh $(PYTHON)

cpp-runner: ncnn-lib
	cmake -S deploy/cpp -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release \
		-Dncnn_DIR=$$(ls -d $(CURDIR)/.cache/ncnn-*/install/lib*/cmake/ncnn | tail -1) >/dev/null
	nice -n 15 cmake --build $(CPP_BUILD) -j2
	@echo "C++ runner: $(CPP_BUILD)/pocketdet_detect"
