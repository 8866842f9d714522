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
	$(BIN)/gemma4 budget 1080 1920
	$(BIN)/gemma4 preview pipelines/assets/sample.jpg --budget 280 -o out/preview.png

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/gemma4 bench images

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
