# Two entry points: `make demo` and `make test`. Both create .venv if missing and install pocketdet
# with its pinned dependencies (torch/torchvision come from pip, from the wheels on this disk).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pocketdet-installed

.PHONY: install demo test bench clean
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) -m pocketdet.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
