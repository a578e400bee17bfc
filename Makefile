# One virtual environment (.venv) holds everything; every target installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench proto lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orbitvault demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/erasure.py
	$(BIN)/python bench/node.py
	$(BIN)/python bench/scrub.py

proto: $(STAMP)
	$(BIN)/python -m orbitvault.grpc.codegen

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
