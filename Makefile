# Two entry points on a fresh machine: `make demo` (the main job on the bundled sample) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime  # the package and what its jobs need (make demo)
STAMP := $(VENV)/.installed  # and the test extra: pytest, ruff, the parity oracle, Ray (make test)

.PHONY: install demo test test-fast lint bench clean gpu-wheels gpu-smoke

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	rm -rf out/sample out/preprocessed out/inferred
	$(BIN)/gemma4 sample-data out/sample --rows 40 --corrupt
	$(BIN)/gemma4 preprocess out/sample/manifest.jsonl out/preprocessed --tokenizer out/sample/tokenizer
	$(BIN)/gemma4 inspect out/preprocessed --row ex0001 --preview out/preview.png
	$(BIN)/gemma4 infer out/preprocessed out/inferred --checkpoint out/sample/checkpoint --max-new-tokens 16 --show 1
	$(BIN)/gemma4 chat --checkpoint out/sample/checkpoint --image out/sample/media/img1.jpg "What is in this picture?" --max-new-tokens 24 --seed 0
	@echo "(a tiny random checkpoint made on the spot: its replies are meaningless; --checkpoint DIR runs a real one)"

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# The tests not marked slow (none takes more than a few seconds): a few minutes, for the edit-test loop; `make test`
# runs them all. One torch thread: the tiny test models gain nothing from more, and where other jobs share the cores
# more threads spend their time waiting for each other (tenfold slower on a busy 2-core machine).
test-fast: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/gemma4 bench images

# The GPU machine (../shared/spec/GPU.md §3: Python 3.12, torch, transformers 5.17, no registry) lacks some runtime
# packages: their wheels, for Python 3.12 on x86-64 (its torch wheels are manylinux_2_28 already), at the versions
# this venv holds, go to .whl/ (git-ignored; about 52 MB, and the tree plus .whl/ must stay under 64 MiB, so no
# ray). av, soundfile, cffi, pycparser: absent there; transformers: the 5.23.0 the project pins; tokenizers: 0.23.3
# as here (0.23.2 there); regex: transformers 5.23.0 needs ≥ 2025.10.22, the image's version is not known.
# huggingface_hub (1.33 there) and safetensors (0.8.0 there) already satisfy transformers 5.23.0.
GPU_WHEELS := av soundfile cffi pycparser transformers tokenizers regex
GPU_PLATFORMS := --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64

gpu-wheels: $(STAMP)
	rm -rf .whl
	$(BIN)/python -m pip download --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		--no-deps -d .whl $$($(BIN)/python -c 'from importlib.metadata import version; \
		print(*(f"{name}=={version(name)}" for name in "$(GPU_WHEELS)".split()))')
	@du -sh .whl

# The GPU smoke (scripts/gpu_smoke.sh): here it prints "GPU SMOKE: SKIP (no CUDA device)"; on a GPU machine, where
# there is no venv, it runs with python3.
gpu-smoke:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash scripts/gpu_smoke.sh

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
