# The two commands: `make demo` (main job on the embedded defaults) and `make test`.
# Each creates .venv when missing and installs into it; nothing is installed elsewhere
# except the embedded assets, fetched once into the user cache (~/.cache/autointerp).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT    ?= runs/demo
DEMO_TOKENS ?= 330000
DEMO_HELDOUT ?= 30000
DEMO_SHARD  ?= 256
DEMO_LATENTS ?= 4608
DEMO_BATCH  ?= 4096
DEMO_EVAL_CONTEXTS ?= 64
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

# cache -> train -> evaluate on the embedded defaults (the full explain/score job comes later)
demo: fetch
	$(BIN)/autointerp cache --model smollm2-135m --corpus python-stdlib --hookpoints blocks.15.hook_out \
		--tokens $(DEMO_TOKENS) --shard-contexts $(DEMO_SHARD) --out $(DEMO_OUT)/activations
	@echo "activations of smollm2-135m at blocks.15.hook_out are in $(DEMO_OUT)/activations/blocks.15.hook_out"
	$(BIN)/autointerp train --activations $(DEMO_OUT)/activations/blocks.15.hook_out --arch topk \
		--latents $(DEMO_LATENTS) --k 32 --batch-size $(DEMO_BATCH) --heldout-tokens $(DEMO_HELDOUT) \
		--checkpoint-every 10 --resume --out $(DEMO_OUT)/dictionaries
	$(BIN)/autointerp evaluate $(DEMO_OUT)/dictionaries/blocks.15.hook_out --contexts $(DEMO_EVAL_CONTEXTS)
	@echo "dictionary, metrics.json and density.html are in $(DEMO_OUT)/dictionaries/blocks.15.hook_out"

bench: fetch
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs build *.egg-info
