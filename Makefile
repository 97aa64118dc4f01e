# The two commands: `make demo` (main job on the embedded defaults) and `make test`.
# Each creates .venv when missing and installs into it; nothing is installed elsewhere
# except the embedded assets, fetched once into the user cache (~/.cache/autointerp).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT    ?= runs/demo
DEMO_ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup fetch fetch-all peers servers browser test test-slow test-servers demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU build of exactly this version is on every machine here;
	# any other request for torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# make test needs SmolLM2 and MiniLM; make test-slow also the second family, Gemma 3 270M
fetch: $(STAMP)
	$(BIN)/autointerp fetch smollm2-135m all-minilm-l6-v2

fetch-all: $(STAMP)
	$(BIN)/autointerp fetch

# the real SAE Lens and sparsify packages, each in its own venv (their pins differ from ours), for
# the interop tests marked `peers` (benchmarks/peers/setup_peers.sh; ~2.5 min on 2 cores)
PEERS := benchmarks/_venvs/.peers-stamp
$(PEERS): benchmarks/peers/setup_peers.sh
	bash benchmarks/peers/setup_peers.sh
	touch $(PEERS)

peers: $(PEERS)

# llama-cpp-python's OpenAI-compatible server, in its own venv, for the tests marked `server` (it
# builds llama.cpp from source: ~5 min cold on 2 cores; seconds when pip's wheel cache has it)
LLAMACPP := benchmarks/_venvs/llamacpp
SERVERS  := benchmarks/_venvs/.servers-stamp
$(SERVERS):
	test -x $(LLAMACPP)/bin/python || $(PYTHON) -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/python -m pip install -q --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
	touch $(SERVERS)

servers: $(SERVERS)

# the browser test renders the report in Debian's Chromium (installed here when missing)
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| (sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq chromium >/dev/null)

# `make test` leaves out the tests marked slow (over a minute each on 2 idle cores: the real-model
# end-to-end runs of the whole job) and those marked peers (the real SAE Lens / sparsify packages,
# whose venvs take minutes to install); `make test-slow` runs both, failing where a peer venv is
# missing rather than skipping. .ci/run runs both targets.
test: fetch browser
	AUTOINTERP_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -m "not slow and not peers and not server" $(PYTEST_ARGS)

test-slow: fetch-all peers
	AUTOINTERP_REQUIRE_PEERS=1 $(BIN)/python -m pytest -m "(slow or peers) and not server" $(PYTEST_ARGS)

# every LLM explainer and scorer end to end through a real llama.cpp server (tests marked server)
test-servers: fetch servers
	AUTOINTERP_REQUIRE_SERVER=1 $(BIN)/python -m pytest -m server $(PYTEST_ARGS)

# the main job on the embedded defaults: cache -> train -> evaluate -> examples -> explain -> score -> report
# (resumable: run it again after an interruption; DEMO_ARGS passes overrides, e.g. --train.k 64)
demo: fetch
	$(BIN)/autointerp run --out $(DEMO_OUT) $(DEMO_ARGS)

bench: fetch
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs build *.egg-info benchmarks/_venvs
