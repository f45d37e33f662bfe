# `make demo` and `make test` set everything up from scratch in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/kdm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0  # CPU build first, so nothing pulls a CUDA build
	$(BIN)/pip install -q -e '.[test,diffusers,tensorboard,onnx]'
	touch $@

.PHONY: setup demo test lint clean
setup: $(BIN)/kdm

demo: setup
	$(BIN)/kdm demo --out kdm-demo

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) kdm-demo
