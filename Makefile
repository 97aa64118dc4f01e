# The two commands: `make demo` (main job on the embedded defaults) and `make test`.
# Each creates .venv when missing and installs into it; nothing is installed elsewhere
# except the embedded assets, fetched once into the user cache (~/.cache/autointerp).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT    ?= runs/demo
DEMO_TOKENS ?= 330000
PYTEST_ARGS ?=

.PHONY: setup fetch test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU build of exactly this version is on every machine here;
	# any other request for torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

fetch: $(STAMP)
	$(BIN)/autointerp fetch

test: fetch
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: fetch
	$(BIN)/autointerp cache --model smollm2-135m --corpus python-stdlib \
		--hookpoints blocks.15.hook_out --tokens $(DEMO_TOKENS) --out $(DEMO_OUT)/activations
	@echo "activations of smollm2-135m at blocks.15.hook_out are in $(DEMO_OUT)/activations/blocks.15.hook_out"

bench: fetch
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs build *.egg-info
