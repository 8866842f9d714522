# Two entry points on a fresh machine: `make demo` (the main job on the bundled sample) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
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

bench: $(STAMP)
	$(BIN)/gemma4 bench images

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
